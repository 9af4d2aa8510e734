"""Synthetic geology beyond OpenFWI's Vel and Fault families: velocity inversions, smooth gradients (with or
without low-velocity zones), independent folds, several faults. Bodies and texture are in ``model.geology_bodies``.

Each public generator ``f(count, rng) -> [count, 1, 70, 70] float32`` (m/s on the 70 x 70, 10 m grid) is one family
of ``model.families`` (the registry is ``model.families.FAMILY_NAMES``, its dispatcher ``model.families.generate``).
All values are whole m/s within 1500-4500, everything is vectorised over the batch, and the same random stream
state gives the same models. The layered ones start from the same nominal stack as the OpenFWI-like families
(3-7 nominal layers of thickness 70/n cells, ±1.2 cells jitter, whole stack shifted by up to half a layer).
"""

from __future__ import annotations

import numpy as np

from seisbind.acquisition import NX, NZ, V_MAX, V_MIN

N_NOMINAL = (3, 7)
"""Range (inclusive) of the nominal number of layers (as in ``model.families``)."""
K_MAX = N_NOMINAL[1]
"""Interfaces per model, at most (unused ones lie at +inf)."""

_Z = np.arange(NZ, dtype=np.float64)[None, :, None]
_X = np.arange(NX, dtype=np.float64)[None, None, :]
_U = np.linspace(0.0, 1.0, NX)[None]


