#!/usr/bin/env bash
# The whole check: lint, format, and every test (including those on the real default model, marked
# real_model, which convert SmolLM2-135M-Instruct once into $RLXF_HOME, default ~/.cache/rlxf).
# Run scripts/setup.sh first. Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."

.venv/bin/ruff check .
.venv/bin/ruff format --check .
.venv/bin/python -m pytest -q "$@"
