"""Benchmark ``encode`` (docs/benchmarks.md, ``benchmarks/results/encode.json``): the seismic encoder's graphs
(the full-precision ``seismic.onnx`` and each variant the bundle lists, e.g. ``fast`` and ``int8``) side by side
in one run: milliseconds per gather at batch 1 and batch 8 on one thread (ONNX Runtime, one intra-op thread;
interleaved rounds, medians of wall time and of the thread's CPU time), and each graph's seismic->velocity R@1 and
descriptor error on ``openfwi-vel`` (P1 gallery = the FlatVel-A and CurveVel-A test models; P2 bank = their
training models, k = 5). The velocity graph is the bundle's full-precision one for every row.

The trained bundle gives speed and quality; the default (wider) architecture's speed is measured on an untrained
export of it with the same variants (calibrated on synthetic gathers: its speed only means something), timed in the
same interleaved rounds. A bundle of another architecture (e.g. ``ModelConfig.narrow()``) is a smaller encoder:
its cost is then compared with today's default, the default architecture's full graph, and with ``--reference``
(a ``retrieval_openfwi_vel.json`` of the full-precision default bundle) its quality with that bundle's.

Run from the repository root (a bundle exported with ``seisbind export --variant fast --variant int8``):
    flock /tmp/seisbind-cpu.lock python -m benchmarks.encode --bundle BUNDLE
    python -m benchmarks.encode --smoke      # tiny untrained bundle, 8 test models per family, seconds
"""

from __future__ import annotations

import os

for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):  # one core, as the service's workers
    os.environ.setdefault(_var, "1")

import argparse  # noqa: E402
import json  # noqa: E402
import statistics  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any  # noqa: E402

import numpy as np  # noqa: E402

from seisbind.bundle import CPU, FULL, OnnxEncoder, read_manifest  # noqa: E402
from seisbind.provenance import portable_path  # noqa: E402

from benchmarks._common import REPO, add_output_args, default_openfwi_dir, simulate_first_models, write_result  # noqa: E402

BATCHES = (1, 8)
ARCH_PREFIX = "default_architecture/"
"""Names of the untrained default-architecture graphs among the timed ones."""
SPEEDUP_TARGET, R1_TOLERANCE, MRE_TOLERANCE = 3.0, 0.005, 0.001


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--bundle", type=Path, default=None, help="trained encoder bundle with seismic variants")
    p.add_argument("--openfwi-dir", type=Path,
                   default=default_openfwi_dir())
    p.add_argument("--cache", type=Path, default=None,
                   help="simulated test gathers, <cache>/<family>/test (default .cache/openfwi_vel, shared with "
                        "benchmarks.openfwi_vel)")
    p.add_argument("--test-models", type=int, default=None,
                   help="only the first N test models per family (simulated into <cache>/<family>/test_first<N>; "
                        "default all 1000, the benchmark's own test set)")
    p.add_argument("--rounds", type=int, default=10, help="interleaved timing rounds")
    p.add_argument("--reps", type=int, default=10, help="timed runs per round, graph and batch size")
    p.add_argument("--no-default-architecture", action="store_true",
                   help="skip the untrained default-architecture speed measurement")
    p.add_argument("--reference", type=Path, default=None,
                   help="retrieval_openfwi_vel.json of the full-precision default-architecture bundle: the R@1 and "
                        "descriptor error a smaller encoder is held to")
    p.add_argument("--no-write", action="store_true")
    add_output_args(p)
    args = p.parse_args(argv)
    if args.smoke:
        args.rounds, args.reps = 2, 2
    return args


def graphs(bundle: Path) -> dict[str, OnnxEncoder]:
    """One-thread sessions of the bundle's full-precision seismic graph and of each variant, by name."""
    manifest = read_manifest(bundle)
    out = {FULL: OnnxEncoder(bundle, "seismic", [CPU], 1)}
    for name, v in manifest.variants.get("seismic", {}).items():
        out[name] = OnnxEncoder(bundle, "seismic", [CPU], 1, filename=v["file"], variant=name)
    return out


