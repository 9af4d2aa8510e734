#!/usr/bin/env bash
# Audits the locked dependencies for known vulnerabilities and writes benchmarks/results/audit.json:
# pip-audit (PyPI's vulnerability data) over requirements/serve-cpu.lock and requirements/dev-cpu.lock, then
# scripts/audit_report.py (a fallback for releases PyPI's per-release JSON does not answer, and the decisions of
# requirements/audit-decisions.json: every finding is fixed by a bumped pin or explained there).
# Usage: scripts/audit.sh          exit 0: no unresolved finding; 1: some (listed); 2: the tools failed
# Needs network access to PyPI; installs pip-audit into .cache/tools (a throwaway venv, not the project's).
set -euo pipefail
cd "$(dirname "$0")/.."
PIP_AUDIT_VERSION=2.10.1
TOOLS=.cache/tools

if [ ! -x "$TOOLS/bin/pip-audit" ] || ! "$TOOLS/bin/pip-audit" --version | grep -q " $PIP_AUDIT_VERSION\$"; then
  python3 -m venv "$TOOLS"
  "$TOOLS/bin/pip" install -q "pip-audit==$PIP_AUDIT_VERSION"
fi
export SSL_CERT_FILE=${SSL_CERT_FILE:-/etc/ssl/certs/ca-certificates.crt}
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT

reports=()
for lock in serve-cpu dev-cpu; do
  # A local version label (torch 2.13.0+cpu) is the same release as far as vulnerabilities go.
  sed -E 's/^([A-Za-z0-9._-]+==[^ +;]+)\+[A-Za-z0-9.]+/\1/' "requirements/$lock.lock" > "$WORK/$lock.txt"
  status=0
  "$TOOLS/bin/pip-audit" -r "$WORK/$lock.txt" --no-deps --disable-pip --vulnerability-service pypi \
    --progress-spinner off -f json -o "$WORK/$lock.json" 2> "$WORK/$lock.log" || status=$?
  [ "$status" -le 1 ] || { cat "$WORK/$lock.log" >&2; exit 2; }  # 1 = vulnerabilities found
  reports+=(--report "$lock=$WORK/$lock.json")
done
"$TOOLS/bin/python" scripts/audit_report.py --tool "pip-audit $PIP_AUDIT_VERSION" "${reports[@]}"
