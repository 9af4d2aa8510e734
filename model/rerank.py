"""Physics check of retrieved neighbours: simulate each candidate model (model.simulator, the forward model the bank
was made with) and measure how well its gathers fit the observed ones (docs/refine.md, "Neighbours' data fit").

The embedding ranks candidates by learned similarity; the data misfit ranks them by the wave equation, which needs
no training on the query's geology. Retrieve-then-verify: the embedding's top-k narrows the bank to a few models, the
misfit decides among them.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from seisbind.acquisition import NX, NZ

from model.refine import check_gathers

Simulate = Callable[[np.ndarray], np.ndarray]
"""Velocity models [m,1,70,70] m/s -> gathers [m,5,1000,70] (model.simulator.simulate, or stored gathers)."""


def relative_misfit(observed: np.ndarray, simulated: np.ndarray) -> np.ndarray:
    """Relative L2 data misfit ``|d - d_obs|^2 / |d_obs|^2`` (as FWI's, full band) of simulated gathers [k,5,nt',70]
    against one observed set [5,nt,70], over the observed record's first nt samples -> [k] float64."""
    nt = observed.shape[-2]
    d = simulated[..., :nt, :].astype(np.float64) - observed.astype(np.float64)
    return (d**2).reshape(len(d), -1).sum(axis=1) / float(np.square(observed, dtype=np.float64).sum())


def check_candidates(candidates: np.ndarray, n: int) -> np.ndarray:
    """Candidate models [k,70,70] / [k,1,70,70] (one gather set) or [n,k,70,70] / [n,k,1,70,70] m/s -> float32
    [n,k,70,70]; ValueError naming the problem."""
    c = np.asarray(candidates, np.float32)
    if c.ndim >= 4 and c.shape[-3] == 1:
        c = c.reshape(c.shape[:-3] + (NZ, NX))
    if c.ndim == 3 and n == 1:
        c = c[None]
    if c.ndim != 4 or c.shape[0] != n or c.shape[2:] != (NZ, NX) or c.shape[1] == 0:
        raise ValueError(f"candidates: shape {np.shape(candidates)}, expected (k, {NZ}, {NX}) for one gather set or "
                         f"({n}, k, {NZ}, {NX}) for {n}, with k >= 1")
    if not np.isfinite(c).all() or not (c > 0).all():
        raise ValueError("candidates: velocities must be finite and positive (m/s)")
    return c


def neighbour_misfits(gathers: np.ndarray, candidates: np.ndarray, simulate: Simulate | None = None) -> np.ndarray:
    """Data misfit of every candidate against its gather set -> [n,k] float64 (lower fits better).

    Args:
        gathers: observed [5,nt,70] or [n,5,nt,70] (nt <= 1000: a shorter record is compared over its length).
        candidates: [k,70,70] for one gather set, or [n,k,70,70] (a [.,1,70,70] channel axis is accepted).
        simulate: models [m,1,70,70] -> gathers [m,5,1000,70]; default ``model.simulator.simulate`` on the CPU.

    Raises:
        ValueError: gathers or candidates that are malformed (shape, NaN/Inf, all-zero gathers, non-positive
            velocities).
    """
    g = check_gathers(gathers)
    c = check_candidates(candidates, len(g))
    if simulate is None:
        from model.simulator import simulate as simulate_cpu

        simulate = simulate_cpu
    n, k = c.shape[:2]
    synthetic = np.asarray(simulate(c.reshape(n * k, 1, NZ, NX)))
    synthetic = synthetic.reshape(n, k, *synthetic.shape[1:])
    return np.stack([relative_misfit(g[b], synthetic[b]) for b in range(n)])


def best_fit(misfits: np.ndarray) -> np.ndarray:
    """Index of the best-fitting candidate of each gather set [n] (the first on a tie: the embedding's order)."""
    return np.argmin(np.asarray(misfits), axis=-1)


def rerank(misfits: np.ndarray) -> np.ndarray:
    """Candidates' order by data fit [n,k], best first (ties keep the embedding's order)."""
    return np.argsort(np.asarray(misfits), axis=-1, kind="stable")
