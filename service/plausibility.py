"""Is the input physically plausible at all? Gathers and descriptor vectors that cannot be what the encoders were
trained on are refused (InputError, HTTP 422); input that is possible but outside what the training data or the
bank cover is answered, with a warning in the result (``warnings``). docs/api.md lists both.

Gathers (OpenFWI amplitude convention, the extremes of ``seisbind.acquisition.FAMILY_DATA_RANGE``):

* refused: a gather whose every value is the same (all zero: no signal, nothing to match); any amplitude beyond
  ``AMPLITUDE_LIMIT`` (100x the training extremes: another unit or scale, e.g. raw counts);
* warned: a peak amplitude over ``AMPLITUDE_WARN`` (2x the extremes) or under ``WEAK_PEAK`` (far weaker than any
  OpenFWI direct wave); a shot whose every value is the same (a dead shot).

Descriptors (``seisbind.descriptors`` units):

* refused: a velocity outside ``VELOCITY_RANGE`` m/s (no rock is slower or faster), a negative spread or lateral
  gradient, a gradient steeper than the velocity range allows over one cell, and vectors no velocity model can
  have (v_min > v_max, a mean or a top/bottom velocity outside [v_min, v_max], a spread over half the range);
* warned: a value outside the range of the bank being searched (the nearest models cannot match it).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from seisbind.acquisition import DX, FAMILY_DATA_RANGE
from seisbind.descriptors import DESCRIPTOR_NAMES, DESCRIPTOR_UNITS

from service.inputs import InputError

TRAINING_LOW = min(lo for lo, _ in FAMILY_DATA_RANGE.values())
TRAINING_HIGH = max(hi for _, hi in FAMILY_DATA_RANGE.values())
TRAINING_PEAK = max(-TRAINING_LOW, TRAINING_HIGH)
AMPLITUDE_LIMIT = round(100.0 * TRAINING_PEAK, 6)
"""Largest |amplitude| accepted (5,510 with the OpenFWI extremes -27.11..55.10); the OpenAPI schema states it."""
AMPLITUDE_WARN = round(2.0 * TRAINING_PEAK, 6)
"""A peak |amplitude| above this gets a warning."""
WEAK_PEAK = 1.0
"""A peak |amplitude| below this gets a warning (OpenFWI direct waves peak at tens)."""
MAX_LISTED = 5
"""Refused gathers named in one message."""

VELOCITY_RANGE = (100.0, 10_000.0)
"""m/s: slower than dry loose soil, faster than the upper mantle, is no rock."""
VELOCITIES = ("v_mean", "v_min", "v_max", "v_top", "v_bottom")
MAX_GRADIENT = (VELOCITY_RANGE[1] - VELOCITY_RANGE[0]) / DX
"""1/s: the steepest gradient possible, the whole velocity range within one cell."""
DESCRIPTOR_RANGES: dict[str, tuple[float, float]] = {
    **{n: VELOCITY_RANGE for n in VELOCITIES},
    "v_std": (0.0, (VELOCITY_RANGE[1] - VELOCITY_RANGE[0]) / 2),
    "grad_z": (-MAX_GRADIENT, MAX_GRADIENT),
    "grad_x": (0.0, MAX_GRADIENT),
}
"""The physical range of each descriptor; the OpenAPI schema states them."""
_TOLERANCE = 0.01
"""m/s (and m/s per cell): rounding allowed in the consistency checks (descriptors come from float32 models)."""


def check_gathers_plausibility(gathers: np.ndarray) -> list[list[str]]:
    """Refuse implausible gathers [B, 5, 1000, 70] (InputError naming them); return each gather's warnings."""
    hi = gathers.max(axis=(2, 3)).astype(np.float64)  # [B, shots]; max/min allocate no full-size temporaries
    lo = gathers.min(axis=(2, 3)).astype(np.float64)
    peak = np.maximum(hi.max(1), -lo.min(1))
    refused = []
    for i in range(len(gathers)):
        if hi[i].max() == lo[i].min():
            refused.append(f"gather {i} carries no signal (every value is {lo[i].min():g})")
        elif peak[i] > AMPLITUDE_LIMIT:
            refused.append(f"gather {i} has amplitudes up to {peak[i]:.4g}, over {AMPLITUDE_LIMIT:g}")
    if refused:
        more = f" and {len(refused) - MAX_LISTED} more" if len(refused) > MAX_LISTED else ""
        raise InputError("; ".join(refused[:MAX_LISTED]) + more + ": not a recorded shot gather in the OpenFWI "
                         f"amplitude convention the encoders were trained on (values within {TRAINING_LOW:g}.."
                         f"{TRAINING_HIGH:g}); send the recorded amplitudes, rescaled to that convention")
    out = []
    for i in range(len(gathers)):
        notes = []
        if peak[i] > AMPLITUDE_WARN:
            notes.append(f"peak amplitude {peak[i]:.4g} is beyond the training data's range ({TRAINING_LOW:g}.."
                         f"{TRAINING_HIGH:g}): the neighbours may not mean much; rescale to the OpenFWI convention")
        elif peak[i] < WEAK_PEAK:
            notes.append(f"peak amplitude {peak[i]:.3g} is far weaker than in the training data (direct waves of "
                         f"tens, extremes {TRAINING_LOW:g}..{TRAINING_HIGH:g}): rescale to the OpenFWI convention")
        dead = np.flatnonzero(hi[i] == lo[i])
        if len(dead):
            notes.append(f"shot{'s' if len(dead) > 1 else ''} {', '.join(map(str, dead.tolist()))} carr"
                         f"{'y' if len(dead) > 1 else 'ies'} no signal (constant values)")
        out.append(notes)
    return out


