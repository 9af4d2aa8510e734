"""Full-waveform inversion (model.refine) on a tiny case: a two-layer model and a 400 ms record, a few steps."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from model.refine import FwiConfig, _plateaued, check_gathers, check_start, lowpass, refine_fwi, refine_fwi_batch
from model.simulator import simulate_torch

NT = 400


def _two_layers(top: float, bottom: float, depth: int = 30) -> np.ndarray:
    v = np.full((70, 70), top, np.float32)
    v[depth:] = bottom
    return v


def _data(v: np.ndarray) -> np.ndarray:
    with torch.no_grad():
        return simulate_torch(torch.from_numpy(v)[None], nt=NT)[0].numpy()


@pytest.fixture(scope="module", autouse=True)
def one_thread() -> None:
    torch.set_num_threads(1)


TRUTH = _two_layers(2000.0, 3000.0)
CONFIG = FwiConfig(iterations=3, frequencies_hz=(10.0, 0.0), learning_rate=40.0, plateau_patience=50)


def test_fwi_lowers_the_misfit_stays_in_bounds_and_is_deterministic() -> None:
    # two gather sets refined together: a two-layer model from a shifted start, and a fast model from a start
    # near the upper bound, which the steps must not cross
    high = _two_layers(4000.0, 4500.0)
    g = np.stack([_data(TRUTH), _data(high)])
    start = np.stack([_two_layers(2200.0, 2800.0, depth=34), np.full((70, 70), 4450.0, np.float32)])
    steps: list[tuple[int, float]] = []
    rs = refine_fwi_batch(g, start, CONFIG, progress=lambda i, m: steps.append((i, m)))
    r = rs[0]
    assert r.final_misfit < 0.9 * r.start_misfit
    assert np.abs(r.model - TRUTH).mean() < np.abs(start[0] - TRUTH).mean()
    assert r.model.shape == (70, 70) and r.model.dtype == np.float32
    assert r.stopped == "iterations" and r.iterations == 3 and len(r.misfit_history) == 3
    assert [i for i, _ in steps] == [1, 2, 3] and r.band_history == [10.0, 0.0, 0.0]
    assert rs[1].model.max() <= 4500.0 and rs[1].model.min() >= 1500.0
    assert rs[1].final_misfit <= rs[1].start_misfit
    again = refine_fwi_batch(g, start, CONFIG)  # same seed, same result
    for a, b in zip(rs, again):
        np.testing.assert_array_equal(a.model, b.model)
        assert a.misfit_history == b.misfit_history


def test_fwi_never_returns_a_model_worse_than_the_start() -> None:
    # from the truth itself every step can only fit worse: the start must come back unchanged
    r = refine_fwi(_data(TRUTH), TRUTH, FwiConfig(iterations=2, frequencies_hz=(0.0,), learning_rate=50.0))
    np.testing.assert_array_equal(r.model, TRUTH)
    assert r.final_misfit == r.start_misfit < 1e-6
    assert r.iterations == 2


def test_fwi_cancels_and_respects_the_time_budget() -> None:
    g = _data(TRUTH)
    start = _two_layers(2200.0, 2800.0)
    calls = []
    r = refine_fwi(g, start, CONFIG, should_stop=lambda: len(calls.append(0) or calls) > 1)
    assert r.stopped == "cancelled" and r.iterations == 1
    assert r.final_misfit <= r.start_misfit
    r = refine_fwi(g, start, FwiConfig(iterations=5, max_seconds=1e-6))
    assert r.stopped == "time" and r.iterations == 0
    np.testing.assert_array_equal(r.model, start)


def test_plateau_detection() -> None:
    assert not _plateaued([1.0, 0.9, 0.8], patience=3, tolerance=0.01)
    assert not _plateaued([1.0, 0.9, 0.8, 0.7], patience=3, tolerance=0.01)
    assert _plateaued([1.0, 0.5, 0.5, 0.499, 0.5], patience=3, tolerance=0.01)


def test_lowpass_keeps_low_and_removes_high_frequencies() -> None:
    t = torch.arange(1000, dtype=torch.float32) * 1e-3
    low, high = torch.sin(2 * np.pi * 3 * t), torch.sin(2 * np.pi * 40 * t)
    out = lowpass((low + high)[None, :, None], 8.0, 4)[0, 200:800, 0]
    assert torch.allclose(out, low[200:800], atol=0.05)
    assert lowpass(high[None, :, None], 0.0, 4) is not None


def test_bad_input_is_refused_naming_the_problem() -> None:
    with pytest.raises(ValueError, match=r"gathers: shape \(5, 1000, 69\)"):
        check_gathers(np.zeros((5, 1000, 69), np.float32))
    with pytest.raises(ValueError, match="gathers: all zero"):
        check_gathers(np.zeros((5, 1000, 70), np.float32))
    bad = np.ones((5, 1000, 70), np.float32)
    bad[0, 0, 0] = np.nan
    with pytest.raises(ValueError, match="gathers: contain NaN"):
        check_gathers(bad)
    with pytest.raises(ValueError, match=r"start: shape \(2, 70, 70\), expected \(1, 70, 70\)"):
        check_start(np.zeros((2, 70, 70)), 1)
    np.testing.assert_array_equal(check_start(np.full((70, 70), 9000.0), 1), np.full((1, 70, 70), 4500.0))
    with pytest.raises(ValueError, match="frequencies_hz"):
        FwiConfig(frequencies_hz=(600.0,))
    with pytest.raises(ValueError, match="iterations=-1"):
        FwiConfig(iterations=-1)
    with pytest.raises(ValueError, match="use refine_fwi_batch"):
        refine_fwi(np.ones((2, 5, 1000, 70), np.float32), TRUTH, CONFIG)
