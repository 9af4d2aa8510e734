"""Benchmark ``ingest`` (docs/ingest.md): real OpenFWI test velocity models (FlatVel-A and CurveVel-A) simulated on a
finer grid (5 m, 0.5 ms, receivers every 5 m), recorded in several acquisition geometries, written as SEG-Y,
ingested onto the model's geometry and retrieved with a trained encoder bundle. For each geometry: R@1 (P1, gallery
= the test models) and descriptor error (P2, k = 5 nearest of a bank of OpenFWI training models) beside the
native-geometry figures (the project simulator's 10 m / 1 ms gathers, what the encoders were trained on), and the
ingest time per file. Writes ``benchmarks/results/ingest.json``.

Two stages, both resumable: ``simulate`` (no encoders needed; chunks of models are cached in
``.cache/ingest/chunks``) and ``evaluate`` (embeds with the bundle). Run from the repository root:

    flock /tmp/seisbind-cpu.lock python -m benchmarks.ingest --bundle runs/ofv/bundle --bundle runs/qs/bundle
    python -m benchmarks.ingest --models 20 --chunk 10 --bank-per-family 200 --no-write   # quick check
    python -m benchmarks.ingest --smoke     # 4 test models, 2 geometries, an untrained tiny bundle, temporary cache
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):  # ingest is timed on one core
    os.environ.setdefault(_var, "1")
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import hashlib  # noqa: E402
import json  # noqa: E402
import statistics  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from collections import Counter  # noqa: E402
from collections.abc import Sequence  # noqa: E402
from typing import Any  # noqa: E402

import numpy as np  # noqa: E402

from seisbind.files import atomic_write  # noqa: E402
from seisbind.ingest import ingest_segy, write_segy  # noqa: E402
from seisbind.openfwi import read_models  # noqa: E402
from seisbind.provenance import portable_path  # noqa: E402

from benchmarks._common import REPO, add_output_args, default_openfwi_dir, write_result  # noqa: E402
from benchmarks._fine_gathers import FINE_DT, FINE_DX, FINE_RX, SOURCES_M, fine_simulation  # noqa: E402

FAMILIES = ("flatvel_a", "curvevel_a")
GEOMETRIES: dict[str, dict[str, Any]] = {
    # the project simulator's own gathers written as SEG-Y: ingest must be the identity
    "native_segy": {"source": "native", "dt_ms": 1.0, "spacing_m": 10.0},
    # the fine simulation sampled at the model's geometry: the physics gap alone (5 m grid vs 10 m grid), no mapping
    "fine_dt1_dx10": {"source": "fine", "dt_ms": 1.0, "spacing_m": 10.0},
    "dt0.5_dx5": {"source": "fine", "dt_ms": 0.5, "spacing_m": 5.0},
    "dt1_dx12.5": {"source": "fine", "dt_ms": 1.0, "spacing_m": 12.5},
    "dt2_dx10": {"source": "fine", "dt_ms": 2.0, "spacing_m": 10.0},
    "dt2_dx12.5": {"source": "fine", "dt_ms": 2.0, "spacing_m": 12.5},
    "dt4_dx25": {"source": "fine", "dt_ms": 4.0, "spacing_m": 25.0},
    # arbitrary amplitude units (x 1e-3), IBM floats, little-endian: the amplitude step has to rescale
    "dt2_dx10_arbitrary_units": {"source": "fine", "dt_ms": 2.0, "spacing_m": 10.0, "scale": 1e-3,
                                 "sample_format": "ibm", "endian": "little"},
}
CONTROL = "fine_dt1_dx10"
"""The geometry the mapping's cost is measured against (same physics, no mapping); every run includes it."""
SMOKE = {"models": 4, "chunk": 4, "bank_per_family": 8, "workers": 1, "geometries": (CONTROL, "dt2_dx12.5")}
"""``--smoke``: 2 test models per family, one chunk, the control and one geometry needing interpolation."""


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--openfwi-dir", type=Path, default=default_openfwi_dir(),
                   help="real OpenFWI models (default ../shared/data/openfwi or SEISBIND_OPENFWI_DIR)")
    p.add_argument("--bundle", type=Path, action="append", default=None,
                   help="trained encoder bundle (repeat to compare several; the first gives the headline figures; "
                        "default runs/qs/bundle, with --smoke an untrained tiny bundle exported to a temporary folder)")
    p.add_argument("--cache", type=Path, default=None,
                   help="cache of simulated and ingested chunks (default .cache/ingest; with --smoke a temporary "
                        "folder)")
    p.add_argument("--models", type=int, default=500, help="test models, half from each family")
    p.add_argument("--chunk", type=int, default=25, help="models simulated and ingested per cached chunk")
    p.add_argument("--bank-per-family", type=int, default=2000, help="P2 bank: first N training models per family")
    p.add_argument("--workers", type=int, default=2, help="chunks simulated in parallel (one thread each)")
    p.add_argument("--stage", choices=("all", "simulate", "evaluate"), default="all")
    p.add_argument("--no-write", action="store_true", help="print the figures without writing the result file")
    add_output_args(p)
    args = p.parse_args(argv)
    args.geometries = list(GEOMETRIES)
    if args.smoke:
        for key, value in SMOKE.items():
            setattr(args, key, list(value) if isinstance(value, tuple) else value)
    if args.models < 2 or args.chunk < 1 or args.bank_per_family < 5 or args.workers < 1:
        p.error("--models must be at least 2, --chunk and --workers at least 1, --bank-per-family at least 5 (k = 5)")
    return args


