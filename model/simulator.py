"""Acoustic forward simulator with OpenFWI's acquisition (docs/data.md), built on deepwave.

2-D constant-density acoustic wave equation, 2nd order in time and 4th order in space, PML absorbing
boundaries 10 cells wide; 5 sources and 70 receivers at depth cell 1; Ricker 15 Hz wavelet peaking at 73 ms; dt = 1 ms,
1000 samples. Output amplitudes follow OpenFWI's convention (see ``AMPLITUDE_SCALE``). On the CPU the shots run
in parallel worker threads (``model.shot_parallel``), forward and backward.
"""

from __future__ import annotations

import deepwave
import numpy as np
import torch

from seisbind.acquisition import (
    DT,
    DX,
    N_RECEIVERS,
    N_SHOTS,
    NT,
    PEAK_FREQUENCY,
    RECEIVER_X,
    RECEIVER_Z,
    SOURCE_X,
    SOURCE_Z,
    V_MAX,
    WAVELET_LENGTH,
    WAVELET_PEAK_TIME,
)
from seisbind.openfwi import check_velocity

from model.shot_parallel import run_shot_parallel

AMPLITUDE_SCALE = -1.06
"""Factor that maps deepwave's response to a unit Ricker onto OpenFWI's amplitude convention (sign and scale);
calibrated against OpenFWI's published data extremes (benchmarks/simulator_fidelity.py)."""
COURANT_NUMBER = 0.65
"""Keeps one internal time step per 1 ms sample for velocities up to 4500 m/s (data within 0.4 % rel. L2 of
deepwave's default sub-stepping, at half the cost)."""
PML_WIDTH = 10
"""Absorbing cells on every side. 10 cells (100 m) give gathers within 0.2 % relative L2 of a 20-cell PML, and edge
reflections below 1 % of the direct wave's energy (tests/model/test_simulator.py), at half the cost: the PML holds
3,200 cells around the 4,900 of the model instead of 7,200."""
REFERENCE_PML_WIDTH = 20
"""The PML width of the simulator up to issue 15, kept for comparison (``benchmarks/simulator_speed.py``)."""


def ricker_wavelet(nt: int = NT, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Source time function [nt]: a 15 Hz Ricker, 147 samples long and centred (peak at 73 ms), then zeros."""
    w = torch.zeros(nt, dtype=dtype)
    n = min(WAVELET_LENGTH, nt)
    w[:n] = deepwave.wavelets.ricker(PEAK_FREQUENCY, WAVELET_LENGTH, DT, WAVELET_PEAK_TIME, dtype=dtype)[:n]
    return w


def _geometry(n_models: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    shots = n_models * N_SHOTS
    src = torch.zeros(shots, 1, 2, dtype=torch.long, device=device)
    src[:, 0, 0] = SOURCE_Z
    src[:, 0, 1] = torch.tensor(SOURCE_X, device=device).repeat(n_models)
    rec = torch.zeros(shots, N_RECEIVERS, 2, dtype=torch.long, device=device)
    rec[..., 0] = RECEIVER_Z
    rec[..., 1] = torch.tensor(RECEIVER_X, device=device)
    return src, rec


def simulate_torch(velocity: torch.Tensor, nt: int = NT, *, pml_width: int = PML_WIDTH,
                   workers: int | None = None) -> torch.Tensor:
    """Shot gathers of velocity models, batched over models and shots.

    Args:
        velocity: [n, 1, 70, 70] (or [n, 70, 70]) float32, m/s, on CPU or CUDA; already validated.
        nt: time samples (dt = 1 ms).
        pml_width: absorbing cells on every side (``REFERENCE_PML_WIDTH`` reproduces the earlier simulator).
        workers: CPU worker threads the shots are spread over, one OpenMP thread each (default: torch's intra-op
            thread count); 1 runs one deepwave call that parallelises each time step over torch's threads.

    Returns:
        [n, 5, nt, 70] float32 on the same device, OpenFWI amplitude convention. Differentiable in velocity
        (the backward pass is spread over the same workers).
    """
    v = velocity.reshape(-1, velocity.shape[-2], velocity.shape[-1])
    n = v.shape[0]
    src, rec = _geometry(n, v.device)
    amp = ricker_wavelet(nt).to(v.device).expand(n * N_SHOTS, 1, nt).contiguous()
    v_shots = v[:, None].expand(n, N_SHOTS, *v.shape[1:]).reshape(n * N_SHOTS, *v.shape[1:])
    max_vel = max(V_MAX, float(v.detach().max()))  # PML tuning and time stepping independent of the batch's contents

    def run(vs: torch.Tensor, shots: slice) -> torch.Tensor:
        return deepwave.scalar(
            vs, DX, DT, source_amplitudes=amp[shots], source_locations=src[shots], receiver_locations=rec[shots],
            accuracy=4, pml_width=pml_width, pml_freq=PEAK_FREQUENCY, courant_number=COURANT_NUMBER,
            max_vel=max_vel,
        )[-1]  # [shots, receivers, nt]

    out = run_shot_parallel(v_shots, run, torch.get_num_threads() if workers is None else workers)
    return (AMPLITUDE_SCALE * out).reshape(n, N_SHOTS, N_RECEIVERS, nt).transpose(2, 3)


def simulate(velocity: np.ndarray, device: str | torch.device = "cpu", batch_size: int = 8, *,
             pml_width: int = PML_WIDTH, workers: int | None = None) -> np.ndarray:
    """Shot gathers [n, 5, 1000, 70] float32 of velocity models [n, 1, 70, 70] (m/s) given as numpy
    (``pml_width`` and ``workers`` as in ``simulate_torch``).

    Raises ValueError naming the problem if the models have the wrong shape, NaN/Inf or non-positive values.
    """
    v = check_velocity(velocity)
    out = np.empty((len(v), N_SHOTS, NT, N_RECEIVERS), np.float32)
    with torch.no_grad():
        for s in range(0, len(v), batch_size):
            vb = torch.from_numpy(v[s:s + batch_size]).to(device)
            out[s:s + batch_size] = simulate_torch(vb, pml_width=pml_width, workers=workers).cpu().numpy()
    return out
