"""`seisbind simulate`: chunking, resume after interruption, sharding, determinism, bad input."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
import torch

from seisbind.openfwi import OpenFWIError, open_dataset

import model.simulate as sim_mod
from model.simulate import simulate_dataset

torch.set_num_threads(2)


@pytest.fixture()
def models_npy(tmp_path):
    rng = np.random.default_rng(0)
    v = np.repeat(rng.uniform(1500, 4500, (5, 1, 1, 1)), 70, axis=2).repeat(70, axis=3).astype(np.float32)
    v[:, :, 40:] += 500
    path = tmp_path / "models.npy"
    np.save(path, v)
    return path, v


def test_models_form_writes_chunks(tmp_path, models_npy):
    path, v = models_npy
    out = tmp_path / "out"
    summary = simulate_dataset(out, models=path, chunk_size=2, show_progress=False)
    assert summary["chunks_written"] == 3
    ds = open_dataset(out, check_values=True)
    assert [len(m) for m in ds.models] == [2, 2, 1]
    assert np.array_equal(ds.model_set().array(), v)
    assert np.abs(ds.data[0]).max() > 1.0


def test_interrupted_run_resumes_identically(tmp_path, models_npy, monkeypatch):
    path, _ = models_npy
    ref = tmp_path / "ref"
    simulate_dataset(ref, models=path, chunk_size=2, show_progress=False)

    out = tmp_path / "out"
    real_write = sim_mod.write_chunk
    calls = {"n": 0}

    def interrupted(out_dir, n, data, models):
        calls["n"] += 1
        if calls["n"] == 2:
            raise KeyboardInterrupt  # Ctrl-C while the second chunk is being written
        return real_write(out_dir, n, data, models)

    monkeypatch.setattr(sim_mod, "write_chunk", interrupted)
    with pytest.raises(KeyboardInterrupt):
        simulate_dataset(out, models=path, chunk_size=2, show_progress=False)
    assert (out / "data" / "data1.npy").exists() and not (out / "data" / "data2.npy").exists()
    assert not list(out.rglob("*.partial"))
    monkeypatch.setattr(sim_mod, "write_chunk", real_write)
    summary = simulate_dataset(out, models=path, chunk_size=2, show_progress=False)
    assert summary["chunks_skipped"] == 1 and summary["chunks_written"] == 2
    a, b = open_dataset(out), open_dataset(ref)
    for x, y in zip(a.data, b.data):
        np.testing.assert_array_equal(x, y)


def test_shards_partition_the_chunks(tmp_path, models_npy):
    path, _ = models_npy
    out = tmp_path / "out"
    s0 = simulate_dataset(out, models=path, chunk_size=2, shard=(0, 2), show_progress=False)
    assert s0["chunks_written"] == 2 and not (out / "data" / "data2.npy").exists()
    s1 = simulate_dataset(out, models=path, chunk_size=2, shard=(1, 2), show_progress=False)
    assert s1["chunks_written"] == 1
    assert len(open_dataset(out)) == 5


def test_other_dataset_in_folder_is_refused(tmp_path, models_npy):
    path, v = models_npy
    out = tmp_path / "out"
    simulate_dataset(out, models=path, chunk_size=2, show_progress=False)
    other = tmp_path / "other.npy"
    np.save(other, v[:3])
    with pytest.raises(ValueError, match="already holds a different dataset"):
        simulate_dataset(out, models=other, chunk_size=2, show_progress=False)


def test_bad_models_are_named(tmp_path):
    v = np.full((2, 1, 70, 70), 2000.0, np.float32)
    v[1, 0, 3, 3] = 0.0
    np.save(tmp_path / "zero.npy", v)
    with pytest.raises(OpenFWIError, match=r"zero\.npy: model 1 holds non-positive velocities"):
        simulate_dataset(tmp_path / "o", models=tmp_path / "zero.npy", show_progress=False)
    assert not (tmp_path / "o").exists()


def _cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "cli.main", "simulate", *args], capture_output=True, text=True)


def test_cli_errors():
    r = _cli("--out", "x")
    assert r.returncode == 2 and "give either --family" in r.stderr
    r = _cli("--out", "x", "--family", "nope", "--count", "3")
    assert r.returncode == 2 and "unknown" in r.stderr and "flatvel-a" in r.stderr
    r = _cli("--out", "x", "--family", "flatvel-a", "--count", "3", "--shard", "2/2")
    assert r.returncode == 2 and "0 <= i < n" in r.stderr


def test_cli_family_deterministic_by_seed(tmp_path):
    for name, seed in (("a", "7"), ("b", "7"), ("c", "8")):
        r = _cli("--family", "flatvel-a", "--count", "3", "--seed", seed, "--out", str(tmp_path / name))
        assert r.returncode == 0, r.stderr
    a, b, c = (open_dataset(tmp_path / n) for n in "abc")
    np.testing.assert_array_equal(a.models[0], b.models[0])
    np.testing.assert_array_equal(a.data[0], b.data[0])
    assert not np.array_equal(a.models[0], c.models[0])
