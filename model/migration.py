"""Gather features brought to depth through a velocity model (the learned refiner's migration branch,
docs/learned_refiner.md): for every cell (z, x) of the 70 x 70 grid and every shot, the feature of the gather at the
time a reflection from depth z under x would arrive, read from the receiver on the far side of x (the reflection
point of a flat reflector is the source-receiver midpoint), with the hyperbolic moveout of that velocity model:

    t(z, x, s) = t_peak + sqrt(t0(z, x)^2 + (h / v_rms(z, x))^2),   h = 2 |x - x_s| dx,   receiver 2x - x_s

where t0 is the two-way vertical time from the source depth down to z and v_rms the root-mean-square velocity
over that path (Dix). Where the model is right, reflections line up with its interfaces; where an interface is
too shallow or too deep, the reflection shows beside it, which is what the refiner needs to correct the depth.
Differentiable, parameter-free, and exported to ONNX (GridSample, opset 16 and later)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from seisbind.acquisition import DX, N_RECEIVERS, N_SHOTS, NX, NZ, SOURCE_X, SOURCE_Z, WAVELET_PEAK_TIME


def vertical_times(velocity: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """velocity [B, 70, 70] m/s -> (two-way vertical time from the source depth to each cell, s; rms velocity over
    that path, m/s), both [B, 70, 70]; cells above the source depth have time 0 and their own velocity."""
    below = (torch.arange(NZ, device=velocity.device) >= SOURCE_Z).to(velocity.dtype)[None, :, None]
    v = velocity.float()
    t0 = 2.0 * DX * torch.cumsum(below / v, dim=1)
    path = 2.0 * DX * torch.cumsum(below * v, dim=1)
    v_rms = torch.where(t0 > 0, torch.sqrt(path / t0.clamp(min=1e-9)), v)
    return t0, v_rms


def migration_grid(velocity: torch.Tensor, dt: float, n_time: int) -> torch.Tensor:
    """The sampling grid of :func:`grid_sample` for every shot: velocity [B, 70, 70] m/s, the gathers' sample
    interval ``dt`` (s) and length ``n_time`` -> [B * 5, 70, 70, 2] (receiver, time) in [-1, 1] (align_corners)."""
    t0, v_rms = vertical_times(velocity)
    x = torch.arange(NX, device=velocity.device, dtype=torch.float32)
    grids = []
    for xs in SOURCE_X:
        offset = 2.0 * (x - xs).abs() * DX  # [70]
        t = WAVELET_PEAK_TIME + torch.sqrt(t0 ** 2 + (offset / v_rms) ** 2)  # [B, 70, 70]
        gy = t * (2.0 / (dt * (n_time - 1))) - 1.0
        gx = ((2.0 * x - xs) * (2.0 / (N_RECEIVERS - 1)) - 1.0).expand_as(gy)
        grids.append(torch.stack([gx, gy], dim=-1))
    return torch.stack(grids, dim=1).reshape(-1, NZ, NX, 2)


class DepthMigration(nn.Module):
    """Per-shot gather features [B, 5, C, T', 70] and a velocity model [B, 70, 70] m/s -> [B, 5 * C, 70, 70]:
    each shot's features read at the reflection times of :func:`migration_grid` (zero beyond the receivers)."""

    def __init__(self, dt: float) -> None:
        super().__init__()
        self.dt = dt

    def forward(self, features: torch.Tensor, velocity: torch.Tensor) -> torch.Tensor:
        b, s, c, n_time, n_rec = features.shape
        if s != N_SHOTS or n_rec != N_RECEIVERS:
            raise ValueError(f"features {tuple(features.shape)}: expected [B, {N_SHOTS}, C, T, {N_RECEIVERS}]")
        grid = migration_grid(velocity, self.dt, n_time)
        out = F.grid_sample(features.reshape(b * s, c, n_time, n_rec), grid, mode="bilinear",
                            padding_mode="zeros", align_corners=True)
        return out.reshape(b, s * c, NZ, NX)
