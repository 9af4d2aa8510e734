"""FAISS indexes over L2-normalised embeddings (inner product = cosine): construction, recall-driven choice of
nprobe / efSearch, and per-call search parameters (a shared index is never mutated by a search)."""

from __future__ import annotations

import logging
import math
from typing import Any

import faiss
import numpy as np

from seisbind.neighbours import exact_top_k

log = logging.getLogger("seisbind.index")

INDEX_TYPES = ("auto", "flat", "ivf", "hnsw")
EXACT_MAX = 1_000_000
"""Largest bank that "auto" indexes with exact search."""
RECALL_K = 10
NPROBE_LADDER = (1, 2, 4, 8, 12, 16, 24, 32, 48, 64, 96, 128, 192, 256, 384, 512, 768, 1024, 1536, 2048)
EF_LADDER = (16, 24, 32, 48, 64, 96, 128, 192, 256, 384, 512, 768, 1024, 1536, 2048, 4096)
HNSW_M = 32
HNSW_EF_CONSTRUCTION = 80
TRAIN_POINTS_PER_LIST = 40
"""k-means training points per IVF list (FAISS warns below 39)."""
TUNING_QUERIES = 1000
QUERY_NOISE = 0.75
"""Norm of the Gaussian perturbation added to bank embeddings to make tuning queries (cosine ~0.8 to the entry)."""


BLAS_THRESHOLD_PER_THREAD = 800
"""Exact-search crossover between faiss's sequential SIMD scan and BLAS, in query values (nq * d) per OpenMP
thread (faiss PR #5109 measures BLAS winning from nq * d ~ 640-1280 on one thread)."""
FAISS_115_BLAS_THRESHOLD = 128000
"""faiss 1.15's default ``distance_compute_blas_threshold``: BLAS only when nq * d >= 128000."""
_DEFAULT_BLAS_THRESHOLD = int(faiss.cvar.distance_compute_blas_threshold)


def set_search_threads(threads: int) -> None:
    """OpenMP threads of the faiss searches made from the calling thread (an OpenMP per-thread setting, so a
    serving worker can search on one thread while an index build in another thread uses them all)."""
    faiss.omp_set_num_threads(max(1, int(threads)))


def configure_blas_threshold(threads: int | None = None) -> int:
    """Let exact (flat) searches of a few dozen queries use BLAS on machines with few cores.

    faiss 1.15 sends a flat search to BLAS only when nq * d >= 128000, a crossover tuned for many cores; on one
    or two cores a batch of 100 queries of dim 256 then runs ~20x slower than with BLAS (measured here). When
    faiss has that default, this sets the process-wide ``distance_compute_blas_threshold`` to 800 per thread;
    other faiss versions (older ones count queries, default 20) are left alone. Returns the threshold in force.
    """
    if _DEFAULT_BLAS_THRESHOLD == FAISS_115_BLAS_THRESHOLD:
        threads = threads or faiss.omp_get_max_threads()
        faiss.cvar.distance_compute_blas_threshold = BLAS_THRESHOLD_PER_THREAD * max(1, threads)
    return int(faiss.cvar.distance_compute_blas_threshold)


def check_index_type(index_type: str) -> str:
    """Validate an index type name ("auto", "flat", "ivf", "hnsw")."""
    if index_type not in INDEX_TYPES:
        raise ValueError(f"index type {index_type!r}: expected one of {', '.join(INDEX_TYPES)}")
    return index_type


def check_recall_target(recall_target: float) -> float:
    """Validate a recall@10 target in (0, 1]."""
    if not 0.0 < float(recall_target) <= 1.0:
        raise ValueError(f"recall target {recall_target}: must be in (0, 1]")
    return float(recall_target)


def resolve_type(index_type: str, n: int) -> str:
    """The concrete index type for a bank of ``n`` entries: "auto" is exact up to EXACT_MAX, IVF beyond."""
    check_index_type(index_type)
    if index_type == "auto":
        return "flat" if n <= EXACT_MAX else "ivf"
    return index_type