def test_models(args: argparse.Namespace) -> np.ndarray:
    """The first models/2 test models of each family [n, 1, 70, 70] float32."""
    half = args.models // 2
    parts = []
    for fam in FAMILIES:
        ms = read_models(args.openfwi_dir / fam / "test_vmodel.zip")
        parts.append(np.asarray(ms.array()[:half], np.float32))
    return np.concatenate(parts)


def record(fine: np.ndarray, native: np.ndarray, geometry: dict[str, Any]) -> tuple[np.ndarray, np.ndarray]:
    """One model's gathers as recorded in ``geometry``: (data [5, nt, n_rec], receiver positions m)."""
    from scipy.interpolate import CubicSpline

    if geometry["source"] == "native":
        return native, np.arange(70) * 10.0
    spacing, step = geometry["spacing_m"], int(round(geometry["dt_ms"] / 1000 / FINE_DT))
    rx = np.arange(0.0, FINE_RX[-1] + 1e-6, spacing)
    if np.allclose(rx / FINE_DX, np.round(rx / FINE_DX)):
        data = fine[:, :, np.round(rx / FINE_DX).astype(int)]
    else:  # receivers between the 5 m nodes: cubic spline across the densely (unaliased) sampled line
        data = CubicSpline(FINE_RX, fine, axis=2)(rx).astype(np.float32)
    # Decimation without a filter: the 15 Hz Ricker holds no energy near the 125 Hz Nyquist of 4 ms.
    return data[:, ::step] * np.float32(geometry.get("scale", 1.0)), rx


def models_digest(v: np.ndarray) -> str:
    return hashlib.sha256(np.ascontiguousarray(v, np.float32).tobytes()).hexdigest()[:16]


def ingest_code_digest() -> str:
    """Digest of the ingest package's source: cached ingest results are only reused when the mapping is unchanged."""
    h = hashlib.sha256()
    for f in sorted((REPO / "seisbind" / "ingest").glob("*.py")):
        h.update(f.read_bytes())
    return h.hexdigest()[:16]


INGEST_CODE = ingest_code_digest()
"""The ingest code this process runs (read at import, as the code itself is)."""


def cached_chunk_fits(path: Path, v: np.ndarray, geometries: Sequence[str]) -> bool:
    """Whether the cached chunk ``path`` holds these very models, ingested by today's code in every one of
    ``geometries``."""
    if not path.is_file():
        return False
    with np.load(path) as z:
        meta = json.loads(str(z["meta"]))
        names = set(z.files)
    return (meta.get("models_sha256") == models_digest(v) and meta.get("ingest_code") == INGEST_CODE
            and {"native", *geometries} <= names and all(len(meta["timings"].get(g, ())) == len(v) for g in geometries)
            and "wall_timings" in meta)


