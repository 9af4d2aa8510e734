"""The learned refiner, torch side: the neighbours' weighting is the ground package's, an untrained refiner returns
the top-k mean, training neighbours never include the pair's own model, the ONNX export reproduces torch, and a
tiny training run on learnable pairs (tests.model_fixtures: gathers determined by their layered models) beats the
similarity-weighted top-k mean on its held-out split, through the exported bundle too."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from seisbind.bundle import EncoderBundle, read_manifest
from seisbind.neighbours import neighbour_weights
from seisbind.openfwi import open_dataset

from model.config import AugmentConfig, RunError
from model.export import ParityError, export_untrained_bundle
from model.refiner import create_refiner, similarity_weights, weighted_mean
from model.refiner_config import RefinerConfig, RefinerTrainConfig
from model.refiner_data import NeighbourSplit, neighbours_excluding
from model.refiner_export import export_refiner_onnx, refiner_parity
from model.refiner_train import neighbour_batch, train_refiner
from tests.model_fixtures import fake_gathers, layered_models, write_dataset


@pytest.fixture(autouse=True)
def one_thread() -> None:
    torch.set_num_threads(1)


def _neighbours(n: int, k: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    models = layered_models(n * k, seed)[:, 0].reshape(n, k, 70, 70)
    return models, rng.uniform(-0.2, 0.9, (n, k)).astype(np.float32)


def test_weighting_is_the_ground_packages() -> None:
    models, scores = _neighbours(4, 3, seed=1)
    scores[1] = [-0.3, -0.1, 0.0]  # no positive score: equal weights
    scores[2] = [0.8, -0.5, 0.0]  # clipped at the floor
    got = similarity_weights(torch.from_numpy(scores)).numpy()
    for row, s in zip(got, scores):
        np.testing.assert_allclose(row, neighbour_weights(s, "similarity"), rtol=1e-5, atol=1e-7)
    mean = weighted_mean(torch.from_numpy(models), torch.from_numpy(scores)).numpy()
    want = np.stack([np.tensordot(neighbour_weights(s, "similarity"), m, axes=1) for s, m in zip(scores, models)])
    np.testing.assert_allclose(mean, np.clip(want, 1500, 4500), rtol=1e-5)


def test_an_untrained_refiner_returns_the_topk_mean() -> None:
    models, scores = _neighbours(2, 3, seed=2)
    net = create_refiner(RefinerConfig.tiny(k=3), seed=0).eval()
    g = torch.from_numpy(fake_gathers(layered_models(2, 3)))
    with torch.no_grad():
        out = net(g, torch.from_numpy(models), torch.from_numpy(scores))
    torch.testing.assert_close(out, weighted_mean(torch.from_numpy(models), torch.from_numpy(scores)))


def test_training_neighbours_never_include_the_pair_itself() -> None:
    rng = np.random.default_rng(0)
    bank = rng.normal(size=(30, 16)).astype(np.float32)
    bank /= np.linalg.norm(bank, axis=1, keepdims=True)
    D, I = neighbours_excluding(bank, bank, 4, own=np.arange(30))  # noqa: E741
    assert I.shape == (30, 4) and not (I == np.arange(30)[:, None]).any()
    assert (np.diff(D, axis=1) <= 1e-6).all()  # best first
    D2, I2 = neighbours_excluding(bank[:3], bank, 4)
    assert (I2[:, 0] == np.arange(3)).all()  # without exclusion a query finds itself
    with pytest.raises(ValueError, match="too small"):
        neighbours_excluding(bank, bank[:4], 4, own=np.arange(30))


def test_training_batches_are_perturbed_like_field_data_and_validation_is_clean() -> None:
    net = create_refiner(RefinerConfig.tiny(k=3), seed=0)
    g = torch.from_numpy(fake_gathers(layered_models(4, 5)))
    with torch.no_grad():
        dec = net.front.decimate(g)
    models, scores = _neighbours(4, 3, seed=3)
    split = NeighbourSplit(dec, torch.from_numpy(layered_models(4, 6)[:, 0]), torch.from_numpy(scores),
                           torch.arange(12).reshape(4, 3), np.arange(4))
    bank = torch.from_numpy(models.reshape(12, 70, 70))
    rows = torch.arange(4)
    clean = neighbour_batch(net, split, bank, rows)
    torch.testing.assert_close(clean[0], net.front.normalise(dec))  # what predict() and the ONNX graph see
    torch.testing.assert_close(clean[0], net.preprocess(g))
    noisy = AugmentConfig(noise_p=1.0, snr_db=(0.0, 0.0), wavelet_p=0, shift_p=0, scale_p=0, polarity_p=0, mute_p=0,
                          clean_p=0)
    a = neighbour_batch(net, split, bank, rows, None, noisy, torch.Generator().manual_seed(1))
    b = neighbour_batch(net, split, bank, rows, None, noisy, torch.Generator().manual_seed(1))
    assert a[0].shape == clean[0].shape and a[0].dtype == torch.float32
    torch.testing.assert_close(a[0], b[0])  # a function of the generator: a resumed run draws the same
    assert not torch.allclose(a[0], clean[0]) and torch.equal(split.pre, dec)  # the stored gathers are untouched
    for x, y in zip(a[1:], clean[1:]):
        torch.testing.assert_close(x, y)  # neighbours, scores and truth as they were


def test_onnx_export_matches_torch_and_a_changed_model_fails_parity(tmp_path: Path) -> None:
    net = create_refiner(RefinerConfig.tiny(k=3), seed=1)
    with torch.no_grad():
        for p in net.parameters():
            p.add_(0.05 * torch.randn_like(p))  # a non-trivial residual
    net.eval()
    models, scores = _neighbours(3, 3, seed=4)
    g = fake_gathers(layered_models(3, 5))
    export_refiner_onnx(net, tmp_path / "refiner.onnx")
    worst = refiner_parity(net, tmp_path / "refiner.onnx", g, models, scores)
    assert worst < 0.1
    with torch.no_grad():
        net.head.bias.add_(0.3)  # type: ignore[operator]
    with pytest.raises(ParityError, match="m/s"):
        refiner_parity(net, tmp_path / "refiner.onnx", g, models, scores)


def test_tiny_training_beats_the_topk_mean_on_held_out_pairs(tmp_path: Path) -> None:
    write_dataset(tmp_path / "data", 96, seed=11)
    export_untrained_bundle(tmp_path / "encoders", seed=0)
    cfg = RefinerTrainConfig(data=(str(tmp_path / "data"),), encoders=str(tmp_path / "encoders"),
                             out=str(tmp_path / "run"), model=RefinerConfig.tiny(k=3), epochs=8, batch_size=16,
                             val_fraction=0.2, threads=1, lr=3e-3)
    summary = train_refiner(cfg, str(tmp_path / "bundle"))
    assert summary["val_pairs"] == 19 and summary["epochs"] == 8
    assert summary["refiner_mae_mps"] < 0.85 * summary["topk_mean_mae_mps"], summary

    # the exported bundle: same encoders and bundle_id, the refiner listed and verified, same answers as torch
    bundle = EncoderBundle(tmp_path / "bundle")
    assert bundle.bundle_id == read_manifest(tmp_path / "encoders").bundle_id
    assert bundle.manifest.refiner is not None and bundle.manifest.refiner["k"] == 3
    assert bundle.manifest.refiner["metrics"]["refiner_mae_mps"] == pytest.approx(summary["refiner_mae_mps"])
    ds = open_dataset(tmp_path / "data")
    pairs = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert pairs["refiner_mae_mps"] == summary["refiner_mae_mps"]
    gathers = np.stack([ds.get(i)[0] for i in range(4)])
    models, scores = _neighbours(4, 3, seed=6)
    refiner = bundle.refiner
    assert refiner is not None
    assert refiner.refine(gathers, models, scores).shape == (4, 70, 70)

    # rerunning resumes a finished run (no more epochs); other settings are refused
    again = train_refiner(cfg)
    assert again["epochs"] == 8 and again["refiner_mae_mps"] == pytest.approx(summary["refiner_mae_mps"])
    other = RefinerTrainConfig(**{**cfg.__dict__, "lr": 1e-3})
    with pytest.raises(RunError, match="different settings"):
        train_refiner(other)


def test_refiners_stored_before_the_migration_branch_read_without_it() -> None:
    stored = {k: v for k, v in RefinerConfig().to_dict().items() if k != "migrated_channels"}
    old = RefinerConfig.from_dict(stored)
    assert old.migrated_channels == 0 and RefinerConfig().migrated_channels == 4
    net = create_refiner(old)
    assert net.shot_net is None and net.enc1[0].in_channels == 2 * old.k + 1 + old.gather_channels
    with pytest.raises(ValueError, match="invalid RefinerConfig"):
        RefinerConfig(migrated_channels=-1)
