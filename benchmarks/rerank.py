"""Retrieve, then check by physics (docs/refine.md, "Neighbours' data fit"): the embedding's top-k candidates
re-ranked by the data misfit of their simulated gathers (``model.rerank``), against the embedding's own order. One
section of ``benchmarks/results/retrieval_ood.json`` per run (``--section``), the other sections stay.

* P1 within the test folders' models (the gallery: for a held-out family its 1,000 test models): R@1 of the
  embedding, R@1 after re-ranking its top-k, and R@k (what re-ranking can reach at best);
* P2 against the bank: the top-1's MAE before and after re-ranking, the descriptor error of the 5 candidates that
  fit best beside the embedding's 5 nearest, the best of the k (what a perfect re-ranker of k could return) and the
  bank's limit (the bank model nearest to the true model by pixel L2).

No inverse crime: the query gathers come from another forward model (``benchmarks._fine_gathers``: a 5 m / 0.5 ms
grid) plus white noise at ``--snr-db``; candidates are compared through the project simulator's gathers, read from
the paired test and bank folders, which hold exactly what ``model.simulator.simulate`` returns for their models
(checked on a sample every run: ``stored_gathers_check``).

    flock /tmp/seisbind-cpu.lock python -m benchmarks.rerank --bundle BUNDLE --test FOLDER [--test ...] \\
        --bank FOLDER [--bank ...] [--queries 500] [--k 10] [--snr-db 10] --section SECTION
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_NUM_THREADS", "2")

import argparse  # noqa: E402
import datetime as dt  # noqa: E402
import hashlib  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from collections.abc import Sequence  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any  # noqa: E402

import numpy as np  # noqa: E402

from seisbind.descriptors import compute_descriptors, mean_relative_error  # noqa: E402
from seisbind.files import save_npy_atomic  # noqa: E402
from seisbind.neighbours import exact_top_k  # noqa: E402
from seisbind.noise import snr_db  # noqa: E402
from seisbind.openfwi import PairedDataset, open_dataset  # noqa: E402
from seisbind.progress import progress  # noqa: E402
from seisbind.provenance import git_commit, portable_path  # noqa: E402

from benchmarks._common import REPO, add_output_args, benchmark_command, result_folder, write_section  # noqa: E402
from benchmarks._fine_gathers import FORWARD_MODEL, fine_gathers, with_noise  # noqa: E402


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--bundle", type=Path, help="encoder bundle")
    p.add_argument("--test", type=Path, action="append", default=[], help="paired test folder (the gallery; repeat)")
    p.add_argument("--bank", type=Path, action="append", default=[], help="paired bank folder (repeat)")
    p.add_argument("--queries", type=int, default=500, help="query gathers, spread evenly over the gallery")
    p.add_argument("--k", type=int, default=10, help="candidates re-ranked per query")
    p.add_argument("--snr-db", type=float, default=10.0, help="SNR of the white noise on the query gathers, dB")
    p.add_argument("--no-noise", action="store_true", help="query gathers without noise (the fine-grid simulation)")
    p.add_argument("--seed", type=int, default=0, help="noise seed")
    p.add_argument("--fwi-queries", type=int, default=0,
                   help="also refine the first N queries by FWI from the top-1 and from the best-fitting candidate")
    p.add_argument("--fwi-iterations", type=int, default=20, help="FWI steps per query")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--work", type=Path, default=REPO / ".cache" / "rerank", help="cache of the query gathers")
    p.add_argument("--section", default="heldout_rerank", help="key of retrieval_ood.json the figures go under")
    add_output_args(p)
    a = p.parse_args(argv)
    a.result = result_folder(a.out, a.smoke) / "retrieval_ood.json"
    if a.smoke:
        a.queries, a.k, a.fwi_queries, a.fwi_iterations = 6, 3, 2, 2
        a.work = Path(tempfile.mkdtemp(prefix="seisbind-rerank-smoke-"))
    elif not (a.bundle and a.test and a.bank):
        p.error("--bundle, --test and --bank are needed")
    if a.k < 2:
        p.error("--k: at least 2 candidates to re-rank")
    return a


class Folders:
    """Models and simulated gathers of paired folders, concatenated (gathers memory-mapped)."""

    def __init__(self, folders: Sequence[Path]) -> None:
        sets: list[PairedDataset] = [open_dataset(f) for f in folders]
        self.models = np.concatenate([np.asarray(m) for d in sets for m in d.models])  # [n,1,70,70]
        self.parts = [g for d in sets for g in d.data]
        self.offsets = np.concatenate([[0], np.cumsum([len(g) for g in self.parts])])

    def gathers(self, rows: np.ndarray) -> np.ndarray:
        """Stored gathers of global rows -> [len(rows),5,1000,70]."""
        out = []
        for i in np.asarray(rows).reshape(-1):
            f = int(np.searchsorted(self.offsets, i, side="right") - 1)
            out.append(np.asarray(self.parts[f][i - self.offsets[f]]))
        return np.stack(out)


def query_gathers(a: argparse.Namespace, gallery: Folders, rows: np.ndarray) -> tuple[np.ndarray, float | None]:
    """Fine-grid gathers of the gallery models ``rows`` (cached under ``--work``, noise-free) plus the noise, and the
    median SNR they have (dB; None without noise)."""
    key = hashlib.sha1("|".join(str(Path(t).resolve()) for t in a.test).encode()).hexdigest()[:10]
    path = a.work / f"fine-{Path(a.test[0]).name}-{key}-{len(rows)}.npy"
    if path.exists():
        clean = np.load(path)
    else:
        t0 = time.perf_counter()
        clean = fine_gathers(gallery.models[rows, 0], 0.0, 0)  # 0: no noise
        print(f"fine-grid simulation: {len(rows)} models in {time.perf_counter() - t0:.0f} s", flush=True)
        save_npy_atomic(path, clean.astype(np.float32))
    if a.no_noise:
        return clean, None
    q = with_noise(clean, a.snr_db, a.seed)
    return q, float(np.median(snr_db(clean, q)))


def misfits(queries: np.ndarray, store: Folders, I: np.ndarray, desc: str) -> np.ndarray:  # noqa: E741
    """Data misfit [nq,k] of each query's candidates ``I`` [nq,k] (rows of ``store``)."""
    from model.rerank import relative_misfit

    bar = progress(len(I), desc)
    out = np.empty(I.shape)
    for q in range(len(I)):
        out[q] = relative_misfit(queries[q], store.gathers(I[q]))
        bar.update(1)
    bar.close()
    return out


