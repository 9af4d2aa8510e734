"""Seismic encoder variants: the blocked low-pass computes the same front end, exported variants are checked against
torch and listed in the manifest with their hashes, and a bundle's sessions pick them (or full precision)."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch

from seisbind.bundle import CPU, FULL, BundleError, EncoderBundle, read_manifest

import model.export as export
from model.config import ModelConfig
from model.encoders import create_model
from model.seismic_variants import INT8_PARITY_MIN_COSINE, BlockedDecimationSeismic, export_seismic_variants

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def bundles(tmp_path_factory):
    root = tmp_path_factory.mktemp("variants")
    plain = export.export_untrained_bundle(root / "plain", seed=0)
    with_variants = export.export_untrained_bundle(root / "variants", seed=0, seismic_variants=("fast", "int8"))
    return root, plain, with_variants


@pytest.mark.parametrize("cfg", [ModelConfig.tiny(), ModelConfig(decimation=4, lowpass_taps=61, lowpass_hz=100.0)])
@pytest.mark.parametrize("batch", [1, 3])
def test_blocked_low_pass_is_the_same_front_end(cfg, batch):
    enc = create_model(cfg, seed=0).seismic.eval()
    x = torch.from_numpy(export.synthetic_inputs(batch, seed=3)["seismic"])
    with torch.no_grad():
        want, got = enc.preprocess(x), BlockedDecimationSeismic(enc).preprocess(x)
    assert got.shape == want.shape
    torch.testing.assert_close(got, want, atol=1e-6, rtol=0)


def test_variants_are_listed_with_hashes_and_parity_and_leave_the_bundle_id_alone(bundles):
    root, plain, manifest = bundles
    assert manifest.bundle_id == plain.bundle_id  # variants encode into the same space: indexes stay valid
    assert plain.variants == {} and plain.default_variants == {}
    seismic = manifest.variants["seismic"]
    assert set(seismic) == {"fast", "int8"} and manifest.default_variants == {"seismic": "int8"}
    assert seismic["fast"]["parity_min_cosine"] >= export.PARITY_MIN_COSINE
    assert seismic["int8"]["parity_min_cosine"] >= INT8_PARITY_MIN_COSINE
    assert seismic["int8"]["precision"] == "int8" and seismic["int8"]["calibration"]["gathers"] == 16
    assert (root / "variants" / seismic["int8"]["file"]).is_file()
    assert read_manifest(root / "variants").variants == manifest.variants


def test_sessions_run_the_default_variant_unless_full_precision_is_forced(bundles):
    root, _, _ = bundles
    auto = EncoderBundle(root / "variants", providers=[CPU], intra_op_threads=1)
    full = EncoderBundle(root / "variants", providers=[CPU], intra_op_threads=1, variants={"seismic": FULL})
    fast = EncoderBundle(root / "variants", providers=[CPU], intra_op_threads=1, variants={"seismic": "fast"})
    old = EncoderBundle(root / "plain", providers=[CPU], intra_op_threads=1)
    assert (auto.seismic.variant, full.seismic.variant, fast.seismic.variant, old.seismic.variant) == \
        ("int8", FULL, "fast", FULL)
    assert auto.seismic.path.name == "seismic.int8.onnx" and auto.velocity.variant == FULL
    g = export.synthetic_inputs(4, seed=7)["seismic"]
    ref = old.seismic.encode(g)
    np.testing.assert_allclose(full.seismic.encode(g), ref, atol=1e-6)
    np.testing.assert_allclose(fast.seismic.encode(g), ref, atol=1e-5)
    assert (auto.seismic.encode(g) * ref).sum(1).min() >= INT8_PARITY_MIN_COSINE
    with pytest.raises(BundleError, match="no seismic variant 'int4'"):
        EncoderBundle(root / "variants", providers=[CPU], variants={"seismic": "int4"})
    with pytest.raises(BundleError, match="no seismic variant 'int8'"):
        EncoderBundle(root / "plain", providers=[CPU], variants={"seismic": "int8"})


def _copy(bundles, tmp_path, name):
    root, _, _ = bundles
    shutil.copytree(root / "variants", tmp_path / name)
    return tmp_path / name


def test_a_corrupt_variant_file_fails_verification_naming_it(bundles, tmp_path):
    b = _copy(bundles, tmp_path, "corrupt")
    with open(b / "seismic.int8.onnx", "r+b") as f:
        f.seek(100)
        f.write(b"\x00\x01\x02")
    with pytest.raises(BundleError, match="seismic.int8.onnx: sha256"):
        read_manifest(b)
    (b / "seismic.int8.onnx").unlink()
    with pytest.raises(BundleError, match="seismic.int8.onnx: missing"):
        EncoderBundle(b)


@pytest.mark.parametrize("edit, message", [
    (lambda d: d["variants"]["seismic"]["int8"].update(file="../seismic.onnx"), "plain file name"),
    (lambda d: d["variants"]["seismic"]["int8"].update(file="seismic.onnx"), "plain file name"),
    (lambda d: d["variants"]["seismic"].update(full=d["variants"]["seismic"]["fast"]), "may not be called"),
    (lambda d: d["default_variants"].update(seismic="int4"), "'int4' is not among its variants"),
    (lambda d: d["variants"].update(audio={}), "unknown modality 'audio'"),
])
def test_a_malformed_variant_listing_is_refused(bundles, tmp_path, edit, message):
    b = _copy(bundles, tmp_path, "bad")
    doc = json.loads((b / "manifest.json").read_text())
    edit(doc)
    (b / "manifest.json").write_text(json.dumps(doc))
    with pytest.raises(BundleError, match=message):
        read_manifest(b)


def test_bad_variant_requests_are_refused_before_anything_is_written(tmp_path):
    model = create_model(ModelConfig.tiny(), seed=0)
    with pytest.raises(ValueError, match="unknown seismic variant"):
        export_seismic_variants(model.seismic, tmp_path, ("int4",), export.synthetic_inputs(2)["seismic"], None)
    with pytest.raises(ValueError, match="needs calibration gathers"):
        export_seismic_variants(model.seismic, tmp_path, ("int8",), export.synthetic_inputs(2)["seismic"], None)
    with pytest.raises(ValueError, match="default variant 'int8'"):
        export.export_bundle(model, tmp_path / "b", training={}, metrics={}, seismic_variants=("fast",),
                             default_variant="int8")
    assert not (tmp_path / "b").exists()
