"""Paired-retrieval metrics on embeddings, shared by training validation and evaluation: the rank of each query's
positive, recall@k over those ranks, and mean similarities of positive and negative pairs. Numpy only."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

KS = (1, 5, 10)


def true_ranks(Q: np.ndarray, G: np.ndarray, block: int = 1024) -> np.ndarray:
    """0-based rank of each query's positive, gallery row i for query i, under cosine (inner product of
    L2-normalised rows). Ties count against the query: rank = number of *other* gallery rows scoring >= the
    positive, so identical embeddings never look like a hit.

    Q: [nq, d]; G: [ng, d] with ng >= nq. Returns [nq] int64."""
    nq = len(Q)
    if len(G) < nq:
        raise ValueError(f"gallery of {len(G)} rows is smaller than the {nq} queries it must hold")
    ranks = np.empty(nq, np.int64)
    for s in range(0, nq, block):
        sim = Q[s:s + block] @ G.T  # [b, ng]
        rows = np.arange(sim.shape[0])
        pos = sim[rows, s + rows]
        ranks[s:s + block] = (sim >= pos[:, None]).sum(1) - 1
    return ranks


def recall_at_k(ranks: np.ndarray, ks: Sequence[int] = KS) -> dict[str, float]:
    """{"R@k": fraction of queries whose positive ranks within the top k}, from :func:`true_ranks`."""
    return {f"R@{k}": float(np.mean(ranks < k)) for k in ks}


def pos_neg_similarity(Q: np.ndarray, G: np.ndarray, block: int = 1024) -> tuple[float, float, np.ndarray, np.ndarray]:
    """Mean cosine of positive pairs (Q[i], G[i]) and of all negative pairs; plus the positive similarities [nq]
    and a sample of up to 100,000 negative similarities (for histograms)."""
    nq, ng = len(Q), len(G)
    pos = np.einsum("ij,ij->i", Q, G[:nq])
    neg_sum = 0.0
    rng = np.random.default_rng(0)
    sample: list[np.ndarray] = []
    per_block = max(1, 100_000 * block // max(nq, 1))
    for s in range(0, nq, block):
        sim = Q[s:s + block] @ G.T
        rows = np.arange(sim.shape[0])
        neg_sum += float(sim.sum(dtype=np.float64) - sim[rows, s + rows].sum(dtype=np.float64))
        mask = np.ones_like(sim, dtype=bool)
        mask[rows, s + rows] = False
        negs = sim[mask]
        sample.append(rng.choice(negs, size=min(per_block, len(negs)), replace=False))
    n_neg = nq * ng - nq
    return float(pos.mean()), float(neg_sum / max(n_neg, 1)), pos, np.concatenate(sample)[:100_000]


def retrieval_report(Q: np.ndarray, G: np.ndarray, ks: Sequence[int] = KS) -> dict[str, float]:
    """R@k, mean_pos_sim and mean_neg_sim of queries Q against gallery G (positive of query i = G[i])."""
    rep = recall_at_k(true_ranks(Q, G), ks)
    mp, mn, _, _ = pos_neg_similarity(Q, G)
    rep.update(mean_pos_sim=mp, mean_neg_sim=mn)
    return rep