def p1_figures(rows: np.ndarray, I: np.ndarray, m: np.ndarray) -> dict[str, float]:  # noqa: E741
    """R@1 of the embedding, after re-ranking by misfit, and R@k (the query's own model is gallery row ``rows``)."""
    from model.rerank import best_fit

    hit = I == rows[:, None]
    pick = np.take_along_axis(I, best_fit(m)[:, None], 1)[:, 0]
    return {"R@1": float(hit[:, 0].mean()), "R@1_reranked": float(np.mean(pick == rows)),
            f"R@{I.shape[1]}": float(hit.any(1).mean()),
            "true_model_fits_best_when_in_top_k": float(np.mean(pick[hit.any(1)] == rows[hit.any(1)]))}


def oracle_fit(queries: np.ndarray, bank: Folders, rows: np.ndarray, m: np.ndarray) -> dict[str, float]:
    """Does the data single out the pixel-L2 oracle? Its data misfit against that of the best-fitting candidate."""
    om = misfits(queries, bank, rows[:, None], "misfits (oracle)")[:, 0]
    best = m.min(axis=1)
    return {"oracle_data_misfit_median": float(np.median(om)), "reranked_data_misfit_median": float(np.median(best)),
            "reranked_fits_better_than_oracle": float(np.mean(best < om))}


