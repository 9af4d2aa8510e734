"""Synthetic embedding banks for tests and benchmarks: L2-normalised vectors drawn from a Gaussian mixture, so
that they have cluster structure like real embedding banks (uniformly random vectors have none, and no
partitioning index can beat brute force on them)."""

from __future__ import annotations

import math

import numpy as np


def clustered_embeddings(n: int, dim: int = 256, cluster_size: int = 1000, spread: float = 1.5, seed: int = 0,
                         centers_seed: int = 12345) -> np.ndarray:
    """[n, dim] float32 unit vectors in groups of ~``cluster_size``: a random unit centre (one of
    n / ``cluster_size``, fixed by ``centers_seed``) plus isotropic Gaussian noise of norm ~``spread``, normalised.

    Spread 1.5: cosine ~0.55 to the centre, ~0.3 between members of a group, 0 +- 0.06 across groups. Within a
    group the noise is full-dimensional, so a query's 10 nearest members are scattered over the group; with
    small groups (100) and 1M vectors the best of the million cross-group cosines (~0.33) also rivals them, and
    IVF must probe many lists to reach recall 0.95 (benchmarks/index.py --stress measures that case).
    """
    n_clusters = max(1, n // cluster_size)
    centers = np.random.default_rng(centers_seed).standard_normal((n_clusters, dim), dtype=np.float32)
    centers /= np.linalg.norm(centers, axis=1, keepdims=True)
    rng = np.random.default_rng(seed)
    out = np.empty((n, dim), np.float32)
    for start in range(0, n, 100_000):
        stop = min(n, start + 100_000)
        x = centers[rng.integers(0, n_clusters, stop - start)]
        x += (spread / math.sqrt(dim)) * rng.standard_normal((stop - start, dim), dtype=np.float32)
        x /= np.linalg.norm(x, axis=1, keepdims=True)
        out[start:stop] = x
    return out


def random_unit_vectors(n: int, dim: int = 256, seed: int = 0) -> np.ndarray:
    """[n, dim] float32 uniformly random unit vectors."""
    x = np.random.default_rng(seed).standard_normal((n, dim), dtype=np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    return x
