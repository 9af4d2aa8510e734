"""model.rerank: the data misfit of retrieved neighbours, simulated by the project's forward model."""

from __future__ import annotations

import numpy as np
import pytest

from seisbind.noise import add_white_noise

from model.families import generate
from model.rerank import best_fit, neighbour_misfits, relative_misfit, rerank
from model.simulator import simulate


@pytest.fixture(scope="module")
def inversions() -> tuple[np.ndarray, np.ndarray]:
    """Four velocity-inversion models [4,1,70,70] (similar to one another) and their gathers."""
    models = generate("inversion-a", 4, np.random.default_rng(3))
    return models, simulate(models)


def test_the_true_model_fits_best_even_in_noise(inversions: tuple[np.ndarray, np.ndarray]) -> None:
    models, gathers = inversions
    clean = neighbour_misfits(gathers[2], models)
    assert clean.shape == (1, 4) and clean[0, 2] < 1e-10 and (np.delete(clean[0], 2) > 0.01).all()
    noisy = add_white_noise(gathers[2:3], np.array([5.0]), np.random.default_rng(0))
    m = neighbour_misfits(noisy, models[None, :, 0])
    assert best_fit(m).tolist() == [2]
    assert rerank(m)[0, 0] == 2
    r = 10 ** -0.5  # noise power over signal power at 5 dB; the misfit is relative to the noisy data
    np.testing.assert_allclose(m[0, 2], r / (1 + r), rtol=0.02)


def test_a_shorter_record_is_compared_over_its_length(inversions: tuple[np.ndarray, np.ndarray]) -> None:
    models, gathers = inversions
    m = neighbour_misfits(gathers[1, :, :400], models)
    assert best_fit(m).tolist() == [1] and m[0, 1] < 1e-10
    np.testing.assert_allclose(relative_misfit(gathers[1, :, :400], gathers[:, :, :400]), m[0], rtol=1e-6)


def test_every_gather_set_has_its_own_candidates(inversions: tuple[np.ndarray, np.ndarray]) -> None:
    models, gathers = inversions
    calls: list[int] = []

    def lookup(v: np.ndarray) -> np.ndarray:  # stored gathers instead of simulating again
        calls.append(len(v))
        rows = [int(np.argmin(np.abs(models - m).sum(axis=(1, 2, 3)))) for m in v]
        return gathers[rows]

    candidates = np.stack([models[[0, 3, 1]], models[[2, 0, 3]]])  # [2,3,1,70,70]
    m = neighbour_misfits(gathers[[1, 3]], candidates, simulate=lookup)
    assert calls == [6] and m.shape == (2, 3)
    assert best_fit(m).tolist() == [2, 2]
    np.testing.assert_array_equal(rerank(np.array([[0.3, 0.1, 0.1]])), [[1, 2, 0]])  # ties keep the embedding's order


def test_bad_input_is_refused_with_the_reason(inversions: tuple[np.ndarray, np.ndarray]) -> None:
    models, gathers = inversions
    with pytest.raises(ValueError, match=r"candidates: shape \(4, 70, 69\)"):
        neighbour_misfits(gathers[0], models[:, 0, :, :69])
    with pytest.raises(ValueError, match=r"candidates: shape .* for 2"):
        neighbour_misfits(gathers[:2], models)
    with pytest.raises(ValueError, match="finite and positive"):
        neighbour_misfits(gathers[0], np.where(models > 3000, np.nan, models))
    with pytest.raises(ValueError, match="gathers: all zero"):
        neighbour_misfits(np.zeros_like(gathers[0]), models)
    with pytest.raises(ValueError, match="gathers: shape"):
        neighbour_misfits(gathers[0, :, :, :60], models)
