"""Amplitude fidelity of ``model.simulator``: the global data minimum and maximum over the simulated gathers of
all 5,000 real FlatVel-A training models, and of all 5,000 CurveVel-A ones, against OpenFWI's published extremes
(``seisbind.acquisition.FAMILY_DATA_RANGE``); each must lie within 15 % (docs/data.md).

    python -m benchmarks.simulator_fidelity [--openfwi-dir DIR] [--cache DIR] [--no-simulate]
    python -m benchmarks.simulator_fidelity --smoke     # the first 4 models of each family, simulated afresh

The gathers are read from the simulation cache ``.cache/openfwi_vel/<family>/train`` (OpenFWI layout) when it is
complete; otherwise they are simulated into it first (resumable, ``model.simulate.simulate_dataset``), unless
``--no-simulate``. Writes ``benchmarks/results/simulator_fidelity.json``. ``--smoke`` simulates the first
``SMOKE_MODELS`` real models of each family into a temporary cache (or ``--cache``) and writes its result to a
temporary folder (or ``--out``).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from seisbind.acquisition import FAMILY_DATA_RANGE
from seisbind.openfwi import CHUNK_SIZE, chunk_counts, chunk_is_complete, open_dataset, read_models

from benchmarks._common import REPO, add_output_args, default_openfwi_dir, simulate_first_models, write_result

FAMILIES = {"flatvel-a": "flatvel_a", "curvevel-a": "curvevel_a"}
"""Benchmark family name -> folder name of the real models and of the cache."""
TOLERANCE = 0.15
MODELS_PER_FAMILY = 5000
ROWS_PER_READ = 50
SMOKE_MODELS = 4


def cache_is_complete(folder: Path, total: int) -> bool:
    """Whether every chunk of a ``total``-sample OpenFWI-layout dataset is present and complete."""
    counts = chunk_counts(total, CHUNK_SIZE)
    return all(chunk_is_complete(folder, c, n) for c, n in enumerate(counts, start=1))


def data_extremes(folder: Path, zip_path: Path, models: int = MODELS_PER_FAMILY) -> tuple[float, float, int]:
    """(min, max, models) over all gathers of a cached dataset, after checking that its velocity models are the
    first ``models`` real ones of ``zip_path``, in order."""
    ds = open_dataset(folder)
    real = read_models(zip_path).array()[:models]
    if len(ds) != len(real):
        raise ValueError(f"{folder}: holds {len(ds)} models but {zip_path} holds {len(real)}")
    cached = np.concatenate([np.asarray(m) for m in ds.models])
    if not np.array_equal(cached, real):
        raise ValueError(f"{folder}: its velocity models differ from those of {zip_path}; delete the cache")
    lo, hi = np.inf, -np.inf
    for d in ds.data:
        for s in range(0, len(d), ROWS_PER_READ):
            block = np.asarray(d[s:s + ROWS_PER_READ])
            lo, hi = min(lo, float(block.min())), max(hi, float(block.max()))
    return lo, hi, len(ds)


def simulate_first(cache: Path, zip_path: Path, models: int, device: str) -> None:
    """Simulate the first ``models`` real models of ``zip_path`` into ``cache`` (resumable)."""
    if models >= MODELS_PER_FAMILY:
        from model.simulate import simulate_dataset

        simulate_dataset(cache, models=zip_path, device=device)
    else:
        simulate_first_models(cache, zip_path, models, device)


def family_report(name: str, data_min: float, data_max: float, models: int) -> dict[str, object]:
    pub_min, pub_max = FAMILY_DATA_RANGE[name]
    dev_min = abs(data_min - pub_min) / abs(pub_min)
    dev_max = abs(data_max - pub_max) / abs(pub_max)
    return {
        "data_min": data_min, "data_max": data_max, "published_min": pub_min, "published_max": pub_max,
        "models": models, "relative_deviation_min": dev_min, "relative_deviation_max": dev_max,
        "pass": bool(dev_min <= TOLERANCE and dev_max <= TOLERANCE),
    }


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--openfwi-dir", type=Path, default=default_openfwi_dir(), help="real OpenFWI models")
    p.add_argument("--cache", type=Path, default=None,
                   help="simulation cache root (default: .cache/openfwi_vel; with --smoke a temporary folder)")
    p.add_argument("--no-simulate", dest="simulate", action="store_false",
                   help="fail instead of simulating when a cache is incomplete")
    p.add_argument("--device", default="cpu", help="device for simulating a missing cache")
    p.add_argument("--no-write", dest="write", action="store_false", help="print only, write no result file")
    add_output_args(p)
    return p.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> dict[str, object]:
    args = parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="seisbind-fidelity-smoke-") as tmp:
        cache_root = args.cache or (Path(tmp) if args.smoke else REPO / ".cache" / "openfwi_vel")
        figures = measure(args, cache_root, SMOKE_MODELS if args.smoke else MODELS_PER_FAMILY)
    print(json.dumps(figures, indent=1))
    if args.write:
        print(f"wrote {write_result('simulator_fidelity', figures, args.out, args.smoke)}")
    return figures


def measure(args: argparse.Namespace, cache_root: Path, models: int) -> dict[str, object]:
    """The report of every family, simulating missing caches first (unless --no-simulate)."""
    figures: dict[str, object] = {}
    for name, folder in FAMILIES.items():
        zip_path = args.openfwi_dir / folder / "train_vmodel.zip"
        if not zip_path.is_file():
            sys.exit(f"error: {zip_path}: real {name} models not found (set --openfwi-dir or SEISBIND_OPENFWI_DIR)")
        cache = cache_root / folder / "train"
        if not cache_is_complete(cache, models):
            if not args.simulate:
                sys.exit(f"error: {cache}: simulation cache incomplete (run without --no-simulate to fill it)")
            simulate_first(cache, zip_path, models, args.device)
        figures[name] = family_report(name, *data_extremes(cache, zip_path, models))
    figures["tolerance"] = TOLERANCE
    figures["pass"] = all(figures[n]["pass"] for n in FAMILIES)  # type: ignore[index]
    return figures


if __name__ == "__main__":
    main()
