"""``seisbind refine``: retrieve the top-k bank models of shot gathers, build a start model from them, refine it
by full-waveform inversion, and write the refined models, misfit history, descriptors and figures
(docs/refine.md)."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any, Optional

import numpy as np
import typer

from seisbind.acquisition import GATHER_SHAPE
from seisbind.start_models import START_KINDS

METHODS = ("learned", "fwi", "both", "check")
FILES = {"refined": "refined.npy", "start": "start.npy", "misfit": "misfit.json", "descriptors": "descriptors.json",
         "figures": "figures"}


class RefineError(ValueError):
    """A refinement that cannot run as asked (bad input, a missing component)."""


def load_gathers(path: Path) -> np.ndarray:
    """Gathers from a .npy file: [5,1000,70] or [n,5,1000,70] -> float32 [n,5,1000,70]; RefineError naming the
    file and the problem otherwise."""
    from model.refine import check_gathers

    try:
        arr = np.load(path, allow_pickle=False)
    except (OSError, ValueError, EOFError) as e:
        raise RefineError(f"{path}: not a readable .npy file: {e}") from e
    try:
        g = check_gathers(arr)
    except ValueError as e:
        raise RefineError(f"{path}: {e}") from e
    if g.shape[1:] != GATHER_SHAPE:
        raise RefineError(f"{path}: gathers of shape {arr.shape}, expected {GATHER_SHAPE} or (n, *{GATHER_SHAPE})")
    return g


def learned_models(bundle: Any, gathers: np.ndarray, models: np.ndarray, D: np.ndarray) -> np.ndarray:
    """The learned refiner's models [n,70,70] m/s; RefineError when the bundle (or this build) has no refiner."""
    if not hasattr(bundle, "refiner"):
        raise RefineError("the learned refiner is not part of this build (seisbind.refiner.LearnedRefiner and "
                          "EncoderBundle.refiner are missing); use --method fwi with --start top1, topk, smooth or "
                          "bestfit")
    if bundle.refiner is None:
        raise RefineError(f"{bundle.dir}: the encoder bundle has no refiner.onnx (learned refiner); use --method fwi "
                          "with --start top1, topk, smooth or bestfit, or export a bundle with a refiner")
    return np.asarray(bundle.refiner.refine(gathers, models, D), np.float32).reshape(len(gathers), 70, 70)


def check_choice(method: str, start: Optional[str]) -> str:
    """The start kind to use for ``method`` (``--start`` or its default); RefineError for a bad combination."""
    if method not in METHODS:
        raise RefineError(f"--method {method!r}: expected one of {', '.join(METHODS)}")
    if start is not None and start not in START_KINDS:
        raise RefineError(f"--start {start!r}: expected one of {', '.join(START_KINDS)}")
    if method == "check":
        if start not in (None, "bestfit"):
            raise RefineError(f"--method check returns the neighbour whose simulated data fit best; drop --start "
                              f"{start} or use --method fwi")
        return "bestfit"
    if method in ("learned", "both"):
        if start not in (None, "learned"):
            raise RefineError(f"--method {method} starts from the learned refiner's model; drop --start {start} "
                              "or use --method fwi")
        return "learned"
    return start or "topk"


def retrieve(encoders: Path, index: Path, gathers: np.ndarray, k: int, for_refiner: bool = False
             ) -> tuple[Any, np.ndarray, np.ndarray, np.ndarray, list[list[str]]]:
    """(bundle, D [n,K] scores, I [n,K] entries, models [n,K,70,70] m/s, ids) of the top-K bank models: K = k, or
    with ``for_refiner`` at least the bundle's learned refiner's k."""
    from seisbind.bundle import EncoderBundle

    from index.searcher import Searcher

    bundle = EncoderBundle(encoders)
    searcher = Searcher.load(index, expected_bundle_id=bundle.bundle_id)
    if not 1 <= k <= searcher.count:
        raise RefineError(f"--k {k}: must be in 1..{searcher.count} (the index's size)")
    if for_refiner and bundle.refiner is not None:
        k = max(k, min(bundle.refiner.k, searcher.count))
    D, I = searcher.search(bundle.seismic.encode(gathers), k)
    models = searcher.velocity_models(I)[:, :, 0]
    return bundle, D, I, models, [[searcher.ids[int(i)] for i in row] for row in I]


