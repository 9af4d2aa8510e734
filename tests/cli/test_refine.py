"""``seisbind refine`` end to end on a tiny bundle and index (real ONNX Runtime, FAISS, deepwave): the files it
writes, the misfit it lowers, and the clear errors for a missing learned refiner and bad input."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from cli.main import app
from tests.service_fixtures import small_service_files

runner = CliRunner()


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, Path, np.ndarray]:
    """(bundle, index root, gathers file, true model): a query simulated from a model outside the bank."""
    import torch

    from model.families import generate
    from model.simulator import simulate

    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("refine")
    bundle, _, index = small_service_files(root, 30)
    truth = generate("flatvel-a", 1, np.random.default_rng(123))
    np.save(root / "query.npy", simulate(truth)[0])
    return bundle, index, root / "query.npy", truth[0, 0]


def _refine(setup: tuple[Path, Path, Path, np.ndarray], out: Path, *extra: str) -> object:
    bundle, index, gathers, _ = setup
    return runner.invoke(app, ["refine", "--encoders", str(bundle), "--index", str(index), "--gathers", str(gathers),
                               "--out", str(out), "--threads", "1", *extra])


def test_refine_writes_models_misfit_descriptors_and_a_figure(setup: tuple, tmp_path: Path) -> None:
    out = tmp_path / "out"
    r = _refine(setup, out, "--iterations", "2", "--k", "3", "--start", "topk")
    assert r.exit_code == 0, r.output
    summary = json.loads(r.stdout.strip().splitlines()[-1])
    assert summary["method"] == "fwi" and summary["start"] == "topk" and summary["gathers"] == 1
    refined = np.load(out / "refined.npy")
    start = np.load(out / "start.npy")
    assert refined.shape == start.shape == (1, 1, 70, 70) and refined.dtype == np.float32
    assert 1500 <= refined.min() and refined.max() <= 4500
    assert not np.array_equal(refined, start)
    doc = json.loads((out / "misfit.json").read_text())
    res = doc["results"][0]
    assert res["final_misfit"] < res["start_misfit"] and res["iterations"] == 2 and len(res["misfit_history"]) == 2
    assert len(res["neighbour_ids"]) == len(res["neighbour_scores"]) == 3
    assert doc["config"]["iterations"] == 2 and doc["start"] == "topk"
    desc = json.loads((out / "descriptors.json").read_text())
    assert desc["names"][0] == "v_mean"
    assert desc["descriptors"][0]["v_mean"] == pytest.approx(float(refined.mean()), rel=1e-5)
    png = (out / "figures" / "refine_1.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    assert not list(out.rglob("*.partial*"))


def test_refine_from_the_best_fitting_neighbour(setup: tuple, tmp_path: Path) -> None:
    out = tmp_path / "out"
    r = _refine(setup, out, "--iterations", "1", "--k", "4", "--start", "bestfit", "--figures", "0")
    assert r.exit_code == 0, r.output
    res = json.loads((out / "misfit.json").read_text())["results"][0]
    misfits = np.array(res["neighbour_misfits"])
    assert misfits.shape == (4,) and res["best_fit_rank"] == int(np.argmin(misfits))
    # FWI measures the start's misfit itself: the start is the neighbour whose data fit best
    assert res["start_misfit"] == pytest.approx(misfits.min(), rel=1e-4)
    r = _refine(setup, tmp_path / "topk", "--iterations", "1", "--k", "4", "--figures", "0")
    topk = json.loads((tmp_path / "topk" / "misfit.json").read_text())["results"][0]
    assert topk["neighbour_misfits"] == pytest.approx(res["neighbour_misfits"])


def test_check_returns_the_best_fitting_neighbour_without_fwi(setup: tuple, tmp_path: Path) -> None:
    out = tmp_path / "out"
    r = _refine(setup, out, "--method", "check", "--k", "4", "--figures", "0")
    assert r.exit_code == 0, r.output
    doc = json.loads((out / "misfit.json").read_text())
    res = doc["results"][0]
    assert doc["method"] == "check" and doc["start"] == "bestfit" and res["iterations"] == 0
    assert res["final_misfit"] == res["start_misfit"] == pytest.approx(min(res["neighbour_misfits"]), rel=1e-4)
    np.testing.assert_array_equal(np.load(out / "refined.npy"), np.load(out / "start.npy"))
    r = _refine(setup, tmp_path / "b", "--method", "check", "--start", "topk")
    assert r.exit_code == 2 and "--method check returns the neighbour whose simulated data fit best" in r.output


def test_refine_errors_name_the_problem(setup: tuple, tmp_path: Path) -> None:
    r = _refine(setup, tmp_path / "a", "--method", "learned")
    assert r.exit_code == 2 and "learned refiner" in r.output
    r = _refine(setup, tmp_path / "a", "--start", "nearest")
    assert r.exit_code == 2 and "--start 'nearest': expected one of learned, top1, topk, smooth, bestfit" in r.output
    r = _refine(setup, tmp_path / "a", "--method", "both", "--start", "top1")
    assert r.exit_code == 2 and "starts from the learned refiner's model" in r.output
    r = _refine(setup, tmp_path / "a", "--k", "31")
    assert r.exit_code == 2 and "--k 31: must be in 1..30" in r.output
    bad = tmp_path / "bad.npy"
    np.save(bad, np.ones((5, 999, 70), np.float32))
    bundle, index, _, _ = setup
    r = runner.invoke(app, ["refine", "--encoders", str(bundle), "--index", str(index), "--gathers", str(bad),
                            "--out", str(tmp_path / "a")])
    assert r.exit_code == 2 and "bad.npy: gathers of shape (5, 999, 70)" in r.output
    assert not (tmp_path / "a").exists()
