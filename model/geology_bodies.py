"""Synthetic geology with bodies and texture: channels and lenses, salt-like intrusions, Style-like textured models.

Same conventions as ``model.geology`` (whose layer-stack helpers these build on): ``f(count, rng) -> [count, 1, 70,
70] float32``, whole m/s within 1500-4500, vectorised over the batch, deterministic for a given random stream state.
"""

from __future__ import annotations

import numpy as np

from seisbind.acquisition import NX, NZ, V_MAX, V_MIN

from model.geology import _X, _Z, K_MAX, _depths, _finish, _paint, _smooth, _velocities, _waves

MAX_BODIES = 3
"""Channels/lenses per model, at most."""


def channel(count: int, rng: np.random.Generator) -> np.ndarray:
    """``channel-a``: flat layers holding one to three channels or lenses of contrasting velocity.

    The OpenFWI-like flat stack with sorted velocities. Each body (1-3, uniform) is centred at x ~ U(8, 62), its
    top at depth U(4, 60) cells, half-width U(5, 12) and thickness U(3, 8) cells. Half of them are channels (flat
    top, elliptic base) and half lenses (convex top and base, the top bulging by a third of the thickness). Its
    velocity is the host's at its top centre plus or minus (random sign) 300-1000 m/s: slower (gas sand, shale
    fill) or faster (cemented sand, carbonate); where that would leave 1500-4500 m/s the sign is reversed.
    Later bodies overwrite earlier ones where they overlap.
    """
    n, depth = _depths(count, rng)
    vel = _velocities(n, rng)
    v = _paint(np.broadcast_to(depth[:, :, None], (count, K_MAX, NX)), vel)
    n_bodies = rng.integers(1, MAX_BODIES + 1, size=count)
    for b in range(MAX_BODIES):
        xc, zt = rng.uniform(8, 62, size=(count, 1, 1)), rng.uniform(4, 60, size=(count, 1, 1))
        half, thick = rng.uniform(5, 12, size=(count, 1, 1)), rng.uniform(3, 8, size=(count, 1, 1))
        lens = rng.uniform(size=(count, 1, 1)) < 0.5
        across = np.sqrt(np.clip(1 - ((_X - xc) / half) ** 2, 0, None))  # 0 outside the body's width
        top = zt - np.where(lens, thick / 3, 0.0) * across
        inside = (np.abs(_X - xc) < half) & (_Z >= top) & (_Z <= zt + thick * across)
        host = np.take_along_axis(v.reshape(count, -1), (np.round(zt).astype(int) * NX
                                                         + np.round(xc).astype(int)).reshape(count, 1), 1)
        contrast = rng.uniform(300, 1000, size=(count, 1)) * rng.choice([-1.0, 1.0], size=(count, 1))
        body_v = np.where((host + contrast < V_MIN) | (host + contrast > V_MAX), host - contrast, host + contrast)
        v = np.where(inside & (b < n_bodies)[:, None, None], np.round(body_v)[:, :, None], v)
    return _finish(v)