def start_models(kind: str, bundle: Any, gathers: np.ndarray, models: np.ndarray, D: np.ndarray, k: int,
                 misfits: np.ndarray | None = None) -> np.ndarray:
    """Start models [n,70,70] m/s of ``kind`` for every gather set, from its best ``k`` neighbours (the learned
    refiner takes as many of the retrieved ones as its graph needs; ``bestfit`` needs their ``misfits`` [n,k])."""
    from seisbind.start_models import start_model

    learned = learned_models(bundle, gathers, models, D) if kind == "learned" else None
    return np.stack([start_model(kind, models[j, :k], D[j, :k], None if learned is None else learned[j],
                                 None if misfits is None else misfits[j]) for j in range(len(gathers))])


def run_fwi(gathers: np.ndarray, starts: np.ndarray, config: Any, quiet: bool) -> list[Any]:
    """FWI of each gather set in turn, with a progress bar over all steps."""
    from seisbind.progress import progress

    from model.refine import refine_fwi

    total = len(gathers) * config.iterations
    bar = progress(total, "refine", enabled=not quiet and total > 0)
    results = []
    try:
        for j in range(len(gathers)):
            done = [0]

            def step(i: int, misfit: float) -> None:
                bar.update(1)
                bar.set_postfix(gather=j + 1, misfit=f"{misfit:.4g}")
                done[0] = i

            results.append(refine_fwi(gathers[j], starts[j], config, progress=step))
            bar.update(config.iterations - done[0])  # a plateau or the time budget ended it early
    finally:
        bar.close()
    return results


def write_outputs(out: Path, gathers: np.ndarray, starts: np.ndarray, results: list[Any], meta: dict[str, Any],
                  figures: int) -> dict[str, Any]:
    """Write refined.npy, start.npy, misfit.json, descriptors.json and figures/ under ``out``; returns a summary."""
    from seisbind.descriptors import DESCRIPTOR_NAMES, as_dicts, compute_descriptors
    from seisbind.files import save_npy_atomic, write_json_atomic

    from model.refine_figure import refine_figure
    from model.simulator import simulate

    out.mkdir(parents=True, exist_ok=True)
    refined = np.stack([r.model for r in results])[:, None].astype(np.float32)
    save_npy_atomic(out / FILES["start"], starts[:, None].astype(np.float32))
    save_npy_atomic(out / FILES["refined"], refined)
    per = [{"start_misfit": r.start_misfit, "final_misfit": r.final_misfit, "iterations": r.iterations,
            "seconds": r.seconds, "stopped": r.stopped, "misfit_history": r.misfit_history,
            "band_history_hz": r.band_history, **{k: v[j] for k, v in meta.pop("per_gather").items()}}
           for j, r in enumerate(results)]
    write_json_atomic(out / FILES["misfit"], {**meta, "results": per})
    write_json_atomic(out / FILES["descriptors"], {"names": list(DESCRIPTOR_NAMES),
                                                   "descriptors": as_dicts(compute_descriptors(refined))})
    shown = min(figures, len(results))
    if shown:
        (out / FILES["figures"]).mkdir(exist_ok=True)
        residual = simulate(refined[:shown]) - gathers[:shown]
        for j in range(shown):
            refine_figure(out / FILES["figures"] / f"refine_{j + 1}.png", gathers[j], starts[j], results[j].model,
                          residual[j], results[j].misfit_history,
                          f"gather set {j + 1}: {meta['method']} from {meta['start']}, misfit "
                          f"{results[j].start_misfit:.4g} -> {results[j].final_misfit:.4g}")
    return {"out": str(out), "gathers": len(results), "method": meta["method"], "start": meta["start"],
            "start_misfit": [r.start_misfit for r in results], "final_misfit": [r.final_misfit for r in results],
            "files": [FILES[k] for k in ("refined", "start", "misfit", "descriptors")]}