def simulated_chunk(args: argparse.Namespace, v: np.ndarray, c: int) -> tuple[np.ndarray, np.ndarray, dict[str, float]]:
    """Chunk ``c``'s fine-grid and native simulations (cached separately from the ingest results, so a change of the
    mapping re-ingests without re-simulating) and the seconds per model each took."""
    path = args.cache / "chunks" / f"simulated{c:03d}.npz"
    digest = models_digest(v)
    if path.is_file():
        with np.load(path) as z:
            meta = json.loads(str(z["meta"]))
            if meta.get("models_sha256") == digest:
                return z["fine"], z["native"], meta["seconds_per_model"]
    import torch

    from model.simulator import simulate

    torch.set_num_threads(1)
    t0 = time.perf_counter()
    fine = fine_simulation(v[:, 0])
    t1 = time.perf_counter()
    native = simulate(v)
    seconds = {"fine": (t1 - t0) / len(v), "native": (time.perf_counter() - t1) / len(v)}
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_write(path, "wb") as f:
        np.savez(f, meta=np.array(json.dumps({"models_sha256": digest, "seconds_per_model": seconds})),
                 fine=fine, native=native)
    return fine, native, seconds


def simulate_chunk(args: argparse.Namespace, v: np.ndarray, c: int) -> Path:
    """Chunk ``c`` simulated (fine and native), written as SEG-Y in every geometry and ingested; the results are
    cached (reused when they hold the same models and every geometry, ingested by the same code)."""
    out = args.cache / "chunks" / f"chunk{c:03d}.npz"
    if cached_chunk_fits(out, v, args.geometries):
        return out
    fine, native, seconds = simulated_chunk(args, v, c)
    arrays: dict[str, np.ndarray] = {"native": native}
    timings: dict[str, list[float]] = {}  # CPU seconds of the ingesting thread: its cost on one core
    wall: dict[str, list[float]] = {}  # wall seconds: the same plus whatever else the shared machine ran meanwhile
    warnings: dict[str, list[str]] = {}
    with tempfile.TemporaryDirectory(dir=args.cache) as tmp:
        for name in args.geometries:
            geo = GEOMETRIES[name]
            res = np.empty((len(v), 5, 1000, 70), np.float32)
            for i in range(len(v)):
                data, rx = record(fine[i], native[i], geo)
                path = write_segy(Path(tmp) / f"{name}_{i}.sgy", data, geo["dt_ms"] / 1000, SOURCES_M, rx,
                                  sample_format=geo.get("sample_format", "ieee"), endian=geo.get("endian", "big"))
                ts, cpu = time.perf_counter(), time.thread_time()
                res[i], rep = ingest_segy(path)
                timings.setdefault(name, []).append(time.thread_time() - cpu)
                wall.setdefault(name, []).append(time.perf_counter() - ts)
                warnings.setdefault(name, []).extend(w["code"] for w in rep["warnings"])
                path.unlink()
            arrays[name] = res
    meta = {"timings": timings, "wall_timings": wall, "warnings": warnings, "fine_seconds_per_model": seconds["fine"],
            "native_seconds_per_model": seconds["native"], "models_sha256": models_digest(v),
            "ingest_code": INGEST_CODE}
    with atomic_write(out, "wb") as f:
        np.savez(f, meta=np.array(json.dumps(meta)), **arrays)
    return out


def bank(args: argparse.Namespace) -> np.ndarray:
    parts = []
    for fam in FAMILIES:
        ms = read_models(args.openfwi_dir / fam / "train_vmodel.zip")
        parts.append(np.asarray(ms.array()[:args.bank_per_family], np.float32))
    return np.concatenate(parts)


def portable_training(training: dict[str, Any]) -> dict[str, Any]:
    """A bundle's ``train_minutes`` and ``data`` (training folders, written relative to the repository)."""
    data = training.get("data")
    if isinstance(data, list):
        data = [{**d, "folder": portable_path(d["folder"])} if isinstance(d, dict) and d.get("folder") else d
                for d in data]
    return {"train_minutes": training.get("train_minutes"), "data": data}


