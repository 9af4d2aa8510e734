"""Start models for refinement, built from the retrieved neighbours (docs/refine.md): the top-1, the
similarity-weighted mean of the top-k, a smooth 1-D (depth-only) model, the neighbour whose simulated data fit best
(given its misfits), or a given learned model. Numpy only; every start is clipped to the velocity range 1500-4500
m/s."""

from __future__ import annotations

import numpy as np

from seisbind.acquisition import NX, NZ, V_MAX, V_MIN
from seisbind.neighbours import neighbour_weights

START_KINDS = ("learned", "top1", "topk", "smooth", "bestfit")
SMOOTH_SIGMA_CELLS = 8.0
"""Standard deviation (grid cells, 10 m each) of the Gaussian that smooths the 1-D start along depth."""


def check_neighbours(models: np.ndarray, scores: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Validated neighbours: models [k,70,70] (or [k,1,70,70]) m/s -> float64 [k,70,70]; scores [k] -> float64.

    Raises:
        ValueError: a shape that does not match, no neighbours, or a value that is not finite.
    """
    m = np.asarray(models, np.float64)
    if m.ndim == 4 and m.shape[1] == 1:
        m = m[:, 0]
    if m.ndim != 3 or m.shape[1:] != (NZ, NX):
        raise ValueError(f"models: shape {tuple(np.shape(models))}, expected (k, {NZ}, {NX}) or (k, 1, {NZ}, {NX})")
    s = np.asarray(scores, np.float64).reshape(-1)
    if len(m) == 0:
        raise ValueError("models: no neighbours given (k = 0); at least one is needed")
    if len(s) != len(m):
        raise ValueError(f"scores: {len(s)} values for {len(m)} models; give one score per model")
    if not np.isfinite(m).all():
        raise ValueError("models: contain NaN or infinite values")
    if not np.isfinite(s).all():
        raise ValueError("scores: contain NaN or infinite values")
    return m, s


def _clip(v: np.ndarray) -> np.ndarray:
    return np.clip(v, V_MIN, V_MAX).astype(np.float32)


def topk_mean(models: np.ndarray, scores: np.ndarray) -> np.ndarray:
    """Similarity-weighted mean of the neighbours: models [k,70,70] (or [k,1,70,70]) m/s, scores [k] cosine
    similarities -> [70,70] float32 m/s (equal weights where no score is positive)."""
    m, s = check_neighbours(models, scores)
    w = neighbour_weights(s, "similarity")
    return _clip(np.tensordot(w, m, axes=1))


def gaussian_smooth_1d(profile: np.ndarray, sigma: float) -> np.ndarray:
    """A 1-D profile smoothed by a Gaussian of ``sigma`` samples, edges extended by reflection (same length)."""
    if sigma <= 0:
        return np.asarray(profile, np.float64).copy()
    half = int(np.ceil(3 * sigma))
    t = np.arange(-half, half + 1, dtype=np.float64)
    kernel = np.exp(-0.5 * (t / sigma) ** 2)
    kernel /= kernel.sum()
    padded = np.pad(np.asarray(profile, np.float64), half, mode="symmetric" if half < len(profile) else "edge")
    return np.convolve(padded, kernel, mode="valid")


def smooth_start(models: np.ndarray, sigma_cells: float = SMOOTH_SIGMA_CELLS) -> np.ndarray:
    """A smooth 1-D start from the neighbours: their mean, averaged laterally to v(z), smoothed along depth by
    a Gaussian of ``sigma_cells`` cells and repeated across x -> [70,70] float32 m/s."""
    m, _ = check_neighbours(models, np.zeros(len(np.asarray(models))))
    profile = gaussian_smooth_1d(m.mean(axis=(0, 2)), sigma_cells)
    return _clip(np.repeat(profile[:, None], NX, axis=1))


def best_fit_model(models: np.ndarray, misfits: np.ndarray | None) -> np.ndarray:
    """The neighbour with the lowest data misfit (``misfits`` [k], one per model, e.g. from model.rerank) -> [70,70]
    float32 m/s; ValueError when the misfits are missing, of another count, or not finite."""
    if misfits is None:
        raise ValueError("start kind 'bestfit' needs the neighbours' data misfits (misfits=None was given)")
    f = np.asarray(misfits, np.float64).reshape(-1)
    if len(f) != len(models) or not np.isfinite(f).all():
        raise ValueError(f"misfits: {len(f)} values for {len(models)} models, or not finite; give one per model")
    return _clip(models[int(np.argmin(f))])


def start_model(kind: str, models: np.ndarray, scores: np.ndarray, learned: np.ndarray | None = None,
                misfits: np.ndarray | None = None) -> np.ndarray:
    """The start model of ``kind`` (one of :data:`START_KINDS`) -> [70,70] float32 m/s, clipped to 1500-4500.

    Args:
        kind: ``learned`` (the learned refiner's model, passed as ``learned``), ``top1`` (the best neighbour),
            ``topk`` (:func:`topk_mean`), ``smooth`` (:func:`smooth_start`) or ``bestfit`` (:func:`best_fit_model`,
            the neighbour that fits the data best; needs ``misfits``).
        models: [k,70,70] or [k,1,70,70] neighbours, best first, m/s.
        scores: [k] their cosine similarities.
        learned: [70,70] or [1,70,70] m/s; required for ``learned``.
        misfits: [k] data misfits of the neighbours; required for ``bestfit``.

    Raises:
        ValueError: an unknown kind, ``learned`` without a learned model, ``bestfit`` without misfits, or bad
            shapes/values.
    """
    if kind not in START_KINDS:
        raise ValueError(f"start kind {kind!r}: expected one of {', '.join(START_KINDS)}")
    m, s = check_neighbours(models, scores)
    if kind == "learned":
        if learned is None:
            raise ValueError("start kind 'learned' needs the learned refiner's model (learned=None was given)")
        v = np.asarray(learned, np.float64)
        if v.shape not in ((NZ, NX), (1, NZ, NX)) or not np.isfinite(v).all():
            raise ValueError(f"learned: shape {v.shape} or values invalid; expected finite ({NZ}, {NX}) m/s")
        return _clip(v.reshape(NZ, NX))
    if kind == "top1":
        return _clip(m[0])
    if kind == "topk":
        return topk_mean(m, s)
    if kind == "bestfit":
        return best_fit_model(m, misfits)
    return smooth_start(m)