def refine(encoders: Path, index: Path, gathers_path: Path, out: Path, method: str = "fwi",
           start: Optional[str] = None, k: int = 5, config: Any = None, figures: int = 10,
           quiet: bool = False) -> dict[str, Any]:
    """The whole command: retrieve, start, refine (FWI for methods ``fwi`` and ``both``), write. Raises
    RefineError (and the index's/bundle's own errors) naming the problem."""
    from model.refine import FwiConfig
    from model.rerank import best_fit, neighbour_misfits

    kind = check_choice(method, start)
    config = config or FwiConfig()
    gathers = load_gathers(gathers_path)
    bundle, D, I, models, ids = retrieve(encoders, index, gathers, k, kind == "learned")
    misfits = None if method == "learned" else neighbour_misfits(gathers, models[:, :k])
    starts = start_models(kind, bundle, gathers, models, D, k, misfits)
    fwi_config = config if method in ("fwi", "both") else dataclasses.replace(config, iterations=0)
    results = run_fwi(gathers, starts, fwi_config, quiet)
    meta = {"method": method, "start": kind, "k": k, "gathers_file": str(gathers_path),
            "config": dataclasses.asdict(fwi_config),
            "per_gather": {"neighbour_ids": ids, "neighbour_scores": D.tolist(), "neighbour_entries": I.tolist(),
                           **({} if misfits is None else {"neighbour_misfits": misfits.tolist(),
                                                          "best_fit_rank": best_fit(misfits).tolist()})}}
    return write_outputs(out, gathers, starts, results, meta, figures)


def refine_command(
    encoders: Path = typer.Option(..., "--encoders", help="encoder bundle folder"),
    index: Path = typer.Option(..., "--index", help="index root (versions + CURRENT)"),
    gathers: Path = typer.Option(..., "--gathers", help=".npy of gathers [5,1000,70] or [n,5,1000,70]"),
    out: Path = typer.Option(..., "--out", help="output folder (refined.npy, misfit.json, descriptors.json, figures)"),
    method: str = typer.Option("fwi", "--method", help="learned | fwi | both (learned refiner, then FWI) | check (the "
                               "neighbour whose simulated data fit best, no FWI)"),
    start: Optional[str] = typer.Option(None, "--start", help="FWI start: learned | top1 | topk | smooth | bestfit "
                                        "(the neighbour whose simulated data fit best; default topk; learned for "
                                        "--method learned/both)"),
    iterations: int = typer.Option(60, "--iterations", help="FWI steps per gather set"),
    k: int = typer.Option(5, "--k", help="retrieved neighbours the start is built from"),
    max_seconds: float = typer.Option(120.0, "--max-seconds", help="FWI time budget per gather set"),
    seed: int = typer.Option(0, "--seed"),
    threads: Optional[int] = typer.Option(None, "--threads", envvar="SEISBIND_THREADS", help="torch threads"),
    figures: int = typer.Option(10, "--figures", help="figures written (first N gather sets)"),
) -> None:
    """Refine the retrieved models of gathers by full-waveform inversion (docs/refine.md)."""
    import torch

    from seisbind.bundle import BundleError

    from cli.main import fail
    from index.store import IndexStoreError
    from model.refine import FwiConfig

    if threads:
        torch.set_num_threads(threads)
    try:
        config = FwiConfig(iterations=iterations, max_seconds=max_seconds, seed=seed)
        summary = refine(encoders, index, gathers, out, method, start, k, config, figures)
    except (RefineError, BundleError, IndexStoreError, ValueError, OSError) as e:
        fail(str(e))
    typer.echo(json.dumps(summary))
