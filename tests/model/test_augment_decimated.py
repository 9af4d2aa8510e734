"""Training augments the front end's decimated gathers (dt 8 ms) instead of the raw ones (dt 1 ms): every
perturbation applied there must equal the raw-rate perturbation followed by the front end's decimation, within a
small error, and noise must reach the raw-rate SNR it was asked for (within 0.5 dB)."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from model.augment import add_noise, apply, change_wavelet, time_shift
from model.config import ModelConfig
from model.encoders import SeismicFrontEnd
from tests.model.test_augment import OFF, ricker_gathers


@pytest.fixture(scope="module")
def front() -> SeismicFrontEnd:
    return SeismicFrontEnd(ModelConfig())


@pytest.fixture(scope="module")
def raw() -> torch.Tensor:
    return ricker_gathers(15.0, n=3, seed=1)


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).norm() / b.norm())


def test_fractional_time_shift_on_decimated_gathers_equals_the_raw_shift(front, raw) -> None:
    shifts_ms = torch.tensor([[-4, -2, 0, 3, 4]] * len(raw))
    want = front.decimate(time_shift(raw, shifts_ms))
    got = time_shift(front.decimate(raw), shifts_ms * 1e-3 / front.decimated_dt)
    assert rel(got, want) < 0.01


@pytest.mark.parametrize("target", [10.0, 20.0])
def test_wavelet_change_on_decimated_gathers_equals_the_raw_change(front, raw, target: float) -> None:
    peak = torch.full((len(raw),), target)
    want = front.decimate(change_wavelet(raw, peak))
    got = change_wavelet(front.decimate(raw), peak, dt=front.decimated_dt)
    assert rel(got, want) < 0.01


@pytest.mark.parametrize("snr", [0.0, 10.0, 30.0])
def test_white_noise_on_decimated_gathers_has_the_power_raw_noise_leaves_after_the_low_pass(front, raw,
                                                                                           snr: float) -> None:
    """Noise added at the raw rate and then decimated against noise added to the decimated gathers with the
    front end's white-noise gain: the same noise power, within 0.5 dB, and the SNR relative to the raw signal
    power is the requested one after undoing the gain."""
    b = torch.full((len(raw),), snr)
    clean = front.decimate(raw)
    via_raw = front.decimate(add_noise(raw, b, torch.Generator().manual_seed(0))) - clean
    direct = add_noise(clean, b, torch.Generator().manual_seed(0), white_gain=front.white_noise_gain) - clean
    p_raw, p_dec = via_raw.double().pow(2).mean(dim=(1, 2, 3)), direct.double().pow(2).mean(dim=(1, 2, 3))
    assert np.all(np.abs(10 * np.log10((p_dec / p_raw).numpy())) < 0.5)
    got_snr = 10 * torch.log10(clean.double().pow(2).mean(dim=(1, 2, 3)) * front.white_noise_gain / p_dec)
    assert np.all(np.abs(got_snr.numpy() - snr) < 0.5)


def test_band_limited_noise_passes_the_low_pass_whole(front, raw) -> None:
    b = torch.full((len(raw),), 5.0)
    clean = front.decimate(raw)
    via_raw = front.decimate(add_noise(raw, b, torch.Generator().manual_seed(1), (5.0, 30.0))) - clean
    direct = add_noise(clean, b, torch.Generator().manual_seed(1), (5.0, 30.0), dt=front.decimated_dt,
                       white_gain=front.white_noise_gain) - clean
    ratio = direct.double().pow(2).mean(dim=(1, 2, 3)) / via_raw.double().pow(2).mean(dim=(1, 2, 3))
    assert np.all(np.abs(10 * np.log10(ratio.numpy())) < 0.5)


def test_apply_on_decimated_gathers_keeps_shape_and_dtype_and_is_deterministic(front, raw) -> None:
    dec = front.decimate(raw)
    cfg = dataclasses.replace(OFF, wavelet_p=1, shift_p=1, scale_p=1, polarity_p=1, noise_p=1, mute_p=1)
    a = apply(dec, torch.Generator().manual_seed(3), cfg, front.decimated_dt, front.white_noise_gain)
    b = apply(dec, torch.Generator().manual_seed(3), cfg, front.decimated_dt, front.white_noise_gain)
    assert a.shape == dec.shape and a.dtype == dec.dtype and torch.equal(a, b) and not torch.equal(a, dec)
    assert torch.isfinite(front.normalise(a)).all()


def test_wavelet_change_and_fractional_shift_in_one_pass_equal_the_two_in_turn(front, raw) -> None:
    dec = front.decimate(raw)
    peak, shifts = torch.full((len(raw),), 18.0), torch.rand(len(raw), 5) - 0.5
    both = change_wavelet(dec, peak, dt=front.decimated_dt, shifts=shifts)
    apart = time_shift(change_wavelet(dec, peak, dt=front.decimated_dt), shifts)
    assert rel(both, apart) < 1e-4
