"""Shared helpers of the benchmark scripts (DESIGN section 8): timing statistics and result files.

Standard library only (plus the torch-free ``seisbind.bundle``), so that every benchmark can use it, the
serving ones included; torch is imported lazily, only to name a GPU, and only where it is installed.
"""

from __future__ import annotations

import datetime as dt
import importlib.util
import os
import platform
import statistics
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from seisbind.bundle import write_json_atomic

REPO = Path(__file__).resolve().parents[1]
RESULTS_DIR = REPO / "benchmarks" / "results"


def timing_summary(seconds: Sequence[float]) -> dict[str, float]:
    """Median, min and max of repeated timings (s)."""
    if not seconds:
        raise ValueError("timing_summary: no timings given")
    return {"median": statistics.median(seconds), "min": min(seconds), "max": max(seconds), "runs": len(seconds)}


def cpu_model() -> str:
    """The CPU model name from /proc/cpuinfo, else what the platform module reports."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def gpu_name() -> str | None:
    """Name of the first CUDA device if torch is installed and sees one, else None."""
    if importlib.util.find_spec("torch") is None:
        return None
    import torch

    return torch.cuda.get_device_name(0) if torch.cuda.is_available() else None


def git_commit() -> str | None:
    """HEAD of the repository, with "-dirty" appended when tracked files differ from it; None outside git."""
    try:
        head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO, capture_output=True, text=True, check=True)
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=REPO,
                               capture_output=True, text=True, check=True)
    except (OSError, subprocess.CalledProcessError):
        return None
    return head.stdout.strip() + ("-dirty" if dirty.stdout.strip() else "")


def machine() -> dict[str, Any]:
    """CPU model, logical cores (and those this process may use), GPU or None."""
    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return {"cpu": cpu_model(), "cores": os.cpu_count(), "usable_cores": usable, "gpu": gpu_name(),
            "python": platform.python_version()}


def write_result(name: str, figures: dict[str, Any]) -> Path:
    """Write ``benchmarks/results/<name>.json``: the figures plus command, git commit, machine and UTC date.

    The file is written atomically (temporary file, fsync, rename). Returns its path.
    """
    if not name or "/" in name or name.startswith("."):
        raise ValueError(f"result name {name!r}: expected a plain file stem such as 'simulator_speed'")
    doc = dict(figures)
    doc.update({
        "command": " ".join(sys.argv),
        "git_commit": git_commit(),
        "machine": machine(),
        "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
    })
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    path = RESULTS_DIR / f"{name}.json"
    write_json_atomic(path, doc)
    return path