def evaluate(args: argparse.Namespace, bundle: Path, models: np.ndarray, chunks: list[Path],
             bundle_name: str | None = None) -> dict[str, Any]:
    """R@1, descriptor error and ingest timings per geometry, beside the native figures, with ``bundle``
    (recorded as ``bundle_name``, default its path relative to the repository)."""
    from seisbind.bundle import read_manifest
    from seisbind.descriptors import compute_descriptors, mean_relative_error
    from seisbind.neighbours import exact_top_k

    from model.evaluate import embed_arrays, onnx_embedder

    emb = onnx_embedder(bundle, threads=2)
    loaded = [np.load(c) for c in chunks]
    V = embed_arrays(emb.encode["velocity"], [models], 256, "embed test models")
    B = bank(args)
    VB = embed_arrays(emb.encode["velocity"], [B], 256, "embed bank")
    bank_desc, test_desc = compute_descriptors(B), compute_descriptors(models)
    metas = [json.loads(str(z["meta"])) for z in loaded]

    def figures(name: str) -> dict[str, float]:
        S = embed_arrays(emb.encode["seismic"], [z[name] for z in loaded], 32, f"embed {name}")
        _, I1 = exact_top_k(S, V, 1)
        _, Ik = exact_top_k(S, VB, 5)
        return {"R@1": float(np.mean(I1[:, 0] == np.arange(len(S)))),
                "descriptor_mre": mean_relative_error(bank_desc[Ik].mean(1), test_desc)}

    native = figures("native")
    manifest = read_manifest(bundle)
    out: dict[str, Any] = {
        "models": int(len(models)), "families": list(FAMILIES), "bank_size": int(len(B)), "k": 5,
        "native_R@1": native["R@1"], "native_descriptor_mre": native["descriptor_mre"],
        "bundle": {"path": bundle_name or portable_path(bundle), "bundle_id": manifest.bundle_id,
                   "training": portable_training(manifest.training)},
        "fine_simulation": {"dx_m": FINE_DX, "dt_ms": FINE_DT * 1000, "receivers_every_m": FINE_DX,
                            "seconds_per_model_median": statistics.median(m["fine_seconds_per_model"] for m in metas)},
        "geometries": {},
    }
    for name in args.geometries:
        geo = GEOMETRIES[name]
        f = figures(name)
        times = [t for m in metas for t in m["timings"][name]]
        warn = Counter(w for m in metas for w in m["warnings"][name])
        out["geometries"][name] = {
            "dt_ms": geo["dt_ms"], "spacing_m": geo["spacing_m"], "R@1": f["R@1"], "native_R@1": native["R@1"],
            "descriptor_mre": f["descriptor_mre"], "native_descriptor_mre": native["descriptor_mre"],
            "R@1_ratio": f["R@1"] / native["R@1"] if native["R@1"] else None,
            "descriptor_mre_ratio": f["descriptor_mre"] / native["descriptor_mre"],
            "ms_per_file": 1000 * statistics.median(times), "ms_per_file_min": 1000 * min(times),
            "ms_per_file_max": 1000 * max(times), "files": len(times),
            "wall_ms_per_file": 1000 * statistics.median(t for m in metas for t in m["wall_timings"][name]),
            "warnings_per_file": {k: v / len(times) for k, v in sorted(warn.items())},
            **{k: geo[k] for k in ("scale", "sample_format", "endian") if k in geo},
        }
        print(name, json.dumps(out["geometries"][name]), flush=True)
    control = out["geometries"][CONTROL]
    for g in out["geometries"].values():  # what the mapping alone costs: against the same physics, unmapped
        g["R@1_ratio_vs_fine_native"] = g["R@1"] / control["R@1"] if control["R@1"] else None
        g["descriptor_mre_ratio_vs_fine_native"] = g["descriptor_mre"] / control["descriptor_mre"]
    # the targets concern geometry (spacing up to 12.5 m, sample interval up to 2 ms) in the training data's units;
    # data in other units are reported beside them
    targeted = {n: g for n, g in out["geometries"].items()
                if g["spacing_m"] <= 12.5 and g["dt_ms"] <= 2 and "scale" not in g}
    out["targets"] = {
        "geometries": sorted(targeted),
        "R@1_ratio_min": min(g["R@1_ratio"] or 0 for g in targeted.values()),
        "descriptor_mre_ratio_max": max(g["descriptor_mre_ratio"] for g in targeted.values()),
        "ms_per_file_max_median": max(g["ms_per_file"] for g in out["geometries"].values()),
    }
    t = out["targets"]
    t["R@1_ratio_vs_fine_native_min"] = min(g["R@1_ratio_vs_fine_native"] or 0 for g in targeted.values())
    t["descriptor_mre_ratio_vs_fine_native_max"] = max(g["descriptor_mre_ratio_vs_fine_native"]
                                                       for g in targeted.values())
    t["other_units"] = {n: {k: g[k] for k in ("scale", "R@1_ratio", "descriptor_mre_ratio")}
                        for n, g in out["geometries"].items() if "scale" in g}
    t["met"] = {"R@1 >= 0.95 native": t["R@1_ratio_min"] >= 0.95,
                "descriptor error <= 1.2 native": t["descriptor_mre_ratio_max"] <= 1.2,
                "ingest <= 50 ms per 5-shot file": t["ms_per_file_max_median"] <= 50}
    return out


