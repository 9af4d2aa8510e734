"""Physical descriptors of velocity models (docs/data.md#descriptors), numpy only, vectorised over a batch."""

from __future__ import annotations

import numpy as np

from seisbind.acquisition import DX
from seisbind.openfwi import check_velocity

DESCRIPTOR_NAMES = ("v_mean", "v_std", "v_min", "v_max", "v_top", "v_bottom", "grad_z", "grad_x")
DESCRIPTOR_UNITS = {
    "v_mean": "m/s", "v_std": "m/s", "v_min": "m/s", "v_max": "m/s",
    "v_top": "m/s", "v_bottom": "m/s", "grad_z": "1/s", "grad_x": "1/s",
}
VELOCITY_DESCRIPTORS = ("v_mean", "v_min", "v_max", "v_top", "v_bottom")
"""The five velocity-valued descriptors whose mean relative error is the headline descriptor error."""


def compute_descriptors(velocity: np.ndarray, grid_spacing: float = DX) -> np.ndarray:
    """Descriptors of velocity models.

    Args:
        velocity: [n, 1, nz, nx] (or [1, nz, nx] / [nz, nx]) float, m/s.
        grid_spacing: cell size, m.

    Returns:
        [n, 8] float64 in the order of ``DESCRIPTOR_NAMES``: m/s for velocities, 1/s for gradients.
    """
    v = check_velocity(velocity).astype(np.float64)[:, 0]  # [n, nz, nx]
    n, nz, _ = v.shape
    flat = v.reshape(n, -1)
    band = max(1, int(round(0.1 * nz)))
    grad_z = np.diff(v, axis=1).mean(axis=(1, 2)) / grid_spacing
    grad_x = np.abs(np.diff(v, axis=2)).mean(axis=(1, 2)) / grid_spacing
    return np.stack([
        flat.mean(1), flat.std(1), flat.min(1), flat.max(1),
        v[:, :band].mean(axis=(1, 2)), v[:, -band:].mean(axis=(1, 2)), grad_z, grad_x,
    ], axis=1)


def velocity_columns() -> list[int]:
    """Column indices of the five velocity-valued descriptors."""
    return [DESCRIPTOR_NAMES.index(n) for n in VELOCITY_DESCRIPTORS]


def mean_relative_error(pred: np.ndarray, true: np.ndarray) -> float:
    """Headline descriptor error: mean of |pred - true| / |true| over the five velocity-valued descriptors."""
    cols = velocity_columns()
    return float(np.mean(np.abs(pred[:, cols] - true[:, cols]) / np.abs(true[:, cols])))


def mean_absolute_errors(pred: np.ndarray, true: np.ndarray) -> dict[str, float]:
    """Mean absolute error of every descriptor, by name."""
    mae = np.abs(pred - true).mean(0)
    return {name: float(m) for name, m in zip(DESCRIPTOR_NAMES, mae)}


def as_dicts(values: np.ndarray) -> list[dict[str, float]]:
    """Rows of [n, 8] descriptors as {name: value} dictionaries."""
    return [{k: float(x) for k, x in zip(DESCRIPTOR_NAMES, row)} for row in np.atleast_2d(values)]
