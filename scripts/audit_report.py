"""Turn pip-audit's JSON reports on the lock files into ``benchmarks/results/audit.json`` (run by scripts/audit.sh).

pip-audit asks PyPI for each pinned release (``/pypi/<name>/<version>/json``). Where that answer is missing (some
mirrors and proxies serve only the project-level ``/pypi/<name>/json``), pip-audit skips the package; this script
then reads the project-level document, whose ``vulnerabilities`` are those of the latest release: for a pin that
*is* the latest release they are exactly the pin's; for an older pin they are a lower bound (listed, and the pin
is marked partially audited).

Every finding must either be fixed (the pin bumped past it: the finding is gone from the lock) or be explained in
``requirements/audit-decisions.json`` ({"not_applicable": {"<vuln id>": "<why>"}, "fixed": [...]}); the script
exits 1 when a finding has neither.

    python scripts/audit_report.py --tool "pip-audit 2.10.1" --report serve-cpu=/tmp/a.json --report dev-cpu=/tmp/b.json
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import re
import sys
import tempfile
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

REPO = Path(__file__).resolve().parents[1]
DECISIONS = REPO / "requirements" / "audit-decisions.json"
OUT = REPO / "benchmarks" / "results" / "audit.json"


def read_lock(path: Path) -> list[tuple[str, str, str]]:
    """(name, version, marker) of each pin of a uv / pip-compile lock file."""
    pins = []
    for line in re.sub(r"\\\n\s*", " ", path.read_text()).splitlines():
        line = line.split("#", 1)[0].split(" --hash", 1)[0].strip()
        if line and not line.startswith("-"):
            req = Requirement(line)
            (spec,) = req.specifier
            pins.append((canonicalize_name(req.name), spec.version, str(req.marker or "")))
    return pins


def project_document(name: str) -> dict[str, Any] | None:
    """PyPI's project-level JSON (latest release, its vulnerabilities), or None when unreachable."""
    try:
        with urllib.request.urlopen(f"https://pypi.org/pypi/{name}/json", timeout=60) as r:
            return json.load(r)
    except (urllib.error.URLError, TimeoutError, json.JSONDecodeError):
        return None


def vulns_of(doc: dict[str, Any]) -> list[dict[str, Any]]:
    return [{"id": v["id"], "aliases": v.get("aliases") or [], "fix_versions": v.get("fixed_in") or [],
             "summary": (v.get("summary") or v.get("details") or "")[:300]}
            for v in doc.get("vulnerabilities") or [] if not v.get("withdrawn")]


def audit_lock(lock: str, report: dict[str, Any]) -> dict[str, Any]:
    """One lock's pins, each with its audit source and findings."""
    by_name = {canonicalize_name(d["name"]): d for d in report.get("dependencies", [])}
    packages = []
    for name, version, marker in read_lock(REPO / "requirements" / f"{lock}.lock"):
        public = version.split("+", 1)[0]  # torch 2.13.0+cpu is audited as the release 2.13.0
        dep = by_name.get(name, {})
        entry: dict[str, Any] = {"package": name, "version": version, "marker": marker or None}
        if "skip_reason" not in dep and dep.get("version", "").split("+")[0] == public:
            entry.update(source="pip-audit (PyPI, this release)", audited="yes",
                         findings=[{"id": v["id"], "aliases": v.get("aliases", []),
                                    "fix_versions": v.get("fix_versions", []),
                                    "summary": (v.get("description") or "")[:300]} for v in dep.get("vulns", [])])
        else:
            doc = project_document(name)
            if doc is None:
                entry.update(source="none (PyPI unreachable)", audited="no", findings=[],
                             note=dep.get("skip_reason", "not in pip-audit's report"))
            else:
                latest = doc["info"]["version"]
                entry.update(source="PyPI project JSON (vulnerabilities of the latest release)", latest=latest,
                             findings=vulns_of(doc))
                if latest == public:
                    entry["audited"] = "yes"
                else:
                    entry["audited"] = "partial"
                    entry["note"] = (f"the pin is not the latest release ({latest}); PyPI's per-release data was not "
                                     "served here, so vulnerabilities fixed between the pin and the latest release "
                                     "are not seen")
        packages.append(entry)
    deps = report.get("dependencies", [])
    skipped = [d["skip_reason"] for d in deps if "skip_reason" in d]
    return {"lock": f"requirements/{lock}.lock",
            "pip_audit": {"answered": len(deps) - len(skipped), "skipped": len(skipped),
                          "skip_reason_example": skipped[0] if skipped else None},
            "packages": packages}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tool", required=True, help="the auditing tool and its version")
    parser.add_argument("--report", action="append", required=True, metavar="LOCK=PATH",
                        help="pip-audit JSON report of requirements/LOCK.lock")
    parser.add_argument("--out", type=Path, default=OUT)
    args = parser.parse_args()
    decisions = json.loads(DECISIONS.read_text()) if DECISIONS.exists() else {}
    not_applicable: dict[str, str] = decisions.get("not_applicable", {})
    locks = []
    for item in args.report:
        lock, path = item.split("=", 1)
        report = json.loads(Path(path).read_text()) if Path(path).stat().st_size else {}
        locks.append(audit_lock(lock, report))
    unexplained = []
    for lock in locks:
        for pkg in lock["packages"]:
            for f in pkg["findings"]:
                why = next((not_applicable[i] for i in [f["id"], *f["aliases"]] if i in not_applicable), None)
                f["decision"] = {"not_applicable": why} if why else {"unresolved": "no fix applied, no explanation"}
                if not why:
                    unexplained.append(f"{pkg['package']}=={pkg['version']} {f['id']} (fix: {f['fix_versions']})")
    counts = {lock["lock"]: {k: sum(p["audited"] == k for p in lock["packages"]) for k in ("yes", "partial", "no")}
              for lock in locks}
    doc = {
        "tool": args.tool,
        "vulnerability_service": "PyPI (pip-audit --vulnerability-service pypi; project-level JSON where the "
                                 "per-release answer was not served)",
        "date": dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "command": "scripts/audit.sh",
        "audited_packages": counts,
        "sources": {src: sum(p["source"] == src for lock in locks for p in lock["packages"])
                    for src in sorted({p["source"] for lock in locks for p in lock["packages"]})},
        "findings": sum(len(p["findings"]) for lock in locks for p in lock["packages"]),
        "unresolved": unexplained,
        "fixed": decisions.get("fixed", []),
        "locks": locks,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=args.out.parent, prefix=f".{args.out.name}.")
    with os.fdopen(fd, "w") as f:
        json.dump(doc, f, indent=1)
        f.write("\n")
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, args.out)
    print(f"{args.out}: {doc['findings']} findings, {len(unexplained)} unresolved; audited {counts}", file=sys.stderr)
    for u in unexplained:
        print(f"  unresolved: {u}", file=sys.stderr)
    return 1 if unexplained else 0


if __name__ == "__main__":
    sys.exit(main())
