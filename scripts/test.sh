#!/usr/bin/env bash
# The whole check: lint, format, and every test (including those on the real default model, marked
# real_model, which convert SmolLM2-135M-Instruct once into $RLXF_HOME, default ~/.cache/rlxf).
# Run scripts/setup.sh first. Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."

# System packages the tests use for real: Chromium (browser tests, driven by Playwright) and a PostgreSQL
# server (the database tests start their own cluster in a temporary folder). Installed here, not in
# setup.sh, so that `rlxf demo` does not wait for them. apt-get needs root; without it, say what is
# missing and go on (those tests then fail with the same message).
missing=()
command -v chromium >/dev/null 2>&1 || missing+=(chromium)
ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || missing+=(postgresql)
if [ ${#missing[@]} -gt 0 ]; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
  else
    echo "test: please install ${missing[*]} (apt-get install ${missing[*]}); the web app's tests need them" >&2
  fi
fi

.venv/bin/ruff check .
.venv/bin/ruff format --check .
.venv/bin/python -m pytest -q "$@"