def p2_figures(truth: np.ndarray, bank: Folders, I: np.ndarray, m: np.ndarray, oracle_each: np.ndarray,  # noqa: E741
               k_desc: int = 5) -> dict[str, float]:
    """Top-1 MAE and descriptor error before and after re-ranking, the best of the k, and the bank's limit."""
    from model.rerank import rerank

    t = truth.astype(np.float64)
    cand = bank.models[I].astype(np.float64)  # [nq,k,1,70,70]
    mae = np.abs(cand - t[:, None]).mean(axis=(2, 3, 4))  # [nq,k]
    order = rerank(m)
    true_desc = compute_descriptors(truth)
    bank_desc = compute_descriptors(bank.models[I.reshape(-1)]).reshape(*I.shape, -1)
    by_fit = np.take_along_axis(bank_desc, order[:, :k_desc, None], 1)
    oracle = float(oracle_each.mean())
    fig = {"top1_mae_mps": float(mae[:, 0].mean()), "top1_mae_reranked_mps": float(
        np.take_along_axis(mae, order[:, :1], 1).mean()), "best_of_k_mae_mps": float(mae.min(1).mean()),
        "oracle_top1_mae_mps": oracle, "descriptor_mre": mean_relative_error(bank_desc[:, :k_desc].mean(1), true_desc),
        "descriptor_mre_reranked": mean_relative_error(by_fit.mean(1), true_desc),
        "reranked_not_top1": float(np.mean(order[:, 0] > 0))}
    fig["top1_mae_over_oracle"] = fig["top1_mae_mps"] / oracle
    fig["top1_mae_reranked_over_oracle"] = fig["top1_mae_reranked_mps"] / oracle
    return fig


def fwi_figures(a: argparse.Namespace, q: np.ndarray, truth: np.ndarray, bank: Folders, I: np.ndarray,  # noqa: E741
                m: np.ndarray, oracle_each: np.ndarray) -> dict[str, Any]:
    """FWI (``--fwi-iterations`` steps) of the first ``--fwi-queries`` queries from the embedding's top-1 and from
    the best-fitting candidate: MAE and descriptor error of each start and result, beside the bank's limit."""
    from model.refine import FwiConfig, refine_fwi_batch
    from model.rerank import best_fit

    n = min(a.fwi_queries, len(q))
    qn, t = q[:n], truth[:n].astype(np.float64)
    true_desc = compute_descriptors(truth[:n])
    out: dict[str, Any] = {"queries": n, "iterations": a.fwi_iterations,
                           "oracle_top1_mae_mps": float(oracle_each[:n].mean())}
    picks = {"top1": I[:n, 0], "bestfit": I[np.arange(n), best_fit(m[:n])]}
    for name, rows in picks.items():
        start = bank.models[rows, 0]
        t0 = time.perf_counter()
        res = [r for s in range(0, n, 8) for r in refine_fwi_batch(qn[s:s + 8], start[s:s + 8],
                                                                     FwiConfig(iterations=a.fwi_iterations))]
        refined = np.stack([r.model for r in res])[:, None]
        out[name] = {"start_mae_mps": float(np.abs(start[:, None] - t).mean()),
                     "refined_mae_mps": float(np.abs(refined - t).mean()),
                     "start_descriptor_mre": mean_relative_error(compute_descriptors(start[:, None]), true_desc),
                     "refined_descriptor_mre": mean_relative_error(compute_descriptors(refined), true_desc),
                     "seconds_per_query": (time.perf_counter() - t0) / n}
        out[name]["refined_mae_over_oracle"] = out[name]["refined_mae_mps"] / out["oracle_top1_mae_mps"]
    return out


def stored_gathers_check(store: Folders, rows: np.ndarray) -> dict[str, float]:
    """Simulate a few stored models again (``model.simulator.simulate``, the forward model a service would run on
    candidates): their misfit against the stored gathers (should be ~0) and the seconds per model."""
    from model.rerank import neighbour_misfits

    t0 = time.perf_counter()
    m = neighbour_misfits(store.gathers(rows), store.models[rows][:, None])
    seconds = (time.perf_counter() - t0) / len(rows)
    return {"models": int(len(rows)), "max_misfit": float(m.max()), "simulate_seconds_per_model": seconds}


