"""The amplitude law of ingest (docs/ingest.md): how the amplitude statistic of the simulator's gathers follows the
near-surface velocity measured from the direct wave, fitted on real training models and checked on test models.

Writes ``benchmarks/results/amplitude_law.json``: the fitted constant and exponent (the values written into
``seisbind/ingest/amplitude.py``), the residual spread of the law beside the spread of the statistic itself (what a
single training median leaves), the statistic's range, and how well the moveout measures the true surface velocity.
Run from the repository root:

    python -m benchmarks.amplitude_law            # 200 training + 120 test models
    python -m benchmarks.amplitude_law --smoke    # 4 + 4 models
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from seisbind.ingest.amplitude import (
    SURFACE_LAW_C,
    SURFACE_LAW_EXPONENT,
    amplitude_statistic,
    expected_statistic,
    surface_velocity,
)
from seisbind.openfwi import read_models
from seisbind.provenance import portable_path

from benchmarks._common import add_output_args, default_openfwi_dir, write_result

FAMILIES = ("flatvel_a", "curvevel_a")


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--openfwi-dir", type=Path, default=default_openfwi_dir())
    p.add_argument("--train-per-family", type=int, default=100, help="training models per family the law is fit on")
    p.add_argument("--test-per-family", type=int, default=60, help="test models per family it is checked on")
    add_output_args(p)
    args = p.parse_args(argv)
    if args.smoke:
        args.train_per_family, args.test_per_family = 2, 2
    return args


def measured(args: argparse.Namespace, split: str, count: int) -> dict[str, np.ndarray]:
    """Statistic, measured and true surface velocity of the first ``count`` models per family of ``split``."""
    import torch

    from model.simulator import simulate

    torch.set_num_threads(2)
    v = np.concatenate([np.asarray(read_models(args.openfwi_dir / f / f"{split}_vmodel.zip").array()[:count],
                                   np.float32) for f in FAMILIES])
    gathers = simulate(v)
    v0 = np.array([surface_velocity(g) or np.nan for g in gathers])
    return {"statistic": np.array([amplitude_statistic(g) for g in gathers]), "v0": v0,
            "v0_true": v[:, 0, 0, :].mean(1)}


def fit_law(stat: np.ndarray, v0: np.ndarray) -> tuple[float, float]:
    """(C, exponent) of statistic = C * v0 ** exponent, least squares in logs."""
    ok = np.isfinite(v0)
    exponent, log_c = np.polyfit(np.log(v0[ok]), np.log(stat[ok]), 1)
    return float(np.exp(log_c)), float(exponent)


def spread(log_ratio: np.ndarray) -> dict[str, float]:
    r = log_ratio[np.isfinite(log_ratio)]
    return {"std": float(r.std()), "max_abs": float(np.abs(r).max()), "n": int(len(r))}


def figures(args: argparse.Namespace) -> dict[str, Any]:
    train = measured(args, "train", args.train_per_family)
    test = measured(args, "test", args.test_per_family)
    c, exponent = fit_law(train["statistic"], train["v0"])
    predicted = np.array([expected_statistic(v) if np.isfinite(v) else np.nan for v in test["v0"]])
    median = float(np.median(train["statistic"]))
    return {
        "families": list(FAMILIES), "openfwi_dir": portable_path(args.openfwi_dir),
        "train_models": int(len(train["v0"])), "test_models": int(len(test["v0"])),
        "fit": {"C": c, "exponent": exponent},
        "in_code": {"C": SURFACE_LAW_C, "exponent": SURFACE_LAW_EXPONENT},
        "statistic_range_train": [float(train["statistic"].min()), float(train["statistic"].max())],
        "statistic_median_train": median,
        "test_log_error": {
            "law_in_code": spread(np.log(test["statistic"] / predicted)),
            "training_median": spread(np.log(test["statistic"] / median)),
        },
        "surface_velocity_relative_error_test": {
            "median": float(np.nanmedian(np.abs(test["v0"] / test["v0_true"] - 1))),
            "p90": float(np.nanpercentile(np.abs(test["v0"] / test["v0_true"] - 1), 90)),
            "not_measured": int(np.isnan(test["v0"]).sum()),
        },
    }


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    result = figures(args)
    print(json.dumps({k: result[k] for k in ("fit", "in_code", "test_log_error")}, indent=1))
    print(write_result("amplitude_law", result, args.out, args.smoke))
    return result


if __name__ == "__main__":
    main()
