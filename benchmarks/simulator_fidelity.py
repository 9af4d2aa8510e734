"""Amplitude fidelity of ``model.simulator``: the global data minimum and maximum over the simulated gathers of
all 5,000 real FlatVel-A training models, and of all 5,000 CurveVel-A ones, against OpenFWI's published extremes
(``seisbind.acquisition.FAMILY_DATA_RANGE``); each must lie within 15 % (DESIGN section 2).

    python benchmarks/simulator_fidelity.py [--openfwi-dir DIR] [--cache DIR] [--no-simulate]

The gathers are read from the simulation cache ``.cache/openfwi_vel/<family>/train`` (OpenFWI layout) when it is
complete; otherwise they are simulated into it first (resumable, ``model.simulate.simulate_dataset``), unless
``--no-simulate``. Writes ``benchmarks/results/simulator_fidelity.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Sequence
from pathlib import Path

import numpy as np

try:
    from _common import REPO, write_result
except ImportError:  # run as ``python -m benchmarks.simulator_fidelity``
    from benchmarks._common import REPO, write_result

from seisbind.acquisition import FAMILY_DATA_RANGE
from seisbind.openfwi import (
    CHUNK_SIZE, chunk_counts, chunk_is_complete, open_dataset, read_models,
)

FAMILIES = {"flatvel-a": "flatvel_a", "curvevel-a": "curvevel_a"}
"""Benchmark family name -> folder name of the real models and of the cache."""
TOLERANCE = 0.15
MODELS_PER_FAMILY = 5000
ROWS_PER_READ = 50


def default_openfwi_dir() -> Path:
    env = os.environ.get("SEISBIND_OPENFWI_DIR")
    return Path(env) if env else REPO.parent / "shared" / "data" / "openfwi"


def cache_is_complete(folder: Path, total: int) -> bool:
    """Whether every chunk of a ``total``-sample OpenFWI-layout dataset is present and complete."""
    counts = chunk_counts(total, CHUNK_SIZE)
    return all(chunk_is_complete(folder, c, n) for c, n in enumerate(counts, start=1))


def data_extremes(folder: Path, zip_path: Path) -> tuple[float, float, int]:
    """(min, max, models) over all gathers of a cached dataset, after checking that its velocity models are the
    real ones of ``zip_path``, in order."""
    ds = open_dataset(folder)
    real = read_models(zip_path).array()
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
    p.add_argument("--cache", type=Path, default=REPO / ".cache" / "openfwi_vel", help="simulation cache root")
    p.add_argument("--no-simulate", dest="simulate", action="store_false",
                   help="fail instead of simulating when a cache is incomplete")
    p.add_argument("--device", default="cpu", help="device for simulating a missing cache")
    p.add_argument("--no-write", dest="write", action="store_false", help="print only, write no result file")
    return p.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> dict[str, object]:
    args = parse_args(argv)
    figures: dict[str, object] = {}
    for name, folder in FAMILIES.items():
        zip_path = args.openfwi_dir / folder / "train_vmodel.zip"
        if not zip_path.is_file():
            sys.exit(f"error: {zip_path}: real {name} models not found (set --openfwi-dir or SEISBIND_OPENFWI_DIR)")
        cache = args.cache / folder / "train"
        if not cache_is_complete(cache, MODELS_PER_FAMILY):
            if not args.simulate:
                sys.exit(f"error: {cache}: simulation cache incomplete (run without --no-simulate to fill it)")
            from model.simulate import simulate_dataset

            simulate_dataset(cache, models=zip_path, device=args.device)
        figures[name] = family_report(name, *data_extremes(cache, zip_path))
    figures["tolerance"] = TOLERANCE
    figures["pass"] = all(figures[n]["pass"] for n in FAMILIES)  # type: ignore[index]
    print(json.dumps(figures, indent=1))
    if args.write:
        print(f"wrote {write_result('simulator_fidelity', figures)}")
    return figures


if __name__ == "__main__":
    main()
