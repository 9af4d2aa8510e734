"""The refiner's migration branch: simulated reflections brought to depth through the true model line up with its
interfaces, through a too-slow model they show too shallow, and the grid is the moveout it documents."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from seisbind.acquisition import DX, SOURCE_X, WAVELET_PEAK_TIME

from model.config import ModelConfig
from model.encoders import SeismicFrontEnd
from model.migration import DepthMigration, migration_grid, vertical_times
from model.simulator import simulate


@pytest.fixture(scope="module")
def two_layer() -> tuple[torch.Tensor, torch.Tensor, SeismicFrontEnd]:
    torch.set_num_threads(1)
    v = np.full((2, 1, 70, 70), 2000.0, np.float32)
    v[0, 0, 30:] = 3500.0
    v[1, 0, 45:] = 3000.0
    front = SeismicFrontEnd(ModelConfig(decimation=8, lowpass_hz=60.0, lowpass_taps=97))
    dec = front.decimate(torch.from_numpy(simulate(v)))
    return dec, torch.from_numpy(v[:, 0]), front


def _reflector_depth(image: torch.Tensor) -> list[int]:
    """Depth (cell) of the strongest migrated energy below the direct wave, under the middle of the model."""
    profile = image.abs().mean(1)[:, 15:, 20:50].mean(2)
    return [15 + int(p.argmax()) for p in profile]


def test_reflections_land_on_the_interfaces_of_the_true_model(two_layer) -> None:  # type: ignore[no-untyped-def]
    dec, v, front = two_layer
    migrate = DepthMigration(front.decimated_dt)
    image = migrate(dec[:, :, None], v)
    assert image.shape == (2, 5, 70, 70) and image.dtype == torch.float32
    deep = _reflector_depth(image)
    assert abs(deep[0] - 30) <= 2 and abs(deep[1] - 45) <= 2, deep
    slow = _reflector_depth(migrate(dec[:, :, None], 0.85 * v))
    assert slow[0] < deep[0] - 2 and slow[1] < deep[1] - 2, (slow, deep)  # too slow: the reflector shows too shallow


def test_the_grid_is_the_hyperbolic_moveout() -> None:
    v = torch.full((1, 70, 70), 2500.0)
    t0, v_rms = vertical_times(v)
    assert float(t0[0, 0, 0]) == 0.0 and float(t0[0, 40, 3]) == pytest.approx(2 * 40 * DX / 2500.0, rel=1e-6)
    torch.testing.assert_close(v_rms[0, 10:], torch.full((60, 70), 2500.0))
    dt, n_time = 0.008, 125
    grid = migration_grid(v, dt, n_time).reshape(1, 5, 70, 70, 2)
    s, z, x = 2, 40, 50  # shot at cell 34: receiver 2 * 50 - 34 = 66, offset 2 * 16 cells
    want_t = WAVELET_PEAK_TIME + np.sqrt(float(t0[0, z, x]) ** 2 + (2 * (x - SOURCE_X[s]) * DX / 2500.0) ** 2)
    assert float(grid[0, s, z, x, 1]) == pytest.approx(want_t / (dt * (n_time - 1)) * 2 - 1, rel=1e-5)
    assert float(grid[0, s, z, x, 0]) == pytest.approx((2 * x - SOURCE_X[s]) / 69 * 2 - 1, rel=1e-6)
    with pytest.raises(ValueError, match="expected"):
        DepthMigration(dt)(torch.zeros(1, 4, 1, n_time, 70), v)