def ivf_nlist(n: int) -> int:
    """IVF list count: about 4 sqrt(n), with at least 39 training points per list."""
    return max(1, min(int(round(4 * math.sqrt(n))), n // 39))


def neighbour_recall(I: np.ndarray, I_ref: np.ndarray, k: int = RECALL_K) -> np.ndarray:  # noqa: E741
    """Per-query recall@k of an approximate search against the exact one: the fraction of each row of
    ``I_ref[:, :k]`` found in ``I[:, :k]`` ([nq] float)."""
    a, b = I[:, :k], I_ref[:, :k]
    hits = (a[:, :, None] == b[:, None, :]) & (b[:, None, :] >= 0)
    return hits.any(axis=1).sum(axis=1) / k


def perturbed_queries(xb: np.ndarray, nq: int, noise: float = QUERY_NOISE, seed: int = 0) -> np.ndarray:
    """``nq`` bank vectors (sampled without replacement) plus Gaussian noise of norm ~``noise``, re-normalised."""
    rng = np.random.default_rng(seed)
    idx = rng.choice(len(xb), size=min(nq, len(xb)), replace=False)
    q = np.asarray(xb[np.sort(idx)], dtype=np.float32)
    q = q + (noise / math.sqrt(q.shape[1])) * rng.standard_normal(q.shape, dtype=np.float32)
    faiss.normalize_L2(q)
    return q


def search_params(params: dict[str, Any], k: int) -> faiss.SearchParameters | None:
    """Per-call FAISS search parameters for an index described by ``params`` (the manifest's "index")."""
    if params["type"] == "ivf":
        return faiss.SearchParametersIVF(nprobe=int(params["nprobe"]))  # type: ignore[call-arg]
    if params["type"] == "hnsw":
        return faiss.SearchParametersHNSW(efSearch=max(int(params["efSearch"]), k))  # type: ignore[attr-defined]
    return None


def _tune(index: faiss.Index, kind: str, ladder: list[int], xq: np.ndarray, I_ref: np.ndarray,
          recall_target: float) -> tuple[int, float]:
    """Smallest ladder value whose recall@k (k = I_ref's width: 10 unless the bank is smaller) meets the target
    with a margin of two standard errors."""
    k = I_ref.shape[1]
    best = (ladder[-1], 0.0)
    for value in ladder:
        params = search_params({"type": kind, "nprobe": value, "efSearch": value}, k)
        _, I = index.search(xq, k, params=params)
        r = neighbour_recall(I, I_ref, k)
        mean, se = float(r.mean()), float(r.std() / math.sqrt(len(r)))
        log.info("tuning %s: %s=%d recall@10=%.4f", kind, "nprobe" if kind == "ivf" else "efSearch", value, mean)
        best = (value, mean)
        if mean - 2 * se >= recall_target or mean >= 1.0:
            return best
    log.warning("tuning %s: recall target %.3f not reached (%.4f at the largest setting %d)",
                kind, recall_target, best[1], best[0])
    return best


def build_ann(xb: np.ndarray, index_type: str = "auto", recall_target: float = 0.95, seed: int = 0,
              n_queries: int = TUNING_QUERIES) -> tuple[faiss.Index, dict[str, Any]]:
    """Build a FAISS inner-product index over ``xb`` [n, d] float32 (L2-normalised rows).

    IVF and HNSW search parameters are chosen here: the smallest nprobe / efSearch whose recall@10 against exact
    search, on ``n_queries`` perturbed bank vectors, meets ``recall_target``. Returns (index, parameters), the
    parameters being what the manifest records and :func:`search_params` reads.
    """
    xb = np.ascontiguousarray(xb, dtype=np.float32)
    n, d = xb.shape
    configure_blas_threshold()
    kind = resolve_type(index_type, n)
    check_recall_target(recall_target)
    params: dict[str, Any] = {"type": kind, "metric": "inner_product"}
    if kind == "flat":
        index: faiss.Index = faiss.IndexFlatIP(d)
        index.add(xb)
        params["faiss_class"] = "IndexFlatIP"
        return index, params
    if kind == "ivf":
        nlist = ivf_nlist(n)
        index = faiss.IndexIVFFlat(faiss.IndexFlatIP(d), d, nlist, faiss.METRIC_INNER_PRODUCT)
        rng = np.random.default_rng(seed)
        n_train = min(n, TRAIN_POINTS_PER_LIST * nlist)
        train = xb if n_train == n else xb[np.sort(rng.choice(n, n_train, replace=False))]
        index.train(train)
        index.add(xb)
        ladder = [p for p in NPROBE_LADDER if p < nlist] + [nlist]
        params.update(faiss_class="IndexIVFFlat", nlist=nlist, train_points=int(n_train))
    else:
        hnsw = faiss.IndexHNSWFlat(d, HNSW_M, faiss.METRIC_INNER_PRODUCT)
        hnsw.hnsw.efConstruction = HNSW_EF_CONSTRUCTION
        index = hnsw
        index.add(xb)
        ladder = list(EF_LADDER)
        params.update(faiss_class="IndexHNSWFlat", M=HNSW_M, efConstruction=HNSW_EF_CONSTRUCTION)
    xq = perturbed_queries(xb, n_queries, seed=seed + 1)
    k = min(RECALL_K, n)
    _, I_ref = exact_top_k(xq, xb, k)
    value, recall = _tune(index, kind, ladder, xq, I_ref, recall_target)
    params["nprobe" if kind == "ivf" else "efSearch"] = int(value)
    params["tuning"] = {"recall_target": recall_target, "recall_at_10": round(recall, 5), "queries": len(xq),
                        "query_noise": QUERY_NOISE, "reference": "exact inner product"}
    return index, params