def simulate_all(args: argparse.Namespace, models: np.ndarray) -> list[Path]:
    """Every chunk of ``models`` simulated and ingested (cached chunks reused), ``--workers`` at a time."""
    from concurrent.futures import ProcessPoolExecutor

    n_chunks = -(-len(models) // args.chunk)
    t0 = time.perf_counter()
    with ProcessPoolExecutor(max_workers=args.workers) as pool:
        futures = [pool.submit(simulate_chunk, args, models[c * args.chunk:(c + 1) * args.chunk], c)
                   for c in range(n_chunks)]
        chunks = []
        for c, fut in enumerate(futures):
            chunks.append(fut.result())
            print(f"chunk {c + 1}/{n_chunks} ready ({time.perf_counter() - t0:.0f} s)", file=sys.stderr, flush=True)
    return chunks


def run(args: argparse.Namespace, work: Path) -> dict[str, Any] | None:
    """Both stages (or the one of ``--stage``); ``work`` is a temporary folder for what --smoke makes. Returns the
    figures, or None after ``--stage simulate``."""
    for fam in FAMILIES:
        for split in ("test", "train"):
            if not (args.openfwi_dir / fam / f"{split}_vmodel.zip").is_file():
                sys.exit(f"error: {args.openfwi_dir / fam / f'{split}_vmodel.zip'}: real OpenFWI models not found "
                         "(set --openfwi-dir or SEISBIND_OPENFWI_DIR)")
    args.cache = args.cache or (work / "cache" if args.smoke else REPO / ".cache" / "ingest")
    models = test_models(args)
    chunks = simulate_all(args, models)
    if args.stage == "simulate":
        return None
    if args.bundle:
        bundles = [(b, None) for b in args.bundle]
    elif args.smoke:
        from benchmarks._serving import TINY_BUNDLE, export_default_bundle

        bundles = [(export_default_bundle(work / "bundle", tiny=True), TINY_BUNDLE)]
    else:
        bundles = [(REPO / "runs" / "qs" / "bundle", None)]
    headline, headline_name = bundles[0]
    result = evaluate(args, headline, models, chunks, bundle_name=headline_name)
    if len(bundles) > 1:
        result["other_bundles"] = {portable_path(b): evaluate(args, b, models, chunks) for b, _ in bundles[1:]}
    return result


def main(argv: Sequence[str] | None = None) -> dict[str, Any] | None:
    args = parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="seisbind-ingest-bench-") as tmp:
        result = run(args, Path(tmp))
    if result is None:
        return None
    print(json.dumps(result["targets"], indent=1))
    if not args.no_write:
        print(write_result("ingest", result, args.out, args.smoke))
    return result


if __name__ == "__main__":
    main()
