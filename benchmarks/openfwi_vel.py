"""Benchmark ``openfwi-vel`` (docs/evaluation.md, docs/benchmarks.md): real FlatVel-A and CurveVel-A velocity
models with simulated gathers; train on the 10,000 training pairs within a time budget on this machine's CPUs,
evaluate on the 2,000 test models as one gallery (P1, P1-large, P2), and the ablation lambda2 = 0 against
lambda2 = 0.1 with a matched (shorter) budget. Writes ``benchmarks/results/retrieval_openfwi_vel.json``.

Simulated data are cached in ``.cache/openfwi_vel/<family>/<split>`` (only missing chunks are simulated); runs,
the exported bundle and the reports go to ``.cache/openfwi_vel/{runs,bundle,reports}``. Every stage resumes:
rerunning the command after an interruption continues the training where it stopped and skips finished work.
OpenMP's wait policy is left to the environment (recorded in the result): on a machine whose cores other busy
processes share, ``OMP_WAIT_POLICY=PASSIVE`` avoids spinning threads; on dedicated cores it makes the simulation
several times slower.

Run from the repository root:
    python -m benchmarks.openfwi_vel                       # full: 90 min headline + 2 x 25 min ablation
    python -m benchmarks.openfwi_vel --budget-min 40 --ablation-budget-min 0   # headline only (keeps the
                                                           # result file's earlier ablation, marked as such)
    python -m benchmarks.openfwi_vel --budget-min 2 --ablation-budget-min 1 --train-chunks 1 --test-chunks 1 \\
        --work /tmp/openfwi_vel_check --no-write          # quick end-to-end check
    python -m benchmarks.openfwi_vel --smoke               # about a minute: 24 + 8 models per family
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path

from benchmarks._common import (
    REPO,
    RESULTS_DIR,
    add_output_args,
    default_openfwi_dir,
    simulate_first_models,
    write_result,
)
from model.config import ARCHITECTURES, AugmentConfig, TrainConfig

FAMILIES = ("flatvel_a", "curvevel_a")
SMOKE_MODELS = {"train": 24, "test": 8}
"""Real models per family and split that ``--smoke`` simulates (the first ones of each zip)."""


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--openfwi-dir", type=Path,
                   default=default_openfwi_dir(),
                   help="folder with <family>/{train,test}_vmodel.zip (real OpenFWI velocity models)")
    p.add_argument("--cache", type=Path, default=None,
                   help="simulated data: <cache>/<family>/<split> (OpenFWI layout; default .cache/openfwi_vel, with "
                        "--smoke a temporary folder)")
    p.add_argument("--work", type=Path, default=None, help="runs, bundle and reports (default: the cache folder)")
    p.add_argument("--budget-min", type=float, default=90.0, help="headline training budget, minutes (<= 90)")
    p.add_argument("--ablation-budget-min", type=float, default=25.0,
                   help="budget of each ablation arm (lambda2 = 0 and 0.1), minutes; 0 skips the ablation")
    p.add_argument("--epochs", type=int, default=200, help="upper bound on epochs (the budget normally ends training)")
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--scale-lr-mult", type=float, default=1.0, help="learning-rate multiplier of the logit scales")
    p.add_argument("--soft-tau-mps", type=float, default=50.0,
                   help="soft seismic-velocity positives: softmax(-MAE/tau) over the batch's models; 0 = one-hot")
    p.add_argument("--neighbour-group", type=int, default=TrainConfig.default("neighbour_group"),
                   help="batches of groups of this many similar models (hard negatives; 1: random batches)")
    p.add_argument("--snr-db", type=float, nargs=2, metavar=("LOW", "HIGH"),
                   default=AugmentConfig().snr_db, help="range of the training noise's SNR, dB")
    p.add_argument("--mute-traces", type=int, nargs=2, metavar=("LOW", "HIGH"),
                   default=AugmentConfig().mute_traces, help="range of muted traces per shot of a muted gather")
    p.add_argument("--clean-p", type=float, default=AugmentConfig().clean_p,
                   help="probability that a training gather is left unperturbed (model.config.AugmentConfig)")
    p.add_argument("--shared-scale", action="store_true",
                   help="one logit scale for both pairs (default: velocity-physics has its own)")
    p.add_argument("--arch", choices=tuple(ARCHITECTURES), default="default",
                   help="architecture: ModelConfig.named(ARCH) (model/config.py: default, medium, narrow)")
    p.add_argument("--threads", type=int, default=2, help="torch threads (the machine's 2 cores)")
    p.add_argument("--train-chunks", type=int, default=None,
                   help="use only the first N 500-pair chunks of each training folder (quick checks)")
    p.add_argument("--test-chunks", type=int, default=None, help="likewise for the test folders")
    p.add_argument("--no-simulate", action="store_true", help="fail instead of simulating missing chunks")
    p.add_argument("--no-write", action="store_true", help="print the figures without writing the result file")
    p.add_argument("--name", default="retrieval_openfwi_vel", help="result file stem under benchmarks/results")
    p.add_argument("--rerun-lambda2-0", action="store_true",
                   help="train and evaluate only the ablation's lambda2 = 0 arm again (its run folder must be gone) "
                        "and put it into the existing result file, e.g. after other work took cores from it")
    add_output_args(p)
    args = p.parse_args(argv)
    if args.smoke:
        args.budget_min, args.ablation_budget_min, args.epochs, args.batch_size = 0.25, 0.1, 1, 16
        args.train_chunks = args.test_chunks = None
    return args


ARGS = parse_args() if __name__ == "__main__" else None
if ARGS is not None:  # before torch starts its thread pools (the wait policy is the user's: see the docstring)
    os.environ.setdefault("OMP_NUM_THREADS", str(ARGS.threads))

import json  # noqa: E402
import time  # noqa: E402
from typing import Any  # noqa: E402

from seisbind.openfwi import CHUNK_SIZE, OpenFWIError, chunk_counts, chunk_is_complete, chunk_paths  # noqa: E402
from seisbind.provenance import portable_path  # noqa: E402


def simulated_folder(args: argparse.Namespace, family: str, split: str) -> Path:
    """The cached simulation of one family/split, simulating missing chunks first (resumable, skips finished)."""
    out = args.cache / family / split
    src = args.openfwi_dir / family / f"{split}_vmodel.zip"
    meta = out / "seisbind_dataset.json"
    total = json.loads(meta.read_text())["count"] if meta.is_file() else None
    if total is not None:
        counts = chunk_counts(total, CHUNK_SIZE)
        limit = args.train_chunks if split == "train" else args.test_chunks
        want = range(1, min(len(counts), limit or len(counts)) + 1)
        if all(chunk_is_complete(out, c, counts[c - 1]) for c in want):
            return out
    if args.no_simulate:
        raise OpenFWIError(f"{out}: simulation incomplete and --no-simulate given")
    if not src.is_file():
        raise OpenFWIError(f"{src}: real OpenFWI models not found (set --openfwi-dir or SEISBIND_OPENFWI_DIR)")
    print(f"simulating missing chunks of {out}", file=sys.stderr, flush=True)
    if args.smoke:
        return simulate_first_models(out, src, SMOKE_MODELS[split])
    from model.simulate import simulate_dataset

    simulate_dataset(out, models=src)
    return out


def chunk_subset(src: Path, n_chunks: int | None, dst: Path) -> Path:
    """``src`` itself, or a folder of symbolic links to its first ``n_chunks`` chunks."""
    if not n_chunks:
        return src
    for c in range(1, n_chunks + 1):
        s, d = chunk_paths(src, c), chunk_paths(dst, c)
        for a, b in ((s.data, d.data), (s.model, d.model)):
            b.parent.mkdir(parents=True, exist_ok=True)
            if not b.is_symlink():
                b.symlink_to(a.resolve())
    return dst


def run_arm(args: argparse.Namespace, name: str, train_dirs: list[Path], test_dirs: list[Path], lambda2: float,
            budget_min: float, export_to: Path | None = None) -> dict[str, Any]:
    """Train (or resume) one run within ``budget_min`` and evaluate it; returns the report plus training facts."""
    from model.checkpoint import load_checkpoint
    from model.config import ModelConfig
    from model.evaluate import evaluate, load_embedder
    from model.export import export_run
    from model.train import train

    work = args.work or args.cache
    run = work / "runs" / name
    cfg = TrainConfig(data=tuple(str(d.resolve()) for d in train_dirs), out=str(run), epochs=args.epochs,
                      batch_size=args.batch_size, seed=args.seed, lr=args.lr, lambda2=lambda2,
                      scale_lr_mult=args.scale_lr_mult, soft_tau_mps=args.soft_tau_mps,
                      neighbour_group=args.neighbour_group, time_budget_min=budget_min,
                      augment=AugmentConfig(snr_db=tuple(args.snr_db), mute_traces=tuple(args.mute_traces),
                                            clean_p=args.clean_p),
                      model=ModelConfig.named(args.arch, vp_scale=not args.shared_scale),
                      threads=args.threads, preprocess_cache=str(work / "preprocessed"), progress=not args.smoke)
    t0 = time.monotonic()
    summary = train(cfg)
    target = run
    if export_to is not None:
        export_run(run, export_to)
        target = export_to
    report = evaluate(load_embedder(target), [str(t) for t in test_dirs], [str(t) for t in train_dirs],
                      work / "reports" / name)
    report["training"] = {k: summary[k] for k in ("epochs", "steps", "train_minutes", "stopped", "precision")}
    ckpt = load_checkpoint(run)
    report["training"].update(lambda2=lambda2, budget_min=budget_min, batch_size=args.batch_size,
                              train_pairs=ckpt["train_rows"], val_pairs=ckpt["val_rows"],
                              history=ckpt["history"], wall_minutes_this_call=(time.monotonic() - t0) / 60,
                              config=portable_config(ckpt["config"]))
    for data in report.get("encoders", {}).get("data", []):  # the training folders the bundle records
        if isinstance(data, dict) and data.get("folder"):
            data["folder"] = portable_path(data["folder"])
    return report


def portable_config(config: dict[str, Any]) -> dict[str, Any]:
    """A training config as stored in a checkpoint, with its folders written relative to the repository."""
    out = dict(config)
    out["data"] = [portable_path(d) for d in config["data"]]
    for key in ("out", "preprocess_cache"):
        if out.get(key):
            out[key] = portable_path(out[key])
    return out


def rerun_lambda2_0(args: argparse.Namespace) -> dict[str, Any]:
    """The existing result file with its ablation's lambda2 = 0 arm trained and evaluated again (same budget);
    the replaced arm's headline figures are kept under ``replaced``."""
    result = json.loads(((args.out or RESULTS_DIR) / f"{args.name}.json").read_text())
    old = result["ablation_lambda2_0"]
    work = args.work or args.cache
    train_dirs = [simulated_folder(args, fam, "train") for fam in FAMILIES]
    test_dirs = [simulated_folder(args, fam, "test") for fam in FAMILIES]
    name = f"ablation_lambda2_0_{old['budget_min']:g}min"
    if (work / "runs" / name).exists():
        raise SystemExit(f"{work / 'runs' / name} exists: move it away to rerun the arm")
    arm = run_arm(args, name, train_dirs, test_dirs, 0.0, old["budget_min"])
    arm.update({"matched_lambda2_0.1": old["matched_lambda2_0.1"], "budget_min": old["budget_min"],
                "replaced": {**headline(old), "steps": old["training"]["steps"], "date": old.get("date")}})
    result["ablation_lambda2_0"] = arm
    result.setdefault("headline_run", {k: result.get(k) for k in ("command", "git_commit", "date")})
    return result


