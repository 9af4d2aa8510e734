"""The descriptor readout (seisbind.readout): the ridge fit and its leave-one-out penalty, prediction within the
physical range, the file format and what a bundle says when its readout file is broken."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from seisbind.acquisition import V_MAX, V_MIN
from seisbind.bundle_copy import write_fitted_file
from seisbind.descriptors import DESCRIPTOR_NAMES
from seisbind.files import read_json, sha256_file, write_json_atomic
from seisbind.readout import (
    MIN_PAIRS,
    READOUT_FILE,
    DescriptorReadout,
    ReadoutError,
    blend,
    fit_readout,
    load_readout,
)

from model.export import export_untrained_bundle


def _linear_data(n: int, noise: float, seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, 16))
    W = rng.normal(size=(16, 8)) * 50
    b = np.array([3000, 300, 2000, 4000, 2200, 3800, 20, 5], float)
    return X, X @ W + b + noise * rng.normal(size=(n, 8)), W, b


def test_fit_recovers_a_linear_map_and_keeps_a_small_penalty_for_clean_data() -> None:
    X, Y, W, b = _linear_data(400, noise=0.0)
    r = fit_readout(X, Y)
    loo = r.fit["loo_by_penalty"]
    assert f"{r.penalty:g}" == min(loo, key=loo.__getitem__) and r.penalty <= 1e-3
    assert np.allclose(r.weight, W, atol=0.5) and np.allclose(r.bias, b, atol=0.5)
    assert r.fit["pairs"] == 400 and r.fit["loo_mse_standardised"] < 1e-3


def test_noisier_targets_choose_a_larger_penalty() -> None:
    X, Y, _, _ = _linear_data(80, noise=0.0, seed=1)
    _, Y_noisy, _, _ = _linear_data(80, noise=2000.0, seed=1)
    assert fit_readout(X, Y_noisy).penalty > fit_readout(X, Y).penalty


def test_predict_clips_velocities_to_the_model_range_and_spread_at_zero() -> None:
    w = np.zeros((4, 8))
    w[0] = [1e4, -1e4, -1e4, 1e4, 0, 0, 7, 0]
    r = DescriptorReadout(w, np.full(8, 2500.0))
    out = r.predict(np.array([[1.0, 0, 0, 0]]))
    v = dict(zip(DESCRIPTOR_NAMES, out[0]))
    assert v["v_mean"] == V_MAX and v["v_min"] == V_MIN and v["v_max"] == V_MAX and v["v_std"] == 0.0
    assert v["grad_z"] == pytest.approx(2507.0)  # gradients are not clipped
    with pytest.raises(ReadoutError, match=r"embeddings \(1, 3\): the readout reads \[n, 4\]"):
        r.predict(np.zeros((1, 3)))


def test_blend_is_the_plain_mean_and_keeps_missing_rows_missing() -> None:
    a, b = np.array([[1.0, np.nan]]), np.array([[3.0, 5.0]])
    assert np.array_equal(blend(a, b), np.array([[2.0, np.nan]]), equal_nan=True)


def test_fit_refuses_too_few_pairs_wrong_shapes_and_non_finite_values() -> None:
    X, Y, _, _ = _linear_data(MIN_PAIRS, noise=1.0)
    with pytest.raises(ReadoutError, match=f"{MIN_PAIRS - 1} training pairs: .* at least {MIN_PAIRS}"):
        fit_readout(X[1:], Y[1:])
    with pytest.raises(ReadoutError, match=r"descriptors \(64, 7\)"):
        fit_readout(X, Y[:, :7])
    Y[3, 2] = np.nan
    with pytest.raises(ReadoutError, match="not finite"):
        fit_readout(X, Y)


def test_round_trip_and_malformed_files() -> None:
    X, Y, _, _ = _linear_data(100, noise=1.0)
    r = fit_readout(X, Y, info={"data": ["x"]})
    back = DescriptorReadout.from_dict(r.to_dict())
    assert np.array_equal(back.weight, r.weight) and back.penalty == r.penalty and back.fit["data"] == ["x"]
    with pytest.raises(ReadoutError, match="not a descriptor readout"):
        DescriptorReadout.from_dict({"format": "other"})
    doc = r.to_dict()
    doc["bias"] = [1.0, 2.0]
    with pytest.raises(ReadoutError, match=r"bias \(2,\)"):
        DescriptorReadout.from_dict(doc)


def test_a_bundle_names_what_is_wrong_with_its_readout(tmp_path: Path) -> None:
    from seisbind.bundle import BundleError, EncoderBundle

    src = tmp_path / "bundle"
    export_untrained_bundle(src)
    rng = np.random.default_rng(0)
    r = fit_readout(rng.normal(size=(100, 256)), rng.normal(size=(100, 8)) + 3000)
    out = write_fitted_file(src, tmp_path / "with", "descriptor_readout", READOUT_FILE, r.to_dict(), pairs=100)
    manifest = read_json(out / "manifest.json", ValueError, "a manifest")
    assert load_readout(out, manifest) is not None and EncoderBundle(out).readout is not None
    assert EncoderBundle(src).readout is None
    (out / READOUT_FILE).write_text((out / READOUT_FILE).read_text().replace("0", "1", 1))
    with pytest.raises(BundleError, match="descriptor_readout.json: sha256 does not match"):
        EncoderBundle(out)
    small = DescriptorReadout(np.zeros((3, 8)), np.zeros(8)).to_dict()
    out = write_fitted_file(src, tmp_path / "small", "descriptor_readout", READOUT_FILE, r.to_dict())
    write_json_atomic(out / READOUT_FILE, small)
    manifest = read_json(out / "manifest.json", ValueError, "a manifest")
    manifest["descriptor_readout"]["sha256"] = sha256_file(out / READOUT_FILE)
    with pytest.raises(ReadoutError, match="reads 3-dim embeddings, the bundle's are 256"):
        load_readout(out, manifest)
    (out / READOUT_FILE).unlink()
    with pytest.raises(ReadoutError, match="descriptor_readout.json: missing"):
        load_readout(out, manifest)
