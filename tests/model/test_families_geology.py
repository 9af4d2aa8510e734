"""Statistics of the extra geology families (model/geology.py, model/geology_bodies.py) on a few hundred models each.

Every family's defining property is measured on the generated velocities alone, and each measure is checked to
discriminate: it must also fail (or read zero) on an OpenFWI-like family that lacks the property (e.g. the fold
measure on curvevel-a, whose interfaces share one curve; the fault count on flatfault-a, which has one fault).
Range, dtype, whole m/s and determinism of every family are also covered by tests/model/test_families.py, which
runs over all of FAMILY_NAMES.
"""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage, signal

from model.families import FAMILY_NAMES, GEOLOGY, generate

N = 300


@pytest.fixture(scope="module")
def models() -> dict[str, np.ndarray]:
    """N models [N, 70, 70] float64 of every family, seed 11."""
    return {f: generate(f, N, np.random.default_rng(11))[:, 0].astype(np.float64) for f in FAMILY_NAMES}


def inversion_columns(v: np.ndarray, drop: float = 250.0) -> np.ndarray:
    """[n, 70] bool: the column's velocity falls by more than ``drop`` m/s below the fastest velocity above it."""
    return ((np.maximum.accumulate(v, axis=1) - v) > drop).any(axis=1)


def decreasing_steps(v: np.ndarray) -> np.ndarray:
    """Per model [n]: fraction of vertical neighbour pairs whose velocity decreases downwards."""
    return (np.diff(v, axis=1) < 0).mean(axis=(1, 2))


def lateral_discontinuities(m: np.ndarray) -> int:
    """Lateral discontinuities of a flat-layered model [70, 70], at least: the most lateral changes in one row,
    or 2 when the rows hold one change each but those do not lie on one straight line (within 1.5 cells)."""
    ch = np.diff(m, axis=1) != 0
    per_row = ch.sum(axis=1)
    if per_row.max() != 1:
        return int(per_row.max())
    z = np.flatnonzero(per_row == 1)
    x = np.array([np.flatnonzero(ch[r])[0] for r in z])
    if len(z) < 3:
        return 1
    return 2 if np.abs(np.polyval(np.polyfit(z, x, 1), z) - x).max() > 1.5 else 1


