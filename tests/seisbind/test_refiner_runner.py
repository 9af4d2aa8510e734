"""The learned refiner's ONNX runner (seisbind.refiner) and its place in the encoder bundle: shapes, clear errors
for bad input, manifest verification, and bundles without a refiner unchanged. A tiny graph exported from torch
(the similarity-weighted mean of the neighbours plus a term that depends on the gathers) stands in for the
trained network, whose own export is tested in tests/model/test_refiner.py."""

from __future__ import annotations

import json
import shutil
import warnings
from pathlib import Path

import numpy as np
import pytest

from seisbind.bundle import REFINER_FILE, BundleError, EncoderBundle, finish_manifest, read_manifest
from seisbind.neighbours import neighbour_weights
from seisbind.refiner import LearnedRefiner

K = 3


def _export_tiny_graph(path: Path, k: int = K) -> None:
    torch = pytest.importorskip("torch")
    from torch import nn

    class Tiny(nn.Module):
        def forward(self, gathers: "torch.Tensor", models: "torch.Tensor", scores: "torch.Tensor") -> "torch.Tensor":
            w = scores.clamp(min=0)
            w = w / w.sum(1, keepdim=True).clamp(min=1e-6)
            mean = (w[:, :, None, None] * models).sum(1)
            return mean + gathers.mean(dim=(1, 2))[:, None, :]

    ex = (torch.zeros(2, 5, 1000, 70), torch.full((2, k, 70, 70), 2000.0), torch.ones(2, k))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(Tiny(), ex, str(path), input_names=["gathers", "models", "scores"],
                          output_names=["velocity"], opset_version=17, dynamo=False,
                          dynamic_axes={n: {0: "batch"} for n in ("gathers", "models", "scores", "velocity")})


@pytest.fixture(scope="module")
def plain_bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    pytest.importorskip("torch")
    from model.export import export_untrained_bundle

    out = tmp_path_factory.mktemp("refiner") / "bundle"
    export_untrained_bundle(out, seed=5)
    return out


@pytest.fixture(scope="module")
def refiner_bundle(plain_bundle: Path) -> Path:
    out = plain_bundle.parent / "with_refiner"
    shutil.copytree(plain_bundle, out)
    _export_tiny_graph(out / REFINER_FILE)
    doc = json.loads((out / "manifest.json").read_text())
    finish_manifest(out, {**doc, "refiner": {"k": K}})
    return out


def _inputs(n: int, k: int = K, seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    g = rng.normal(0, 2, (n, 5, 1000, 70)).astype(np.float32)
    m = rng.uniform(1500, 4500, (n, k, 70, 70)).astype(np.float32)
    s = rng.uniform(0.1, 0.9, (n, k)).astype(np.float32)
    return g, m, s


def test_bundle_without_refiner_is_unchanged(plain_bundle: Path) -> None:
    b = EncoderBundle(plain_bundle)
    assert b.refiner is None and not b.has_refiner
    assert REFINER_FILE not in b.manifest.sha256


def test_refiner_runs_and_keeps_the_bundle_id(plain_bundle: Path, refiner_bundle: Path) -> None:
    b = EncoderBundle(refiner_bundle)
    assert b.bundle_id == read_manifest(plain_bundle).bundle_id  # indexes built with the encoders stay valid
    assert b.has_refiner and b.refiner is not None and b.refiner.k == K
    g, m, s = _inputs(4)
    out = b.refiner.refine(g, m, s)
    assert out.shape == (4, 70, 70) and out.dtype == np.float32
    for i in range(4):
        want = np.tensordot(neighbour_weights(s[i], "similarity"), m[i], axes=1) + g[i].mean(axis=(0, 1))[None, :]
        np.testing.assert_allclose(out[i], want, rtol=1e-4)
    # [N, k, 1, 70, 70] is accepted too, and an empty batch gives an empty answer
    np.testing.assert_allclose(b.refiner.refine(g, m[:, :, None], s), out)
    assert b.refiner.refine(g[:0], m[:0], s[:0]).shape == (0, 70, 70)
    # more neighbours than k: the best k (the first) are used, the rest ignored
    _, extra_m, extra_s = _inputs(4, k=2, seed=1)
    np.testing.assert_allclose(b.refiner.refine(g, np.concatenate([m, extra_m], 1), np.concatenate([s, extra_s], 1)),
                               out)


@pytest.mark.parametrize("change, error, match", [
    (lambda g, m, s: (g[:, :4], m, s), ValueError, "gathers: shape"),
    (lambda g, m, s: (g, m[:, :2], s[:, :2]), ValueError, "k=3"),
    (lambda g, m, s: (g, m, s[:, :2]), ValueError, "3/2 neighbours"),
    (lambda g, m, s: (g, m[:, :, :60], s), ValueError, "models: shape"),
    (lambda g, m, s: (g, m, s[:, :, None]), ValueError, "scores: shape"),
    (lambda g, m, s: (g, m[:1], s), ValueError, "batch sizes differ"),
    (lambda g, m, s: (g.astype(np.int16), m, s), TypeError, "gathers: dtype"),
    (lambda g, m, s: (g, np.where(m > 4000, np.nan, m), s), ValueError, "models: holds NaN"),
    (lambda g, m, s: (g, m, np.full_like(s, np.inf)), ValueError, "scores: holds NaN"),
])
def test_bad_input_is_refused_naming_the_problem(refiner_bundle: Path, change: object, error: type,
                                                 match: str) -> None:
    refiner = EncoderBundle(refiner_bundle).refiner
    assert refiner is not None
    with pytest.raises(error, match=match):
        refiner.refine(*change(*_inputs(2)))  # type: ignore[operator]


def test_a_corrupt_or_unlisted_refiner_is_refused(refiner_bundle: Path, tmp_path: Path) -> None:
    bad = tmp_path / "bad"
    shutil.copytree(refiner_bundle, bad)
    with open(bad / REFINER_FILE, "ab") as f:
        f.write(b"\0")
    with pytest.raises(BundleError, match="refiner.onnx: sha256"):
        EncoderBundle(bad)
    doc = json.loads((refiner_bundle / "manifest.json").read_text())
    del doc["refiner"]
    (bad / "manifest.json").write_text(json.dumps(doc))
    with pytest.raises(BundleError, match="needs both"):
        read_manifest(bad)


def test_a_graph_that_is_not_a_refiner_is_refused(plain_bundle: Path) -> None:
    with pytest.raises(BundleError, match="no input named 'models'"):
        LearnedRefiner(plain_bundle / "seismic.onnx")
    with pytest.raises(BundleError, match="missing"):
        LearnedRefiner(plain_bundle / REFINER_FILE)


def test_manifest_k_must_match_the_graph(refiner_bundle: Path, tmp_path: Path) -> None:
    other = tmp_path / "k"
    shutil.copytree(refiner_bundle, other)
    doc = json.loads((other / "manifest.json").read_text())
    finish_manifest(other, {**doc, "refiner": {"k": K + 2}})
    with pytest.raises(BundleError, match="refiner k=5"):
        _ = EncoderBundle(other).refiner
