"""Torch-free field noise (``seisbind.noise``): the requested SNR exactly, shape and dtype kept, zeros kept, and the
calibration's seeded noisy copies (``index.calibrate.NoisyCopies``)."""

from __future__ import annotations

import numpy as np
import pytest

from seisbind.noise import add_white_noise, snr_db

from index.calibrate import NoisyCopies


def _gathers(n: int) -> np.ndarray:
    t = np.arange(1000) * 0.001
    wave = np.sin(2 * np.pi * 15 * t)[None, None, :, None] * np.linspace(1, 3, 70)
    return (wave * np.arange(1, n + 1)[:, None, None, None] * np.ones((n, 5, 1, 1))).astype(np.float32)


def test_white_noise_reaches_the_requested_snr_and_keeps_shape_and_dtype() -> None:
    x = _gathers(4)
    want = np.array([0.0, 5.0, 10.0, 30.0])
    y = add_white_noise(x, want, np.random.default_rng(0))
    assert y.shape == x.shape and y.dtype == np.float32
    assert np.abs(snr_db(x, y) - want).max() < 0.5
    assert np.abs(snr_db(x, y) - want).max() < 0.01  # exact up to float32 rounding


def test_a_gather_of_zeros_stays_zeros_and_one_snr_per_gather_is_required() -> None:
    x = np.zeros((2, 5, 1000, 70), np.float32)
    assert not add_white_noise(x, np.array([10.0, 0.0]), np.random.default_rng(0)).any()
    with pytest.raises(ValueError, match="one SNR per gather"):
        add_white_noise(x, np.array([10.0]), np.random.default_rng(0))


def test_noisy_copies_are_seeded_and_within_their_snr_range() -> None:
    x = _gathers(6)
    copies = NoisyCopies(snr_db=(2.0, 8.0), seed=3)
    a, b = copies.perturb()(x), copies.perturb()(x)
    np.testing.assert_array_equal(a, b)  # each perturb() restarts the same stream
    s = snr_db(x, a)
    assert s.min() >= 2.0 - 0.01 and s.max() <= 8.0 + 0.01 and np.ptp(s) > 0.5
    with pytest.raises(ValueError, match="SNR low <= high"):
        NoisyCopies(snr_db=(10.0, 0.0))
