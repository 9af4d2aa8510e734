"""The simulator's fast path (shots over worker threads, 10-cell PML) against the previous one (one deepwave call
threaded per time step, 20-cell PML): same data and gradients, within stated tolerances."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from model.families import generate
from model.simulator import PML_WIDTH, REFERENCE_PML_WIDTH, simulate_torch

NT_SHORT = 250
"""Enough steps for the direct wave and first reflections to reach every receiver; keeps the tests fast."""


@pytest.fixture(scope="module", autouse=True)
def two_threads() -> None:
    torch.set_num_threads(2)


@pytest.fixture(scope="module")
def velocity() -> torch.Tensor:
    """Two models of different families (different maximum velocities)."""
    rng = np.random.default_rng(7)
    return torch.from_numpy(np.concatenate([generate("curvevel-a", 1, rng), generate("flatfault-a", 1, rng)]))


def grad_of_energy(v: torch.Tensor, **settings: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(gathers, gradient of their summed squares with respect to the velocity)."""
    x = v.clone().requires_grad_(True)
    d = simulate_torch(x, NT_SHORT, **settings)
    (d ** 2).sum().backward()
    assert x.grad is not None
    return d.detach(), x.grad


@pytest.mark.parametrize("pml_width", [PML_WIDTH, REFERENCE_PML_WIDTH])
def test_worker_threads_give_the_single_call_bit_for_bit(velocity: torch.Tensor, pml_width: int) -> None:
    with torch.no_grad():
        one = simulate_torch(velocity, NT_SHORT, pml_width=pml_width, workers=1)
        for workers in (2, 3, 10):  # 10 shots: even, uneven and one-shot spans
            assert torch.equal(simulate_torch(velocity, NT_SHORT, pml_width=pml_width, workers=workers), one)
    assert torch.get_num_threads() == 2, "the caller's thread count is restored"


def test_worker_threads_give_the_single_call_gradient(velocity: torch.Tensor) -> None:
    """Forward data identical; velocity gradients equal up to float32 summation order (deepwave's threaded
    backward adds per-thread partial sums)."""
    d1, g1 = grad_of_energy(velocity, workers=1)
    d2, g2 = grad_of_energy(velocity, workers=2)
    assert torch.equal(d1, d2)
    assert g1.abs().max() > 0
    torch.testing.assert_close(g2, g1, rtol=0, atol=1e-5 * float(g1.abs().max()))


def test_10_cell_pml_agrees_with_the_20_cell_one(velocity: torch.Tensor) -> None:
    """Whole 1 s gathers within 0.5 % relative L2 (the edge reflections that differ are tiny); gradients of a
    data misfit point the same way (cosine > 0.999)."""
    with torch.no_grad():
        new = simulate_torch(velocity).double()
        old = simulate_torch(velocity, pml_width=REFERENCE_PML_WIDTH).double()
    assert float((new - old).norm() / old.norm()) < 0.005
    _, g_new = grad_of_energy(velocity)
    _, g_old = grad_of_energy(velocity, pml_width=REFERENCE_PML_WIDTH)
    a, b = g_new.double().ravel(), g_old.double().ravel()
    assert float(a @ b / (a.norm() * b.norm())) > 0.999


def test_gradient_flows_through_a_batch_of_one_model() -> None:
    """One model (5 shots over 2 workers: spans of 3 and 2): the gradient reaches every shot's velocity copy and
    matches finite differences of the loss in one cell to 2 %."""
    v = torch.full((1, 1, 70, 70), 2500.0)
    v[..., 40:, :] = 3200.0
    _, g = grad_of_energy(v)
    cell = (0, 0, 15, 30)
    h = 5.0
    with torch.no_grad():
        vp, vm = v.clone(), v.clone()
        vp[cell] += h
        vm[cell] -= h
        fd = ((simulate_torch(vp, NT_SHORT).double() ** 2).sum() - (simulate_torch(vm, NT_SHORT).double() ** 2).sum())
    fd = float(fd) / (2 * h)
    assert abs(float(g[cell]) - fd) <= 0.02 * abs(fd), (float(g[cell]), fd)