def _depths(count: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Layers below the top ``n`` [count] (3..7) and nominal interface depths [count, 7] (cells; unused: +inf)."""
    lo, hi = N_NOMINAL
    n = rng.integers(lo, hi + 1, size=count)
    d = NZ / n
    step = d[:, None] + rng.uniform(-1.2, 1.2, size=(count, hi))
    depth = rng.uniform(-0.5, 0.5, size=count)[:, None] * d[:, None] + np.cumsum(step, axis=1)
    return n, np.where(np.arange(hi)[None] < n[:, None], depth, np.inf)


def _velocities(n: np.ndarray, rng: np.random.Generator, lo: float | np.ndarray = V_MIN,
                hi: float | np.ndarray = V_MAX) -> np.ndarray:
    """Layer velocities [count, 8] (m/s, whole): ``n + 1`` sorted uniform draws in lo..hi (per model if arrays),
    the unused slots repeating the deepest layer's."""
    count = len(n)
    lo = np.broadcast_to(np.asarray(lo, np.float64), (count,))[:, None]
    hi = np.broadcast_to(np.asarray(hi, np.float64), (count,))[:, None]
    used = np.arange(K_MAX + 1)[None] <= n[:, None]
    vel = np.sort(np.where(used, lo + (hi - lo) * rng.uniform(size=(count, K_MAX + 1)), np.inf), axis=1)
    return np.round(np.where(used, vel, np.take_along_axis(vel, n[:, None], 1)))


def _paint(surfaces: np.ndarray, vel: np.ndarray, shift: np.ndarray | None = None) -> np.ndarray:
    """Velocity [count, 70, 70] of layered models: cell (z, x) lies in layer #{k: z - shift(z, x) >= surface_k(x)}.

    surfaces: [count, K, 70] interface depths per column (cells; +inf unused); vel: [count, K + 1];
    shift: optional [count, 70, 70] vertical displacement (faults)."""
    zz = np.broadcast_to(_Z, (len(vel), NZ, NX)) if shift is None else _Z - shift
    layer = np.zeros((len(vel), NZ, NX), np.int64)
    for k in range(surfaces.shape[1]):
        layer += zz >= surfaces[:, k, None, :]
    return np.take_along_axis(vel, layer.reshape(len(vel), -1), axis=1).reshape(len(vel), NZ, NX)


def _finish(v: np.ndarray) -> np.ndarray:
    """[count, 70, 70] m/s -> [count, 1, 70, 70] float32, whole m/s within 1500-4500."""
    return np.round(np.clip(v, V_MIN, V_MAX)).astype(np.float32)[:, None]


def _smooth(field: np.ndarray, sigma_z: np.ndarray, sigma_x: np.ndarray) -> np.ndarray:
    """Gaussian smoothing (periodic, via FFT) of fields [count, H, W] with per-model widths [count] (cells)."""
    fz = np.fft.fftfreq(field.shape[1])[None, :, None]
    fx = np.fft.rfftfreq(field.shape[2])[None, None, :]
    gain = np.exp(-2 * np.pi ** 2 * ((fz * sigma_z[:, None, None]) ** 2 + (fx * sigma_x[:, None, None]) ** 2))
    return np.fft.irfft2(np.fft.rfft2(field) * gain, s=field.shape[1:])


def _waves(count: int, rng: np.random.Generator, amp: tuple[float, float], cycles: tuple[float, float],
           shape: tuple[int, ...] = ()) -> np.ndarray:
    """Sinusoids [count, *shape, 70] along x: amplitude (cells) and cycles across the model drawn per curve."""
    size = (count, *shape, 1)
    a, c = rng.uniform(*amp, size=size), rng.uniform(*cycles, size=size)
    return a * np.sin(2 * np.pi * c * _U.reshape((1,) * (len(shape) + 1) + (NX,)) + rng.uniform(0, 2 * np.pi, size))


def inversion(count: int, rng: np.random.Generator) -> np.ndarray:
    """``inversion-a``: layered models with one or two low-velocity layers (velocity inversions).

    The OpenFWI-like stack of 3-7 nominal layers with sorted velocities (1500-4500 m/s), gently dipping (one
    linear dip shared by all interfaces, up to ±5 cells at the edges). One layer, and with probability 1/2 a
    second one not adjacent to it (where one is eligible: about 30 % of models hold two), is slowed to
    ``U(1500, v_above - 300)`` m/s, limited to a drop of at most
    1200 m/s; the layer below jumps back to its sorted value. Eligible layers: not the top one, at least one layer
    below, top at least 6 cells above the bottom, and the layer above at least 1800 m/s (so the drop is at least
    300 m/s); a model without one (about 1 %) has no inversion.
    """
    n, depth = _depths(count, rng)
    vel = _velocities(n, rng)
    surfaces = depth[:, :, None] + rng.uniform(-5, 5, size=(count, 1, 1)) * (_U[:, None] - 0.5) * 2
    j = np.arange(K_MAX + 1)[None]
    top = np.concatenate([np.full((count, 1), -np.inf), depth], axis=1)  # top of layer j
    above = np.concatenate([vel[:, :1], vel[:, :-1]], axis=1)
    eligible = (j >= 1) & (j < n[:, None]) & (top < NZ - 6) & (above >= V_MIN + 300)
    for m in range(2):
        keys = np.where(eligible, rng.uniform(size=eligible.shape), -1.0)
        pick = np.argmax(keys, axis=1)[:, None]
        ok = (np.take_along_axis(keys, pick, 1) >= 0) & ((rng.uniform(size=(count, 1)) < 0.5) | (m == 0))
        v_above = np.take_along_axis(above, pick, 1)
        low = np.round(np.maximum(V_MIN + rng.uniform(size=(count, 1)) * (v_above - 300 - V_MIN), v_above - 1200))
        vel = np.where((j == pick) & ok, low, vel)
        eligible &= (j != pick) & (j != pick + 1) & (j != pick - 1)  # a second inversion elsewhere, not adjacent
    return _finish(_paint(surfaces, vel))


def _gradient_field(count: int, rng: np.random.Generator) -> np.ndarray:
    """The smooth field [count, 70, 70] (m/s, unrounded, unclipped) of ``gradient``, whose docstring defines it."""
    b = rng.uniform(1500, 2600, size=(count, 1))
    v0 = b + _waves(count, rng, (0, 1), (0.3, 1.5)) * np.minimum(250, b - V_MIN)
    w1 = _waves(count, rng, (0.05, 0.2), (0.3, 1.5))
    room = (V_MAX - v0.max(axis=1, keepdims=True)) / (1 + np.abs(w1).max(axis=1, keepdims=True))
    dv = np.minimum(rng.uniform(600, 2400, size=(count, 1)), room) * (1 + w1)
    warp = _waves(count, rng, (1.5, 5), (0.3, 1.2))
    s = warp - np.abs(warp).max(axis=1, keepdims=True)  # <= 0: the depth axis shifts down by up to 10 cells
    a = rng.uniform(-2, 3, size=(count, 1, 1))
    a = np.where(np.abs(a) < 1e-6, 1e-6, a)  # f tends to t as a -> 0
    t = (_Z - s[:, None, :]) / (NZ + 10)
    return v0[:, None, :] + dv[:, None, :] * (1 - np.exp(-a * t)) / (1 - np.exp(-a))


def gradient(count: int, rng: np.random.Generator) -> np.ndarray:
    """``gradient-a``: smooth velocity increasing with depth, without interfaces, varying laterally.

    v(z, x) = v0(x) + dv(x) * f(t), t = (z - s(x)) / 80 in [0, 1), f(t) = (1 - exp(-a t)) / (1 - exp(-a)):

    * top velocity v0 = b + w0(x), b ~ U(1500, 2600) m/s, w0 a sinusoid along x (0.3-1.5 cycles across the
      model) of amplitude up to min(250, b - 1500) m/s;
    * increase dv(x) = c * (1 + w1(x)), w1 a sinusoid of 5-20 %, c ~ U(600, 2400) m/s but at most what keeps
      v0 + dv <= 4500;
    * shape a ~ U(-2, 3) (a > 0: steep near the top, as for compaction; a < 0: steepening with depth; a -> 0:
      linear);
    * depth axis warped by s(x) <= 0, a sinusoid of 1.5-5 cells (0.3-1.2 cycles) shifted to <= 0: up to 10
      cells down, an uplifted structure.

    Nothing is clipped, so the field stays smooth.
    """
    return _finish(_gradient_field(count, rng))


LVZ_DROP = (400.0, 1200.0)
"""Range of a low-velocity zone's drop at its centre (m/s), before the 1500 m/s floor limits it."""
LVZ_HOST_MIN = 1900.0
"""A zone is centred on a row whose background is at least this fast (m/s) everywhere, where there is one."""


def lowzone(count: int, rng: np.random.Generator) -> np.ndarray:
    """``lowzone-a``: smooth velocity increasing with depth holding one or two smooth low-velocity zones.

    The ``gradient-a`` field (no interfaces) minus, for each zone (two with probability 1/2), a Gaussian in depth
    drop(x) * exp(-((z - c(x)) / w)^2 / 2): centre c = a random row among 14-58 where the background is at least
    1900 m/s across the model (row 58 if none is) plus a sinusoid of up to 4 cells (0.3-1.2 cycles); half-width
    w ~ U(1.5, 5) cells; drop U(400, 1200) m/s times 1 + a sinusoid of up to 15 %, limited so that the zone's
    centre stays >= 1550 m/s. Geologically an undercompacted (overpressured) shale or a
    gas-charged interval: velocity falls with depth over the zone's upper half and recovers below it, without
    the sharp interfaces of ``inversion-a``'s low-velocity layers. Nothing is clipped but the 1500-4500 m/s range.
    """
    v = _gradient_field(count, rng)
    two = rng.uniform(size=(count, 1, 1)) < 0.5
    for m in range(2):
        rows = np.arange(NZ)[None]
        ok = (v.min(axis=2) >= LVZ_HOST_MIN) & (rows >= 14) & (rows <= 58)
        keys = np.where(ok, rng.uniform(size=ok.shape), -1.0)
        centre = np.where(keys.max(axis=1) >= 0, keys.argmax(axis=1), 58)[:, None]
        c = centre + _waves(count, rng, (0, 4), (0.3, 1.2))
        w = rng.uniform(1.5, 5, size=(count, 1, 1))
        drop = rng.uniform(*LVZ_DROP, size=(count, 1)) * (1 + _waves(count, rng, (0, 0.15), (0.3, 1.2)))
        z0 = np.clip(np.floor(c), 0, NZ - 2).astype(int)[:, None, :]
        frac = np.clip(c - z0[:, 0], 0, 1)  # the background at the centre, linearly interpolated: no seams
        at_centre = ((1 - frac) * np.take_along_axis(v, z0, axis=1)[:, 0]
                     + frac * np.take_along_axis(v, z0 + 1, axis=1)[:, 0])
        drop = np.clip(drop, 0.0, at_centre - V_MIN - 50)
        zone = drop[:, None, :] * np.exp(-0.5 * ((_Z - c[:, None, :]) / w) ** 2)
        v = v - np.where(two | (m == 0), zone, 0.0)
    return _finish(v)


def fold(count: int, rng: np.random.Generator) -> np.ndarray:
    """``fold-a``: layers whose interfaces are folded independently of each other (not one shared curve).

    The OpenFWI-like stack with sorted velocities; interface k is the nominal depth plus its own sinusoid
    (amplitude 1.5-10 cells, 0.4-2.5 cycles across the model, random phase). Where a deeper interface would rise
    above a shallower one it is held at it, so the layer between pinches out (interfaces never cross).
    """
    n, depth = _depths(count, rng)
    vel = _velocities(n, rng)
    surfaces = depth[:, :, None] + _waves(count, rng, (1.5, 10.0), (0.4, 2.5), shape=(K_MAX,))
    return _finish(_paint(np.maximum.accumulate(surfaces, axis=1), vel))


def multifault(count: int, rng: np.random.Generator) -> np.ndarray:
    """``multifault-a``: flat layers cut by two or three straight faults, both normal and reverse.

    The OpenFWI-like stack with sorted velocities. Fault i crosses mid-depth at x_i, one in each of 2 (or 3, with
    probability 1/2) equal parts of 12-88 % of the width, and dips 60-90 degrees (tilt up to ±30 degrees from
    vertical). Its hanging wall (the side its plane dips towards) moves by 4-15 cells: down for a normal fault,
    up for a reverse one. The first fault's kind is random, the second the other one, the third random, so every
    model holds both. Displacements add up (the younger faults do not offset the older fault planes).
    """
    n, depth = _depths(count, rng)
    vel = _velocities(n, rng)
    n_faults = 2 + (rng.uniform(size=count) < 0.5)
    shift = np.zeros((count, NZ, NX))
    first_normal = rng.uniform(size=count) < 0.5
    for i in range(3):
        parts = n_faults[:, None, None]
        x0 = NX * (0.12 + 0.76 * (i + rng.uniform(0.15, 0.85, size=(count, 1, 1))) / parts)
        tilt = np.tan(np.deg2rad(rng.uniform(-30, 30, size=(count, 1, 1))))
        hanging = (_X - x0 - (_Z - NZ / 2) * tilt) * np.sign(tilt) > 0
        normal = first_normal if i == 0 else ~first_normal if i == 1 else rng.uniform(size=count) < 0.5
        throw = rng.uniform(4, 15, size=count) * np.where(normal, 1.0, -1.0) * (i < n_faults)
        shift += np.where(hanging, throw[:, None, None], 0.0)
    flat = np.broadcast_to(depth[:, :, None], (count, K_MAX, NX))
    return _finish(_paint(flat, vel, shift))
