"""The learned refiner, trained and measured in one run: ``seisbind train-refiner`` on training pairs with a fixed
time budget, then the held-out MAE of the retrieved top-1, of the similarity-weighted top-k mean and of the refiner
(neighbours from a bank of the training models only), and the exported ONNX refiner's milliseconds per gather at
batch 1 on one thread (ONNX Runtime, as the service runs it).

    python -m benchmarks.refiner --data DIR --data DIR --encoders BUNDLE [--workdir runs/refiner_bench]
        [--budget-min 12] [--threads 2] [--k 5] [--val-fraction 0.1]
    python -m benchmarks.refiner --smoke     # 16 simulated synthetic pairs, an untrained bundle; a temporary folder

Writes ``benchmarks/results/refiner_training.json``. Run it under ``flock /tmp/seisbind-cpu.lock`` on a shared
machine. Times are medians with min/max; the MAE figures are what to compare.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from benchmarks._common import SMOKE_DIR, add_output_args, timing_summary, write_result

TARGET_MS_PER_GATHER = 20.0


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", action="append", type=Path, default=[], help="paired OpenFWI folder (repeat)")
    p.add_argument("--encoders", type=Path, help="encoder bundle that retrieves the neighbours (read only)")
    p.add_argument("--workdir", type=Path, default=Path("runs/refiner_bench"),
                   help="holds the refiner run and the new bundle (rerun to resume a finished run)")
    p.add_argument("--budget-min", type=float, default=12.0, help="training time budget, minutes")
    p.add_argument("--threads", type=int, default=2, help="threads for training")
    p.add_argument("--k", type=int, default=20, help="neighbours per query")
    p.add_argument("--migrated-channels", type=int, default=None,
                   help="features per shot of the migration branch (0: off; default RefinerConfig's)")
    p.add_argument("--baseline-migrated-channels", type=int, default=None,
                   help="also train, with the same data, budget and seed, a refiner with this many migrated features "
                        "per shot (0: the network without the migration branch) and report it under 'baseline'")
    p.add_argument("--val-fraction", type=float, default=0.1)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--timing-runs", type=int, default=200, help="timed refiner calls at batch 1")
    p.add_argument("--no-write", dest="write", action="store_false", help="print only, write no result file")
    add_output_args(p)
    a = p.parse_args(argv)
    if not a.smoke and (not a.data or a.encoders is None):
        p.error("--data and --encoders are required (or --smoke)")
    return a


def smoke_inputs(work: Path) -> tuple[list[Path], Path]:
    """16 synthetic flatvel-a pairs from the project's generator and simulator, and an untrained bundle."""
    import torch

    from model.export import export_untrained_bundle
    from model.simulate import simulate_dataset

    torch.set_num_threads(2)
    data = work / "data"
    simulate_dataset(data, family="flatvel-a", count=16, seed=3, show_progress=False)
    bundle = work / "encoders"
    if not (bundle / "manifest.json").is_file():
        export_untrained_bundle(bundle, seed=0)
    return [data], bundle


def ms_per_gather(bundle: Path, runs: int, seed: int = 0) -> dict[str, float]:
    """Milliseconds per call of the bundle's refiner at batch 1 on one thread (after warm-up)."""
    import numpy as np

    from seisbind.bundle import CPU, EncoderBundle

    refiner = EncoderBundle(bundle, providers=[CPU], intra_op_threads=1).refiner
    if refiner is None:
        raise SystemExit(f"{bundle}: has no refiner")
    rng = np.random.default_rng(seed)
    g = rng.normal(0, 3, (1, 5, 1000, 70)).astype(np.float32)
    m = rng.uniform(1500, 4500, (1, refiner.k, 70, 70)).astype(np.float32)
    s = rng.uniform(0.3, 0.9, (1, refiner.k)).astype(np.float32)
    for _ in range(5):
        refiner.refine(g, m, s)
    times = []
    for _ in range(runs):
        t = time.perf_counter()
        refiner.refine(g, m, s)
        times.append((time.perf_counter() - t) * 1000)
    return timing_summary(times)


def encoder_unseen_rows(encoders: Path, data: Sequence[str], n_pairs: int) -> tuple[list[int] | None, str]:
    """Rows of the pairs the bundle's encoders held out in their own training (never trained on), when the bundle
    was trained on the same folders in the same order: (rows, why) or (None, why not)."""
    from seisbind.bundle import read_manifest
    from seisbind.provenance import portable_path

    from model.data import split_indices

    training = read_manifest(encoders).training
    folders = [d.get("folder") for d in training.get("data") or [] if isinstance(d, dict)]
    cfg = training.get("config") or {}
    if [portable_path(f) for f in folders] != [portable_path(d) for d in data] or "val_fraction" not in cfg:
        return None, "the encoders were trained on other folders (or their split is not recorded)"
    _, val = split_indices(n_pairs, float(cfg["val_fraction"]), int(cfg["seed"]))
    return val.tolist(), f"the encoders' own held-out split (val_fraction {cfg['val_fraction']}, seed {cfg['seed']})"


