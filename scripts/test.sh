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
# Two test processes at once (pytest-xdist), whole files per process so module fixtures are built once: much of the
# suite waits on servers, Redis, browsers and subprocesses. OpenMP threads sleep rather than spin while they wait,
# so the two processes' threads share the cores instead of fighting for them.
export OMP_WAIT_POLICY="${OMP_WAIT_POLICY:-PASSIVE}"
ruff check .          # lint and import order (pyproject.toml [tool.ruff])
mypy                  # types of the library and the command line (pyproject.toml [tool.mypy])
python -m pytest -q -n "${SEISBIND_TEST_WORKERS:-2}" --dist loadfile "$@"