def main(args: argparse.Namespace) -> dict[str, Any]:
    if args.cache is None and args.smoke:
        with tempfile.TemporaryDirectory(prefix="seisbind-openfwi-vel-smoke-") as tmp:
            args.cache = Path(tmp)
            return main(args)
    args.cache = args.cache or REPO / ".cache" / "openfwi_vel"
    if args.rerun_lambda2_0:
        return rerun_lambda2_0(args)
    if args.budget_min > 90:
        raise SystemExit("--budget-min: the benchmark allows at most 90 minutes of training")
    work = args.work or args.cache
    train_dirs, test_dirs = [], []
    for fam in FAMILIES:
        tr, te = simulated_folder(args, fam, "train"), simulated_folder(args, fam, "test")
        train_dirs.append(chunk_subset(tr, args.train_chunks, work / "subsets" / fam / "train"))
        test_dirs.append(chunk_subset(te, args.test_chunks, work / "subsets" / fam / "test"))
    result = run_arm(args, f"main_{args.budget_min:g}min", train_dirs, test_dirs, 0.1, args.budget_min,
                     export_to=work / "bundle")
    result["bundle"] = portable_path(work / "bundle")
    result["omp"] = {var: os.environ.get(var) for var in ("OMP_NUM_THREADS", "OMP_WAIT_POLICY")}
    if args.ablation_budget_min > 0:
        arms = {lam: run_arm(args, f"ablation_lambda2_{lam:g}_{args.ablation_budget_min:g}min", train_dirs,
                             test_dirs, lam, args.ablation_budget_min)
                for lam in (0.0, 0.1)}
        ablation = dict(arms[0.0])
        ablation["matched_lambda2_0.1"] = arms[0.1]
        ablation["budget_min"] = args.ablation_budget_min
        result["ablation_lambda2_0"] = ablation
    else:
        carry_over_ablation(args, result)
    return result