def time_graphs(encoders: dict[str, OnnxEncoder], gathers: np.ndarray, rounds: int, reps: int) -> dict[str, Any]:
    """ms per gather at each batch size, interleaved over graphs and rounds: medians (and min/max) of wall time
    and of this thread's CPU time."""
    wall: dict[tuple[str, int], list[float]] = {}
    cpu: dict[tuple[str, int], list[float]] = {}
    for _ in range(rounds):
        for name, enc in encoders.items():
            for b in BATCHES:
                x = np.ascontiguousarray(gathers[:b])
                enc.run(x)  # warm
                for _ in range(reps):
                    t, c = time.perf_counter(), time.thread_time()
                    enc.run(x)
                    wall.setdefault((name, b), []).append((time.perf_counter() - t) * 1000 / b)
                    cpu.setdefault((name, b), []).append((time.thread_time() - c) * 1000 / b)
    out: dict[str, Any] = {}
    for name in encoders:
        row: dict[str, Any] = {}
        for b in BATCHES:
            w, cp = wall[(name, b)], cpu[(name, b)]
            row[f"ms_per_gather_batch{b}"] = round(statistics.median(w), 3)
            row[f"ms_per_gather_batch{b}_min_max"] = [round(min(w), 3), round(max(w), 3)]
            row[f"cpu_ms_per_gather_batch{b}"] = round(statistics.median(cp), 3)
        out[name] = row
    for name, row in out.items():
        full = out[name[:name.rfind("/") + 1] + FULL]  # the full graph of the same bundle
        for b in BATCHES:
            row[f"speedup_vs_full_batch{b}"] = round(full[f"ms_per_gather_batch{b}"]
                                                     / row[f"ms_per_gather_batch{b}"], 3)
            row[f"cpu_speedup_vs_full_batch{b}"] = round(full[f"cpu_ms_per_gather_batch{b}"]
                                                         / row[f"cpu_ms_per_gather_batch{b}"], 3)
    return out


def test_and_bank(args: argparse.Namespace, cache: Path) -> tuple[list[Any], np.ndarray]:
    """The openfwi-vel test sets (paired, simulated as benchmarks.openfwi_vel does) and the bank of training
    models (the first 64 per family with --smoke)."""
    from seisbind.openfwi import open_dataset, read_models

    from benchmarks import openfwi_vel

    ns = argparse.Namespace(cache=cache, openfwi_dir=args.openfwi_dir, train_chunks=None, test_chunks=None,
                            no_simulate=False, smoke=args.smoke)
    tests = []
    for fam in openfwi_vel.FAMILIES:
        if args.test_models and not args.smoke:
            folder = simulate_first_models(cache / fam / f"test_first{args.test_models}",
                                           args.openfwi_dir / fam / "test_vmodel.zip", args.test_models)
        else:
            folder = openfwi_vel.simulated_folder(ns, fam, "test")
        tests.append(open_dataset(folder, check_values=True))
    bank = [read_models(args.openfwi_dir / fam / "train_vmodel.zip").array()[:64 if args.smoke else None]
            for fam in openfwi_vel.FAMILIES]
    return tests, np.concatenate(bank).astype(np.float32)


