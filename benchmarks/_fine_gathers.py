"""Query gathers from another forward model than the project's simulator, so that a benchmark that compares them
with simulated data avoids the inverse crime: deepwave on a 5 m grid at 0.5 ms (``model.line_simulator``) with the
OpenFWI geometry, sampled to 10 m / 1 ms, optionally with white Gaussian noise."""

from __future__ import annotations

import numpy as np

SOURCES_M = [0.0, 170.0, 340.0, 520.0, 690.0]
"""Source positions of the OpenFWI acquisition, m."""
FINE_DX, FINE_DT, FINE_NT = 5.0, 0.0005, 2000
FINE_RX = np.arange(140) * FINE_DX
"""Receiver positions on the fine grid (every 5 m; every other one is an OpenFWI receiver), m."""
FORWARD_MODEL = "deepwave on a 5 m grid at 0.5 ms (model.line_simulator), sampled to 10 m / 1 ms"


def fine_simulation(models: np.ndarray) -> np.ndarray:
    """Fine-grid gathers [n,5,2000,140] (5 m receivers, 0.5 ms) of models [n,70,70] m/s."""
    from model.line_simulator import refine_model, simulate_line

    return simulate_line(refine_model(models, 2), dx=FINE_DX, dt=FINE_DT, nt=FINE_NT, source_x_m=SOURCES_M,
                         receiver_x_m=FINE_RX, batch_size=2)


def with_noise(gathers: np.ndarray, noise_db: float | None, seed: int) -> np.ndarray:
    """Gathers [n,...] plus white Gaussian noise at SNR ``noise_db`` per gather (unchanged if None)."""
    import torch

    from model.augment import add_noise

    if noise_db is None:
        return gathers
    g = torch.Generator().manual_seed(seed)
    return add_noise(torch.from_numpy(np.ascontiguousarray(gathers)), torch.full((len(gathers),), noise_db), g).numpy()


def fine_gathers(models: np.ndarray, noise_db: float, seed: int) -> np.ndarray:
    """Query gathers [n,5,1000,70] of models [n,70,70]: the 5 m / 0.5 ms simulation sampled at 10 m / 1 ms, plus
    white Gaussian noise at ``noise_db`` per gather (none if ``noise_db`` <= 0)."""
    return with_noise(np.ascontiguousarray(fine_simulation(models)[:, :, ::2, ::2]), noise_db if noise_db > 0 else None,
                      seed)
