"""Synthetic velocity-model families modelled on OpenFWI's Vel and Fault families (docs/data.md).

Every family starts from the same layer stack, fitted to the real FlatVel-A / CurveVel-A models:

* ``n`` nominal layers, ``n`` uniform in 3..7, nominal thickness ``d = 70 / n`` cells; each interface is ``d``
  (jittered by up to ±1.2 cells) below the previous one, and the whole stack is shifted by ``U(-d/2, d/2)``,
  so 3-8 layers are visible;
* ``n + 1`` layer velocities: sorted uniform draws from 1500-4500 m/s, rounded to whole m/s, so velocity
  increases with depth (strictly in the real FlatVel-A/CurveVel-A models: equal neighbours merge).

The families then differ in the shape of the interfaces:

* ``flatvel-a``: flat;
* ``curvevel-a``: every interface follows the same smooth curve (the columns are shifted vertically), a chirp
  whose amplitude and wavenumber grow along x as in the real CurveVel-A models;
* ``flatfault-a`` / ``curvefault-a``: flat / curved layers cut by one straight dipping fault, the rock on one
  side displaced vertically (OpenFWI's Fault family, for which no real models are at hand).

Further kinds of geology, each its own family (generators and their parameters in ``model.geology`` and
``model.geology_bodies``): ``inversion-a`` (low-velocity layers), ``gradient-a`` (smooth vertical gradient varying
laterally), ``lowzone-a`` (the same with smooth low-velocity zones), ``fold-a`` (independently folded interfaces),
``multifault-a`` (2-3 normal and reverse faults), ``channel-a`` (channels and lenses), ``salt-a`` (a salt-like
high-velocity body), ``style-a`` (textured layers).

Everything is vectorised over the batch: 500 models take about 0.1 s on one core (style-a, smoothed by FFT, 2 s).
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from seisbind.acquisition import NX, NZ, V_MAX, V_MIN

from model import geology, geology_bodies

GEOLOGY: dict[str, Callable[[int, np.random.Generator], np.ndarray]] = {
    "inversion-a": geology.inversion,
    "gradient-a": geology.gradient,
    "lowzone-a": geology.lowzone,
    "fold-a": geology.fold,
    "multifault-a": geology.multifault,
    "channel-a": geology_bodies.channel,
    "salt-a": geology_bodies.salt,
    "style-a": geology_bodies.style,
}
"""Families beyond OpenFWI's Vel and Fault ones: name -> generator(count, rng)."""

FAMILY_NAMES = ("flatvel-a", "curvevel-a", "flatfault-a", "curvefault-a", *GEOLOGY)

N_NOMINAL = (3, 7)
"""Range (inclusive) of the nominal number of layers."""
THICKNESS_JITTER = 1.2
"""Each layer's thickness is the nominal one ± up to this many cells."""
CURVE_AMPLITUDE = (5.0, 20.0)
"""Range of the curve's largest vertical displacement, cells (reached at the right-hand edge)."""
FAULT_THROW = (4.0, 20.0)
"""Range of a fault's vertical displacement, cells."""
FAULT_TILT_DEG = 40.0
"""A fault plane deviates from vertical by at most this angle (dip 50-90 degrees)."""


