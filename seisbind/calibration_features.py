"""The features of a query that the calibrated confidence and the out-of-distribution flag read
(``seisbind.calibration``), each computed here and only here, from the query's search hits (their scores and
their bank models) and its gathers. Used alike by the fit (``index.calibrate``) and the service
(``seisbind.calibration.assess``). Numpy only.

Of the first ``FEATURE_K`` (5) hits and the gather:

* ``top1_score``: cosine similarity of the best match;
* ``margin``: top-1 minus top-2 score;
* ``log_spread_mae``: log(1 + mean pairwise MAE, m/s) of the hits' models (neighbours that disagree with each other
  cannot all be close to the truth);
* ``log_late_energy``: log10 of the gather's mean power after ``LATE_S`` (0.4 s) over its mean power: the share of
  reflected and diving energy after the direct wave;
* ``log_lateral``: log(1 + mean |dv/dx|, m/s per 10 m cell) of the hits' models: 0 for flat layers, large for
  curved ones. Within the training geology the same top-1 score means a far likelier hit on a flat-layer query
  (few free parameters) than on a curved one; none of the first four features tells them apart;
* ``log_reflectivity``: log10 of the top-1 model's mean (over x) sum over depth of squared normal-incidence
  reflection coefficients (v2 - v1) / (v2 + v1): how much layering the answer claims. A smooth answer (few weak
  interfaces) is a likely hit on the training geology, whose smooth models are few-layer ones, and a likely miss
  on smooth-gradient geology; with the out-of-distribution distance beside it the fit can tell the two apart;
* ``log_shot_asymmetry``: log10 of how much the gather's shots differ from each other at equal source-receiver
  offset (``shot_asymmetry``): 0 (the floor, -7) over flat layers, where every shot sees the same earth, and
  large over laterally varying geology (curved layers, faults, folds, salt). Unlike ``log_lateral`` it is the
  query's own geology, not its neighbours': the strongest single feature for the families the encoders never saw.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from seisbind.acquisition import DT, SOURCE_X
from seisbind.neighbours import pairwise_mae

FEATURE_K = 5
"""Neighbours the features are computed from (the service searches at least this many)."""
FEATURE_NAMES = ("top1_score", "margin", "log_spread_mae", "log_late_energy", "log_lateral", "log_reflectivity",
                 "log_shot_asymmetry")
"""Columns of ``query_features``, in order; calibration formats 1 and 2 read the first four."""
GATHER_FEATURES = ("log_late_energy", "log_shot_asymmetry")
"""The features of the gather itself; the others are of the search hits."""
LATE_S = 0.4
"""Start of the late part of a gather, seconds (after the direct wave has crossed most of the spread)."""
REFLECTIVITY_FLOOR = 1e-12
"""Added to the summed squared reflection coefficients before the log10 (a constant model: -12)."""
ASYMMETRY_BLOCK = 20
"""Samples (ms) averaged before shots are compared: a low-pass that keeps the 15 Hz wavelet (86 % of its amplitude)
and cuts white noise power 20-fold."""
ASYMMETRY_FLOOR = 1e-7
"""Added before the log10 of ``shot_asymmetry`` (flat layers: -7, the floor)."""
SIGNAL_ROUGHNESS = 0.009
"""``roughness`` of a noise-free OpenFWI gather (a 15 Hz source sampled at 1 ms); white noise has 2."""
DEAD_TRACE = 1e-6
"""A trace with less energy than this share of the gather's mean trace energy is dead (muted) and not compared."""


def spread_mae(models: np.ndarray) -> float:
    """Mean pairwise mean absolute error (m/s) among velocity models [k, ...]; 0 for fewer than two."""
    k = len(models)
    if k < 2:
        return 0.0
    return float(pairwise_mae(models)[np.triu_indices(k, 1)].mean())


def lateral_variation(models: np.ndarray) -> np.ndarray:
    """Mean |dv/dx| (m/s per cell; x is the last axis) of each velocity model [k, ..., depth, x] -> [k]."""
    m = np.asarray(models, np.float64)
    return np.abs(np.diff(m, axis=-1)).reshape(len(m), -1).mean(1)


def reflectivity(models: np.ndarray) -> np.ndarray:
    """log10 of the mean over x of the sum over depth of squared reflection coefficients (v2 - v1) / (v2 + v1)
    of each velocity model [k, ..., depth, x] (positive velocities) -> [k]."""
    m = np.asarray(models, np.float64)
    r = np.diff(m, axis=-2) / (m[..., 1:, :] + m[..., :-1, :])
    per_column = (r * r).sum(-2).reshape(len(m), -1)
    return np.log10(per_column.mean(1) + REFLECTIVITY_FLOOR)


