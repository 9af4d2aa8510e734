"""Shared helpers of the benchmark scripts (docs/benchmarks.md): timing statistics, result files and the options
every script has (``--smoke``, ``--out``).

Standard library plus the ground package ``seisbind``, so that every benchmark can use it, the serving ones
included. Importing it loads neither numpy nor torch (a script may set thread counts before numpy starts): torch
is imported lazily, only to name a GPU and only where it is installed, and numpy only to write a result.
"""

from __future__ import annotations

import argparse
import datetime as dt
import importlib.util
import os
import platform
import shlex
import statistics
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from seisbind.cores import usable_cores
from seisbind.provenance import git_commit, portable_path

REPO = Path(__file__).resolve().parents[1]
RESULTS_DIR = REPO / "benchmarks" / "results"
SMOKE_DIR = Path(tempfile.gettempdir()) / "seisbind-benchmark-smoke"
"""Where ``--smoke`` runs write their result files unless ``--out`` is given (never ``RESULTS_DIR``)."""


def default_openfwi_dir() -> Path:
    """The real OpenFWI models: ``SEISBIND_OPENFWI_DIR``, else ``../shared/data/openfwi`` beside the repository."""
    env = os.environ.get("SEISBIND_OPENFWI_DIR")
    return Path(env) if env else REPO.parent / "shared" / "data" / "openfwi"


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


def machine() -> dict[str, Any]:
    """CPU model, logical cores (and those this process may use), GPU or None."""
    return {"cpu": cpu_model(), "cores": os.cpu_count(), "usable_cores": usable_cores(), "gpu": gpu_name(),
            "python": platform.python_version()}


def add_output_args(p: argparse.ArgumentParser) -> None:
    """The options every benchmark script has: ``--smoke`` and ``--out``."""
    p.add_argument("--smoke", action="store_true",
                   help="check that the script runs: tiny sizes, seconds to a minute; the figures mean nothing and go "
                        f"to --out (default {SMOKE_DIR}), never to benchmarks/results")
    p.add_argument("--out", type=Path, default=None,
                   help="folder of the result file (default: benchmarks/results; with --smoke a temporary folder)")


def benchmark_command(argv: Sequence[str] | None = None) -> str:
    """The command that ran this benchmark, e.g. ``python -m benchmarks.index --stress``, with absolute paths among
    its arguments written relative to the repository."""
    argv = list(sys.argv if argv is None else argv)
    spec = getattr(sys.modules.get("__main__"), "__spec__", None)
    head = ["python", "-m", spec.name] if spec is not None and spec.name else ["python", portable_path(argv[0])]
    return shlex.join(head + [_portable_arg(a) for a in argv[1:]])


def _portable_arg(arg: str) -> str:
    name, eq, value = arg.partition("=") if arg.startswith("--") else ("", "", arg)
    return name + eq + (portable_path(value) if os.path.isabs(value) else value)


def simulate_first_models(out: Path, models_zip: Path, count: int, device: str = "cpu") -> Path:
    """Simulate the first ``count`` real velocity models of ``models_zip`` into ``out`` (OpenFWI layout, resumable):
    the small datasets of smoke runs. The selected models are kept beside ``out`` as ``<out>.models.npy``."""
    from seisbind.files import save_npy_atomic
    from seisbind.openfwi import read_models

    from model.simulate import simulate_dataset  # torch

    subset = out.parent / f"{out.name}.models.npy"
    if not subset.is_file():
        save_npy_atomic(subset, read_models(models_zip).array()[:count])
    simulate_dataset(out, models=subset, device=device, show_progress=False)
    return out


def result_folder(out_dir: Path | None, smoke: bool) -> Path:
    """Where a result file goes: ``--out``, else ``SMOKE_DIR`` for a smoke run, else ``RESULTS_DIR``."""
    return Path(out_dir) if out_dir is not None else SMOKE_DIR if smoke else RESULTS_DIR


def write_result(name: str, figures: dict[str, Any], out_dir: Path | None = None, smoke: bool = False) -> Path:
    """Write ``<out_dir>/<name>.json`` (default ``benchmarks/results``): the figures plus command, git commit, machine
    and UTC date; with ``smoke`` also ``"smoke": true``, and the default folder is ``SMOKE_DIR`` (a smoke run may not
    write into ``benchmarks/results``).

    The file is written atomically (temporary file, fsync, rename). Returns its path.
    """
    from seisbind.files import write_json_atomic  # imports numpy

    if not name or "/" in name or name.startswith("."):
        raise ValueError(f"result name {name!r}: expected a plain file stem such as 'simulator_speed'")
    folder = result_folder(out_dir, smoke)
    if smoke and folder.resolve() == RESULTS_DIR.resolve():
        raise ValueError(f"--smoke results may not go to {portable_path(RESULTS_DIR)}: their figures mean nothing")
    doc = dict(figures)
    doc.update({
        "command": benchmark_command(),
        "git_commit": git_commit(),
        "machine": machine(),
        "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
    })
    if smoke:
        doc["smoke"] = True
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{name}.json"
    write_json_atomic(path, doc)
    return path


def write_section(name: str, section_name: str, section: dict[str, Any], out_dir: Path | None = None,
                  smoke: bool = False) -> Path:
    """Put ``section`` under ``section_name`` of the result file ``<out_dir>/<name>.json``: into the existing file (its
    other sections and provenance stay; the section carries its own), else a new one by :func:`write_result`."""
    import json

    from seisbind.files import write_json_atomic

    path = result_folder(out_dir, smoke) / f"{name}.json"
    if not path.exists():
        return write_result(name, {section_name: section}, out_dir, smoke=smoke)
    doc = json.loads(path.read_text())
    doc[section_name] = section
    write_json_atomic(path, doc)
    return path
