"""The consensus pick among a query's k nearest bank models (seisbind.neighbours.consensus_pick)."""

from __future__ import annotations

import numpy as np

from seisbind.neighbours import consensus_pick


def constant_models(*values: float) -> np.ndarray:
    """One query's neighbours [1, k, 1, 4, 4]: constant models of the given velocities (m/s)."""
    return np.stack([np.full((1, 4, 4), v, np.float32) for v in values])[None]


def test_the_model_in_the_middle_is_picked() -> None:
    models = constant_models(1000, 1100, 1200)
    assert consensus_pick(models, np.array([[0.9, 0.8, 0.7]])).tolist() == [1]


def test_weights_follow_the_descriptor_weighting() -> None:
    models = constant_models(1000, 1100, 2000)
    D = np.array([[0.9, 0.05, 0.05]])
    # Plain mean: risks 367, 333, 933 -> the second; similarity-weighted: 55, 135, 905 -> the first.
    assert consensus_pick(models, D, "mean").tolist() == [1]
    assert consensus_pick(models, D, "similarity").tolist() == [0]


def test_ties_and_a_single_neighbour_keep_the_top1() -> None:
    assert consensus_pick(constant_models(1500, 1500, 1500), np.array([[0.5, 0.5, 0.5]])).tolist() == [0]
    assert consensus_pick(constant_models(1500), np.array([[0.5]])).tolist() == [0]
    assert consensus_pick(np.zeros((0, 5, 1, 4, 4)), np.zeros((0, 5))).shape == (0,)


def test_the_pick_has_the_least_expected_error_among_the_neighbours() -> None:
    rng = np.random.default_rng(0)
    models = rng.uniform(1500, 4500, size=(50, 5, 1, 6, 6)).astype(np.float32)
    D = rng.uniform(0.1, 1.0, size=(50, 5))
    for weighting in ("mean", "similarity"):
        pick = consensus_pick(models, D, weighting)  # type: ignore[arg-type]
        for q in range(50):
            w = D[q] / D[q].sum() if weighting == "similarity" else np.full(5, 0.2)
            risk = [sum(w[i] * np.abs(models[q, j] - models[q, i]).mean() for i in range(5)) for j in range(5)]
            assert risk[pick[q]] <= min(risk) + 1e-3
    assert len(set(consensus_pick(models, D).tolist())) > 1, "not always the same position"
