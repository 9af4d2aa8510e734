"""Calibration math (seisbind.calibration, seisbind.calibration_features): ECE, the logistic fit, features of
search hits and gathers, the OOD test, the calibration file's round trip (format 3), older formats and refusals.
Numpy only, fast."""

from __future__ import annotations

import json

import numpy as np
import pytest

from seisbind.acquisition import SOURCE_X
from seisbind.calibration import (
    DISTANCE_INPUT,
    EXCESS_INPUT,
    FORMAT,
    OOD_QUANTILE,
    Calibration,
    CalibrationError,
    assess,
    expected_calibration_error,
    fit_calibration,
    held_out_distances,
    load_calibration,
    reliability,
    top1_mae,
)
from seisbind.calibration_features import (
    FEATURE_NAMES,
    NOISE_ROUGHNESS,
    _equal_offset_pairs,
    late_energy,
    lateral_variation,
    query_features,
    reflectivity,
    roughness,
    shot_asymmetry,
    spread_mae,
)
from seisbind.files import sha256_file, write_json_atomic


def test_ece_of_known_bins() -> None:
    # bin [0.2, 0.3): confidence 0.2 twice, one event of two -> |0.2 - 0.5| weighted 2/4;
    # bin [0.9, 1.0]: confidence 1.0 twice (1.0 falls in the last bin), both events -> 0.
    p = np.array([0.2, 0.2, 1.0, 1.0])
    y = np.array([1, 0, 1, 1])
    assert expected_calibration_error(p, y) == pytest.approx(0.5 * 0.3)
    assert expected_calibration_error(np.full(4, 0.5), np.array([0, 1, 0, 1])) == 0.0
    assert expected_calibration_error(np.zeros(3), np.ones(3)) == 1.0
    table = reliability(p, y)
    assert [(t["n"], t["frequency"]) for t in table] == [(2, 0.5), (2, 1.0)]


def test_ece_of_perfectly_calibrated_draws_is_small_and_of_overconfidence_large() -> None:
    rng = np.random.default_rng(0)
    p = rng.uniform(0, 1, 20000)
    y = rng.uniform(0, 1, 20000) < p
    assert expected_calibration_error(p, y) < 0.02
    assert expected_calibration_error(np.clip(p + 0.3, 0, 1), y) > 0.2


@pytest.mark.parametrize("p,y", [(np.array([0.5, 1.2]), np.array([0, 1])), (np.array([0.5]), np.array([0, 1])),
                                 (np.array([]), np.array([])), (np.array([np.nan]), np.array([1]))])
def test_ece_refuses_bad_input(p: np.ndarray, y: np.ndarray) -> None:
    with pytest.raises(ValueError):
        expected_calibration_error(p, y)


