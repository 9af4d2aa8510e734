"""Evaluation: metrics on constructed cases with known answers, and `seisbind evaluate` end to end."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from seisbind.descriptors import compute_descriptors
from seisbind.neighbours import consensus_pick
from seisbind.neighbours import exact_top_k as top_k
from seisbind.retrieval_metrics import pos_neg_similarity, recall_at_k, retrieval_report, true_ranks

from cli.main import app
from model.evaluate import p2_report
from model.export import export_untrained_bundle
from tests.model_fixtures import layered_models, write_dataset

torch.set_num_threads(1)


def _unit(x: np.ndarray) -> np.ndarray:
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def test_perfect_embeddings_give_recall_one_and_known_similarities():
    E = _unit(np.random.default_rng(0).standard_normal((50, 16)))
    rep = retrieval_report(E, E)
    assert rep["R@1"] == rep["R@5"] == rep["R@10"] == 1.0
    assert rep["mean_pos_sim"] == pytest.approx(1.0)
    sim = E @ E.T
    assert rep["mean_neg_sim"] == pytest.approx((sim.sum() - np.trace(sim)) / (50 * 49), abs=1e-6)


def test_ranks_of_a_constructed_gallery():
    # orthonormal gallery; query i is closest to gallery row (i + shift) % n, its positive ranks exactly `shift`-th
    n = 12
    G = np.eye(n, dtype=np.float32)
    for shift, want in ((0, 0), (1, 1)):
        Q = np.zeros((n, n), np.float32)
        for i in range(n):
            Q[i, (i + shift) % n] = 1.0
            Q[i, i] += 0.5
        ranks = true_ranks(_unit(Q), G)
        assert (ranks == want).all()
    assert recall_at_k(np.array([0, 1, 4, 9, 20]), (1, 5, 10)) == {"R@1": 0.2, "R@5": 0.6, "R@10": 0.8}


def test_ties_count_against_the_query_so_collapsed_embeddings_score_zero():
    E = np.ones((10, 4), np.float32) / 2
    assert retrieval_report(E, E)["R@1"] == 0.0


def test_top_k_matches_a_full_sort_and_large_galleries_append_after_the_positives():
    rng = np.random.default_rng(1)
    Q, G = _unit(rng.standard_normal((7, 8))), _unit(rng.standard_normal((40, 8)))
    D, I = top_k(Q, G, 5)
    order = np.argsort(-(Q @ G.T), axis=1)[:, :5]
    assert (I == order).all()
    np.testing.assert_allclose(D, np.take_along_axis(Q @ G.T, order, 1), rtol=1e-6)
    mp, mn, pos, neg = pos_neg_similarity(Q, G)
    assert pos.shape == (7,) and mp == pytest.approx(float(pos.mean()))
    assert mn == pytest.approx(((Q @ G.T).sum() - pos.sum()) / (7 * 40 - 7), abs=1e-6)


def test_p2_with_the_true_models_in_the_bank_is_exact():
    models = layered_models(20, seed=4)
    desc = compute_descriptors(models)
    E = _unit(np.random.default_rng(2).standard_normal((20, 32)))
    rep, pred = p2_report(E[:6], E, desc, models, desc[:6], models[:6], k=1)
    assert rep["descriptor_mre"] == 0 and rep["top1_mae_mps"] == 0 and rep["top1_ssim"] == pytest.approx(1.0)
    assert rep["bank_size"] == 20 and all(v == 0 for v in rep["descriptor_mae"].values())
    rep5, pred5 = p2_report(E[:6], E, desc, models, desc[:6], models[:6], k=5)
    _, I = top_k(E[:6], E, 5)
    np.testing.assert_allclose(pred5, desc[I].mean(1))
    assert rep5["descriptor_mre"] > 0
    pick = consensus_pick(models[I], top_k(E[:6], E, 5)[0])
    chosen = models[np.take_along_axis(I, pick[:, None], 1)[:, 0]]
    assert rep5["consensus"]["mae_mps"] == pytest.approx(np.abs(chosen - models[:6]).mean())
    assert rep5["consensus"]["not_top1"] == pytest.approx(np.mean(pick > 0))
    assert rep["consensus"] == {"mae_mps": 0.0, "not_top1": 0.0}  # k = 1: the consensus is the top-1
    readout = desc[:6] + 1.0
    rep_b, pred_b = p2_report(E[:6], E, desc, models, desc[:6], models[:6], k=5, readout_values=readout)
    np.testing.assert_allclose(pred_b, (pred5 + readout) / 2)  # the blend, what the service answers by default
    assert rep_b["descriptor_mre"] == rep5["descriptor_mre"] and rep_b["blend"]["descriptor_mre"] > 0


def test_evaluate_writes_the_report_keys_markdown_and_figures(tmp_path):
    bundle = tmp_path / "bundle"
    export_untrained_bundle(bundle, seed=0)
    test = write_dataset(tmp_path / "test", 12, seed=5, chunk=12)
    bank = write_dataset(tmp_path / "bank", 30, seed=6, chunk=30)
    out = tmp_path / "report"
    res = CliRunner().invoke(app, ["evaluate", "--run", str(bundle), "--test", str(test), "--bank", str(bank),
                                   "--out", str(out)])
    assert res.exit_code == 0, res.output
    r = json.loads((out / "report.json").read_text())
    for part in ("p1", "p1_large"):
        for task in ("seismic_to_velocity", "velocity_to_physics"):
            assert set(r[part][task]) >= {"R@1", "R@5", "R@10", "mean_pos_sim", "mean_neg_sim"}
    assert r["p1"]["gallery_size"] == 12 and r["p1_large"]["gallery_size"] == 42
    assert r["p2"]["k"] == 5 and r["p2"]["bank_size"] == 30 and 0 <= r["p2"]["descriptor_mre"] < 1
    assert set(r["p2"]["descriptor_mae"]) == {"v_mean", "v_std", "v_min", "v_max", "v_top", "v_bottom", "grad_z",
                                              "grad_x"}
    assert {"top1_mae_mps", "top1_ssim", "consensus"} <= set(r["p2"]) and "train_minutes" in r
    md = (out / "report.md").read_text()
    assert "0.578" in md and "test set differs" in md and "consensus pick among the 5" in md
    for f in r["figures"]:
        assert (out / f).stat().st_size > 1000


def test_evaluate_refuses_a_folder_that_is_neither_run_nor_bundle(tmp_path):
    res = CliRunner().invoke(app, ["evaluate", "--run", str(tmp_path), "--test", str(tmp_path),
                                   "--out", str(tmp_path / "r")])
    assert res.exit_code != 0 and "neither an encoder bundle" in res.output


def test_bank_limits_find_the_true_model_when_the_bank_holds_it() -> None:
    from model.evaluate import bank_limits

    rng = np.random.default_rng(0)
    bank = rng.uniform(1500, 4500, (300, 1, 70, 70)).astype(np.float32)
    truth = bank[[7, 42, 199]] + rng.normal(0, 1, (3, 1, 70, 70)).astype(np.float32)  # near, not equal
    bd, td = compute_descriptors(bank), compute_descriptors(truth)
    exact = bank_limits(bd, bank, td, truth, k=1)
    assert exact["oracle_top1_mae_mps"] == pytest.approx(0.8, abs=0.05)  # E|N(0, 1)| = 0.80
    assert exact["oracle_descriptor_mre"] < 1e-3 < exact["mean_predictor_mre"]
    assert bank_limits(bd, bank, td, truth, k=5)["oracle_descriptor_mre"] > exact["oracle_descriptor_mre"]
