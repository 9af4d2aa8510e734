#!/usr/bin/env bash
# Install SeisBind with CPU serving, training and dev extras into .venv, then lint, type-check and run the tests.
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-python3}"
# The web page's browser tests drive Debian's Chromium (Playwright cannot download its own browser here).
if [ ! -x /usr/bin/chromium ]; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q chromium
  else
    echo "warning: /usr/bin/chromium is missing and cannot be installed (needs root and apt-get); the browser tests will fail" >&2
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