def quality(bundle: Path, encoders: dict[str, OnnxEncoder], tests: list[Any], bank: np.ndarray) -> dict[str, Any]:
    """R@1 (P1), descriptor error (P2, k = 5; and blended with the bundle's readout when it has one), and agreement
    with the full graph, for each seismic graph."""
    from seisbind.bundle import EncoderBundle
    from seisbind.descriptors import compute_descriptors, mean_relative_error
    from seisbind.neighbours import exact_top_k, infer_descriptors
    from seisbind.readout import blend
    from seisbind.retrieval_metrics import retrieval_report

    from model.evaluate import embed_arrays

    velocity = OnnxEncoder(bundle, "velocity", [CPU], 2)
    models = np.concatenate([np.asarray(m) for d in tests for m in d.models])
    V = embed_arrays(velocity.encode, [models], 256, "embed test models")
    VB = embed_arrays(velocity.encode, [bank], 256, "embed bank models")
    truth = compute_descriptors(models)
    bank_desc = np.concatenate([compute_descriptors(bank[s:s + 2000]) for s in range(0, len(bank), 2000)])
    readout = EncoderBundle(bundle).readout
    out: dict[str, Any] = {}
    full: tuple[np.ndarray, np.ndarray] | None = None  # the full graph's embeddings and top-1, computed first
    for name, enc in encoders.items():
        S = embed_arrays(enc.encode, [g for d in tests for g in d.data], 8, f"embed test gathers ({name})")
        D, I = exact_top_k(S, VB, 5)  # noqa: E741 - faiss naming
        pred, _ = infer_descriptors(bank_desc, D, I, "mean")
        top1 = np.argmax(S @ V.T, axis=1)
        full = full or (S, top1)
        cos = (S * full[0]).sum(1)
        out[name] = {"R@1": retrieval_report(S, V)["R@1"], "descriptor_mre": mean_relative_error(pred, truth),
                     "top1_agreement_with_full": float(np.mean(top1 == full[1])),
                     "mean_cosine_to_full": float(cos.mean()), "min_cosine_to_full": float(cos.min())}
        if readout is not None:
            out[name]["blend_descriptor_mre"] = mean_relative_error(blend(pred, readout.predict(S)), truth)
    return {**out, "queries": int(len(models)), "bank_size": int(len(bank))}


def export_untrained(out: Path, tiny: bool) -> Path:
    """An untrained bundle (default architecture, or the tests' tiny one) with the fast and int8 variants."""
    from model.config import ModelConfig
    from model.export import export_untrained_bundle

    export_untrained_bundle(out, seismic_variants=("fast", "int8"), cfg=ModelConfig.tiny() if tiny else ModelConfig())
    return out


def main(args: argparse.Namespace) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="seisbind-encode-") as tmp:
        work = Path(tmp)
        bundle = args.bundle
        if bundle is None:
            if not args.smoke:
                raise SystemExit("--bundle: a trained bundle with seismic variants is needed "
                                 "(seisbind export --run RUN --out BUNDLE --variant fast --variant int8)")
            bundle = export_untrained(work / "tiny", tiny=True)
        manifest = read_manifest(bundle)
        if not manifest.variants.get("seismic"):
            raise SystemExit(f"{bundle}: the bundle lists no seismic variants (seisbind export --variant ...)")
        tests, bank = test_and_bank(args, args.cache or (work / "cache" if args.smoke else
                                                          REPO / ".cache" / "openfwi_vel"))
        gathers = np.asarray(tests[0].data[0][:max(BATCHES)], np.float32)
        encoders = graphs(bundle)
        timed = dict(encoders)
        if not args.no_default_architecture:
            arch = export_untrained(work / "default", tiny=args.smoke)
            timed.update({ARCH_PREFIX + k: v for k, v in graphs(arch).items()})
        speed = time_graphs(timed, gathers, args.rounds, args.reps)
        q = quality(bundle, encoders, tests, bank)
        default = manifest.default_variants.get("seismic", FULL)
        result: dict[str, Any] = {name: {**speed[name], **q[name]} for name in encoders}
        result.update(default=default, queries=q["queries"], bank_size=q["bank_size"], threads=1,
                      test_models_per_family=args.test_models or ("smoke" if args.smoke else "all"),
                      bundle={"path": portable_path(bundle), "bundle_id": manifest.bundle_id,
                              "model_config": manifest.raw.get("model_config"),
                              "train_minutes": manifest.training.get("train_minutes"),
                              "variants": manifest.variants.get("seismic")})
        if not args.no_default_architecture:
            result["default_architecture"] = {
                "bundle": "untrained " + ("tiny architecture (smoke)" if args.smoke else
                                          "default architecture (model.config.ModelConfig()), seed 0") +
                          ", variants calibrated on synthetic gathers: speed only",
                **{k[len(ARCH_PREFIX):]: v for k, v in speed.items() if k.startswith(ARCH_PREFIX)}}
    result["targets"] = targets(result)
    if args.reference is not None and "default_architecture" in result:
        result["smaller_encoder"] = smaller_encoder(result, json.loads(args.reference.read_text()))
    return result


