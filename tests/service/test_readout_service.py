"""The descriptor readout end to end on a small real bundle (a tiny model trained on layered fake pairs):
``seisbind export`` fits it on the run's training pairs, ``seisbind fit-readout`` refits it into a copy, and a real
``seisbind serve`` answers /infer-descriptors with the blend of the neighbours' and the readout's estimates by
default, or the neighbours' alone when asked."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from seisbind.bundle import EncoderBundle
from seisbind.descriptors import DESCRIPTOR_NAMES

from cli.main import app
from index.build import build_index
from tests.model_fixtures import fake_gathers, layered_models, tiny_trained_bundle
from tests.service_fixtures import NPY, Server, npy, serve, stop_server

pytestmark = pytest.mark.timeout(600)


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A tiny trained bundle exported with its readout (96 training pairs) and an index of 200 layered models."""
    root = tmp_path_factory.mktemp("readout")
    bundle = tiny_trained_bundle(root, n=96)
    (root / "bank").mkdir()
    np.save(root / "bank" / "model1.npy", layered_models(200, seed=5))
    build_index(bundle, root / "bank", root / "index", index_type="flat")
    return {"root": root, "bundle": bundle, "index": root / "index"}


@pytest.fixture(scope="module")
def served(setup: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    server = serve(setup["bundle"], setup["index"], tmp_path_factory.mktemp("logs") / "readout.log")
    yield server
    stop_server(server)


def test_export_fits_the_readout_on_the_training_pairs(setup: dict[str, Path]) -> None:
    bundle = EncoderBundle(setup["bundle"])
    assert bundle.readout is not None and bundle.readout.fit["pairs"] == 96
    assert bundle.readout.fit["rows"] == 192 and bundle.readout.fit["noisy_copies"]["snr_db"] == [0.0, 30.0]
    assert bundle.manifest.raw["descriptor_readout"]["pairs"] == 96
    assert bundle.readout.fit["bundle_id"] == bundle.bundle_id


def test_export_without_readout(setup: dict[str, Path], tmp_path: Path) -> None:
    res = CliRunner().invoke(app, ["export", "--run", str(setup["root"] / "run"), "--out", str(tmp_path / "b"),
                                   "--no-readout"])
    assert res.exit_code == 0, res.output
    assert json.loads(res.output.strip().splitlines()[-1])["descriptor_readout"] is None
    assert EncoderBundle(tmp_path / "b").readout is None


def test_fit_readout_writes_a_copy_and_names_a_missing_folder(setup: dict[str, Path], tmp_path: Path) -> None:
    runner = CliRunner()
    res = runner.invoke(app, ["fit-readout", "--encoders", str(setup["bundle"]), "--data",
                              str(setup["root"] / "train_pairs"), "--max-pairs", "64", "--out", str(tmp_path / "b")])
    assert res.exit_code == 0, res.output
    assert json.loads(res.output.strip().splitlines()[-1])["pairs"] == 64
    copy = EncoderBundle(tmp_path / "b")
    assert copy.bundle_id == EncoderBundle(setup["bundle"]).bundle_id and copy.readout.fit["pairs"] == 64
    res = runner.invoke(app, ["fit-readout", "--encoders", str(setup["bundle"]), "--data", str(tmp_path / "none"),
                              "--out", str(tmp_path / "c")])
    assert res.exit_code == 2 and "none" in res.output and not (tmp_path / "c").exists()


def _infer(server: Server, g: np.ndarray, query: str = "") -> dict:
    with server.client() as c:
        r = c.post(f"/infer-descriptors?k=4{query}", content=npy(g), headers=NPY)
        hits = c.post("/retrieve?k=4", content=npy(g), headers=NPY)
    assert r.status_code == 200 and hits.status_code == 200, r.text
    return {"infer": r.json(), "hits": hits.json()["results"]}


def test_the_default_is_the_blend_of_neighbours_and_readout(setup: dict[str, Path], served: Server) -> None:
    g = fake_gathers(layered_models(2, seed=21))
    got = _infer(served, g)
    assert got["infer"]["method"] == "blend"
    bundle = EncoderBundle(setup["bundle"])
    readout = bundle.readout.predict(bundle.seismic.run(g))
    for row, res, hits in zip(readout, got["infer"]["results"], got["hits"]):
        for j, name in enumerate(DESCRIPTOR_NAMES):
            d = res["descriptors"][name]
            neighbours = np.mean([h["descriptors"][name] for h in hits["neighbors"]])
            assert d["neighbours"] == pytest.approx(neighbours, rel=1e-9, abs=1e-9)
            assert d["readout"] == pytest.approx(row[j], rel=1e-4, abs=1e-3)
            assert d["value"] == pytest.approx((d["neighbours"] + d["readout"]) / 2, rel=1e-12, abs=1e-9)


def test_info_says_what_the_readout_was_fitted_on(served: Server) -> None:
    with served.client() as c:
        info = c.get("/v1/info").json()
    assert info["descriptor_readout"]["pairs"] == 96 and info["descriptor_readout"]["data"]


def test_neighbours_alone_when_asked(served: Server) -> None:
    g = fake_gathers(layered_models(1, seed=22))
    got = _infer(served, g, "&method=neighbours")
    res = got["infer"]["results"][0]
    assert got["infer"]["method"] == "neighbours"
    for name in DESCRIPTOR_NAMES:
        assert "readout" not in res["descriptors"][name]
        mean = np.mean([h["descriptors"][name] for h in got["hits"][0]["neighbors"]])
        assert res["descriptors"][name]["value"] == pytest.approx(mean, rel=1e-9, abs=1e-9)
    with served.client() as c:
        r = c.post("/infer-descriptors?method=median", content=npy(g), headers=NPY)
    assert r.status_code == 422 and "method" in r.text
