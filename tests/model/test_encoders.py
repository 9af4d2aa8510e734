"""Encoders: shapes, physical-unit normalisation inside the modules, the fixed seismic front end, config."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from model.data import mirror
from model.encoders import (
    DATA_MAX,
    DATA_MIN,
    ModelConfig,
    SeismicEncoder,
    VelocityEncoder,
    create_model,
    filter_response,
    log_minmax,
)

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def tiny():
    return create_model(ModelConfig.tiny(), seed=0).eval()


def test_embeddings_have_the_contract_shape_and_unit_norm(tiny):
    g = torch.randn(3, 5, 1000, 70) * 5
    v = torch.rand(3, 1, 70, 70) * 3000 + 1500
    d = torch.rand(3, 8) * 1000 + 1500
    for enc, x in ((tiny.seismic, g), (tiny.velocity, v), (tiny.physics, d)):
        e = enc(x)
        assert e.shape == (3, 256) and e.dtype == torch.float32
        torch.testing.assert_close(e.norm(dim=1), torch.ones(3))


def test_widest_family_extremes_map_to_plus_minus_one():
    assert (DATA_MIN, DATA_MAX) == (-27.11, 55.10)
    y = log_minmax(torch.tensor([DATA_MIN, 0.0, DATA_MAX]), DATA_MIN, DATA_MAX)
    assert y[0].item() == pytest.approx(-1, abs=1e-6) and y[2].item() == pytest.approx(1, abs=1e-6)
    lo, hi = -math.log1p(27.11), math.log1p(55.10)
    assert y[1].item() == pytest.approx(2 * (0 - lo) / (hi - lo) - 1, abs=1e-6)


def test_velocity_range_maps_to_plus_minus_one():
    x = VelocityEncoder.normalise(torch.tensor([1500.0, 3000.0, 4500.0]))
    torch.testing.assert_close(x, torch.tensor([-1.0, 0.0, 1.0]))


def test_front_end_keeps_the_ricker_band_and_rejects_aliases():
    cfg = ModelConfig()
    gain = filter_response(cfg)
    assert gain["15Hz"] == pytest.approx(1, abs=1e-3) and gain["30Hz"] == pytest.approx(1, abs=2e-3)
    t = np.arange(1000) * 1e-3
    enc = SeismicEncoder(cfg)
    for f, keep in ((12.0, True), (110.0, False)):  # 110 Hz would alias to 15 Hz after decimation by 8
        x = torch.tensor(10 * np.sin(2 * np.pi * f * t), dtype=torch.float32).view(1, 1, 1000, 1).expand(1, 5, 1000, 70)
        pre = enc.preprocess(x.contiguous())
        mid = pre[0, 0, 20:-20, 0]  # away from the edges
        spread = float(mid.max() - mid.min())
        assert (spread > 0.5) if keep else (spread < 0.01), (f, spread)
    assert pre.shape == (1, 5, 125, 70)


def test_preprocess_then_features_equals_the_full_encoder(tiny):
    g = torch.randn(2, 5, 1000, 70) * 3
    torch.testing.assert_close(tiny.seismic(g), tiny.seismic.forward_features(tiny.seismic.preprocess(g)))


def test_mirror_reverses_shots_and_receivers_and_is_an_involution():
    pre = torch.randn(2, 5, 125, 70)
    vel = torch.rand(2, 1, 70, 70)
    mp, mv = mirror(pre, vel)
    torch.testing.assert_close(mp[:, 0, :, 0], pre[:, 4, :, 69])
    torch.testing.assert_close(mv[..., 0], vel[..., 69])
    back = mirror(mp, mv)
    torch.testing.assert_close(back[0], pre)
    torch.testing.assert_close(back[1], vel)


def test_offset_channel_is_mirror_invariant_for_the_outer_shots():
    off = SeismicEncoder(ModelConfig.tiny()).offset[0, :, 0]  # [5, 70]
    mirrored = off.flip(0).flip(1)
    for s in (0, 1, 3, 4):
        torch.testing.assert_close(mirrored[s], off[s])
    assert not torch.equal(mirrored[2], off[2])  # the middle source (34) mirrors to 35


def test_same_seed_same_weights_and_config_round_trip():
    a, b = create_model(ModelConfig.tiny(), seed=3), create_model(ModelConfig.tiny(), seed=3)
    for (n, p), (_, q) in zip(a.state_dict().items(), b.state_dict().items()):
        assert torch.equal(p, q), n
    cfg = ModelConfig.tiny()
    assert ModelConfig.from_dict(cfg.to_dict()) == cfg
    assert math.exp(a.logit_scale.item()) == pytest.approx(1 / 0.07)


def test_bad_settings_are_refused():
    with pytest.raises(ValueError, match="lowpass_hz"):
        ModelConfig(lowpass_hz=600)
    with pytest.raises(ValueError, match="unknown ModelConfig keys"):
        ModelConfig.from_dict({"depth": 3})
    with pytest.raises(ValueError, match="positive"):
        create_model(ModelConfig.tiny()).physics.set_stats(np.zeros(8), np.zeros(8))