def _salt_mask(count: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Salt bodies [count, 70, 70] bool, with their centre x [count] and half-width [count] (cells).

    A cap: an ellipse centred at depth U(15, 50), x U(15, 55), radii U(5, 12) (vertical) and U(6, 15) cells, its
    outline perturbed by ±15 % (2nd and 3rd angular harmonics); with probability 0.6 a stem (a diapir) from the
    cap's centre down to the bottom, 35-80 % of the cap's half-width, leaning by up to ±8 cells over the depth.
    """
    zc, xc = rng.uniform(15, 50, size=(count, 1, 1)), rng.uniform(15, 55, size=(count, 1, 1))
    rz, rx = rng.uniform(5, 12, size=(count, 1, 1)), rng.uniform(6, 15, size=(count, 1, 1))
    theta = np.arctan2((_Z - zc) / rz, (_X - xc) / rx)
    harm = rng.uniform(-1, 1, size=(count, 2, 1, 1)) * 0.075
    phase = rng.uniform(0, 2 * np.pi, size=(count, 2, 1, 1))
    outline = 1 + (harm * np.cos(np.array([2, 3])[None, :, None, None] * theta[:, None] + phase)).sum(axis=1)
    cap = np.hypot((_Z - zc) / rz, (_X - xc) / rx) <= outline
    stem_width = rx * rng.uniform(0.35, 0.8, size=(count, 1, 1))
    lean = rng.uniform(-8, 8, size=(count, 1, 1)) * (_Z - zc) / NZ
    has_stem = rng.uniform(size=(count, 1, 1)) < 0.6
    stem = has_stem & (_Z >= zc) & (np.abs(_X - xc - lean) <= stem_width)
    return cap | stem, xc[:, 0, 0], rx[:, 0, 0]


def salt(count: int, rng: np.random.Generator) -> np.ndarray:
    """``salt-a``: a high-velocity, salt-like intrusion in layered sediments.

    Sediments: the OpenFWI-like stack with sorted velocities in 1500..(salt - 500) m/s, dragged upwards next to the
    body (a Gaussian bulge of up to 8 cells, 1.5 times the cap's half-width wide). Salt: one body of constant
    velocity U(4300, 4500) m/s (see ``_salt_mask`` for its shape), so it is at least 500 m/s faster than any
    sediment.
    """
    n, depth = _depths(count, rng)
    v_salt = rng.uniform(4300, 4500, size=count)
    vel = _velocities(n, rng, V_MIN, v_salt - 500)
    mask, xc, rx = _salt_mask(count, rng)
    drag = rng.uniform(0, 8, size=(count, 1)) * np.exp(-(((_X[:, 0] - xc[:, None]) / (1.5 * rx[:, None])) ** 2))
    v = _paint(depth[:, :, None] - drag[:, None, :], vel)
    return _finish(np.where(mask, np.round(v_salt)[:, None, None], v))


def style(count: int, rng: np.random.Generator) -> np.ndarray:
    """``style-a``: textured layered models, in the spirit of OpenFWI's Style family.

    The OpenFWI-like stack with sorted velocities, its interfaces following one shared smooth curve (two sinusoids,
    up to 6 cells each). Texture: white noise smoothed by an anisotropic Gaussian (vertical width 0.8-2.5 cells,
    horizontal 3-10 cells), laid out in the curve's flattened coordinates so it follows the layering, scaled to a
    standard deviation of 60-250 m/s. The sum is then smoothed by a Gaussian of 0.5-1.5 cells (boundaries blur,
    as in Style models) and clipped to 1500-4500 m/s.
    """
    n, depth = _depths(count, rng)
    vel = _velocities(n, rng)
    curve = _waves(count, rng, (0, 6), (0.3, 1.0)) + _waves(count, rng, (0, 6), (1.0, 2.5))
    v = _paint(depth[:, :, None] + curve[:, None, :], vel)
    pad = 16
    noise = rng.standard_normal((count, NZ + 2 * pad, NX + 2 * pad))
    tex = _smooth(noise, rng.uniform(0.8, 2.5, size=count), rng.uniform(3, 10, size=count))
    tex /= tex.std(axis=(1, 2), keepdims=True)
    rows = np.clip(np.round(_Z - curve[:, None, :]).astype(int) + pad, 0, NZ + 2 * pad - 1)
    tex = np.take_along_axis(tex[:, :, pad:pad + NX], rows, axis=1)
    v = v + rng.uniform(60, 250, size=(count, 1, 1)) * tex
    sigma = rng.uniform(0.5, 1.5, size=count)
    padded = np.pad(v, ((0, 0), (pad, pad), (pad, pad)), mode="reflect")
    return _finish(_smooth(padded, sigma, sigma)[:, pad:pad + NZ, pad:pad + NX])
