#!/usr/bin/env bash
# Install SeisBind with CPU serving, training and dev extras into .venv, then lint, type-check and run the tests.
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-python3}"
[ -x .venv/bin/python ] || "$PY" -m venv .venv
. .venv/bin/activate
python -m pip install -q --upgrade pip
python -m pip install -q -e ".[cpu,train,dev]"
export OMP_NUM_THREADS="${OMP_NUM_THREADS:-2}"
ruff check .          # lint and import order (pyproject.toml [tool.ruff])
mypy                  # types of the library and the command line (pyproject.toml [tool.mypy])
python -m pytest -q "$@"
