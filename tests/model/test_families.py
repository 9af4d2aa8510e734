"""Synthetic velocity families (model/families.py) against the real OpenFWI FlatVel-A and CurveVel-A models.

Each statistic is compared between 1,000 generated models and the 5,000 real training models, with a tolerance a
few times its sampling noise, and small enough that a plausible wrong generator fails (e.g. unsorted layer
velocities move the mean by ~200 m/s, a fixed layer count moves the histogram by > 0.5, plain sinusoids of the
wrong amplitude move the lateral variation by > 30 %).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from seisbind.openfwi import read_models

from model.families import FAMILY_NAMES, generate

N_GENERATED = 1000
REAL = {"flatvel-a": "flatvel_a", "curvevel-a": "curvevel_a"}


@pytest.fixture(scope="module")
def real_models(openfwi_dir: Path) -> dict[str, np.ndarray]:
    """The real training models [5000, 70, 70] of both families."""
    return {f: read_models(openfwi_dir / d / "train_vmodel.zip").array()[:, 0] for f, d in REAL.items()}


@pytest.fixture(scope="module")
def generated() -> dict[str, np.ndarray]:
    """N_GENERATED models [n, 70, 70] of every family, seed 1."""
    return {f: generate(f, N_GENERATED, np.random.default_rng(1))[:, 0] for f in FAMILY_NAMES}


def layers_per_column(v: np.ndarray) -> np.ndarray:
    """Number of constant-velocity runs down each column, [n, 70]."""
    return 1 + (np.diff(v, axis=1) != 0).sum(axis=1)


def layer_histogram(v: np.ndarray) -> np.ndarray:
    """Fraction of columns holding 1..10 layers."""
    return np.bincount(layers_per_column(v).ravel(), minlength=11)[1:11] / (v.shape[0] * v.shape[2])


def mean_layer_thickness(v: np.ndarray) -> float:
    """Mean thickness (cells) of the layers crossed by a column."""
    return float((v.shape[1] / layers_per_column(v)).mean())


def lateral_variation(v: np.ndarray) -> tuple[float, float]:
    """(mean |dv/dx| in m/s per cell, fraction of lateral neighbours that differ)."""
    dx = np.abs(np.diff(v, axis=2))
    return float(dx.mean()), float((dx > 0).mean())


def edge_offset(v: np.ndarray, max_shift: int = 30) -> int:
    """Vertical shift (cells) that best maps the left-most column of one model [70, 70] onto the right-most one."""
    a, b = v[:, 0], v[:, -1]
    nz = len(a)
    best, best_err = 0, np.inf
    for s in range(-max_shift, max_shift + 1):
        lo, hi = max(0, s), min(nz, nz + s)
        err = np.mean(a[lo - s:hi - s] != b[lo:hi])
        if err < best_err - 1e-12 or (abs(err - best_err) <= 1e-12 and abs(s) < abs(best)):
            best, best_err = s, err
    return best


@pytest.mark.parametrize("family", FAMILY_NAMES)
def test_shape_dtype_and_range(generated: dict[str, np.ndarray], family: str) -> None:
    v = generate(family, 7, np.random.default_rng(0))
    assert v.shape == (7, 1, 70, 70) and v.dtype == np.float32
    g = generated[family]
    assert g.min() >= 1500 and g.max() <= 4500
    assert g.min() < 1550 and g.max() > 4450, "the whole 1500-4500 m/s range should be used"
    assert np.array_equal(g, np.round(g)), "velocities are whole m/s, as in OpenFWI"


@pytest.mark.parametrize("family", list(REAL))
def test_velocity_distribution_matches_real(real_models: dict[str, np.ndarray],
                                            generated: dict[str, np.ndarray], family: str) -> None:
    r, g = real_models[family], generated[family]
    assert abs(g.mean() - r.mean()) < 40, (g.mean(), r.mean())
    assert abs(g.std() - r.std()) < 40, (g.std(), r.std())
    q = [0.05, 0.25, 0.5, 0.75, 0.95]
    np.testing.assert_allclose(np.quantile(g, q), np.quantile(r, q), atol=60)


@pytest.mark.parametrize("family", list(REAL))
def test_layer_counts_and_thickness_match_real(real_models: dict[str, np.ndarray],
                                               generated: dict[str, np.ndarray], family: str) -> None:
    r, g = real_models[family], generated[family]
    hr, hg = layer_histogram(r), layer_histogram(g)
    assert 0.5 * np.abs(hr - hg).sum() < 0.06, f"layer-count histograms differ:\nreal {hr.round(3)}\ngen  {hg.round(3)}"
    assert set(np.flatnonzero(hg > 0.01) + 1) <= set(range(3, 9)), "columns hold 3-8 layers"
    assert abs(mean_layer_thickness(g) / mean_layer_thickness(r) - 1) < 0.05
    # Per model: the distinct velocities (layers) number 3-8, as in the real families.
    distinct = np.array([len(np.unique(m)) for m in g])
    assert distinct.min() >= 2 and distinct.max() <= 8
    assert np.mean((distinct >= 3) & (distinct <= 8)) > 0.97


@pytest.mark.parametrize("family", list(REAL))
def test_velocity_increases_with_depth_like_real(real_models: dict[str, np.ndarray],
                                                 generated: dict[str, np.ndarray], family: str) -> None:
    """In the real Vel families velocity never decreases downwards; the mean vertical step matches too."""
    r, g = real_models[family], generated[family]
    assert (np.diff(r, axis=1) < 0).sum() == 0, "premise: the real models increase with depth"
    assert (np.diff(g, axis=1) < 0).sum() == 0
    dz_r, dz_g = np.diff(r, axis=1).mean(), np.diff(g, axis=1).mean()
    assert abs(dz_g / dz_r - 1) < 0.1, (dz_g, dz_r)


def test_flat_families_have_no_lateral_variation(real_models: dict[str, np.ndarray],
                                                 generated: dict[str, np.ndarray]) -> None:
    assert lateral_variation(real_models["flatvel-a"]) == (0.0, 0.0)
    assert lateral_variation(generated["flatvel-a"]) == (0.0, 0.0)


def test_curved_lateral_variation_matches_real(real_models: dict[str, np.ndarray],
                                               generated: dict[str, np.ndarray]) -> None:
    (mr, fr), (mg, fg) = lateral_variation(real_models["curvevel-a"]), lateral_variation(generated["curvevel-a"])
    assert abs(mg / mr - 1) < 0.15, f"mean |dv/dx|: generated {mg:.1f}, real {mr:.1f} m/s per cell"
    assert abs(fg / fr - 1) < 0.15, f"lateral steps: generated {fg:.4f}, real {fr:.4f}"
    # Every curved model bends: no column layout repeats across the whole model.
    assert all((np.diff(m, axis=1) != 0).any() for m in generated["curvevel-a"])


def test_same_rng_state_gives_same_models() -> None:
    for family in FAMILY_NAMES:
        a = generate(family, 20, np.random.default_rng(42))
        b = generate(family, 20, np.random.default_rng(42))
        c = generate(family, 20, np.random.default_rng(43))
        assert np.array_equal(a, b), family
        assert not np.array_equal(a, c), family


def test_flat_fault_offsets_the_layers_on_one_side(generated: dict[str, np.ndarray]) -> None:
    """A fault displaces one side vertically: the left and right edges' layering differs by a vertical shift,
    which is zero without a fault."""
    assert all(edge_offset(m) == 0 for m in generated["flatvel-a"][:100])
    offsets = np.array([edge_offset(m) for m in generated["flatfault-a"][:200]])
    assert np.mean(np.abs(offsets) >= 2) > 0.95, np.bincount(np.abs(offsets))
    # Against the unfaulted layering drawn from the same random stream, the changed cells of each row run from
    # the fault to the model edge, and the fault's position moves linearly with depth: a straight dipping line.
    faulted = generate("flatfault-a", 50, np.random.default_rng(5))[:, 0]
    flat = generate("flatvel-a", 50, np.random.default_rng(5))[:, 0]
    changed = faulted != flat
    assert changed.any(axis=(1, 2)).mean() > 0.9
    for m in changed:
        rows = np.flatnonzero(m.any(axis=1))
        starts = np.array([np.flatnonzero(m[z]).min() for z in rows])
        for z, x0 in zip(rows, starts):
            assert m[z, x0:].all(), "a row's displaced cells run from the fault to the edge"
        inner = (starts > 0) & (starts < m.shape[1] - 1)
        if inner.sum() >= 3:
            fit = np.polyval(np.polyfit(rows[inner], starts[inner], 1), rows[inner])
            assert np.abs(fit - starts[inner]).max() <= 1.0, "the fault is a straight line"


def test_curve_fault_is_a_faulted_curved_model(generated: dict[str, np.ndarray]) -> None:
    faulted = generate("curvefault-a", 50, np.random.default_rng(6))[:, 0]
    curved = generate("curvevel-a", 50, np.random.default_rng(6))[:, 0]
    changed = faulted != curved
    assert changed.any(axis=(1, 2)).mean() > 0.9
    assert lateral_variation(generated["curvefault-a"])[0] > lateral_variation(generated["curvevel-a"])[0]


def test_unknown_family_and_bad_count() -> None:
    with pytest.raises(ValueError, match=r"family 'marmousi'.*flatvel-a, curvevel-a, flatfault-a, curvefault-a"):
        generate("marmousi", 3, np.random.default_rng(0))
    with pytest.raises(ValueError, match=r"count -1"):
        generate("flatvel-a", -1, np.random.default_rng(0))
    assert generate("curvefault-a", 0, np.random.default_rng(0)).shape == (0, 1, 70, 70)
