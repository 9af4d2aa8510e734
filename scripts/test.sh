#!/usr/bin/env bash
# Install SeisBind with CPU serving, training and dev extras into .venv, then lint, type-check and run the tests.
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-python3}"
# Debian packages the tests use: Chromium for the web page's browser tests (Playwright cannot download its own
# browser here), redis-server for the refinement job queue's tests. Installed only where missing.
missing=()
[ -x /usr/bin/chromium ] || missing+=(chromium)
command -v redis-server >/dev/null || missing+=(redis-server)
if [ "${#missing[@]}" -gt 0 ]; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q "${missing[@]}"
  else
    echo "warning: ${missing[*]} missing and cannot be installed (needs root and apt-get); their tests will fail" >&2
  fi
fi
[ -x .venv/bin/python ] || "$PY" -m venv .venv
. .venv/bin/activate
python -m pip install -q --upgrade pip
python -m pip install -q -e ".[cpu,train,dev]"
export OMP_NUM_THREADS="${OMP_NUM_THREADS:-2}"
ruff check .          # lint and import order (pyproject.toml [tool.ruff])
mypy                  # types of the library and the command line (pyproject.toml [tool.mypy])
python -m pytest -q "$@"
