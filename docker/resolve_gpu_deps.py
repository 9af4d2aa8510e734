"""Does the GPU serving image's dependency set resolve? Checked without a GPU or Docker: ``pip install --dry-run``
of the project's dependencies plus its ``gpu`` extra (onnxruntime-gpu, faiss-gpu-cu12), binary wheels only, for
the image's platform (linux x86_64, manylinux up to the CUDA base image's glibc) and Python.

    python docker/resolve_gpu_deps.py [--python-version 3.12] [--glibc 2.39]

Writes ``benchmarks/results/gpu_dependencies.json`` (the resolved packages, versions and wheel files) and exits
non-zero when pip cannot resolve the set. Needs the package index (network); the test that runs it is opt-in.
The defaults match docker/Dockerfile.gpu's base, nvidia/cuda:12.6.3-cudnn-runtime-ubuntu24.04 (Python 3.12,
glibc 2.39).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import tomllib
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
GPU_PACKAGES = ("onnxruntime-gpu", "faiss-gpu-cu12")
"""What the GPU image needs beyond the CPU one (the ``gpu`` extra)."""


def gpu_requirements(pyproject: Path = REPO / "pyproject.toml") -> list[str]:
    """The project's dependencies plus its ``gpu`` extra, as requirement strings."""
    project = tomllib.loads(pyproject.read_text())["project"]
    extra = project.get("optional-dependencies", {}).get("gpu")
    if not extra:
        raise ValueError(f"{pyproject}: no [project.optional-dependencies] gpu extra")
    return list(project["dependencies"]) + list(extra)


def manylinux_platforms(glibc: str) -> list[str]:
    """pip --platform tags a linux x86_64 system with this glibc accepts (pip does not expand them itself)."""
    major, minor = (int(x) for x in glibc.split("."))
    if major != 2 or minor < 17:
        raise ValueError(f"--glibc {glibc}: expected 2.17 or later")
    return [f"manylinux_2_{m}_x86_64" for m in range(minor, 16, -1)] + ["manylinux2014_x86_64"]


def resolve(requirements: list[str], python_version: str, glibc: str) -> dict[str, Any]:
    """Run the pip dry run; returns {"ok", "resolved": {name: version}, "wheels": {name: file}, "pip_output"}."""
    with tempfile.TemporaryDirectory() as tmp:
        report = Path(tmp) / "report.json"
        cmd = [sys.executable, "-m", "pip", "install", "--dry-run", "--ignore-installed", "--only-binary=:all:",
               "--python-version", python_version, "--implementation", "cp", "--quiet", "--report", str(report)]
        for tag in manylinux_platforms(glibc):
            cmd += ["--platform", tag]
        proc = subprocess.run(cmd + requirements, capture_output=True, text=True, timeout=900)
        if proc.returncode or not report.is_file():
            return {"ok": False, "resolved": {}, "wheels": {}, "pip_output": (proc.stdout + proc.stderr)[-4000:]}
        installs = json.loads(report.read_text())["install"]
    resolved = {i["metadata"]["name"].lower(): i["metadata"]["version"] for i in installs}
    wheels = {i["metadata"]["name"].lower(): i["download_info"]["url"].rsplit("/", 1)[-1] for i in installs}
    missing = [p for p in GPU_PACKAGES if p not in resolved]
    return {"ok": not missing, "resolved": resolved, "wheels": wheels,
            "pip_output": f"resolved, but without {missing}" if missing else ""}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--python-version", default="3.12", help="Python of the GPU image (default 3.12)")
    parser.add_argument("--glibc", default="2.39", help="glibc of the GPU image's base (default 2.39)")
    parser.add_argument("--no-write", action="store_true", help="print the result, write no file")
    args = parser.parse_args(argv)
    requirements = gpu_requirements()
    result = resolve(requirements, args.python_version, args.glibc)
    figures = {"ok": result["ok"], "python_version": args.python_version, "glibc": args.glibc,
               "platforms": manylinux_platforms(args.glibc), "requirements": requirements,
               "gpu_packages": {p: result["resolved"].get(p) for p in GPU_PACKAGES},
               "resolved": result["resolved"], "wheels": result["wheels"], "pip_output": result["pip_output"]}
    if args.no_write:
        print(json.dumps(figures, indent=1))
    else:
        sys.path.insert(0, str(REPO))
        from benchmarks._common import write_result

        print(write_result("gpu_dependencies", figures))
    if not result["ok"]:
        print(f"GPU dependencies do not resolve:\n{result['pip_output']}", file=sys.stderr)
        return 1
    print(" ".join(f"{p}=={v}" for p, v in figures["gpu_packages"].items()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