def carry_over_ablation(args: argparse.Namespace, result: dict[str, Any]) -> None:
    """Without an ablation in this run, keep the one of the existing result file, marked as an earlier run's."""
    old_path = (args.out or RESULTS_DIR) / f"{args.name}.json"
    if args.smoke or not old_path.is_file():
        return
    old = json.loads(old_path.read_text())
    if "ablation_lambda2_0" in old:
        result["ablation_lambda2_0"] = old["ablation_lambda2_0"]
        if "carried_over" in old["ablation_lambda2_0"]:  # already an earlier run's: keep where it came from
            return
        result["ablation_lambda2_0"]["carried_over"] = {
            "note": "not rerun with this headline run; from the earlier run below",
            "headline_run": old.get("headline_run") or {k: old.get(k) for k in ("command", "git_commit", "date")},
            "machine": old.get("machine")}


def headline(r: dict[str, Any]) -> dict[str, Any]:
    p1, big, p2 = r["p1"], r["p1_large"], r["p2"]
    return {"p1_sv": {k: p1["seismic_to_velocity"][k] for k in ("R@1", "R@5", "R@10")},
            "p1_vp": {k: p1["velocity_to_physics"][k] for k in ("R@1", "R@5", "R@10")},
            "p1_large_sv_R@1": big["seismic_to_velocity"]["R@1"], "gallery": p1["gallery_size"],
            "p2_mre": p2["descriptor_mre"], "p2_top1_mae": p2["top1_mae_mps"], "train_minutes": r["train_minutes"]}


if __name__ == "__main__":
    assert ARGS is not None
    res = main(ARGS)
    heads = {"main": headline(res)}
    if "ablation_lambda2_0" in res:
        heads["ablation_lambda2_0"] = headline(res["ablation_lambda2_0"])
        heads["ablation_lambda2_0.1"] = headline(res["ablation_lambda2_0"]["matched_lambda2_0.1"])
    print(json.dumps(heads, indent=1))
    if not ARGS.no_write:
        print(write_result(ARGS.name, res, ARGS.out, ARGS.smoke))
