"""Benchmark ``retrieval_ood`` (docs/evaluation.md, docs/benchmarks.md): how an encoder bundle holds up on data it
was not trained on, and whether its confidence means what it says. Writes ``benchmarks/results/retrieval_ood.json``.

* ``calibration``: held-out gathers of the training geology (the ``openfwi-vel`` test models, FlatVel-A and
  CurveVel-A, simulated: the first ``--id-count`` of each, or the folders given with ``--id-data``) and of the
  other geology families (``seisbind simulate --family``), each searched against the bank (the bundle's training
  models). Every set is split in two by row parity: the calibration is
  fitted on the even rows (``index.calibrate``, the code of ``seisbind calibrate``: a noisy copy of every
  in-distribution set included) and evaluated on the odd ones: expected calibration error (10 bins) in
  distribution and on the families, the out-of-distribution flag rate per set, mean confidence in and out of
  distribution. Also leave-one-family-out (each family's confidence from a fit that saw none of it), a fit on
  in-distribution data only, and ``variants``: the fit without the noisy copies, with them for the confidence only
  (not the OOD threshold), and with them for both.
* ``noise`` / ``muted``: the in-distribution test gathers with Gaussian noise at several SNRs (dB, relative to the
  gather's mean power, ``model.augment.add_noise``) and with muted traces per shot: P1 R@1 (gallery: all 2,000
  test models), P2 descriptor error, mean confidence, OOD flag rate and ECE under the main calibration and (in
  ``calibration_variants``) under each variant.

The ``heldout`` sections (bundles trained without a family) are written by ``benchmarks.ood_heldout``; this script
keeps them when it rewrites the file.

Run from the repository root (heavy: under ``flock /tmp/seisbind-cpu.lock`` on a shared machine):
    python -m benchmarks.ood --bundle BUNDLE --bank BANK_FOLDER [--bank ...] [--id-data TEST_FOLDER ...]
    python -m benchmarks.ood --smoke       # about a minute: tiny sets, a tiny model trained on the spot
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

from benchmarks._common import REPO, add_output_args, default_openfwi_dir, result_folder, write_result

ID_FAMILIES = ("flatvel_a", "curvevel_a")
"""The training geology: the real OpenFWI families the bundle was trained on."""
SPLITS = ("fit", "eval")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--bundle", type=Path, help="encoder bundle to measure (read only)")
    p.add_argument("--bank", type=Path, action="append", default=[],
                   help="velocity models of the bank (the bundle's training models): folder or .npy; repeatable")
    p.add_argument("--openfwi-dir", type=Path,
                   default=default_openfwi_dir(),
                   help="folder with <family>/test_vmodel.zip (real OpenFWI velocity models)")
    p.add_argument("--work", type=Path, default=None,
                   help="simulated sets and the index, resumable (default .cache/ood; with --smoke a temporary folder)")
    p.add_argument("--id-count", type=int, default=300, help="test models simulated per in-distribution family")
    p.add_argument("--id-data", type=Path, action="append", default=[],
                   help="held-out paired folder of the training geology (e.g. .cache/openfwi_vel/flatvel_a/test: "
                   "every test model, simulated) for the calibration sets instead of the first --id-count test "
                   "models (which the noise and muted curves keep); repeatable")
    p.add_argument("--family-count", type=int, default=100, help="models simulated per other geology family")
    p.add_argument("--families", nargs="*", default=None, help="other geology families (default: every family of "
                   "seisbind simulate except flatvel-a and curvevel-a)")
    p.add_argument("--seed", type=int, default=101, help="seed of the family simulations")
    p.add_argument("--snr", type=float, nargs="*", default=[30, 20, 10, 5, 0], help="noise levels, dB")
    p.add_argument("--muted", type=int, nargs="*", default=[5, 10, 20], help="muted traces per shot")
    p.add_argument("--no-write", action="store_true", help="print the figures without writing the result file")
    add_output_args(p)
    args = p.parse_args(argv)
    if args.smoke:
        args.id_count, args.family_count, args.snr, args.muted = 24, 12, [10], [10]
        args.families = args.families or ["inversion-a", "salt-a"]
    elif args.bundle is None or not args.bank:
        p.error("--bundle and --bank are required (except with --smoke)")
    if not args.smoke:
        args.work = args.work or REPO / ".cache" / "ood"
    return args


ARGS = parse_args() if __name__ == "__main__" else None
if ARGS is not None:
    os.environ.setdefault("OMP_NUM_THREADS", "2")

import numpy as np  # noqa: E402

from seisbind.calibration import OOD_QUANTILE, CalibrationError, summarise  # noqa: E402
from seisbind.provenance import portable_path  # noqa: E402

from index.calibrate import NoisyCopies, QuerySet, fit_sets  # noqa: E402


def other_families(args: argparse.Namespace) -> list[str]:
    from model.families import FAMILY_NAMES

    return list(args.families) if args.families is not None else \
        [f for f in FAMILY_NAMES if f not in ("flatvel-a", "curvevel-a")]


def halves(s: QuerySet) -> dict[str, QuerySet]:
    """The fit (even rows) and eval (odd rows) halves of a set."""
    rows = np.arange(len(s.mae))
    return {"fit": s.subset(rows % 2 == 0), "eval": s.subset(rows % 2 == 1)}


def evaluate_on(cal: Any, sets: list[QuerySet]) -> dict[str, Any]:
    """Calibration figures of query sets pooled."""
    X = np.concatenate([s.features for s in sets])
    y = np.concatenate([s.outcome for s in sets])
    return summarise(cal.confidence(X), y, cal.out_of_distribution(X))


def calibration_section(sets: dict[str, list[QuerySet]]) -> tuple[dict[str, Any], Any, dict[str, Any]]:
    """The ``calibration`` section, the main calibration and the variants' calibrations, from the query sets by kind
    (``query_sets``: ``id``, ``id_noisy``, ``fam``, ``fam_noisy``). The main one is fitted as ``seisbind calibrate``
    fits: every set's fit half, noisy copies included; the variants without the noisy copies, with those of the
    in-distribution sets only, and with them all for the confidence only (not the OOD threshold)."""
    halved = {kind: [halves(s) for s in group] for kind, group in sets.items()}
    fits = {kind: [h["fit"] for h in hs] for kind, hs in halved.items()}
    evals = {kind: [h["eval"] for h in hs] for kind, hs in halved.items()}
    cal = fit_sets(fits["id"] + fits["id_noisy"] + fits["fam"] + fits["fam_noisy"])
    id_eval, fam_eval = evaluate_on(cal, evals["id"]), evaluate_on(cal, evals["fam"])
    per_family = {s.name: _without_reliability(evaluate_on(cal, [ev])) for s, ev in zip(sets["fam"], evals["fam"])}
    per_id = {s.name: _without_reliability(evaluate_on(cal, [ev]))
              for s, ev in zip(sets["id"] + sets["id_noisy"], evals["id"] + evals["id_noisy"])}
    lofo = leave_family_out(fits, evals, [s.name for s in sets["fam"]])
    id_only = fit_sets(fits["id"] + fits["id_noisy"])
    variants = {"without_noisy_copies": fit_sets(fits["id"] + fits["fam"]),
                "noisy_copies_of_in_distribution_only": fit_sets(fits["id"] + fits["id_noisy"] + fits["fam"]),
                "noisy_copies_confidence_only": fit_sets(
                    fits["id"] + [replace(s, in_distribution=False) for s in fits["id_noisy"]] + fits["fam"]
                    + fits["fam_noisy"])}
    parts = (("in_distribution", "id"), ("noisy_copies", "id_noisy"), ("families", "fam"),
             ("families_noisy_copies", "fam_noisy"))
    section = {
        "ece_openfwi_vel": id_eval["ece"], "ece_heldout": fam_eval["ece"],
        "ood_flag_rate_in_distribution": id_eval["ood_flag_rate"],
        "ood_flag_rate_families": fam_eval["ood_flag_rate"],
        "mean_confidence_in_distribution": id_eval["mean_confidence"],
        "mean_confidence_families": fam_eval["mean_confidence"],
        "event_rate_in_distribution": id_eval["event_rate"], "event_rate_families": fam_eval["event_rate"],
        "ece_heldout_leave_family_out": lofo["pooled"]["ece"],
        "mean_confidence_families_leave_family_out": lofo["pooled"]["mean_confidence"],
        "ece_openfwi_vel_noisy_copies": evaluate_on(cal, evals["id_noisy"])["ece"],
        "ece_heldout_noisy_copies": evaluate_on(cal, evals["fam_noisy"])["ece"],
        "in_distribution": {**id_eval, "per_set": per_id}, "families": {**fam_eval, "per_family": per_family},
        "leave_family_out": lofo,
        "fit_in_distribution_only": {"in_distribution": _without_reliability(evaluate_on(id_only, evals["id"])),
                                     "families": _without_reliability(evaluate_on(id_only, evals["fam"]))},
        "variants": {name: {part: _without_reliability(evaluate_on(c, evals[kind])) for part, kind in parts}
                     for name, c in variants.items()},
        "fit": {"n": cal.fit["n"], "n_in_distribution": cal.fit["n_in_distribution"],
                "event_rate": cal.fit["event_rate"], "ood_quantile": OOD_QUANTILE,
                "inputs": list(cal.inputs), "weights": cal.weights.tolist(), "bias": cal.bias,
                "noisy_copies": asdict(NoisyCopies()),
                "protocol": "fit on the even rows of every set (the in-distribution sets, the families, a noisy copy "
                            "of each), evaluated on the odd rows"},
    }
    return section, cal, variants


def _without_reliability(figures: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in figures.items() if k != "reliability"}


def leave_family_out(fits: dict[str, list[QuerySet]], evals: dict[str, list[QuerySet]],
                     names: list[str]) -> dict[str, Any]:
    """For each family F: fit on the in-distribution sets and the other families (noisy copies included), evaluate
    on F's eval half. A fold whose fit queries all have the same outcome cannot be fitted: it is reported as
    ``not_fitted`` with the reason, and left out of ``pooled``."""
    out: dict[str, Any] = {}
    conf, outcome = [], []
    for i, name in enumerate(names):
        others = [s for j in range(len(names)) if j != i for s in (fits["fam"][j], fits["fam_noisy"][j])]
        try:
            cal = fit_sets(fits["id"] + fits["id_noisy"] + others)
        except CalibrationError as e:
            out[name] = {"not_fitted": str(e)}
            continue
        ev = evals["fam"][i]
        out[name] = _without_reliability(summarise(cal.confidence(ev.features), ev.outcome,
                                                   cal.out_of_distribution(ev.features)))
        conf.append(cal.confidence(ev.features))
        outcome.append(ev.outcome)
    if conf:
        c, y = np.concatenate(conf), np.concatenate(outcome)
        out["pooled"] = summarise(c, y, np.zeros(len(c), bool))
        out["pooled"].pop("ood_flag_rate")
    return out


def main(args: argparse.Namespace) -> dict[str, Any]:
    if args.smoke and args.work is None:
        with tempfile.TemporaryDirectory(prefix="seisbind-ood-smoke-") as tmp:
            args.work = Path(tmp)
            return main(args)
    from benchmarks._ood_data import prepare, query_sets
    from benchmarks._robustness import robustness

    setup = prepare(args, other_families(args))
    sets = query_sets(setup)
    section, cal, variants = calibration_section(sets)
    print(f"calibration: ECE in distribution {section['ece_openfwi_vel']:.4f}, families {section['ece_heldout']:.4f}, "
          f"OOD flag rate in distribution {section['ood_flag_rate_in_distribution']:.3f}", file=sys.stderr, flush=True)
    result: dict[str, Any] = {"calibration": section}
    result.update(robustness(setup, cal, args.snr, args.muted, variants))
    result["setup"] = {"bundle": "a tiny model trained by --smoke" if args.smoke else portable_path(args.bundle),
                       "bundle_id": setup.bundle.bundle_id, "bank_size": setup.searcher.count,
                       "in_distribution": {s.name: len(s.mae) for s in sets["id"]},
                       "in_distribution_data": {n: portable_path(f) for n, f in setup.calibration_folders.items()},
                       "families": {s.name: len(s.mae) for s in sets["fam"]},
                       "family_seed": args.seed, "event": "top-1 bank model within 150 m/s MAE of the true model"}
    return result


if __name__ == "__main__":
    assert ARGS is not None
    import json

    res = main(ARGS)
    cal_sec = res["calibration"]
    print(json.dumps({k: v for k, v in cal_sec.items() if not isinstance(v, dict)}, indent=1))
    print(json.dumps({k: res[k] for k in ("noise", "muted") if k in res}, indent=1))
    if not ARGS.no_write:
        earlier = result_folder(ARGS.out, ARGS.smoke) / "retrieval_ood.json"
        if earlier.exists():  # the sections of benchmarks.ood_heldout stay
            res.update({k: v for k, v in json.loads(earlier.read_text()).items() if k.startswith("heldout")})
        print(write_result("retrieval_ood", res, ARGS.out, ARGS.smoke))
