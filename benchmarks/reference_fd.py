"""A plain finite-difference reference of the OpenFWI acquisition, written directly in torch: the speed baseline
of ``python -m benchmarks.simulator_speed``.

The textbook scheme, kept simple on purpose: 2-D constant-density acoustic wave equation, 2nd order in time,
4th order in space, on the model padded by ``pad`` cells (edge values repeated) with a Cerjan sponge (the
wavefield is multiplied by a Gaussian taper in the padding every step); dt = 1 ms (stable up to
4500 m/s: v dt / dx = 0.45 < 0.6), all shots of all models in one batch. Amplitudes are scaled like
``model.simulator`` (source term -v² dt² w(t), then ``AMPLITUDE_SCALE``), so its gathers can be compared with
the simulator's; it is a baseline, not a replacement (the sponge absorbs less well than a PML).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from seisbind.acquisition import DT, DX, N_RECEIVERS, N_SHOTS, NT, RECEIVER_Z, SOURCE_X, SOURCE_Z

from model.simulator import AMPLITUDE_SCALE, ricker_wavelet

C0, C1, C2 = -5.0 / 2.0, 4.0 / 3.0, -1.0 / 12.0
"""4th-order central coefficients of the second derivative."""


def sponge(shape: tuple[int, int], pad: int, strength: float = 0.015) -> torch.Tensor:
    """Cerjan taper [nz, nx]: 1 inside the model, exp(-(strength * distance into the padding)²) in it."""
    nz, nx = shape
    z = torch.arange(nz, dtype=torch.float32)
    x = torch.arange(nx, dtype=torch.float32)
    dz = torch.clamp(pad - z, min=0) + torch.clamp(z - (nz - 1 - pad), min=0)
    dx = torch.clamp(pad - x, min=0) + torch.clamp(x - (nx - 1 - pad), min=0)
    return torch.exp(-(strength * dz[:, None]) ** 2) * torch.exp(-(strength * dx[None, :]) ** 2)


def laplacian(u: torch.Tensor) -> torch.Tensor:
    """4th-order 5-point-per-axis Laplacian × dx² of u [b, nz, nx] (zero on the two-cell border)."""
    lap = torch.zeros_like(u)
    c = u[:, 2:-2, 2:-2]
    lap[:, 2:-2, 2:-2] = (
        2 * C0 * c
        + C1 * (u[:, 1:-3, 2:-2] + u[:, 3:-1, 2:-2] + u[:, 2:-2, 1:-3] + u[:, 2:-2, 3:-1])
        + C2 * (u[:, :-4, 2:-2] + u[:, 4:, 2:-2] + u[:, 2:-2, :-4] + u[:, 2:-2, 4:])
    )
    return lap


def simulate_reference(velocity: torch.Tensor, nt: int = NT, pad: int = 40) -> torch.Tensor:
    """Shot gathers of velocity models by the plain scheme.

    Args:
        velocity: [n, 1, 70, 70] float32, m/s (assumed valid).
        nt: time steps of 1 ms.
        pad: absorbing cells on every side.

    Returns:
        [n, 5, nt, 70] float32, (shot, time, receiver), OpenFWI acquisition.
    """
    v = velocity.reshape(-1, 1, *velocity.shape[-2:]).float()
    n = v.shape[0]
    vp = F.pad(v, (pad, pad, pad, pad), mode="replicate")[:, 0]  # [n, nz, nx]
    c2 = ((vp * DT / DX) ** 2).repeat_interleave(N_SHOTS, dim=0)  # [b, nz, nx], b = n * shots
    taper = sponge(tuple(vp.shape[1:]), pad)
    b = n * N_SHOTS
    shot = torch.arange(b)
    sz = SOURCE_Z + pad
    sx = torch.tensor(SOURCE_X).repeat(n) + pad
    rz = RECEIVER_Z + pad
    rx = torch.arange(N_RECEIVERS) + pad
    src_scale = -c2[shot, sz, sx] * DX**2  # -v² dt²
    wavelet = ricker_wavelet(nt)
    u_prev = torch.zeros_like(c2)
    u = torch.zeros_like(c2)
    out = torch.empty(nt, b, N_RECEIVERS)
    for it in range(nt):
        out[it] = u[:, rz, rx]
        u_next = 2 * u - u_prev + c2 * laplacian(u)
        u_next[shot, sz, sx] += src_scale * wavelet[it]
        u_prev, u = u * taper, u_next * taper
    return (AMPLITUDE_SCALE * out).reshape(nt, n, N_SHOTS, N_RECEIVERS).permute(1, 2, 0, 3).contiguous()