def _layer_stack(count: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Interface depths [count, 7] (cells, float; unused ones +inf) and layer velocities [count, 8] (m/s)."""
    lo, hi = N_NOMINAL
    n = rng.integers(lo, hi + 1, size=count)
    d = NZ / n
    k = np.arange(hi)
    step = d[:, None] + rng.uniform(-THICKNESS_JITTER, THICKNESS_JITTER, size=(count, hi))
    depth = rng.uniform(-0.5, 0.5, size=count)[:, None] * d[:, None] + np.cumsum(step, axis=1)
    depth = np.where(k[None] < n[:, None], depth, np.inf)
    # n + 1 draws sorted; the unused slots (past the last interface, never visible) sort to the end as inf.
    used = np.arange(hi + 1)[None] <= n[:, None]
    vel = np.sort(np.where(used, rng.uniform(V_MIN, V_MAX, size=(count, hi + 1)), np.inf), axis=1)
    vel = np.where(used, vel, np.take_along_axis(vel, n[:, None], 1))
    return depth, np.round(vel)


def _curves(count: int, rng: np.random.Generator) -> np.ndarray:
    """Vertical displacement [count, 70] (cells) shared by all interfaces of a curved model.

    A chirp: wavenumber rising from about 1 to 3-4 cycles across the model and amplitude growing towards the
    right-hand edge, the shape of the real CurveVel-A interfaces.
    """
    u = np.linspace(0.0, 1.0, NX)[None]
    k0 = rng.uniform(0.7, 1.5, size=(count, 1))
    k1 = rng.uniform(0.4, 1.2, size=(count, 1))
    phase = rng.uniform(0, 2 * np.pi, size=(count, 1))
    amp = rng.uniform(*CURVE_AMPLITUDE, size=(count, 1))
    envelope = 0.5 + 0.5 * u ** 2
    return amp * envelope * np.sin(2 * np.pi * (k0 * u + k1 * u ** 2) + phase)


def _faults(count: int, rng: np.random.Generator) -> np.ndarray:
    """Vertical displacement [count, 70, 70] (cells) of one straight dipping fault per model: the cells on one
    side of the fault line are shifted by the throw, the others not."""
    z = np.arange(NZ, dtype=np.float64)[None, :, None]
    x = np.arange(NX, dtype=np.float64)[None, None, :]
    x0 = rng.uniform(0.2 * NX, 0.8 * NX, size=(count, 1, 1))
    tilt = np.tan(np.deg2rad(rng.uniform(-FAULT_TILT_DEG, FAULT_TILT_DEG, size=(count, 1, 1))))
    throw = rng.uniform(*FAULT_THROW, size=(count, 1, 1)) * rng.choice([-1.0, 1.0], size=(count, 1, 1))
    side = (x - x0) > (z - NZ / 2) * tilt
    return np.where(side, throw, 0.0)


def _render(depth: np.ndarray, vel: np.ndarray, shift: np.ndarray) -> np.ndarray:
    """Velocity models [count, 1, 70, 70] float32: cell (z, x) lies in layer #{interfaces above z - shift}."""
    z = np.arange(NZ, dtype=np.float64)[None, :, None]
    shift = np.broadcast_to(shift, (len(depth), NZ, NX)) if shift.ndim == 3 else shift[:, None, :]
    zz = z - shift
    layer = np.zeros((len(depth), NZ, NX), np.int64)
    for k in range(depth.shape[1]):
        layer += zz >= depth[:, k, None, None]
    v = np.take_along_axis(vel, layer.reshape(len(depth), NZ * NX), axis=1)
    return v.reshape(len(depth), 1, NZ, NX).astype(np.float32)


def generate(family: str, count: int, rng: np.random.Generator) -> np.ndarray:
    """Synthetic velocity models of one family.

    Args:
        family: one of ``FAMILY_NAMES`` ("flatvel-a", "curvevel-a", "flatfault-a", "curvefault-a", and those of
            ``GEOLOGY``: "inversion-a", "gradient-a", "lowzone-a", "fold-a", "multifault-a", "channel-a", "salt-a",
            "style-a").
        count: number of models, >= 0.
        rng: the random stream; the same stream state gives the same models.

    Returns:
        [count, 1, 70, 70] float32, m/s, values in 1500-4500.

    Raises:
        ValueError: unknown family or negative count.
    """
    if family not in FAMILY_NAMES:
        raise ValueError(f"family {family!r}: unknown; choose one of {', '.join(FAMILY_NAMES)}")
    if count < 0:
        raise ValueError(f"count {count}: must be >= 0")
    if family in GEOLOGY:
        return GEOLOGY[family](count, rng)
    depth, vel = _layer_stack(count, rng)
    shift = np.zeros((count, NX))
    if family.startswith("curve"):
        shift = _curves(count, rng)
    if family.endswith("fault-a"):
        shift = shift[:, None, :] + _faults(count, rng)
    return _render(depth, vel, shift)
