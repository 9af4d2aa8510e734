"""The ``heldout`` section of ``benchmarks/results/retrieval_ood.json`` (docs/evaluation.md): for each held-out
family F, a bundle that never saw F is evaluated on F's test gathers: P1 within F's test models, P2 against a bank
without F, and beside every P2 figure the bank's limits (``model.evaluate.bank_limits``: the 5 bank models nearest
to the true model by pixel L2, and the bank's mean).

Two ways to get a bundle without F:

* ``--budget-min 0``: the given ``--bundle`` as it is, with the ``--bank`` folders as bank (it must not have been
  trained on F: the benchmark refuses a bundle whose training folders name F);
* ``--budget-min B --init-from RUN``: fine-tune RUN for B minutes on the ``--bank`` training folders plus
  ``--train-per-family`` simulated models of every synthetic family except F (``seisbind train --init-from``),
  export it, and use those same folders as the bank. The gathers are decimated once into the preprocessing
  cache (``--preprocess-cache``) before the clock starts, so the budget is spent on optimiser steps;
* the same with ``--include-family``: F's own simulated training models are in the mixture too. Not a held-out
  figure: the same recipe on F once it has seen F, what the held-out figure is to be read against;
* the same with ``--leave-out G ...``: families G left out of the mixture and the bank as well, to measure what
  having G in the mixture does for F (run side by side with the plain held-out fine-tune, from the same RUN).

The section is written into the existing result file (the other sections stay as they are).

    flock /tmp/seisbind-cpu.lock python -m benchmarks.ood_heldout --bundle BUNDLE --bank FOLDER [--bank ...] \\
        [--families inversion-a flatfault-a] [--test-count 1000] [--budget-min 0 | --init-from RUN --budget-min B]
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

from seisbind.provenance import git_commit, portable_path

from benchmarks._common import REPO, add_output_args, benchmark_command, result_folder, write_section

if TYPE_CHECKING:
    from model.config import TrainConfig

DEFAULT_FAMILIES = ("inversion-a", "flatfault-a")
"""A new generator (velocity inversions) and a fault family."""
TEST_SEED, TRAIN_SEED = 202, 303


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--bundle", type=Path, help="bundle evaluated as it is (--budget-min 0)")
    p.add_argument("--bank", type=Path, action="append", default=[], help="paired training folder (repeat)")
    p.add_argument("--families", nargs="+", default=list(DEFAULT_FAMILIES), help="families to hold out")
    p.add_argument("--test-count", type=int, default=1000, help="test models simulated per held-out family")
    p.add_argument("--budget-min", type=float, default=0.0, help="fine-tuning minutes per family (0: none)")
    p.add_argument("--init-from", type=Path, help="training run fine-tuned without each family")
    p.add_argument("--train-per-family", type=int, default=500, help="simulated training models per family")
    p.add_argument("--include-family", action="store_true",
                   help="fine-tune with F's own training models too (the seen-family reference, not held out)")
    p.add_argument("--leave-out", nargs="+", default=[], metavar="FAMILY",
                   help="families also left out of the fine-tuning mixture and the bank (what one family adds)")
    p.add_argument("--preprocess-cache", type=Path,
                   help="folder of decimated gathers (default WORK/preprocessed; the training run's own can be reused)")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--work", type=Path, default=REPO / ".cache" / "ood_heldout")
    p.add_argument("--section", default="heldout", help="key of the result file the figures go under")
    add_output_args(p)
    a = p.parse_args(argv)
    a.result = result_folder(a.out, a.smoke) / "retrieval_ood.json"
    if a.smoke:
        a.test_count, a.train_per_family, a.families = 24, 16, a.families[:1]
        a.work = Path(tempfile.mkdtemp(prefix="seisbind-ood-heldout-smoke-"))
    elif not a.bank or (a.budget_min > 0) != (a.init_from is not None) or (a.budget_min == 0 and not a.bundle):
        p.error("--bank is needed, and either --bundle with --budget-min 0 or --init-from with --budget-min > 0")
    if (a.include_family or a.leave_out) and a.budget_min <= 0 and not a.smoke:
        p.error("--include-family and --leave-out need fine-tuning (--init-from RUN --budget-min B)")
    from model.families import FAMILY_NAMES

    if unknown := [f for f in a.leave_out if f not in FAMILY_NAMES]:
        p.error(f"--leave-out {' '.join(unknown)}: unknown; choose among {', '.join(FAMILY_NAMES)}")
    return a


def training_folders(bundle: Path) -> list[str]:
    """The data folders a bundle's manifest says it was trained on (empty when it does not say)."""
    manifest = json.loads((bundle / "manifest.json").read_text())
    data = (manifest.get("training") or {}).get("data") or []
    return [str(d.get("folder", "")) if isinstance(d, dict) else str(d) for d in data]