def interface_spread(m: np.ndarray, step: int = 5) -> int:
    """Largest spread (cells) over interfaces of the depth difference between two columns holding the same layer
    sequence: 0-1 when every interface follows one shared curve (a column is a vertical shift of another)."""
    def profile(col: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        b = np.flatnonzero(np.diff(col) != 0) + 1
        return b, col[np.r_[0, b]]

    cols = [profile(m[:, x]) for x in range(0, m.shape[1], step)]
    best = -1
    for i, (b0, s0) in enumerate(cols):
        for b, s in cols[i + 1:]:
            if len(b) == len(b0) >= 2 and np.array_equal(s, s0):
                best = max(best, int((b - b0).max() - (b - b0).min()))
    return best


def test_every_new_family_is_registered_and_documented() -> None:
    assert len(GEOLOGY) >= 5
    assert FAMILY_NAMES[:4] == ("flatvel-a", "curvevel-a", "flatfault-a", "curvefault-a")
    assert set(GEOLOGY) <= set(FAMILY_NAMES) and len(set(FAMILY_NAMES)) == len(FAMILY_NAMES)
    for name, fn in GEOLOGY.items():
        assert fn.__doc__ and f"``{name}``" in fn.__doc__, f"{name}: the generator's docstring names the family"


@pytest.mark.parametrize("family", list(GEOLOGY))
def test_shape_dtype_range_and_determinism(models: dict[str, np.ndarray], family: str) -> None:
    a = generate(family, 9, np.random.default_rng(3))
    assert a.shape == (9, 1, 70, 70) and a.dtype == np.float32
    assert np.array_equal(a, generate(family, 9, np.random.default_rng(3)))
    assert not np.array_equal(a, generate(family, 9, np.random.default_rng(4)))
    rng = np.random.default_rng(5)
    first = generate(family, 4, rng)
    assert not np.array_equal(first, generate(family, 4, rng)), "the stream advances: the next draw differs"
    v = models[family]
    assert v.min() >= 1500 and v.max() <= 4500 and np.array_equal(v, np.round(v))
    assert all(len(np.unique(m)) >= 2 for m in v), "no constant models"
    assert 2300 < v.mean() < 3200, v.mean()


def test_inversion_a_has_low_velocity_layers(models: dict[str, np.ndarray]) -> None:
    frac = inversion_columns(models["inversion-a"]).mean(axis=1)  # per model: columns holding an inversion
    assert np.mean(frac > 0.9) > 0.95, np.percentile(frac, [1, 5, 50])
    assert inversion_columns(models["flatvel-a"]).sum() == 0 and inversion_columns(models["curvevel-a"]).sum() == 0
    # One or two low-velocity layers: in most columns the velocity decreases once or twice down the column.
    drops = (np.diff(models["inversion-a"], axis=1) < -250).sum(axis=1)
    assert set(np.unique(drops)) <= {0, 1, 2} and 0.2 < np.mean(drops == 2) < 0.6, np.bincount(drops.ravel())


def test_gradient_a_is_smooth_increasing_and_varies_laterally(models: dict[str, np.ndarray]) -> None:
    v = models["gradient-a"]
    d2 = max(np.abs(np.diff(v, 2, axis=1)).max(), np.abs(np.diff(v, 2, axis=2)).max())
    assert d2 <= 20, f"second differences up to {d2} m/s per cell^2: not smooth"
    assert np.abs(np.diff(models["curvevel-a"], 2, axis=1)).max() > 200, "premise: layered models are not smooth"
    dz = np.diff(v, axis=1)
    assert (dz >= 0).all() and (dz.mean(axis=(1, 2)) > 5).all(), "velocity increases with depth"
    assert (v[:, -1].mean(axis=1) - v[:, 0].mean(axis=1)).min() > 500
    lateral = np.abs(np.diff(v, axis=2)).mean(axis=(1, 2))
    assert (lateral > 0.3).all() and np.mean(lateral > 1) > 0.95, np.percentile(lateral, [0, 5, 50])
    assert np.median([len(np.unique(m)) for m in v]) > 300, "a continuum of velocities, no layers"


def test_lowzone_a_holds_smooth_low_velocity_zones(models: dict[str, np.ndarray]) -> None:
    v = models["lowzone-a"]
    frac = inversion_columns(v).mean(axis=1)
    assert np.mean(frac > 0.9) > 0.85, np.percentile(frac, [1, 5, 50])
    assert inversion_columns(models["gradient-a"]).sum() == 0, "premise: the background never slows down"
    # Smooth zones, not layers: the largest one-cell decrease is a fraction of the column's drop (1.0 for the
    # sharp low-velocity layers of inversion-a).
    def steepest_share(m: np.ndarray) -> np.ndarray:
        drop = (np.maximum.accumulate(m, axis=1) - m).max(axis=1)
        step = np.clip(-np.diff(m, axis=1), 0, None).max(axis=1)
        deep = drop > 250
        return step[deep] / drop[deep]
    assert steepest_share(v).max() < 0.6, np.percentile(steepest_share(v), [50, 95, 100])
    assert steepest_share(models["inversion-a"]).min() == 1.0
    # One or two zones: local minima down a column with a prominence over 200 m/s.
    zones = np.array([len(signal.find_peaks(-m[:, x], prominence=200)[0]) for m in v for x in (10, 35, 60)])
    assert zones.max() <= 2 and 0.2 < np.mean(zones == 2) < 0.6 and np.mean(zones >= 1) > 0.95, np.bincount(zones)
    assert np.median([len(np.unique(m)) for m in v]) > 300, "a continuum of velocities, no layers"


def test_fold_a_interfaces_fold_independently(models: dict[str, np.ndarray]) -> None:
    spread = np.array([interface_spread(m) for m in models["fold-a"]])
    assert np.mean(spread >= 3) > 0.95, np.bincount(spread + 1)
    control = np.array([interface_spread(m) for m in models["curvevel-a"][:100]])
    assert control.max() <= 1, "premise: interfaces sharing one curve give a spread of at most one cell"
    assert (np.diff(models["fold-a"], axis=1) >= 0).all(), "folded, not overturned: velocity grows with depth"


def test_multifault_a_has_two_or_three_faults(models: dict[str, np.ndarray]) -> None:
    count = np.array([lateral_discontinuities(m) for m in models["multifault-a"]])
    assert np.mean(count >= 2) > 0.95 and count.max() <= 3, np.bincount(count)
    assert all(lateral_discontinuities(m) == 1 for m in models["flatfault-a"][:100]), "premise: one fault reads 1"
    # Both senses of throw: reverse faults put faster rock above slower rock at some depth, normal ones do not
    # necessarily, so every multi-fault model holds a downward decrease somewhere while flat layers never do.
    assert np.mean(inversion_columns(models["multifault-a"], drop=0).any(axis=1)) > 0.9


def test_channel_a_holds_compact_contrasting_bodies(models: dict[str, np.ndarray]) -> None:
    v = models["channel-a"]
    anomaly = np.abs(v - np.median(v, axis=2, keepdims=True))  # flat host: each row is constant outside bodies
    assert np.abs(models["flatvel-a"] - np.median(models["flatvel-a"], axis=2, keepdims=True)).max() == 0
    bodies = [ndimage.label(a > 0)[1] for a in anomaly]
    assert np.mean([1 <= b <= 3 for b in bodies]) > 0.95, np.bincount(bodies)
    area = (anomaly > 0).sum(axis=(1, 2))
    assert np.mean((area >= 15) & (area <= 700)) > 0.95, np.percentile(area, [0, 5, 50, 95, 100])
    contrast = np.array([np.median(a[a > 0]) for a in anomaly if (a > 0).any()])
    assert np.mean(contrast >= 250) > 0.9, np.percentile(contrast, [0, 5, 50])
    slower = np.array([np.median((m - np.median(m, axis=1, keepdims=True))[a > 0]) < 0 for m, a in zip(v, anomaly)])
    assert 0.25 < slower.mean() < 0.75, "both slower and faster bodies"


def test_salt_a_holds_one_compact_fast_body(models: dict[str, np.ndarray]) -> None:
    for m in models["salt-a"]:
        body = m == m.max()
        labels, n_parts = ndimage.label(body)
        assert n_parts == 1, "one connected salt body"
        assert 80 <= body.sum() <= 1500, body.sum()
        cols = np.flatnonzero(body.any(axis=0))
        assert cols.max() - cols.min() + 1 <= 45, "compact: sediments on both sides"
        assert body[:5].sum() == 0, "the salt lies below the top sediments"
        ring = ndimage.binary_dilation(body, iterations=2) & ~body
        assert m.max() - m[ring].mean() >= 500 and m.max() - m[~body].max() >= 500, "faster than its surroundings"
        assert m.max() >= 4300


def test_style_a_is_textured_within_layers(models: dict[str, np.ndarray]) -> None:
    v = models["style-a"]
    assert decreasing_steps(v).min() > 0.1, "texture makes velocity fluctuate within the layers"
    for family in ("flatvel-a", "curvevel-a", "inversion-a", "fold-a", "gradient-a", "salt-a"):
        assert decreasing_steps(models[family]).max() < 0.05, family
    assert np.median([len(np.unique(m)) for m in v]) > 300
    # The texture follows the layering: it oscillates faster down a column than along a row.
    def sign_changes(d: np.ndarray, axis: int) -> np.ndarray:
        return (np.diff(np.sign(d), axis=axis) != 0).mean(axis=(1, 2))
    assert np.mean(sign_changes(np.diff(v, axis=1), 1) > sign_changes(np.diff(v, axis=2), 2)) > 0.8
    # Still layered on average: velocity increases from the top to the bottom.
    assert np.mean(v[:, -10:].mean(axis=(1, 2)) > v[:, :10].mean(axis=(1, 2))) > 0.95
