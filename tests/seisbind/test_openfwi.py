"""OpenFWI I/O: reading both naming schemes and zips, validation errors that name the file, atomic writes."""

from __future__ import annotations

import zipfile

import numpy as np
import pytest

from seisbind.openfwi import (
    OpenFWIError,
    check_velocity,
    chunk_is_complete,
    find_pairs,
    open_dataset,
    read_models,
    save_npy_atomic,
    write_chunk,
)


def _models(n: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return rng.uniform(1500, 4500, (n, 1, 70, 70)).astype(np.float32)


def _gathers(n: int) -> np.ndarray:
    return np.zeros((n, 5, 1000, 70), np.float32)


def test_write_and_open_dataset_roundtrip(tmp_path):
    m1, m2 = _models(3, 1), _models(2, 2)
    write_chunk(tmp_path, 1, _gathers(3), m1)
    write_chunk(tmp_path, 2, _gathers(2), m2)
    ds = open_dataset(tmp_path, check_values=True)
    assert len(ds) == 5
    g, m = ds.get(3)
    assert g.shape == (5, 1000, 70) and np.array_equal(m, m2[0])
    assert isinstance(ds.data[0], np.memmap)
    assert [s for s in ds.model_set().sources()][3][1] == 0
    assert not list(tmp_path.rglob("*.partial"))


def test_fault_naming_scheme(tmp_path):
    np.save(tmp_path / "seis2_1_0.npy", _gathers(2))
    np.save(tmp_path / "vel2_1_0.npy", _models(2))
    np.save(tmp_path / "seis10_1_0.npy", _gathers(1))
    np.save(tmp_path / "vel10_1_0.npy", _models(1))
    pairs = find_pairs(tmp_path)
    assert [p.data.name for p in pairs] == ["seis2_1_0.npy", "seis10_1_0.npy"]
    assert len(open_dataset(tmp_path)) == 3


def test_unpaired_file_is_named(tmp_path):
    write_chunk(tmp_path, 1, _gathers(2), _models(2))
    np.save(tmp_path / "model" / "model2.npy", _models(2))
    with pytest.raises(OpenFWIError, match=r"model2\.npy: velocity-model file has no matching data file"):
        find_pairs(tmp_path)


def test_mismatched_counts_are_named(tmp_path):
    (tmp_path / "data").mkdir()
    (tmp_path / "model").mkdir()
    np.save(tmp_path / "data" / "data1.npy", _gathers(3))
    np.save(tmp_path / "model" / "model1.npy", _models(2))
    with pytest.raises(OpenFWIError, match=r"data1\.npy: holds 3 gathers but model1\.npy holds 2 models"):
        open_dataset(tmp_path)


def test_truncated_npy_is_named(tmp_path):
    write_chunk(tmp_path, 1, _gathers(2), _models(2))
    f = tmp_path / "data" / "data1.npy"
    f.write_bytes(f.read_bytes()[: f.stat().st_size // 2])
    with pytest.raises(OpenFWIError, match=r"data1\.npy: not a readable \.npy file"):
        open_dataset(tmp_path)
    assert not chunk_is_complete(tmp_path, 1, 2)


def test_wrong_shape_and_dtype_are_named(tmp_path):
    np.save(tmp_path / "bad.npy", np.zeros((2, 1, 60, 70), np.float32))
    with pytest.raises(OpenFWIError, match=r"bad\.npy: shape is \(2, 1, 60, 70\), expected \(n, 1, 70, 70\)"):
        read_models(tmp_path / "bad.npy")
    np.save(tmp_path / "f64.npy", np.zeros((2, 1, 70, 70), np.float64))
    with pytest.raises(OpenFWIError, match=r"f64\.npy: dtype is float64, expected float32"):
        read_models(tmp_path / "f64.npy")


def test_nan_values_refused_when_checked(tmp_path):
    g = _gathers(2)
    g[1, 0, 0, 0] = np.nan
    write_chunk(tmp_path, 1, g, _models(2))
    open_dataset(tmp_path)  # shapes fine
    with pytest.raises(OpenFWIError, match=r"data1\.npy: holds NaN or Inf"):
        open_dataset(tmp_path, check_values=True)


def test_read_zip_of_models(tmp_path):
    a, b = _models(2, 1), _models(3, 2)
    np.save(tmp_path / "vmodel1.npy", a)
    np.save(tmp_path / "vmodel2.npy", b)
    z = tmp_path / "bank.zip"
    with zipfile.ZipFile(z, "w") as zf:
        zf.write(tmp_path / "vmodel2.npy", "vmodel2.npy")
        zf.write(tmp_path / "vmodel1.npy", "vmodel1.npy")
    ms = read_models(z)
    assert len(ms) == 5
    assert np.array_equal(ms.array(), np.concatenate([a, b]))
    assert ms.sources()[2] == ("bank.zip:vmodel2.npy", 0)
    assert [len(x) for x in ms.batches(2)] == [2, 2, 1]


def test_read_real_openfwi_zip(openfwi_dir):
    ms = read_models(openfwi_dir / "flatvel_a" / "test_vmodel.zip")
    assert len(ms) == 1000
    v = ms.array()
    assert v.dtype == np.float32 and v.min() >= 1500 and v.max() <= 4500


def test_check_velocity_errors():
    with pytest.raises(ValueError, match=r"shape is \(3, 70\)"):
        check_velocity(np.ones((3, 70)))
    bad = _models(2)
    bad[1, 0, 5, 5] = np.nan
    with pytest.raises(ValueError, match="model 1 holds NaN or Inf"):
        check_velocity(bad)
    bad = _models(2)
    bad[0, 0, 0, 0] = -1
    with pytest.raises(ValueError, match="model 0 holds non-positive velocities"):
        check_velocity(bad)
    assert check_velocity(np.full((70, 70), 2000.0)).shape == (1, 1, 70, 70)


def test_save_npy_atomic_leaves_nothing_on_failure(tmp_path, monkeypatch):
    target = tmp_path / "x.npy"

    def boom(*a, **k):
        raise KeyboardInterrupt

    monkeypatch.setattr(np, "save", boom)
    with pytest.raises(KeyboardInterrupt):
        save_npy_atomic(target, np.zeros(3))
    assert not target.exists() and not list(tmp_path.iterdir())
