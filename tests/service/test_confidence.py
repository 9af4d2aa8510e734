"""Calibrated confidence and the out-of-distribution flag, end to end on a small real bundle (a tiny model trained
on layered fake pairs): ``seisbind calibrate`` fits them on held-out pairs and writes the bundle; a real
``seisbind serve`` then gives every /retrieve and /infer-descriptors result a confidence in [0, 1], lower on average
for geology the model never saw than for held-out queries of its own, and flags pure noise and implausible
gathers; a bundle without a calibration answers with confidence null (and /v1/info says it has none)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from seisbind.bundle import BundleError, EncoderBundle
from seisbind.files import write_json_atomic

from cli.main import app
from index.build import build_index
from tests.model_fixtures import (
    fake_gathers,
    inverted_models,
    layered_models,
    tiny_trained_bundle,
    write_models_dataset,
)
from tests.service_fixtures import NPY, Server, npy, serve, stop_server

pytestmark = pytest.mark.timeout(600)


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A tiny trained bundle, an index of 200 layered models, held-out pairs, and the calibrated bundle."""
    root = tmp_path_factory.mktemp("confidence")
    bundle = tiny_trained_bundle(root)
    (root / "bank").mkdir()
    np.save(root / "bank" / "model1.npy", layered_models(200, seed=5))
    build_index(bundle, root / "bank", root / "index", index_type="flat")
    held = write_models_dataset(root / "held_out", layered_models(120, seed=6))
    other = write_models_dataset(root / "other", inverted_models(60, seed=7))
    res = CliRunner().invoke(app, ["calibrate", "--encoders", str(bundle), "--index", str(root / "index"),
                                   "--data", str(held), "--other-data", str(other), "--out", str(root / "calibrated")])
    assert res.exit_code == 0, res.output
    return {"root": root, "bundle": bundle, "calibrated": root / "calibrated", "index": root / "index"}


