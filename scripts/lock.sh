#!/usr/bin/env bash
# Regenerates the dependency lock files from pyproject.toml, with hashes (uv pip compile):
#   requirements/serve-cpu.lock  the project's dependencies + the `cpu` extra, for every platform and Python >= 3.10
#                                (`--universal`): what the CPU serving image installs (`pip install --require-hashes`)
#   requirements/dev-cpu.lock    + the `train` and `dev` extras, for linux x86_64 and CPython 3.11 (this project's
#                                machines and CI), with the CPU torch build (requirements/torch-cpu.txt)
# Usage: scripts/lock.sh [--upgrade]   (default: keep the current pins where pyproject still allows them)
# Environment: SEISBIND_WHEELS_DIR  folder holding the CPU torch wheel (default /opt/wheels, else docker/wheels);
#              TORCH_INDEX_URL      or an index that has it (e.g. https://download.pytorch.org/whl/cpu)
# Needs network access to PyPI; installs uv into .cache/tools (a throwaway venv) when it is not on PATH.
set -euo pipefail
cd "$(dirname "$0")/.."
UV_VERSION=0.13.8

uv_bin=$(command -v uv || true)
if [ -z "$uv_bin" ]; then
  [ -x .cache/tools/bin/uv ] || { python3 -m venv .cache/tools && .cache/tools/bin/pip install -q "uv==$UV_VERSION"; }
  uv_bin=.cache/tools/bin/uv
fi
export SSL_CERT_FILE=${SSL_CERT_FILE:-/etc/ssl/certs/ca-certificates.crt}
upgrade=()
[ "${1:-}" = "--upgrade" ] && upgrade=(--upgrade)

wheels=${SEISBIND_WHEELS_DIR:-}
[ -n "$wheels" ] || { [ -d /opt/wheels ] && wheels=/opt/wheels; } || true
[ -n "$wheels" ] || wheels=docker/wheels
torch_src=(--find-links "$wheels")
[ -n "${TORCH_INDEX_URL:-}" ] && torch_src+=(--extra-index-url "$TORCH_INDEX_URL")

"$uv_bin" pip compile pyproject.toml --extra cpu --universal --python-version 3.10 --generate-hashes \
  --no-emit-package setuptools --custom-compile-command "scripts/lock.sh" "${upgrade[@]}" \
  -o requirements/serve-cpu.lock
"$uv_bin" pip compile pyproject.toml --extra cpu --extra train --extra dev --python-version 3.11 \
  --python-platform x86_64-manylinux_2_28 -c requirements/torch-cpu.txt "${torch_src[@]}" --generate-hashes \
  --custom-compile-command "scripts/lock.sh" --no-emit-find-links "${upgrade[@]}" \
  -o requirements/dev-cpu.lock
echo "lock files written: requirements/serve-cpu.lock requirements/dev-cpu.lock" >&2