def check_descriptor_plausibility(values: dict[str, float]) -> None:
    """Refuse a descriptor vector no velocity model can have (InputError listing every problem)."""
    problems = []
    for name, (lo, hi) in DESCRIPTOR_RANGES.items():
        if name in values and not lo <= values[name] <= hi:
            problems.append(f"{name} = {values[name]:g} {DESCRIPTOR_UNITS[name]} is outside the physical range "
                            f"{lo:g}..{hi:g}")
    if not problems and all(n in values for n in DESCRIPTOR_NAMES):
        v_min, v_max = values["v_min"], values["v_max"]
        if v_min > v_max + _TOLERANCE:
            problems.append(f"v_min = {v_min:g} is above v_max = {v_max:g}")
        else:
            for name in ("v_mean", "v_top", "v_bottom"):
                if not v_min - _TOLERANCE <= values[name] <= v_max + _TOLERANCE:
                    problems.append(f"{name} = {values[name]:g} is outside [v_min, v_max] = [{v_min:g}, {v_max:g}]")
            span = v_max - v_min
            if values["v_std"] > span / 2 + _TOLERANCE:
                problems.append(f"v_std = {values['v_std']:g} is over half of v_max - v_min = {span:g} (no model "
                                "spreads more)")
            for name in ("grad_z", "grad_x"):
                if abs(values[name]) > span / DX + _TOLERANCE:
                    problems.append(f"|{name}| = {abs(values[name]):g} 1/s is steeper than (v_max - v_min) / "
                                    f"{DX:g} m = {span / DX:g} 1/s allows")
    if problems:
        raise InputError("descriptors are not those of any velocity model: " + "; ".join(problems))


_BANK_RANGES: dict[str, tuple[np.ndarray, np.ndarray]] = {}


def bank_range(version: str, descriptors: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-descriptor (min, max) of an index version's entries [N, D], computed once per version."""
    if version not in _BANK_RANGES:
        if len(_BANK_RANGES) >= 4:
            _BANK_RANGES.pop(next(iter(_BANK_RANGES)))
        _BANK_RANGES[version] = (descriptors.min(0), descriptors.max(0)) if len(descriptors) else \
            (np.full(descriptors.shape[1:], -np.inf), np.full(descriptors.shape[1:], np.inf))
    return _BANK_RANGES[version]


def descriptor_warnings(values: dict[str, float], names: Sequence[str], lo: np.ndarray,
                        hi: np.ndarray) -> list[str]:
    """Warnings for the values outside the bank's range [lo, hi] (per name, in ``names`` order)."""
    out = []
    for j, name in enumerate(names):
        x = values.get(name)
        if x is not None and not lo[j] <= x <= hi[j]:
            out.append(f"{name} = {x:g} {DESCRIPTOR_UNITS.get(name, '')} is outside the bank's range "
                       f"{lo[j]:.4g}..{hi[j]:.4g}: the nearest models cannot match it")
    return out
