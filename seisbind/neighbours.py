"""Exact nearest neighbours and what is inferred from them, one implementation each, shared by evaluation and the
service: exact cosine and Euclidean top-k, descriptors averaged over the k nearest bank entries (plain or
similarity-weighted mean, with their spread), and the consensus pick among the k nearest models. Numpy only."""

from __future__ import annotations

from typing import Literal

import numpy as np

Weighting = Literal["mean", "similarity"]
WEIGHTINGS: tuple[Weighting, ...] = ("mean", "similarity")
SIMILARITY_FLOOR = 1e-6
BLOCK_VALUES = 1 << 25
"""Similarity values computed at once by :func:`exact_top_k` (128 MB of float32)."""


def exact_top_k(Q: np.ndarray, G: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Exact top-k by inner product (cosine for L2-normalised rows): (D [nq, k] float32 scores, I [nq, k] int64
    gallery rows), best first; ties keep the lower row first. ``k`` is capped at the gallery size."""
    k = min(int(k), len(G))
    D = np.empty((len(Q), k), np.float32)
    I = np.empty((len(Q), k), np.int64)  # noqa: E741 - faiss naming
    if k == 0:
        return D, I
    block = max(1, min(1024, BLOCK_VALUES // max(len(G), 1)))
    for s in range(0, len(Q), block):
        sim = np.asarray(Q[s:s + block], np.float32) @ np.asarray(G, np.float32).T
        part = np.argpartition(-sim, k - 1, axis=1)[:, :k]
        ps = np.take_along_axis(sim, part, 1)
        order = np.lexsort((part, -ps), axis=1)
        I[s:s + block] = np.take_along_axis(part, order, 1)
        D[s:s + block] = np.take_along_axis(ps, order, 1)
    return D, I


def l2_top_k(Q: np.ndarray, G: np.ndarray, k: int) -> np.ndarray:
    """Rows [nq, k] (int64) of the ``k`` rows of ``G`` nearest to each row of ``Q`` by Euclidean distance, nearest
    first (both [n, d], any shape after the first axis is flattened). ``|q - g|^2`` ranks as ``-(2 q.g - |g|^2)``:
    :func:`exact_top_k` over one more column, after both are centred on ``G``'s mean (float32 round-off)."""
    g = np.asarray(G, np.float64).reshape(len(G), -1)
    centre = g.mean(0)
    g32 = (g - centre).astype(np.float32)
    q32 = (np.asarray(Q, np.float64).reshape(len(Q), -1) - centre).astype(np.float32)
    _, idx = exact_top_k(np.hstack([q32, -np.ones((len(q32), 1), np.float32)]),
                         np.hstack([2 * g32, (g32.astype(np.float64) ** 2).sum(1, keepdims=True).astype(np.float32)]),
                         k)
    return idx


def neighbour_weights(scores: np.ndarray, weighting: Weighting) -> np.ndarray:
    """Weights of k neighbours summing to 1: equal (``mean``), or proportional to the cosine similarity clipped at
    a small positive floor (``similarity``; equal weights if every score is <= 0)."""
    if weighting not in WEIGHTINGS:
        raise ValueError(f"weighting {weighting!r}: expected one of {', '.join(WEIGHTINGS)}")
    k = len(scores)
    if weighting == "mean":
        return np.full(k, 1.0 / k)
    w = np.clip(np.asarray(scores, np.float64), 0.0, None)
    if w.sum() <= 0:
        return np.full(k, 1.0 / k)
    w = np.maximum(w, SIMILARITY_FLOOR)
    return w / w.sum()


def infer_descriptors(bank_descriptors: np.ndarray, D: np.ndarray, I: np.ndarray,  # noqa: E741 - faiss naming
                      weighting: Weighting = "mean") -> tuple[np.ndarray, np.ndarray]:
    """Descriptors of each query inferred from its neighbours: the (weighted) mean and standard deviation.

    Args:
        bank_descriptors: [N, n_descriptors], the bank entries' descriptors.
        D: [nq, k] cosine similarities of the neighbours (best first).
        I: [nq, k] bank rows of the neighbours; -1 marks a slot the search could not fill (left out).
        weighting: ``mean`` (plain average) or ``similarity`` (weighted by similarity).

    Returns:
        (value, std), each [nq, n_descriptors] float64.
    """
    n = np.asarray(bank_descriptors).shape[1]
    value, std = np.zeros((len(I), n)), np.zeros((len(I), n))
    for q, (d_row, i_row) in enumerate(zip(D, I)):
        keep = i_row >= 0
        if not keep.any():
            value[q], std[q] = np.nan, np.nan
            continue
        v = np.asarray(bank_descriptors[i_row[keep]], np.float64)
        w = neighbour_weights(d_row[keep], weighting)
        value[q] = w @ v
        std[q] = np.sqrt(np.maximum(w @ (v - value[q]) ** 2, 0.0))
    return value, std


def consensus_pick(models: np.ndarray, D: np.ndarray, weighting: Weighting = "mean") -> np.ndarray:
    """Per query, the position (0..k-1) of the neighbour whose velocity model lies closest to all k neighbours' models:
    least weighted mean absolute difference, weights as for the descriptors (:func:`neighbour_weights`). If the
    true model were one of the k, with those weights as probabilities, it is the pick of least expected error (a
    weighted medoid); ties keep the better-ranked neighbour.

    Args:
        models: [nq, k, ...] the neighbours' models (m/s), best first; every slot filled.
        D: [nq, k] their cosine similarities.
        weighting: ``mean`` or ``similarity``.

    Returns:
        [nq] int64 positions into the k neighbours.
    """
    D = np.asarray(D)
    nq, k = D.shape
    pick = np.zeros(nq, np.int64)
    if nq == 0 or k == 1:
        return pick
    models = np.asarray(models).reshape(nq, k, -1)
    for q in range(nq):
        pick[q] = int(np.argmin(pairwise_mae(models[q]) @ neighbour_weights(D[q], weighting)))
    return pick


def pairwise_mae(models: np.ndarray) -> np.ndarray:
    """Mean absolute difference (m/s) between every two of k velocity models [k, ...] -> [k, k] float64."""
    flat = np.asarray(models, np.float32).reshape(len(models), -1)
    return np.abs(flat[:, None, :] - flat[None, :, :]).mean(axis=-1, dtype=np.float64)