NOISE_ROUGHNESS = 1.05
"""Share of a gather's energy in its sample-to-sample differences above which it is taken for mostly white noise:
about 0.009 for OpenFWI gathers (a 15 Hz source sampled at 1 ms), 1.0 with white noise as strong as the signal
(SNR 0 dB, the noisiest level the benchmarks test; training reaches -5 dB), 2 for pure white noise."""


@dataclass(frozen=True)
class GatherEnergies:
    """Sums over each gather [b] that several features read, from one pass over the data (``gather_energies``)."""

    total: np.ndarray
    """Energy: sum of x^2."""
    differences: np.ndarray
    """Energy of the time differences: sum of (x_t - x_t-1)^2."""
    late: np.ndarray
    """Energy after ``LATE_S``."""
    samples: int
    """Time samples per trace."""
    late_samples: int
    """Time samples per trace after ``LATE_S``."""


def gather_energies(gathers: np.ndarray) -> GatherEnergies:
    """``GatherEnergies`` of gathers [b, shots, time, receivers]: float32 BLAS dot products over each shot (its
    time-major samples in one vector, so a shift by one sample is a shift by one row of receivers), summed in
    float64, with no temporary the size of the gathers; sum (x_t - x_t-1)^2 = 2 sum x^2 - x_first^2 - x_last^2 -
    2 sum x_t x_t-1. The sums agree with float64 ones to about 1e-6 of the energy."""
    g = np.asarray(gathers)
    if g.dtype != np.float32:
        g = g.astype(np.float32)
    b, shots, nt, nr = g.shape
    rows = g.reshape(b * shots, nt * nr)
    late_start = min(int(round(LATE_S / DT)), nt)
    start = late_start * nr
    sums = np.zeros((4, b * shots))
    for i, v in enumerate(rows):
        sums[:, i] = (np.dot(v, v), np.dot(v[nr:], v[:-nr]), np.dot(v[:nr], v[:nr]) + np.dot(v[-nr:], v[-nr:]),
                      np.dot(v[start:], v[start:]))
    total, cross, ends, late = sums.reshape(4, b, shots).sum(2)
    return GatherEnergies(total, np.maximum(2.0 * total - ends - 2.0 * cross, 0.0), late, nt, nt - late_start)


def late_energy(gathers: np.ndarray, energies: GatherEnergies | None = None) -> np.ndarray:
    """log10(mean power after LATE_S / mean power) of each gather [b, shots, time, receivers] (NaN if all zero);
    ``energies``: ``gather_energies(gathers)`` when already summed."""
    e = gather_energies(gathers) if energies is None else energies
    late = e.late / max(e.late_samples, 1)
    total = e.total / e.samples
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(total > 0, np.log10(np.maximum(late, 1e-30 * total) / np.where(total > 0, total, 1.0)), np.nan)


def roughness(gathers: np.ndarray, energies: GatherEnergies | None = None) -> np.ndarray:
    """Energy of the time differences over the energy of each gather [b, shots, time, receivers] -> [b] (inf for
    an all-zero gather); ``energies``: ``gather_energies(gathers)`` when already summed."""
    e = gather_energies(gathers) if energies is None else energies
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(e.total > 0, e.differences / np.where(e.total > 0, e.total, 1.0), np.inf)


def _noise_variance(gathers: np.ndarray, energies: GatherEnergies) -> np.ndarray:
    """White-noise variance per sample of each gather [b, ...] -> [b], from its ``roughness``: a share (r -
    SIGNAL_ROUGHNESS) / (2 - SIGNAL_ROUGHNESS) of its mean power (noise-free OpenFWI gathers: 0; pure noise: all)."""
    share = np.clip((roughness(gathers, energies) - SIGNAL_ROUGHNESS) / (2.0 - SIGNAL_ROUGHNESS), 0.0, 1.0)
    return share * energies.total / np.asarray(gathers)[0].size


