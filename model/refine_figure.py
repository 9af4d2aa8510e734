"""The refinement figure (matplotlib, Agg): the observed gather, the start and refined models, the data residual
of the refined model, and the misfit history (docs/refine.md)."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from seisbind.acquisition import DT, DX, V_MAX, V_MIN  # noqa: E402
from seisbind.files import write_with_atomic  # noqa: E402

SHOT = 2
"""The shot shown (the middle one)."""


def refine_figure(path: Path, gathers: np.ndarray, start: np.ndarray, refined: np.ndarray, residual: np.ndarray,
                  misfit_history: list[float], title: str = "") -> None:
    """Write one figure for one gather set.

    Args:
        path: .png to write (atomically).
        gathers: [5,1000,70] observed gathers.
        start, refined: [70,70] m/s.
        residual: [5,1000,70] simulated data of ``refined`` minus ``gathers``.
        misfit_history: misfit per FWI step (may be empty).
        title: figure title.
    """
    fig, axes = plt.subplots(1, 5, figsize=(19, 3.8))
    lim = float(np.percentile(np.abs(gathers[SHOT]), 99)) or 1.0
    t_ext = (0, gathers.shape[-1], gathers.shape[-2] * DT, 0)
    for ax, data, name in ((axes[0], gathers[SHOT], "observed gather"), (axes[3], residual[SHOT], "data residual")):
        ax.imshow(data, aspect="auto", cmap="gray", vmin=-lim, vmax=lim, extent=t_ext)
        ax.set_title(f"{name} (shot {SHOT + 1}, same scale)")
        ax.set_xlabel("receiver")
        ax.set_ylabel("time (s)")
    v_ext = (0, start.shape[-1] * DX, start.shape[-2] * DX, 0)
    for ax, v, name in ((axes[1], start, "start"), (axes[2], refined, "refined")):
        im = ax.imshow(v, cmap="jet", vmin=V_MIN, vmax=V_MAX, extent=v_ext)
        ax.set_title(f"{name} model")
        ax.set_xlabel("x (m)")
        ax.set_ylabel("depth (m)")
    fig.colorbar(im, ax=axes[1:3].tolist(), label="m/s", shrink=0.8)
    ax = axes[4]
    if misfit_history:
        ax.semilogy(np.arange(1, len(misfit_history) + 1), misfit_history)
    ax.set_title("misfit per step (its band)")
    ax.set_xlabel("step")
    if title:
        fig.suptitle(title)
    try:
        write_with_atomic(path, lambda tmp: fig.savefig(tmp, dpi=100, bbox_inches="tight"))
    finally:
        plt.close(fig)