def run(a: argparse.Namespace) -> dict[str, Any]:
    """The figures of one section."""
    from model.evaluate import embed_arrays, onnx_embedder, pixel_nearest

    gallery, bank = Folders(a.test), Folders(a.bank)
    rows = np.unique(np.linspace(0, len(gallery.models) - 1, min(a.queries, len(gallery.models))).astype(int))
    q, measured_snr = query_gathers(a, gallery, rows)
    emb = onnx_embedder(a.bundle, threads=a.threads).encode
    S = embed_arrays(emb["seismic"], [q], 64, "embed queries")
    V = embed_arrays(emb["velocity"], [gallery.models], 256, "embed gallery")
    VB = embed_arrays(emb["velocity"], [bank.models], 256, "embed bank")
    _, I1 = exact_top_k(S, V, a.k)
    _, I2 = exact_top_k(S, VB, a.k)
    t0 = time.perf_counter()
    m1 = misfits(q, gallery, I1, "misfits (gallery)")
    misfit_s = (time.perf_counter() - t0) / I1.size
    m2 = misfits(q, bank, I2, "misfits (bank)")
    truth = gallery.models[rows]
    oracle_rows, oracle_each = pixel_nearest(bank.models, truth)
    oracle_rows = oracle_rows[:, 0]
    fwi = fwi_figures(a, q, truth, bank, I2, m2, oracle_each) if a.fwi_queries > 0 else None
    return {"p1": {**p1_figures(rows, I1, m1), "gallery_size": int(len(V))}, **({"fwi": fwi} if fwi else {}),
            "p2": {**p2_figures(truth, bank, I2, m2, oracle_each), **oracle_fit(q, bank, oracle_rows, m2),
                   "bank_size": int(len(VB))},
            "stored_gathers_check": {**stored_gathers_check(bank, I2[:2, :2].reshape(-1)),
                                     "misfit_seconds_per_candidate": misfit_s},
            "setup": {"bundle": portable_path(a.bundle), "test": [portable_path(t) for t in a.test],
                      "bank": [portable_path(b) for b in a.bank], "queries": int(len(rows)), "k": a.k,
                      "snr_db": None if a.no_noise else a.snr_db, "measured_snr_db_median": measured_snr,
                      "forward_model_of_queries": FORWARD_MODEL,
                      "candidates_simulated_by": "model.simulator.simulate (10 m / 1 ms)",
                      "command": benchmark_command(), "git_commit": git_commit(),
                      "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")}}


def smoke_setup(a: argparse.Namespace) -> None:
    """--smoke: tiny simulated folders and an untrained tiny bundle (the figures mean nothing)."""
    from benchmarks._ood_data import simulate_family
    from model.config import ModelConfig, TrainConfig
    from model.export import export_run
    from model.train import train

    a.test = [simulate_family(a.work / "test", "inversion-a", 8, 1)]
    a.bank = [simulate_family(a.work / "bank", "flatvel-a", 12, 2)]
    train(TrainConfig(data=tuple(str(f) for f in a.bank), out=str(a.work / "run"), epochs=1, batch_size=4,
                      threads=a.threads, progress=False, model=ModelConfig.tiny(), val_fraction=0.0, amp="off"))
    export_run(a.work / "run", a.work / "bundle")
    a.bundle = a.work / "bundle"


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    a = parse_args(argv)
    import torch

    torch.set_num_threads(a.threads)
    if a.smoke:
        smoke_setup(a)
    section = run(a)
    write_section("retrieval_ood", a.section, section, a.result.parent, smoke=a.smoke)
    print({"p1": section["p1"], "p2": {k: round(v, 4) for k, v in section["p2"].items()}})
    return section


if __name__ == "__main__":
    main()
