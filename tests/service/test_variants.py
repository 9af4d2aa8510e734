"""The service runs what the bundle offers: its default seismic variant (int8 here) unless
SEISBIND_SEISMIC_VARIANT=full forces full precision; both answer the same top-1 on realistic gathers; a variant the
bundle lacks stops the service at start naming it."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from seisbind.bundle import BundleError

from service.core.config import Settings
from service.engine import Engine
from service.metrics import ServiceMetrics
from tests.model_fixtures import fake_gathers
from tests.service_fixtures import NPY, Server, npy, serve, stop_server

ENV = {"SEISBIND_ORT_INTRA_OP_THREADS": "1", "SEISBIND_ENCODE_WORKERS": "1"}


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, np.ndarray]:
    import torch

    from index.build import build_index
    from model.export import export_untrained_bundle
    from model.families import generate

    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("variants_service")
    export_untrained_bundle(root / "bundle", seed=0, seismic_variants=("fast", "int8"))
    models = generate("flatvel-a", 40, np.random.default_rng(0))
    (root / "bank").mkdir()
    np.save(root / "bank" / "model1.npy", models)
    build_index(root / "bundle", root / "bank", root / "index", index_type="flat")
    return root / "bundle", root / "index", fake_gathers(models[:6])


@pytest.fixture(scope="module")
def servers(files, tmp_path_factory) -> Iterator[dict[str, Server]]:
    bundle, index, _ = files
    log = tmp_path_factory.mktemp("logs")
    out = {"auto": serve(bundle, index, log / "auto.log", ENV)}
    try:
        out["full"] = serve(bundle, index, log / "full.log", {**ENV, "SEISBIND_SEISMIC_VARIANT": "full"})
        yield out
    finally:
        for s in out.values():
            stop_server(s)


def test_the_bundle_default_variant_is_served_and_full_precision_can_be_forced(servers) -> None:
    for name, want in (("auto", "int8"), ("full", "full")):
        with servers[name].client() as c:
            info = c.get("/v1/info").json()
        assert info["variants"] == {"seismic": want, "physics": "full"}


def test_int8_and_full_precision_answer_the_same_top1(servers, files) -> None:
    _, _, gathers = files
    answers = {}
    for name, server in servers.items():
        with server.client() as c:
            r = c.post("/retrieve", content=npy(gathers), params={"k": 3}, headers=NPY)
        assert r.status_code == 200, r.text
        answers[name] = r.json()
    assert answers["auto"]["encoder"] == answers["full"]["encoder"]  # one bundle, one index
    top1 = {name: [q["neighbors"][0]["id"] for q in a["results"]] for name, a in answers.items()}
    assert top1["auto"] == top1["full"]
    scores = {name: np.array([q["neighbors"][0]["score"] for q in a["results"]]) for name, a in answers.items()}
    np.testing.assert_allclose(scores["auto"], scores["full"], atol=0.02)


def test_a_variant_the_bundle_lacks_is_refused_at_start(files) -> None:
    bundle, index, _ = files
    with pytest.raises(BundleError, match="no seismic variant 'int4'.*offers: full, fast, int8"):
        Engine(Settings(encoders=bundle, index_root=index, seismic_variant="int4"), ServiceMetrics())
