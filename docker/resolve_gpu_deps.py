"""Does the GPU serving image's dependency set resolve, for the image's CUDA? Checked without a GPU or Docker:
``pip install --dry-run`` of the project's dependencies plus its ``gpu`` extra (onnxruntime-gpu, faiss-gpu-cu12),
binary wheels only, for the image's platform (linux x86_64, manylinux up to the base image's glibc) and Python;
then the CUDA major version the resolved onnxruntime-gpu wheel was built for (read from the wheel on the index,
``onnxruntime/capi/build_and_package_info.py``, by HTTP range requests) and faiss-gpu's (its ``-cuNN`` name) must
both be the base image's.

    python docker/resolve_gpu_deps.py [--python-version 3.12] [--glibc 2.39] [--cuda-major 12]

Writes ``benchmarks/results/gpu_dependencies.json`` (resolved packages, versions, wheel files, CUDA versions) and
exits non-zero when pip cannot resolve the set or the CUDA versions disagree. Needs the package index (network);
the test that runs it is opt-in. The defaults match docker/Dockerfile.gpu's base,
nvidia/cuda:12.8.1-cudnn-runtime-ubuntu24.04 (CUDA 12, Python 3.12, glibc 2.39).
"""

from __future__ import annotations

import argparse
import io
import json
import re
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path
from typing import Any

import httpx
import tomllib

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


class RemoteFile(io.RawIOBase):
    """A read-only, seekable view of a file on an HTTP server that honours Range requests (a wheel on the index),
    so that zipfile can read one member without downloading the whole wheel."""

    def __init__(self, client: httpx.Client, url: str) -> None:
        self.client, self.url, self.pos = client, url, 0
        self.size = int(client.head(url).raise_for_status().headers["content-length"])

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self.pos

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        self.pos = {io.SEEK_SET: 0, io.SEEK_CUR: self.pos, io.SEEK_END: self.size}[whence] + offset
        return self.pos

    def readinto(self, buffer: Any) -> int:
        n = min(len(buffer), self.size - self.pos)
        if n <= 0:
            return 0
        r = self.client.get(self.url, headers={"Range": f"bytes={self.pos}-{self.pos + n - 1}"}).raise_for_status()
        data = r.content[:n]
        buffer[:len(data)] = data
        self.pos += len(data)
        return len(data)


def onnxruntime_cuda_version(wheel_url: str) -> str | None:
    """The CUDA version an onnxruntime-gpu wheel was built for (e.g. "12.8"), or None if the wheel does not say."""
    with httpx.Client(timeout=120, follow_redirects=True) as client:
        wheel = zipfile.ZipFile(io.BufferedReader(RemoteFile(client, wheel_url), buffer_size=1 << 16))
        try:
            info = wheel.read("onnxruntime/capi/build_and_package_info.py").decode()
        except KeyError:
            return None
    match = re.search(r"cuda_version\s*=\s*['\"]([\d.]+)['\"]", info)
    return match.group(1) if match else None


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
    urls = {i["metadata"]["name"].lower(): i["download_info"]["url"] for i in installs}
    wheels = {name: url.rsplit("/", 1)[-1] for name, url in urls.items()}
    missing = [p for p in GPU_PACKAGES if p not in resolved]
    return {"ok": not missing, "resolved": resolved, "wheels": wheels, "urls": urls,
            "pip_output": f"resolved, but without {missing}" if missing else ""}


def cuda_versions(result: dict[str, Any]) -> dict[str, str | None]:
    """CUDA version of each resolved GPU package: onnxruntime-gpu's from its wheel, faiss-gpu-cuNN's from its name."""
    out: dict[str, str | None] = {}
    for name, url in result["urls"].items():
        if name == "onnxruntime-gpu":
            out[name] = onnxruntime_cuda_version(url)
        elif (m := re.fullmatch(r"faiss-gpu-cu(\d+)", name)):
            out[name] = m.group(1)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--python-version", default="3.12", help="Python of the GPU image (default 3.12)")
    parser.add_argument("--glibc", default="2.39", help="glibc of the GPU image's base (default 2.39)")
    parser.add_argument("--cuda-major", default="12", help="CUDA major version of the GPU image's base (default 12)")
    parser.add_argument("--no-write", action="store_true", help="print the result, write no file")
    args = parser.parse_args(argv)
    requirements = gpu_requirements()
    result = resolve(requirements, args.python_version, args.glibc)
    cuda = cuda_versions(result) if result["ok"] else {}
    wrong = {p: v for p, v in cuda.items() if v is None or v.split(".")[0] != args.cuda_major}
    if result["ok"] and (wrong or set(cuda) != set(GPU_PACKAGES)):
        result["ok"] = False
        result["pip_output"] = (f"resolved, but built for another CUDA than the base image's {args.cuda_major}: "
                                f"{wrong or cuda}; pin the gpu extra in pyproject.toml to CUDA "
                                f"{args.cuda_major} builds")
    figures = {"ok": result["ok"], "python_version": args.python_version, "glibc": args.glibc,
               "cuda_major": args.cuda_major, "cuda_versions": cuda,
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
    print(" ".join(f"{p}=={v} (CUDA {cuda[p]})" for p, v in figures["gpu_packages"].items()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
