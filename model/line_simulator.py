"""Shot gathers of any 2-D line geometry on any grid (finer grids, other sample intervals, more channels, receivers
between grid points), with the physics and conventions of ``model.simulator``: constant-density acoustic, 2nd order
in time, 4th order in space, PML; 15 Hz Ricker peaking at 73 ms; OpenFWI's amplitude convention.

Used to make the SEG-Y files of the ingest tests and benchmark (docs/ingest.md).
"""

from __future__ import annotations

from collections.abc import Sequence

import deepwave
import numpy as np
import torch

from seisbind.acquisition import DX, PEAK_FREQUENCY, V_MAX, WAVELET_PEAK_TIME

from model.simulator import AMPLITUDE_SCALE, COURANT_NUMBER, PML_WIDTH


def refine_model(velocity: np.ndarray, factor: int) -> np.ndarray:
    """Velocity models [..., nz, nx] on a grid ``factor`` times finer (each cell repeated): the same earth."""
    v = np.asarray(velocity)
    return np.repeat(np.repeat(v, factor, axis=-2), factor, axis=-1)


def widen_model(velocity: np.ndarray, nx: int) -> np.ndarray:
    """Velocity models [..., nz, nx0] extended to ``nx`` lateral cells by repeating the last column."""
    v = np.asarray(velocity)
    pad = nx - v.shape[-1]
    if pad < 0:
        raise ValueError(f"widen_model: model has {v.shape[-1]} columns, more than {nx}")
    return np.concatenate([v, np.repeat(v[..., -1:], pad, axis=-1)], axis=-1)


def ricker(dt: float, nt: int) -> torch.Tensor:
    """The OpenFWI source: 15 Hz Ricker peaking at 73 ms, sampled at ``dt`` s for ``nt`` samples (zeros after it)."""
    half = int(round(WAVELET_PEAK_TIME / dt))
    n = 2 * half + 1
    w = deepwave.wavelets.ricker(PEAK_FREQUENCY, n, dt, half * dt)
    out = torch.zeros(nt)
    out[:min(n, nt)] = w[:min(n, nt)]
    return out


def simulate_line(velocity: np.ndarray, *, dx: float, dt: float, nt: int, source_x_m: Sequence[float],
                  receiver_x_m: np.ndarray | Sequence[float], depth_m: float = DX, batch_size: int = 4,
                  threads: int | None = None) -> np.ndarray:
    """Shot gathers of velocity models for one line geometry.

    Args:
        velocity: [n, nz, nx] (or [n, 1, nz, nx]) float32, m/s, on a grid of spacing ``dx`` m.
        dx: grid spacing, m. dt: sample interval, s. nt: samples per trace.
        source_x_m: [shot] source positions, m, on grid nodes.
        receiver_x_m: [receiver] or [shot, receiver] receiver positions, m, on grid nodes.
        depth_m: depth of sources and receivers, m, on a grid node.

    Returns:
        [n, shot, nt, receiver] float32 in OpenFWI's amplitude convention: on the 10 m grid at 1 ms the output
        equals ``model.simulator.simulate``'s; on a finer grid the source is scaled by (10 m / dx)^2 so that
        amplitudes stay physical (5 m, 0.5 ms: within 12 % relative L2 of the 10 m grid's data, the difference
        being mostly the coarse grid's numerical dispersion).
    """
    if threads:
        torch.set_num_threads(threads)
    v = torch.from_numpy(np.ascontiguousarray(velocity, np.float32)).reshape(-1, *np.shape(velocity)[-2:])
    sx = np.asarray(source_x_m, np.float64)
    rx = np.broadcast_to(np.asarray(receiver_x_m, np.float64), (len(sx), np.shape(receiver_x_m)[-1]))
    cells = np.concatenate([sx, rx.ravel(), [depth_m]]) / dx
    if not np.allclose(cells, np.round(cells), atol=1e-6):
        raise ValueError(f"simulate_line: sources, receivers and depth must lie on the {dx:g} m grid")
    src = torch.zeros(len(sx), 1, 2, dtype=torch.long)
    src[:, 0, 0], src[:, 0, 1] = round(depth_m / dx), torch.from_numpy(np.round(sx / dx).astype(np.int64))
    rec = torch.zeros(len(sx), rx.shape[1], 2, dtype=torch.long)
    rec[..., 0], rec[..., 1] = round(depth_m / dx), torch.from_numpy(np.round(rx / dx).astype(np.int64))
    amp = ricker(dt, nt)
    # deepwave adds the source amplitude to one cell: on a grid r times finer the same source is r^2 times denser.
    scale = AMPLITUDE_SCALE * (DX / dx) ** 2
    pml = max(PML_WIDTH, round(PML_WIDTH * DX / dx))  # the simulator's PML thickness in metres (100 m), or more
    out = np.empty((len(v), len(sx), nt, rx.shape[1]), np.float32)
    shots = len(sx)
    with torch.no_grad():
        for s in range(0, len(v), batch_size):
            vb = v[s:s + batch_size]
            n = len(vb)
            vs = vb[:, None].expand(n, shots, *vb.shape[1:]).reshape(n * shots, *vb.shape[1:])
            y = deepwave.scalar(
                vs, dx, dt, source_amplitudes=amp.expand(n * shots, 1, nt).contiguous(),
                source_locations=src.repeat(n, 1, 1), receiver_locations=rec.repeat(n, 1, 1), accuracy=4,
                pml_width=pml, pml_freq=PEAK_FREQUENCY, courant_number=COURANT_NUMBER,
                max_vel=max(V_MAX, float(vb.max())),
            )[-1]  # [n * shots, receivers, nt]
            out[s:s + n] = (scale * y).reshape(n, shots, rx.shape[1], nt).transpose(2, 3).numpy()
    return out
