"""Start models built from retrieved neighbours: weighting, smoothness, clipping and error messages."""

from __future__ import annotations

import numpy as np
import pytest

from seisbind.start_models import START_KINDS, gaussian_smooth_1d, smooth_start, start_model, topk_mean


def _layered(values: list[float]) -> np.ndarray:
    """A [70,70] model of horizontal layers of equal thickness with the given velocities."""
    rows = np.repeat(np.asarray(values, np.float32), int(np.ceil(70 / len(values))))[:70]
    return np.repeat(rows[:, None], 70, axis=1)


def _neighbours() -> tuple[np.ndarray, np.ndarray]:
    models = np.stack([_layered([2000, 3000]), _layered([3000, 4000]), _layered([1600, 2600, 3600])])
    return models, np.array([0.9, 0.3, -0.2], np.float32)


def test_topk_mean_weights_by_similarity() -> None:
    models, scores = _neighbours()
    got = topk_mean(models, scores)
    w = np.array([0.9, 0.3, 1e-6]) / (1.2 + 1e-6)
    assert got.shape == (70, 70) and got.dtype == np.float32
    np.testing.assert_allclose(got, np.tensordot(w, models.astype(np.float64), axes=1), rtol=1e-5)
    # the best neighbour pulls the mean towards it, unlike the plain mean
    assert np.abs(got - models[0]).mean() < np.abs(models.mean(0) - models[0]).mean()


def test_topk_mean_accepts_openfwi_layout_and_equal_weights_without_positive_scores() -> None:
    models, _ = _neighbours()
    got = topk_mean(models[:, None], np.array([-0.1, -0.5, 0.0]))
    np.testing.assert_allclose(got, models.mean(0), rtol=1e-5)


def test_smooth_start_is_one_dimensional_and_smooth() -> None:
    models, _ = _neighbours()
    got = smooth_start(models)
    assert got.shape == (70, 70) and got.dtype == np.float32
    assert np.all(got == got[:, :1])  # depth-only
    profile = got[:, 0].astype(np.float64)
    mean_profile = models.mean(axis=(0, 2))
    assert np.abs(np.diff(profile)).max() < 0.25 * np.abs(np.diff(mean_profile)).max()
    assert abs(profile.mean() - mean_profile.mean()) < 40.0  # smoothing keeps the overall level
    assert profile[-1] > profile[0]  # and the trend with depth


def test_gaussian_smooth_keeps_a_constant_and_its_length() -> None:
    out = gaussian_smooth_1d(np.full(70, 2500.0), 8.0)
    assert out.shape == (70,)
    np.testing.assert_allclose(out, 2500.0)
    np.testing.assert_array_equal(gaussian_smooth_1d(np.arange(5.0), 0.0), np.arange(5.0))


@pytest.mark.parametrize("kind", START_KINDS)
def test_start_model_of_every_kind_is_clipped(kind: str) -> None:
    models, scores = _neighbours()
    models = models.copy()
    models[0, :5] = 1000.0
    models[0, -5:] = 9000.0
    learned = np.full((1, 70, 70), 5000.0, np.float32)
    got = start_model(kind, models, scores, learned=learned, misfits=np.array([0.2, 0.1, 0.3]))
    assert got.shape == (70, 70) and got.dtype == np.float32
    assert got.min() >= 1500.0 and got.max() <= 4500.0


def test_start_model_top1_is_the_best_neighbour() -> None:
    models, scores = _neighbours()
    np.testing.assert_array_equal(start_model("top1", models, scores), models[0])
    np.testing.assert_array_equal(start_model("topk", models, scores), topk_mean(models, scores))


def test_start_model_bestfit_is_the_neighbour_of_lowest_misfit() -> None:
    models, scores = _neighbours()
    got = start_model("bestfit", models, scores, misfits=np.array([0.4, 0.05, 0.2]))
    np.testing.assert_array_equal(got, models[1])
    with pytest.raises(ValueError, match="needs the neighbours' data misfits"):
        start_model("bestfit", models, scores)
    with pytest.raises(ValueError, match="misfits: 2 values for 3 models"):
        start_model("bestfit", models, scores, misfits=np.array([0.1, 0.2]))
    with pytest.raises(ValueError, match="not finite"):
        start_model("bestfit", models, scores, misfits=np.array([0.1, np.nan, 0.2]))


def test_start_model_errors_name_the_problem() -> None:
    models, scores = _neighbours()
    with pytest.raises(ValueError, match="start kind 'nearest': expected one of learned, top1, topk, smooth, bestfit"):
        start_model("nearest", models, scores)
    with pytest.raises(ValueError, match="needs the learned refiner's model"):
        start_model("learned", models, scores)
    with pytest.raises(ValueError, match=r"learned: shape \(70, 71\)"):
        start_model("learned", models, scores, learned=np.zeros((70, 71)))
    with pytest.raises(ValueError, match="scores: 2 values for 3 models"):
        start_model("topk", models, scores[:2])
    with pytest.raises(ValueError, match=r"models: shape \(3, 70, 69\)"):
        topk_mean(models[:, :, :69], scores)
    with pytest.raises(ValueError, match="no neighbours"):
        topk_mean(np.zeros((0, 70, 70)), np.zeros(0))
    bad = models.copy()
    bad[1, 3, 3] = np.nan
    with pytest.raises(ValueError, match="models: contain NaN"):
        start_model("smooth", bad, scores)