@pytest.fixture(scope="module")
def served(setup: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    server = serve(setup["calibrated"], setup["index"], tmp_path_factory.mktemp("logs") / "calibrated.log")
    yield server
    stop_server(server)


def _retrieve(server: Server, gathers: np.ndarray, path: str = "/retrieve", k: int = 3) -> list[dict]:
    out = []
    with server.client() as c:
        for s in range(0, len(gathers), 4):
            r = c.post(f"{path}?k={k}", content=npy(np.ascontiguousarray(gathers[s:s + 4])), headers=NPY)
            assert r.status_code == 200, r.text
            out += r.json()["results"]
    return out


def test_calibrate_writes_a_verified_bundle_with_the_same_encoders(setup: dict[str, Path]) -> None:
    plain, cal = EncoderBundle(setup["bundle"]), EncoderBundle(setup["calibrated"])
    assert plain.calibration is None and cal.calibration is not None
    assert cal.bundle_id == plain.bundle_id  # indexes built with the bundle stay valid
    # 120 held-out pairs and 60 of other geology, and a noisy copy of each (in distribution as its source is)
    assert cal.calibration.fit["n"] == 360 and cal.calibration.fit["n_in_distribution"] == 240
    assert 0 < cal.calibration.fit["event_rate"] < 1
    noisy = [d for d in cal.calibration.fit["data"] if "noise_snr_db" in d]
    assert [(d["n"], d["in_distribution"]) for d in noisy] == [(120, True), (60, False)]
    assert all(d["noise_snr_db"] == [0.0, 30.0] for d in noisy)


def test_calibrate_without_noisy_copies_fits_the_data_as_given(setup: dict[str, Path], tmp_path: Path) -> None:
    res = CliRunner().invoke(app, ["calibrate", "--encoders", str(setup["bundle"]), "--index", str(setup["index"]),
                                   "--data", str(setup["root"] / "held_out"), "--no-noisy-copies",
                                   "--out", str(tmp_path / "plain")])
    assert res.exit_code == 0, res.output
    fit = EncoderBundle(tmp_path / "plain").calibration.fit
    assert fit["n"] == fit["n_in_distribution"] == 120 and not any("noise_snr_db" in d for d in fit["data"])


def test_every_result_has_a_confidence_in_0_1_and_lower_on_unseen_geology(served: Server) -> None:
    same = fake_gathers(layered_models(24, seed=8))
    unseen = fake_gathers(inverted_models(24, seed=9))
    results = {name: _retrieve(served, g) for name, g in (("same", same), ("unseen", unseen))}
    for rows in results.values():
        assert all(0.0 <= r["confidence"] <= 1.0 and isinstance(r["out_of_distribution"], bool) for r in rows)
        assert all(len(r["neighbors"]) == 3 for r in rows)
    conf = {name: np.mean([r["confidence"] for r in rows]) for name, rows in results.items()}
    assert conf["unseen"] < conf["same"] - 0.1, conf
    ood = {name: np.mean([r["out_of_distribution"] for r in rows]) for name, rows in results.items()}
    assert ood["same"] <= 0.25 and ood["unseen"] > ood["same"], ood
    inferred = _retrieve(served, same[:4], "/infer-descriptors", k=1)
    assert [r["confidence"] for r in inferred] == pytest.approx([r["confidence"] for r in results["same"][:4]])


def test_noise_and_implausible_gathers_are_flagged(served: Server) -> None:
    rng = np.random.default_rng(0)
    noise = rng.standard_normal((2, 5, 1000, 70)).astype(np.float32) * 20
    weak = fake_gathers(layered_models(1, seed=10)) * 1e-3  # plausibility warning: far too weak
    rows = _retrieve(served, np.concatenate([noise, weak]))
    assert [r["out_of_distribution"] for r in rows] == [True, True, True], rows
    assert "weaker" in " ".join(rows[2]["warnings"])
    with served.client() as c:  # an all-zero gather is refused before any confidence
        r = c.post("/retrieve", content=npy(np.zeros((5, 1000, 70), np.float32)), headers=NPY)
    assert r.status_code == 422 and "no signal" in r.json()["detail"]


def test_a_bundle_without_calibration_answers_null_and_says_so(setup: dict[str, Path], served: Server,
                                                              tmp_path: Path) -> None:
    server = serve(setup["bundle"], setup["index"], tmp_path / "plain.log")
    try:
        rows = _retrieve(server, fake_gathers(layered_models(2, seed=11)))
        noise = _retrieve(server, np.random.default_rng(1).standard_normal((1, 5, 1000, 70)).astype(np.float32))
        with server.client() as c:
            raw = c.post("/retrieve?k=2", content=npy(fake_gathers(layered_models(1, seed=12))), headers=NPY).json()
            d = rows[0]["neighbors"][0]["descriptors"]
            by_desc = c.post("/retrieve-by-descriptors", json={"descriptors": d, "k": 2}).json()
            info = c.get("/v1/info").json()
    finally:
        stop_server(server)
    assert all(r["confidence"] is None and r["out_of_distribution"] is False and "warnings" not in r for r in rows)
    assert noise[0]["confidence"] is None and noise[0]["out_of_distribution"] is True  # the noise test needs none
    assert "confidence" in raw["results"][0] and raw["results"][0]["confidence"] is None
    assert "confidence" not in by_desc["results"][0] and "out_of_distribution" not in by_desc["results"][0]
    assert info["calibration"] is None
    with served.client() as c:
        assert c.get("/v1/info").json()["calibration"]["n"] == 360


def test_a_corrupt_calibration_file_is_refused(setup: dict[str, Path], tmp_path: Path) -> None:
    import shutil

    broken = tmp_path / "broken"
    shutil.copytree(setup["calibrated"], broken)
    write_json_atomic(broken / "calibration.json", {"format": "seisbind-calibration/1"})
    with pytest.raises(BundleError, match="sha256"):
        EncoderBundle(broken)
    (broken / "calibration.json").unlink()
    with pytest.raises(BundleError, match="missing"):
        EncoderBundle(broken)


def test_calibrate_refuses_too_little_data_and_writes_nothing(setup: dict[str, Path], tmp_path: Path) -> None:
    few = write_models_dataset(tmp_path / "few", layered_models(10, seed=13))
    res = CliRunner().invoke(app, ["calibrate", "--encoders", str(setup["bundle"]), "--index", str(setup["index"]),
                                   "--data", str(few), "--out", str(tmp_path / "out")])
    assert res.exit_code == 2 and "10 held-out in-distribution queries" in res.output and "at least 20" in res.output
    assert not (tmp_path / "out").exists() and not list(tmp_path.glob(".out.partial-*"))
