"""Encoder bundles: contract, ONNX/torch parity, dynamic batch, atomic writing."""

from __future__ import annotations

import numpy as np
import onnxruntime as ort
import pytest
import torch

from seisbind.bundle import INPUT_NAMES, ONNX_FILES, OUTPUT_NAME, read_manifest

import model.export as export
from model.config import ModelConfig
from model.encoders import create_model

torch.set_num_threads(1)

MANIFEST_KEYS = ("embedding_dim", "input_shapes", "normalisation", "descriptor_names", "descriptor_stats",
                 "logit_scale", "training", "metrics", "sha256", "bundle_id")


@pytest.fixture(scope="module")
def bundle(tmp_path_factory):
    out = tmp_path_factory.mktemp("b") / "bundle"
    return out, export.export_untrained_bundle(out, seed=0)


def _run(bundle_dir, modality, x):
    sess = ort.InferenceSession(str(bundle_dir / ONNX_FILES[modality]), providers=["CPUExecutionProvider"])
    return sess.run([OUTPUT_NAME], {INPUT_NAMES[modality]: x})[0]


def _untrained_torch(seed=0):
    model = create_model(ModelConfig.tiny(), seed=seed).eval()
    d = export.synthetic_inputs(64, seed=seed)["physics"].astype(np.float64)
    model.physics.set_stats(d.mean(0), d.std(0) + 1e-6)
    return model


def test_untrained_bundle_is_a_verified_bundle_with_the_contract_keys(bundle):
    out, manifest = bundle
    assert read_manifest(out, verify=True).bundle_id == manifest.bundle_id
    for key in MANIFEST_KEYS:
        assert key in manifest.raw, key
    assert manifest.embedding_dim == 256
    assert manifest.input_shapes == {"seismic": [5, 1000, 70], "velocity": [1, 70, 70], "physics": [8]}
    assert len(manifest.descriptor_stats["mean"]) == 8 and len(manifest.descriptor_stats["std"]) == 8
    assert not [p for p in out.parent.iterdir() if "partial" in p.name]


@pytest.mark.parametrize("batch", [1, 3])
def test_onnx_matches_torch_on_raw_physical_inputs_for_any_batch(bundle, batch):
    out, _ = bundle
    model = _untrained_torch()
    x = export.synthetic_inputs(batch, seed=5)
    for modality, enc in (("seismic", model.seismic), ("velocity", model.velocity), ("physics", model.physics)):
        got = _run(out, modality, x[modality])
        assert got.shape == (batch, 256) and got.dtype == np.float32
        np.testing.assert_allclose(np.linalg.norm(got, axis=1), 1, atol=1e-5)
        with torch.no_grad():
            want = enc(torch.from_numpy(x[modality])).numpy()
        assert ((got * want).sum(1) >= 0.9999).all(), modality


def test_seismic_graph_on_raw_gathers_matches_the_training_path(bundle):
    """Training feeds preprocessed gathers (front end run once up front); the ONNX graph takes raw ones."""
    out, _ = bundle
    model = _untrained_torch()
    g = export.synthetic_inputs(4, seed=9)["seismic"]
    with torch.no_grad():
        want = model.seismic.forward_features(model.seismic.preprocess(torch.from_numpy(g))).numpy()
    assert ((_run(out, "seismic", g) * want).sum(1) >= 0.9999).all()


def test_failed_parity_leaves_no_bundle_and_no_partial_folder(tmp_path, monkeypatch):
    monkeypatch.setattr(export, "PARITY_MIN_COSINE", 1.5)
    with pytest.raises(export.ParityError, match=r"seismic.onnx: ONNX/torch cosine .* < 1.5"):
        export.export_untrained_bundle(tmp_path / "b", seed=0)
    assert list(tmp_path.iterdir()) == []


def test_existing_bundle_is_replaced_but_other_folders_are_refused(bundle, tmp_path):
    out = tmp_path / "b"
    first = export.export_untrained_bundle(out, seed=0)
    assert first.bundle_id == bundle[1].bundle_id  # same seed, same bundle
    second = export.export_untrained_bundle(out, seed=2)
    assert first.bundle_id != second.bundle_id == read_manifest(out).bundle_id
    other = tmp_path / "notes"
    other.mkdir()
    (other / "keep.txt").write_text("x")
    with pytest.raises(FileExistsError, match="not an encoder bundle"):
        export.export_untrained_bundle(other, seed=0)
    assert (other / "keep.txt").read_text() == "x"
