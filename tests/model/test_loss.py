"""The tri-modal InfoNCE loss against a plain reference."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from model.loss import TriModalLoss, symmetric_info_nce

torch.set_num_threads(1)


def reference_clip(a: torch.Tensor, b: torch.Tensor, scale: float) -> torch.Tensor:
    n = len(a)
    total = 0.0
    for i in range(n):  # a->b row i and b->a row i, written out
        sa = torch.stack([scale * torch.dot(a[i], b[j]) for j in range(n)])
        sb = torch.stack([scale * torch.dot(b[i], a[j]) for j in range(n)])
        total = total - torch.log_softmax(sa, 0)[i] - torch.log_softmax(sb, 0)[i]
    return total / (2 * n)


def test_symmetric_info_nce_matches_the_reference():
    g = torch.Generator().manual_seed(0)
    a = F.normalize(torch.randn(7, 16, generator=g), dim=1)
    b = F.normalize(torch.randn(7, 16, generator=g), dim=1)
    got = symmetric_info_nce(a, b, torch.tensor(10.0))
    torch.testing.assert_close(got, reference_clip(a, b, 10.0))


def test_aligned_pairs_give_near_zero_loss_and_random_ones_about_log_n():
    a = F.normalize(torch.eye(32), dim=1)
    assert symmetric_info_nce(a, a, torch.tensor(100.0)).item() < 1e-6
    b = torch.ones(32, 32) / math.sqrt(32)
    assert abs(symmetric_info_nce(b, b, torch.tensor(100.0)).item() - math.log(32)) < 1e-4


def test_weights_combine_and_lambda2_zero_sends_no_gradient_to_physics():
    g = torch.Generator().manual_seed(1)
    s, v, p = (F.normalize(torch.randn(6, 8, generator=g), dim=1).requires_grad_() for _ in range(3))
    scale = torch.tensor(14.0)
    loss, parts = TriModalLoss(1.0, 0.1)(s, v, p, scale)
    assert abs(loss.item() - (parts["sv"] + 0.1 * parts["vp"])) < 1e-5
    loss0, parts0 = TriModalLoss(1.0, 0.0)(s, v, p, scale)
    loss0.backward()
    assert p.grad is None and s.grad is not None
    assert abs(loss0.item() - parts0["sv"]) < 1e-6 and parts0["vp"] == parts["vp"]


def test_a_pair_of_scales_scores_each_pair_with_its_own():
    g = torch.Generator().manual_seed(2)
    s, v, p = (F.normalize(torch.randn(5, 8, generator=g), dim=1) for _ in range(3))
    _, parts = TriModalLoss(1.0, 0.1)(s, v, p, torch.tensor([10.0, 30.0]))
    assert parts["sv"] == pytest.approx(symmetric_info_nce(s, v, torch.tensor(10.0)).item())
    assert parts["vp"] == pytest.approx(symmetric_info_nce(v, p, torch.tensor(30.0)).item())


def test_separate_velocity_physics_scale_is_a_second_parameter_with_its_own_learning_rate():
    from model.config import ModelConfig
    from model.encoders import create_model
    from model.optim import param_groups

    tiny = {**ModelConfig.tiny().to_dict(), "seis_trunk": (4, 8, 8)}
    shared = create_model(ModelConfig(**{**tiny, "vp_scale": False}))
    assert not hasattr(shared, "logit_scale_vp") and torch.equal(shared.scale_vp(), shared.scale())
    assert ModelConfig.from_dict({k: v for k, v in tiny.items() if k != "vp_scale"}).vp_scale is False
    own = create_model(ModelConfig(**{**tiny, "vp_scale": True}))
    groups = param_groups(own, 0.05, scale_lr_mult=10.0)
    assert len(groups) == 3 and groups[2]["lr_mult"] == 10.0 and len(groups[2]["params"]) == 2
    assert len(param_groups(own, 0.05)) == 2


def test_soft_targets_share_the_positive_mass_by_model_distance_and_reduce_to_one_hot():
    from model.loss import velocity_soft_targets

    base = torch.full((4, 1, 3, 3), 2000.0)
    vel = base + torch.tensor([0.0, 10.0, 400.0, 1000.0]).view(4, 1, 1, 1)  # models 0 and 1 differ by 10 m/s
    t = velocity_soft_targets(vel, tau_mps=50.0)
    assert torch.allclose(t.sum(1), torch.ones(4))
    assert t[0, 0] > t[0, 1] > 0.3 and t[0, 2] < 1e-3  # the near model shares, the far ones hardly
    assert torch.allclose(velocity_soft_targets(vel, tau_mps=1e-3), torch.eye(4))
    g = torch.Generator().manual_seed(3)
    s, v, p = (F.normalize(torch.randn(4, 8, generator=g), dim=1) for _ in range(3))
    hard, _ = TriModalLoss(1.0, 0.1)(s, v, p, torch.tensor(10.0))
    tiny_tau, _ = TriModalLoss(1.0, 0.1, 1e-3)(s, v, p, torch.tensor(10.0), vel)
    assert tiny_tau.item() == pytest.approx(hard.item(), rel=1e-6)
    with pytest.raises(ValueError, match="velocity models"):
        TriModalLoss(1.0, 0.1, 50.0)(s, v, p, torch.tensor(10.0))


def test_runs_stored_before_soft_targets_resume_as_one_hot():
    from model.config import TrainConfig

    cfg = TrainConfig(data=("/data",), out="/run")
    old = cfg.to_dict()
    del old["soft_tau_mps"]
    assert cfg.soft_tau_mps > 0 and TrainConfig.from_dict(old).soft_tau_mps == 0.0
    assert cfg.resume_mismatch(old) == ["soft_tau_mps"]