@functools.lru_cache(maxsize=8)
def _equal_offset_pairs(receivers: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Every two traces of different shots (``SOURCE_X``) at the same signed offset, as index arrays (shot and
    receiver of the first trace, shot and receiver of the second)."""
    pairs = [(i, j, SOURCE_X[j] - SOURCE_X[i]) for i in range(len(SOURCE_X)) for j in range(i + 1, len(SOURCE_X))]
    shot_a = np.concatenate([np.full(max(receivers - s, 0), i) for i, _, s in pairs])
    rec_a = np.concatenate([np.arange(max(receivers - s, 0)) for *_, s in pairs])
    shot_b = np.concatenate([np.full(max(receivers - s, 0), j) for _, j, s in pairs])
    rec_b = np.concatenate([np.arange(s, receivers) for *_, s in pairs])
    return shot_a, rec_a, shot_b, rec_b


def shot_asymmetry(gathers: np.ndarray, energies: GatherEnergies | None = None) -> np.ndarray:
    """log10(energy of the differences between every two shots' traces at the same signed offset / their energy
    + ASYMMETRY_FLOOR) of each gather [b, 5, time, receivers] (SOURCE_X geometry; every ``ASYMMETRY_BLOCK`` samples
    averaged; pairs with a dead trace skipped; the white noise's expected share, ``_noise_variance``, taken off both
    energies, so that noise does not pass for lateral variation) -> [b]; NaN where nothing is compared.
    ``energies``: ``gather_energies(gathers)`` when already summed."""
    g = np.asarray(gathers)
    noise = _noise_variance(g, gather_energies(g) if energies is None else energies) / ASYMMETRY_BLOCK
    t = g.shape[2] // ASYMMETRY_BLOCK * ASYMMETRY_BLOCK
    blocks = np.asarray(g[:, :, :t], np.float32).reshape(g.shape[0], g.shape[1], -1, ASYMMETRY_BLOCK, g.shape[3])
    g = (np.full((1, ASYMMETRY_BLOCK), 1.0 / ASYMMETRY_BLOCK, np.float32) @ blocks)[..., 0, :].astype(np.float64)
    traces = g.transpose(0, 1, 3, 2)  # [b, shots, receivers, blocks]
    energy = np.einsum("bsrt,bsrt->bsr", traces, traces)
    live = energy > DEAD_TRACE * energy.mean((1, 2), keepdims=True)
    shot_a, rec_a, shot_b, rec_b = _equal_offset_pairs(g.shape[3])
    both = live[:, shot_a, rec_a] & live[:, shot_b, rec_b]  # [b, pairs]
    num = ((np.square(traces[:, shot_a, rec_a] - traces[:, shot_b, rec_b]).sum(2)) * both).sum(1)
    den = ((energy[:, shot_a, rec_a] + energy[:, shot_b, rec_b]) * both).sum(1)
    count = both.sum(1) * g.shape[2]
    bias = 2.0 * noise * count  # expected noise energy in both sums
    num, den = np.maximum(num - bias, 0.0), den - bias
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(den > 0, np.log10(num / np.where(den > 0, den, 1.0) + ASYMMETRY_FLOOR), np.nan)


def hit_features(scores: np.ndarray, models: np.ndarray) -> list[float]:
    """The features of one query's hits (best first, at least one): scores [k] and their bank models [k, ...]:
    the ``FEATURE_NAMES`` not in ``GATHER_FEATURES``, in order."""
    margin = float(scores[0] - scores[1]) if len(scores) > 1 else 0.0
    return [float(scores[0]), margin, float(np.log1p(spread_mae(models))),
            float(np.log1p(lateral_variation(models).mean())), float(reflectivity(models[:1])[0])]


def query_features(D: np.ndarray, I: np.ndarray,  # noqa: E741 - faiss naming
                   velocity_models: Callable[[np.ndarray], np.ndarray], gathers: np.ndarray,
                   energies: GatherEnergies | None = None) -> np.ndarray:
    """The ``FEATURE_NAMES`` of each query [b, 7] from its search hits and its gathers [b, 5, 1000, 70]: D [b, k]
    cosine scores (best first), I [b, k] bank rows (-1: unfilled, ignored), ``velocity_models(rows)`` -> the bank's
    models of those rows. Uses the first ``FEATURE_K`` hits; with one hit the margin and spread are 0; a query
    without hits gets a row of NaN. ``energies``: ``gather_energies(gathers)`` when already summed."""
    out = np.full((len(D), len(FEATURE_NAMES)), np.nan)
    g = np.asarray(gathers)
    energies = gather_energies(g) if energies is None else energies  # one pass over the gathers for both
    of_gathers = np.column_stack([late_energy(g, energies), shot_asymmetry(g, energies)])
    hit_columns = [j for j, name in enumerate(FEATURE_NAMES) if name not in GATHER_FEATURES]
    gather_columns = [FEATURE_NAMES.index(name) for name in GATHER_FEATURES]
    for q, (d_row, i_row) in enumerate(zip(np.asarray(D), np.asarray(I))):
        keep = i_row >= 0
        d_row, i_row = d_row[keep][:FEATURE_K], i_row[keep][:FEATURE_K]
        if len(i_row):
            out[q, hit_columns] = hit_features(d_row, np.asarray(velocity_models(i_row)))
            out[q, gather_columns] = of_gathers[q]
    return out