def smaller_encoder(r: dict[str, Any], ref: dict[str, Any]) -> dict[str, Any]:
    """The bundle's default graph against today's default encoder: cost against the default architecture's full
    graph (same interleaved rounds), quality against the reference run's full-precision bundle."""
    d, today = r[r["default"]], r["default_architecture"][FULL]
    ref_r1, ref_mre = ref["p1"]["seismic_to_velocity"]["R@1"], ref["p2"]["descriptor_mre"]
    out = {"graph": r["default"], "reference": {
               "R@1": ref_r1, "descriptor_mre": ref_mre, "queries": ref["p1"].get("queries"),
               "model_config": ref.get("encoders", {}).get("model_config"),
               "run": {**(ref.get("headline_run") or {k: ref.get(k) for k in ("command", "git_commit", "date")}),
                       "machine": ref.get("machine")}},
           "speedup_vs_today_batch1": today["ms_per_gather_batch1"] / d["ms_per_gather_batch1"],
           "cpu_speedup_vs_today_batch1": today["cpu_ms_per_gather_batch1"] / d["cpu_ms_per_gather_batch1"],
           "speedup_vs_today_batch8": today["ms_per_gather_batch8"] / d["ms_per_gather_batch8"],
           "R@1_drop": ref_r1 - d["R@1"], "descriptor_mre_rise": d["descriptor_mre"] - ref_mre}
    out["met"] = {"speedup >= 3": out["speedup_vs_today_batch1"] >= SPEEDUP_TARGET,
                  "R@1 within 0.005": out["R@1_drop"] <= R1_TOLERANCE,
                  "descriptor error within 0.1 points": out["descriptor_mre_rise"] <= MRE_TOLERANCE}
    if "blend_descriptor_mre" in d:  # what /infer-descriptors returns, against the reference's own answer
        ref_blend = ref["p2"].get("blend", {}).get("descriptor_mre")
        out["blend"] = {"descriptor_mre": d["blend_descriptor_mre"],
                        "reference_descriptor_mre": ref_mre if ref_blend is None else ref_blend,
                        "reference_estimate": "neighbours (the reference bundle has no readout)" if ref_blend is None
                        else "blend",
                        "descriptor_mre_rise": d["blend_descriptor_mre"] - (ref_mre if ref_blend is None
                                                                            else ref_blend)}
    return out


def targets(r: dict[str, Any]) -> dict[str, Any]:
    """The issue's targets, from the figures: the default variant >= 3x cheaper than the full graph at batch 1 (on
    the default architecture when measured, else the bundle's), R@1 within 0.005 and descriptor error within 0.1
    points of the full graph."""
    d = r["default"]
    speed = r.get("default_architecture", r)[d]
    return {"speedup_batch1": speed["speedup_vs_full_batch1"],
            "cpu_speedup_batch1": speed["cpu_speedup_vs_full_batch1"],
            "speedup_measured_on": "default_architecture" if "default_architecture" in r else "bundle",
            "R@1_drop": r[FULL]["R@1"] - r[d]["R@1"],
            "descriptor_mre_rise": r[d]["descriptor_mre"] - r[FULL]["descriptor_mre"],
            "met": {"speedup >= 3": speed["speedup_vs_full_batch1"] >= SPEEDUP_TARGET,
                    "R@1 within 0.005": abs(r[FULL]["R@1"] - r[d]["R@1"]) <= R1_TOLERANCE,
                    "descriptor error within 0.1 points": abs(r[d]["descriptor_mre"] - r[FULL]["descriptor_mre"])
                    <= MRE_TOLERANCE}}


if __name__ == "__main__":
    ARGS = parse_args()
    res = main(ARGS)
    print(json.dumps(res, indent=1))
    if not ARGS.no_write:
        print(write_result("encode", res, ARGS.out, ARGS.smoke))
