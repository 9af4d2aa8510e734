"""Amplitudes on the training data's scale (OpenFWI's convention, docs/ingest.md).

The statistic is the 99.9th percentile of |x| over a gather (5, 1000, 70): robust to a few spikes, dominated by the
direct wave near the sources. Over gathers simulated by this project from real FlatVel-A and CurveVel-A training
models it lies between 17.0 and 23.4. ``auto`` keeps data whose statistic lies within a factor 3 of that range (they
are taken to be in OpenFWI's units already, and their absolute amplitude carries information) and otherwise rescales
them. The direct wave's amplitude is set by the near-surface velocity, which the direct wave's moveout measures
whatever the data's units: the rescaled statistic is the one the simulator gives for that velocity
(``statistic = SURFACE_LAW_C * v0 ** SURFACE_LAW_EXPONENT``, fitted by ``python -m benchmarks.amplitude_law``;
residual 1.0 % on test models against 7.2 % for the training median).
"""

from __future__ import annotations

from typing import Literal, Union

import numpy as np

from seisbind.acquisition import DX, SOURCE_X
from seisbind.ingest.records import IngestError, IngestReport

AmplitudeMode = Union[Literal["auto", "keep", "match"], float]
STAT_PERCENTILE = 99.9
TRAINING_STAT_RANGE = (17.0, 23.4)
"""The statistic's range over simulated training gathers (160 FlatVel-A and CurveVel-A training models,
benchmarks/results/amplitude_law.json)."""
TRAINING_STAT_MEDIAN = 18.3
KEEP_FACTOR = 3.0
"""``auto`` keeps data whose statistic is within this factor of the training range."""
SURFACE_LAW_C, SURFACE_LAW_EXPONENT = 0.986, 0.390
"""The statistic of simulated training gathers against the near-surface velocity measured by
:func:`surface_velocity` (benchmarks/results/amplitude_law.json)."""
DIRECT_WAVE_TRACES = (2, 12)
"""Receivers 2 to 12 (20-120 m) from each source, on each side: near enough for the direct wave to be the strongest
arrival, far enough from the source's near field."""
DIRECT_WAVE_SAMPLES = 300
"""The direct wave at 120 m arrives within 0.3 s at any velocity above 1500 m/s (wavelet delay included)."""
SURFACE_VELOCITY_RANGE = (1000.0, 6000.0)
"""A moveout outside this range is not a direct wave."""


def _peak_times(traces: np.ndarray) -> np.ndarray:
    """[time, trace] -> each trace's time (samples, parabola-refined) of its largest |x|."""
    a = np.abs(traces)
    i = np.clip(np.argmax(a, 0), 1, len(a) - 2)
    cols = np.arange(a.shape[1])
    y0, y1, y2 = a[i - 1, cols], a[i, cols], a[i + 1, cols]
    curvature = y0 - 2 * y1 + y2
    return i + np.where(curvature < 0, 0.5 * (y0 - y2) / np.where(curvature < 0, curvature, -1.0), 0.0)


def surface_velocity(gathers: np.ndarray, dt_s: float = 0.001) -> float | None:
    """Near-surface velocity (m/s) of gathers (5, time, 70) in the OpenFWI geometry, from the direct wave's moveout:
    on each side of each source, a line fitted to the peak times of the traces 20-120 m away; the median over the
    sides of offset / time. None when no side gives a velocity within 1000-6000 m/s. Independent of the data's
    units."""
    lo, hi = DIRECT_WAVE_TRACES
    velocities = []
    for shot, src in enumerate(SOURCE_X):
        for side in (-1, 1):
            idx = src + side * np.arange(lo, hi + 1)
            idx = idx[(idx >= 0) & (idx < gathers.shape[2])]
            if len(idx) < 4:
                continue
            t = _peak_times(gathers[shot, :DIRECT_WAVE_SAMPLES, idx].T) * dt_s
            slope = np.polyfit(np.abs(idx - src) * DX, t, 1)[0]
            if slope > 0:
                velocities.append(1.0 / slope)
    v0 = float(np.median(velocities)) if velocities else float("nan")
    low, high = SURFACE_VELOCITY_RANGE
    return v0 if low <= v0 <= high else None


def expected_statistic(v0: float) -> float:
    """The statistic the simulator's gathers have for near-surface velocity ``v0`` (m/s)."""
    return SURFACE_LAW_C * v0 ** SURFACE_LAW_EXPONENT


def amplitude_statistic(gathers: np.ndarray) -> float:
    """The 99.9th percentile of |x| over the gathers."""
    a = np.abs(gathers).ravel()
    k = int(round(STAT_PERCENTILE / 100 * (a.size - 1)))
    return float(np.partition(a, k)[k])


def scale_amplitudes(gathers: np.ndarray, mode: AmplitudeMode, report: IngestReport) -> np.ndarray:
    """Bring ``gathers`` to the training scale according to ``mode`` ("auto", "keep", "match" or a factor)."""
    stat = amplitude_statistic(gathers)
    lo, hi = TRAINING_STAT_RANGE[0] / KEEP_FACTOR, TRAINING_STAT_RANGE[1] * KEEP_FACTOR
    if isinstance(mode, (int, float)) and not isinstance(mode, bool):
        factor, rule = float(mode), "factor given by the caller"
        if not np.isfinite(factor) or factor <= 0:
            raise IngestError(f"amplitude factor {mode!r}: must be a positive finite number")
    elif mode == "keep" or (mode == "auto" and lo <= stat <= hi):
        factor = 1.0
        rule = ("kept as given" if mode == "keep" else
                f"kept: the statistic is within a factor {KEEP_FACTOR:g} of the training range")
    elif mode in ("auto", "match"):
        if stat == 0:
            raise IngestError("no signal: every sample of the mapped gathers is zero")
        factor, rule = _matching_factor(gathers, stat, report)
    else:
        raise IngestError(f"amplitude mode {mode!r}: expected auto, keep, match or a positive number")
    report.step("scale_amplitudes", mode=mode, statistic=f"{STAT_PERCENTILE}th percentile of |x|", value=stat,
                training_range=list(TRAINING_STAT_RANGE), training_median=TRAINING_STAT_MEDIAN, factor=factor,
                rule=rule)
    if factor != 1.0 and mode == "auto":
        report.warn("amplitudes_rescaled", f"amplitudes were multiplied by {factor:.4g} to reach the training scale "
                                           f"(their statistic {stat:.4g} is outside {lo:.3g}-{hi:.3g}): {rule}")
    return gathers if factor == 1.0 else (gathers * np.float32(factor)).astype(np.float32)


def _matching_factor(gathers: np.ndarray, stat: float, report: IngestReport) -> tuple[float, str]:
    """The factor that gives ``gathers`` the statistic the simulator has for their measured near-surface velocity,
    or, where no direct wave can be measured, the training median; and the rule applied."""
    v0 = surface_velocity(gathers)
    if v0 is not None:
        target = expected_statistic(v0)
        return target / stat, (f"rescaled to the statistic {target:.4g} the simulator gives for the near-surface "
                               f"velocity {v0:.0f} m/s measured from the direct wave's moveout (about 1 % error)")
    report.warn("no_direct_wave", "no direct wave could be measured 20-120 m from the sources: amplitudes were "
                                  "matched to the training median instead (up to 20 % off the true scale)")
    return TRAINING_STAT_MEDIAN / stat, "rescaled so that the statistic equals the training median"