def held_out_figures(run: Path, encoders: Path, data: Sequence[str], n_pairs: int) -> dict[str, Any]:
    """Medians over the held-out pairs, and the same figures over those the encoders never trained on either."""
    import numpy as np

    errors = json.loads((run / "val_errors.json").read_text())
    keys = ("top1_mae_mps", "topk_mean_mae_mps", "refiner_mae_mps")
    out: dict[str, Any] = {f"val_median_{k}": float(np.median(errors[k])) for k in keys}
    rows, why = encoder_unseen_rows(encoders, data, n_pairs)
    keep = [i for i, p in enumerate(errors["pairs"]) if rows is not None and p in set(rows)]
    out["encoder_unseen"] = {"pairs": len(keep), "selection": why,
                             **{f"mean_{k}": float(np.mean([errors[k][i] for i in keep])) if keep else None
                                for k in keys},
                             **{f"median_{k}": float(np.median([errors[k][i] for i in keep])) if keep else None
                                for k in keys}}
    return out


def baseline_arm(cfg: Any, migrated_channels: int, work: Path, n_pairs: int) -> dict[str, Any]:
    """The same training (data, neighbours, budget, seed) with another migration branch, run after the main arm in
    ``work/refiner_run_baseline``: its held-out figures, for a side-by-side comparison."""
    from dataclasses import replace

    from model.refiner_train import train_refiner

    arm = replace(cfg, out=str(work / "refiner_run_baseline"),
                  model=replace(cfg.model, migrated_channels=migrated_channels))
    summary = train_refiner(arm)
    return {"migrated_channels": migrated_channels, "epochs": summary["epochs"],
            "best_epoch": summary["best_epoch"], "train_minutes": summary["train_minutes"],
            "val_top1_mae_mps": summary["top1_mae_mps"], "val_topk_mean_mae_mps": summary["topk_mean_mae_mps"],
            "val_refiner_mae_mps": summary["refiner_mae_mps"],
            **held_out_figures(Path(arm.out), Path(cfg.encoders), cfg.data, n_pairs)}


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    a = parse_args(argv)
    work = Path(tempfile.mkdtemp(prefix="refiner-", dir=SMOKE_DIR.parent)) if a.smoke else a.workdir
    work.mkdir(parents=True, exist_ok=True)
    try:
        return run(a, work)
    finally:
        if a.smoke:
            shutil.rmtree(work, ignore_errors=True)


def refiner_config(a: argparse.Namespace) -> Any:
    """The network of the command line: RefinerConfig's defaults with ``--k`` and ``--migrated-channels``."""
    from model.refiner_config import RefinerConfig

    extra = {} if a.migrated_channels is None else {"migrated_channels": a.migrated_channels}
    return RefinerConfig(k=3 if a.smoke else a.k, **extra)


def run(a: argparse.Namespace, work: Path) -> dict[str, Any]:
    """Train, export and time the refiner in ``work``; write the result file."""
    data, encoders = smoke_inputs(work) if a.smoke else (a.data, a.encoders)
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

    from seisbind.provenance import portable_path

    from model.refiner_config import RefinerTrainConfig
    from model.refiner_train import train_refiner

    cfg = RefinerTrainConfig(data=tuple(str(Path(d).resolve()) for d in data), encoders=str(Path(encoders).resolve()),
                             out=str(work / "refiner_run"), model=refiner_config(a),
                             val_fraction=0.25 if a.smoke else a.val_fraction,
                             seed=a.seed, time_budget_min=0.3 if a.smoke else a.budget_min, threads=a.threads,
                             epochs=2 if a.smoke else RefinerTrainConfig.default("epochs"))
    summary = train_refiner(cfg, str(work / "bundle"))
    timing = ms_per_gather(work / "bundle", 10 if a.smoke else a.timing_runs)
    figures = {
        "data": [portable_path(d) for d in cfg.data], "encoders": portable_path(cfg.encoders),
        "bundle_id": summary["bundle_id"], "k": cfg.model.k, "val_pairs": summary["val_pairs"],
        "train_pairs": summary["train_pairs"], "budget_min": cfg.time_budget_min, "threads": a.threads,
        "train_minutes": summary["train_minutes"], "epochs": summary["epochs"], "best_epoch": summary["best_epoch"],
        "val_top1_mae_mps": summary["top1_mae_mps"], "val_topk_mean_mae_mps": summary["topk_mean_mae_mps"],
        "val_refiner_mae_mps": summary["refiner_mae_mps"],
        "refiner_over_topk_mean": summary["refiner_mae_mps"] / summary["topk_mean_mae_mps"],
        "refiner_over_top1": summary["refiner_mae_mps"] / summary["top1_mae_mps"],
        "ms_per_gather_batch1_1thread": timing, "target_ms_per_gather": TARGET_MS_PER_GATHER,
        "parity_max_abs_mps": summary["refiner"]["parity"]["max_abs_mps"],
        "model_config": summary["refiner"]["config"],
        "augment": None if cfg.augment is None else cfg.augment.to_dict(),
        **held_out_figures(Path(cfg.out), Path(cfg.encoders), cfg.data,
                           summary["val_pairs"] + summary["train_pairs"]),
    }
    if a.baseline_migrated_channels is not None:
        figures["baseline"] = baseline_arm(cfg, a.baseline_migrated_channels, work, summary["val_pairs"]
                                           + summary["train_pairs"])
    if a.write:
        print(write_result("refiner_training", figures, a.out, smoke=a.smoke))
    else:
        print(json.dumps(figures, indent=1))
    return figures


if __name__ == "__main__":
    main()
