"""Amplitudes on the training data's scale (OpenFWI's convention, docs/ingest.md).

The statistic is the 99.9th percentile of |x| over a gather (5, 1000, 70): robust to a few spikes, dominated by the
direct wave near the sources. Over gathers simulated by this project for the flatvel-a and curvevel-a families it
lies between 17.0 and 22.8 (median 18.4; 120 models, seed 123). ``auto`` keeps data whose statistic lies within a
factor 3 of that range (they are taken to be in OpenFWI's units already, and their absolute amplitude carries
information) and otherwise rescales them so that the statistic equals the training median.
"""

from __future__ import annotations

from typing import Literal, Union

import numpy as np

from seisbind.ingest.records import IngestError, IngestReport

AmplitudeMode = Union[Literal["auto", "keep", "match"], float]
STAT_PERCENTILE = 99.9
TRAINING_STAT_RANGE = (17.0, 22.8)
"""The statistic's range over simulated training gathers (flatvel-a, curvevel-a)."""
TRAINING_STAT_MEDIAN = 18.4
KEEP_FACTOR = 3.0
"""``auto`` keeps data whose statistic is within this factor of the training range."""


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
        factor = TRAINING_STAT_MEDIAN / stat
        rule = "rescaled so that the statistic equals the training median"
    else:
        raise IngestError(f"amplitude mode {mode!r}: expected auto, keep, match or a positive number")
    report.step("scale_amplitudes", mode=mode, statistic=f"{STAT_PERCENTILE}th percentile of |x|", value=stat,
                training_range=list(TRAINING_STAT_RANGE), training_median=TRAINING_STAT_MEDIAN, factor=factor,
                rule=rule)
    if factor != 1.0 and mode == "auto":
        report.warn("amplitudes_rescaled", f"amplitudes were multiplied by {factor:.4g} to reach the training scale "
                                           f"(their statistic {stat:.4g} is outside {lo:.3g}-{hi:.3g}); absolute "
                                           "amplitude, which carries information about the near surface, was lost")
    return gathers if factor == 1.0 else (gathers * np.float32(factor)).astype(np.float32)