def fine_tuned_bundle(a: argparse.Namespace, family: str, folders: list[Path]) -> tuple[Path, dict[str, Any]]:
    """Fine-tune ``--init-from`` on ``folders`` for ``--budget-min`` minutes (resumes) and export it."""
    from model.checkpoint import load_checkpoint
    from model.config import TrainConfig
    from model.export import export_run
    from model.train import train

    base = TrainConfig.from_dict(load_checkpoint(a.init_from)["config"])
    name = f"{'with' if a.include_family else 'without'}_{family}" + "".join(f"_{f}" for f in a.leave_out)
    run, bundle = a.work / "runs" / name, a.work / "bundles" / name
    cfg = TrainConfig(data=tuple(str(f.resolve()) for f in folders), out=str(run), time_budget_min=a.budget_min,
                      threads=a.threads, model=base.model, batch_size=base.batch_size, val_fraction=base.val_fraction,
                      init_from=str(a.init_from.resolve()), progress=False, epochs=1 if a.smoke else base.epochs,
                      preprocess_cache=str(a.preprocess_cache or a.work / "preprocessed"))
    warm_preprocess_cache(cfg)
    summary = train(cfg)
    if not (bundle / "manifest.json").exists():
        export_run(run, bundle)
    return bundle, {"init_from": portable_path(a.init_from), "budget_min": a.budget_min, "steps": summary.get("steps"),
                    "train_minutes": summary.get("train_minutes"), "folders": [f.name for f in folders],
                    "includes_family": a.include_family, "left_out": list(a.leave_out)}


def warm_preprocess_cache(cfg: TrainConfig) -> None:
    """Decimate every training gather into ``cfg.preprocess_cache`` (files already there are read, not redone), so
    that the fine-tuning budget is not spent on preprocessing."""
    from model.data import load_pairs, open_folders
    from model.encoders import SeismicFrontEnd

    front = SeismicFrontEnd(cfg.model)
    load_pairs(open_folders(cfg.data, front, cfg.preprocess_cache, linear=True), front,
               cache_dir=cfg.preprocess_cache, linear=True)


def one_family(a: argparse.Namespace, family: str) -> dict[str, Any]:
    """The held-out figures of one family."""
    from benchmarks._ood_data import simulate_family
    from model.evaluate import evaluate, onnx_embedder
    from model.families import FAMILY_NAMES

    test = simulate_family(a.work / "test" / f"{family}_n{a.test_count}_s{TEST_SEED}", family, a.test_count, TEST_SEED)
    if a.budget_min > 0:
        skip = ("flatvel-a", "curvevel-a", *a.leave_out, *(() if a.include_family else (family,)))
        others = [f for f in FAMILY_NAMES if f not in skip]
        folders = list(a.bank) + [simulate_family(a.work / "train" / f"{f}_n{a.train_per_family}_s{TRAIN_SEED}", f,
                                                  a.train_per_family, TRAIN_SEED) for f in others]
        bundle, training = fine_tuned_bundle(a, family, folders)
    else:
        seen = [d for d in training_folders(a.bundle) if family.replace("-", "_") in d.replace("-", "_")]
        if seen:
            raise SystemExit(f"{a.bundle} was trained on {family} ({seen[0]}): it cannot stand for a held-out family")
        bundle, folders, training = a.bundle, list(a.bank), {"bundle": portable_path(a.bundle), "fine_tuned": False}
    rep = evaluate(onnx_embedder(bundle, threads=a.threads), [test], folders, a.work / "reports" / family,
                   figures=False)
    lim = rep["p2_limits"]
    return {"p1": rep["p1"], "p2": rep["p2"], **lim,
            "descriptor_mre_over_oracle": rep["p2"]["descriptor_mre"] / lim["oracle_descriptor_mre"],
            "top1_mae_over_oracle": rep["p2"]["top1_mae_mps"] / lim["oracle_top1_mae_mps"],
            "consensus_mae_over_oracle": rep["p2"]["consensus"]["mae_mps"] / lim["oracle_top1_mae_mps"],
            **({"blend_descriptor_mre_over_oracle": rep["p2"]["blend"]["descriptor_mre"] / lim["oracle_descriptor_mre"]}
               if "blend" in rep["p2"] else {}),
            "test_models": a.test_count, "bank_size": rep["p2"]["bank_size"], "training": training}


def main(argv: list[str] | None = None) -> dict[str, Any]:
    a = parse_args(argv)
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    import torch

    torch.set_num_threads(a.threads)
    if a.smoke:
        smoke_setup(a)
    section: dict[str, Any] = {f: one_family(a, f) for f in a.families}
    section["setup"] = {"command": benchmark_command(), "git_commit": git_commit(),
                        "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
                        "targets": {"R@1": 0.90, "within_oracle": 1.25}}
    write_section("retrieval_ood", a.section, section, a.result.parent, smoke=a.smoke)
    print(json.dumps({f: {"R@1": v["p1"]["seismic_to_velocity"]["R@1"], "mre/oracle": v["descriptor_mre_over_oracle"],
                          "top1/oracle": v["top1_mae_over_oracle"]} for f, v in section.items() if f != "setup"}))
    return section


def smoke_setup(a: argparse.Namespace) -> None:
    """--smoke: a tiny FlatVel-A training set and a tiny run trained on it, fine-tuned without the family."""
    from benchmarks._ood_data import simulate_family
    from model.config import ModelConfig, TrainConfig
    from model.train import train

    bank = simulate_family(a.work / "bank" / "flatvel-a", "flatvel-a", 32, 1)
    run = a.work / "base_run"
    train(TrainConfig(data=(str(bank),), out=str(run), epochs=1, batch_size=8, threads=a.threads, progress=False,
                      model=ModelConfig.tiny(), val_fraction=0.0, amp="off"))
    a.bank, a.init_from, a.budget_min = [bank], run, 0.05


if __name__ == "__main__":
    main()
