"""Physical descriptors (docs/data.md#descriptors) against hand-computed values."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

from seisbind.descriptors import DESCRIPTOR_NAMES, compute_descriptors, mean_absolute_errors, mean_relative_error


def test_two_layer_model_by_hand():
    v = np.full((1, 1, 70, 70), 2000.0, np.float32)
    v[0, 0, 35:] = 3000.0
    d = dict(zip(DESCRIPTOR_NAMES, compute_descriptors(v)[0]))
    assert d["v_mean"] == pytest.approx(2500.0)
    assert d["v_std"] == pytest.approx(500.0)
    assert (d["v_min"], d["v_max"]) == (2000.0, 3000.0)
    assert (d["v_top"], d["v_bottom"]) == (2000.0, 3000.0)
    assert d["grad_z"] == pytest.approx(1000.0 / (69 * 10.0))
    assert d["grad_x"] == 0.0


def test_lateral_gradient_and_batch():
    x = np.arange(70, dtype=np.float32)
    v = np.broadcast_to(1500 + 10 * x, (70, 70))[None, None].copy()
    both = np.concatenate([v, v[..., ::-1]])
    d = compute_descriptors(both)
    assert d.shape == (2, 8)
    assert d[:, DESCRIPTOR_NAMES.index("grad_x")] == pytest.approx([1.0, 1.0])
    assert d[:, DESCRIPTOR_NAMES.index("grad_z")] == pytest.approx([0.0, 0.0])


def test_errors():
    true = np.array([[2000.0, 1, 1000, 3000, 1500, 2500, 1, 1]])
    pred = true.copy()
    pred[0, 0] = 2200  # v_mean off by 10 %
    assert mean_relative_error(pred, true) == pytest.approx(0.1 / 5)
    assert mean_absolute_errors(pred, true)["v_mean"] == pytest.approx(200)


def test_cli_json_and_npy(tmp_path):
    v = np.full((3, 1, 70, 70), 2500.0, np.float32)
    np.save(tmp_path / "m.npy", v)
    out = subprocess.run([sys.executable, "-m", "cli.main", "descriptors", "--models", str(tmp_path / "m.npy")],
                         capture_output=True, text=True, check=True).stdout
    doc = json.loads(out)
    assert doc["names"] == list(DESCRIPTOR_NAMES) and len(doc["descriptors"]) == 3
    assert doc["descriptors"][0]["v_mean"] == 2500.0 and doc["sources"][2]["row"] == 2
    subprocess.run([sys.executable, "-m", "cli.main", "descriptors", "--models", str(tmp_path / "m.npy"),
                    "--out", str(tmp_path / "d.npy")], check=True)
    assert np.load(tmp_path / "d.npy").shape == (3, 8)


def test_cli_bad_input_names_file(tmp_path):
    v = np.full((2, 1, 70, 70), 2500.0, np.float32)
    v[1, 0, 0, 0] = np.nan
    np.save(tmp_path / "nan.npy", v)
    r = subprocess.run([sys.executable, "-m", "cli.main", "descriptors", "--models", str(tmp_path / "nan.npy")],
                       capture_output=True, text=True)
    assert r.returncode != 0 and "NaN" in r.stderr and "nan.npy" in r.stderr