def _synthetic(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Features (all of FEATURE_NAMES) whose event probability is a known logistic function of the top-1 score and
    the spread."""
    rng = np.random.default_rng(seed)
    X = np.column_stack([rng.uniform(0.5, 1.0, n), rng.uniform(0, 0.1, n), rng.uniform(3, 6, n),
                         rng.uniform(-3, -1, n), rng.uniform(0, 3, n), rng.uniform(-2, -1, n), rng.uniform(-7, -1, n)])
    p = 1 / (1 + np.exp(-(20 * (X[:, 0] - 0.8) - 1.5 * (X[:, 2] - 4.5))))
    return X, (rng.uniform(0, 1, n) < p).astype(float)


def test_fit_is_calibrated_on_fresh_draws_and_round_trips_through_a_bundle(tmp_path) -> None:
    X, y = _synthetic(4000, 0)
    cal = fit_calibration(X, y, np.ones(len(X), bool), {"note": "synthetic"})
    Xt, yt = _synthetic(4000, 1)
    assert expected_calibration_error(cal.confidence(Xt), yt) < 0.03
    assert cal.weights[0] > 0 and cal.weights[2] < 0  # higher score: likelier; more spread: less
    assert cal.fit["note"] == "synthetic" and cal.fit["n"] == 4000
    assert abs(cal.out_of_distribution(Xt).mean() - (1 - OOD_QUANTILE)) < 0.015
    write_json_atomic(tmp_path / "calibration.json", cal.to_dict())
    manifest = {"calibration": {"file": "calibration.json", "sha256": sha256_file(tmp_path / "calibration.json")}}
    back = load_calibration(tmp_path, manifest)
    assert back is not None
    np.testing.assert_array_equal(back.confidence(Xt), cal.confidence(Xt))
    np.testing.assert_array_equal(back.out_of_distribution(Xt), cal.out_of_distribution(Xt))
    assert load_calibration(tmp_path, {}) is None


def test_corrupt_or_missing_calibration_files_are_refused(tmp_path) -> None:
    X, y = _synthetic(200, 0)
    doc = fit_calibration(X, y, np.ones(len(X), bool)).to_dict()
    path = tmp_path / "calibration.json"
    write_json_atomic(path, doc)
    entry = {"file": "calibration.json", "sha256": sha256_file(path)}
    with pytest.raises(CalibrationError, match="missing"):
        load_calibration(tmp_path, {"calibration": {**entry, "file": "other.json"}})
    with pytest.raises(CalibrationError, match="sha256"):
        load_calibration(tmp_path, {"calibration": {**entry, "sha256": "0" * 64}})
    with pytest.raises(CalibrationError, match="malformed calibration section"):
        load_calibration(tmp_path, {"calibration": {"file": "../x.json"}})
    for broken, match in ((dict(doc, features=["top1_score", "not_computed"]), "recalibrate"),
                          (dict(doc, features=["top1_score"]), "unknown or repeated logistic inputs"),
                          ({**doc, "logistic": {**doc["logistic"], "weights": [1.0]}}, "wrong shape"),
                          ({**doc, "ood": {**doc["ood"], "threshold": float("nan")}}, "non-finite"),
                          ({**doc, "format": "x"}, "not a seisbind-calibration")):
        with pytest.raises(CalibrationError, match=match):
            Calibration.from_dict(json.loads(json.dumps(broken)))


def test_fit_refuses_data_that_cannot_support_it() -> None:
    X, y = _synthetic(200, 0)
    with pytest.raises(CalibrationError, match="same outcome"):
        fit_calibration(X, np.ones(len(X)), np.ones(len(X), bool))
    with pytest.raises(CalibrationError, match="at least 20"):
        fit_calibration(X[:10], y[:10], np.ones(10, bool))


def _gathers(late_amplitude: float, n: int = 1) -> np.ndarray:
    """Gathers of amplitude 1 before LATE_S and ``late_amplitude`` after it."""
    g = np.ones((n, 5, 1000, 70), np.float32)
    g[:, :, 400:] = late_amplitude
    return g


def _layered(top: float, slope: float = 0.0) -> np.ndarray:
    """A model [1, 70, 70]: ``top`` m/s above depth cell 35, 3000 below, plus ``slope`` m/s per lateral cell."""
    m = np.full((1, 70, 70), 3000.0, np.float32)
    m[:, :35] = top
    return m + slope * np.arange(70, dtype=np.float32)


def test_features_of_search_hits_and_gathers() -> None:
    bank = np.stack([np.full((1, 70, 70), v, np.float32) for v in (2000, 2100, 2300, 2600, 3000, 4000)])
    D = np.array([[0.9, 0.7, 0.6, 0.5, 0.4, 0.3], [0.8, -1, -1, -1, -1, -1]], np.float32)
    I = np.array([[0, 1, 2, 3, 4, 5], [5, -1, -1, -1, -1, -1]])
    g = np.concatenate([_gathers(1.0), _gathers(0.1)])
    f = query_features(D, I, lambda rows: bank[rows], g)
    assert list(FEATURE_NAMES) == ["top1_score", "margin", "log_spread_mae", "log_late_energy", "log_lateral",
                                   "log_reflectivity", "log_shot_asymmetry"]
    assert f.shape == (2, 7)
    assert f[0, :2] == pytest.approx([0.9, 0.2])
    assert f[0, 2] == pytest.approx(np.log1p(spread_mae(bank[:5])))  # the first five only
    assert spread_mae(bank[:3]) == pytest.approx((100 + 300 + 200) / 3)
    assert f[0, 3] == pytest.approx(0.0, abs=1e-9)  # late power equals the mean power
    # constant models: no lateral variation, no reflectivity (the floor); identical shots: no asymmetry (the floor)
    expected = [0.8, 0.0, 0.0, np.log10(0.01 / (0.4 + 0.6 * 0.01)), 0.0, -12.0, -7.0]
    assert f[1].tolist() == pytest.approx(expected, rel=1e-5)  # the energies are float32 dot products
    assert np.isnan(late_energy(np.zeros((1, 5, 1000, 70), np.float32)))[0]
    assert top1_mae(bank[[0, 1]], bank[[1, 1]]).tolist() == [100.0, 0.0]
    assert np.isnan(query_features(D[:1], -np.ones((1, 6), np.int64), lambda rows: bank[rows], g[:1])).all()


def test_lateral_variation_and_reflectivity_of_models() -> None:
    models = np.stack([_layered(2000), _layered(2000, slope=4.0), np.full((1, 70, 70), 2500, np.float32)])
    assert lateral_variation(models).tolist() == pytest.approx([0.0, 4.0, 0.0])  # flat layers: 0
    r = (3000 - 2000) / 5000  # one interface: the normal-incidence reflection coefficient
    assert reflectivity(models[:1])[0] == pytest.approx(np.log10(r * r + 1e-12))
    r_x = 1000 / (5000 + 2 * 4.0 * np.arange(70))  # the slope raises both sides of the interface alike
    assert reflectivity(models[1:2])[0] == pytest.approx(np.log10((r_x ** 2).mean()), abs=1e-6)
    assert reflectivity(models[2:])[0] == pytest.approx(-12.0)  # no interface: the floor
    assert reflectivity(np.stack([_layered(2800)]))[0] < reflectivity(models[:1])[0]  # weaker contrast: less


def _offset_gathers(lateral: float = 0.0, n: int = 1) -> np.ndarray:
    """Gathers whose traces depend only on the signed source-receiver offset (a flat-layer earth: every shot sees
    the same), plus ``lateral`` times a term that depends on the receiver's position (a laterally varying earth)."""
    t = np.arange(1000)[:, None] * 0.001
    rec = np.arange(70)[None, :]
    g = np.empty((n, 5, 1000, 70), np.float32)
    for s, sx in enumerate(SOURCE_X):
        offset = np.abs(rec - sx) * 10.0
        wave = np.sin(2 * np.pi * 15 * (t - offset / 2000.0)) * np.exp(-((t - 0.3 - offset / 4000.0) / 0.1) ** 2)
        bump = np.sin(2 * np.pi * 15 * (t - 0.5 - rec * 0.002)) * np.exp(-((t - 0.5) / 0.05) ** 2)
        g[:, s] = wave + lateral * bump
    return g


def test_shot_asymmetry_tells_flat_from_laterally_varying_geology() -> None:
    a = shot_asymmetry(np.concatenate([_offset_gathers(0.0), _offset_gathers(0.1), _offset_gathers(1.0)]))
    assert a[0] == pytest.approx(-7.0, abs=0.05)  # every shot sees the same earth: the floor
    assert -7.0 < a[1] < a[2] < 0.0  # more lateral variation: larger
    muted = _offset_gathers(0.0)
    muted[:, 2, :, 10:15] = 0.0  # dead traces are not compared
    assert shot_asymmetry(muted)[0] == pytest.approx(-7.0, abs=0.05)
    rng = np.random.default_rng(0)
    flat, varying = _offset_gathers(0.0), _offset_gathers(0.1)
    for snr_db in (30, 10):  # white noise's expected share is taken off: it does not pass for lateral variation
        sigma = np.sqrt((flat ** 2).mean() / 10 ** (snr_db / 10))
        noisy = [x + rng.normal(0, sigma, x.shape).astype(np.float32) for x in (flat, varying)]
        assert shot_asymmetry(noisy[0])[0] < -4.0 and shot_asymmetry(noisy[1])[0] == pytest.approx(a[1], abs=0.2)
    assert np.isnan(shot_asymmetry(np.zeros((1, 5, 1000, 70), np.float32)))[0]


def test_roughness_tells_noise_from_band_limited_signal() -> None:
    t = np.arange(1000) * 0.001
    rng = np.random.default_rng(0)
    signal = np.broadcast_to(np.sin(2 * np.pi * 15 * t)[None, :, None], (5, 1000, 70)).astype(np.float32)
    noise = rng.standard_normal((5, 1000, 70)).astype(np.float32)
    r = roughness(np.stack([signal, noise, np.zeros_like(signal), signal + noise * np.sqrt(0.5)]))
    assert r[0] < 0.02 and 1.9 < r[1] < 2.1 and r[2] == np.inf
    assert r[3] == pytest.approx((0.0089 * 0.5 + 2 * 0.5) / 1.0, abs=0.02)  # 0 dB: at the limit's edge
    assert NOISE_ROUGHNESS > r[3]


def test_assess_without_calibration_gives_null_confidence_and_flags_noise_and_zeros() -> None:
    D, I = np.ones((3, 5), np.float32), np.zeros((3, 5), np.int64)
    t = np.arange(1000) * 0.001
    g = np.zeros((3, 5, 1000, 70), np.float32)
    g[0] += np.sin(2 * np.pi * 15 * t)[None, :, None]
    g[1] = np.random.default_rng(0).standard_normal((5, 1000, 70))
    conf, ood = assess(None, D, I, lambda rows: np.zeros((len(rows), 1, 70, 70)), g)
    assert conf == [None, None, None] and ood == [False, True, True]


def test_assess_flags_queries_far_from_the_in_distribution_ones() -> None:
    X, y = _synthetic(2000, 0)
    cal = fit_calibration(X, y, np.ones(len(X), bool))
    # typical scores, margin, late energy, lateral variation (log1p 1) and reflectivity; the spread log1p(MAE) of
    # the five models decides: 0 is far below 3..6
    bank = np.stack([_layered(2000 + 100 * i, slope=1.0) for i in range(5)] + [_layered(2000, slope=1.0)])
    D = np.array([[0.85, 0.8, 0.79, 0.78, 0.77]] * 2, np.float32)
    I = np.array([[0, 1, 2, 3, 4], [5, 5, 5, 5, 5]])
    conf, ood = assess(cal, D, I, lambda rows: bank[rows], _gathers(np.sqrt(0.004), 2))  # log_late_energy -2
    assert all(0.0 <= c <= 1.0 for c in conf) and ood == [False, True]
    assert spread_mae(bank[:5]) == pytest.approx(100.0)


def test_the_distance_input_lowers_confidence_for_queries_unlike_the_training_geology() -> None:
    """In distribution the event follows the top-1 score; a second population (other geology) has the same scores
    but never the event and lies far away in feature space: with the OOD distance as an input, the fit gives
    that population low confidence and stays calibrated on both."""
    rng = np.random.default_rng(3)
    n = 600
    X_in = rng.normal(0, 1, (n, len(FEATURE_NAMES)))
    y_in = rng.uniform(0, 1, n) < 1 / (1 + np.exp(-2 * X_in[:, 0]))
    X_out = rng.normal(0, 1, (n, len(FEATURE_NAMES)))
    X_out[:, 1:] += 4.0  # unlike the training geology in the other features, same top-1 scores
    y_out = np.zeros(n, bool)
    cal = fit_calibration(np.vstack([X_in, X_out]), np.concatenate([y_in, y_out]),
                          np.arange(2 * n) < n)
    assert cal.uses_distance and cal.to_dict()["logistic"]["inputs"][-2:] == [DISTANCE_INPUT, EXCESS_INPUT]
    c_in, c_out = cal.confidence(X_in), cal.confidence(X_out)
    assert c_out.mean() < 0.05 < c_in.mean()
    assert expected_calibration_error(c_in, y_in) < 0.06 and expected_calibration_error(c_out, y_out) < 0.06
    again = Calibration.from_dict(json.loads(json.dumps(cal.to_dict())))
    np.testing.assert_allclose(again.confidence(X_out), c_out)


def _old_document(cal: Calibration, version: int) -> dict:
    """``cal``'s document rewritten as a format 1 or 2 file: the first four features, their OOD Gaussian, and the
    logistic model on them (and on the distance, format 2)."""
    doc = json.loads(json.dumps(cal.to_dict()))
    doc["format"] = f"seisbind-calibration/{version}"
    doc["features"] = doc["features"][:4]
    keep = list(range(4)) + ([len(FEATURE_NAMES)] if version == 2 else [])
    lg = doc["logistic"]
    for key in ("mean", "scale", "weights"):
        lg[key] = [lg[key][i] for i in keep]
    del lg["inputs"]
    doc["ood"]["center"] = doc["ood"]["center"][:4]
    doc["ood"]["precision"] = [row[:4] for row in doc["ood"]["precision"][:4]]
    return doc


@pytest.mark.parametrize("version", [1, 2])
def test_format_1_and_2_files_still_load_and_read_the_first_four_features(version: int) -> None:
    cal = fit_calibration(*_synthetic(400, 1), np.ones(400, bool))
    doc = _old_document(cal, version)
    old = Calibration.from_dict(doc)
    assert old.features == FEATURE_NAMES[:4] and old.uses_distance == (version == 2)
    X = _synthetic(50, 2)[0]  # rows of every current feature: an old calibration reads the first four
    lg = doc["logistic"]
    A = X[:, :4]
    if version == 2:
        diff = A - np.array(doc["ood"]["center"])
        A = np.hstack([A, np.log1p(np.sqrt(np.einsum("bi,ij,bj->b", diff, np.array(doc["ood"]["precision"]), diff)))
                       [:, None]])
    z = ((A - np.array(lg["mean"])) / np.array(lg["scale"])) @ np.array(lg["weights"]) + lg["bias"]
    np.testing.assert_allclose(old.confidence(X), 1 / (1 + np.exp(-z)), rtol=1e-9)
    assert old.out_of_distribution(X).shape == (50,)
    with pytest.raises(CalibrationError, match="recalibrate"):  # an old format names exactly the first four
        Calibration.from_dict({**doc, "features": list(FEATURE_NAMES)})


def test_format_3_round_trip_keeps_features_inputs_and_answers() -> None:
    X, y = _synthetic(600, 4)
    cal = fit_calibration(X, y, np.ones(len(X), bool))
    doc = json.loads(json.dumps(cal.to_dict()))
    assert doc["format"] == FORMAT == "seisbind-calibration/3"
    assert doc["features"] == list(FEATURE_NAMES) and len(doc["ood"]["center"]) == len(FEATURE_NAMES)
    assert doc["logistic"]["inputs"] == [*FEATURE_NAMES, DISTANCE_INPUT, EXCESS_INPUT]
    back = Calibration.from_dict(doc)
    Xt = _synthetic(100, 5)[0]
    np.testing.assert_array_equal(back.confidence(Xt), cal.confidence(Xt))
    np.testing.assert_array_equal(back.ood_distance(Xt), cal.ood_distance(Xt))


def test_excess_distance_is_zero_within_the_threshold_and_lowers_confidence_beyond() -> None:
    X, y = _synthetic(800, 6)
    cal = fit_calibration(X, y, np.ones(len(X), bool))
    d = cal.ood_distance(X)
    excess = cal.design(X)[:, cal.inputs.index(EXCESS_INPUT)]
    assert (excess[d <= cal.ood_threshold] == 0).all()
    assert excess[d > cal.ood_threshold] == pytest.approx(np.log(d[d > cal.ood_threshold] / cal.ood_threshold))


def test_cross_fitted_distances_set_a_threshold_that_flags_new_rows_at_the_nominal_rate() -> None:
    """Cross-fitted distances (each row's from a Gaussian fitted without it) are larger than in-sample ones, like a
    new row's; the threshold they set flags new in-distribution rows (heavy-tailed here) at about 1 - quantile."""
    rng = np.random.default_rng(7)
    X = rng.standard_t(3, (3000, len(FEATURE_NAMES)))
    fit, new = X[:1000], X[1000:]
    center, precision, held_out = held_out_distances(fit, np.ones(len(fit), bool))
    diff = fit - center
    in_sample = np.sqrt(np.einsum("bi,ij,bj->b", diff, precision, diff))
    assert held_out.mean() > in_sample.mean()
    y = rng.uniform(size=1000) < 0.3
    cal = fit_calibration(fit, y, np.ones(len(fit), bool))
    assert cal.ood_threshold == pytest.approx(np.quantile(held_out, OOD_QUANTILE))
    assert abs(cal.out_of_distribution(new).mean() - (1 - OOD_QUANTILE)) < 0.015


def test_equal_offset_pairs_are_every_pair_of_shots_at_the_same_signed_offset() -> None:
    shot_a, rec_a, shot_b, rec_b = _equal_offset_pairs(70)
    offsets_a = rec_a - np.asarray(SOURCE_X)[shot_a]
    assert (offsets_a == rec_b - np.asarray(SOURCE_X)[shot_b]).all() and (shot_a < shot_b).all()
    expected = {(i, r, j, r + SOURCE_X[j] - SOURCE_X[i]) for i in range(5) for j in range(i + 1, 5)
                for r in range(70 - (SOURCE_X[j] - SOURCE_X[i]))}
    assert set(zip(shot_a.tolist(), rec_a.tolist(), shot_b.tolist(), rec_b.tolist())) == expected
    assert len(shot_a) == len(expected)
    assert len(_equal_offset_pairs(10)[0]) == sum(max(10 - (SOURCE_X[j] - SOURCE_X[i]), 0)
                                                 for i in range(5) for j in range(i + 1, 5))
