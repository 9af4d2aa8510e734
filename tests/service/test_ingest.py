"""SEG-Y bodies (Content-Type: application/x-segy) on /retrieve and /infer-descriptors, against a real
``seisbind serve`` process: ingested onto the model's geometry with the report in the response, the same neighbours
as the gathers sent as .npy, and every broken file answered 422 or 413 with the reason (never 500)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from seisbind.ingest import write_segy

from tests.segy_fixtures import RX10, SEGY, SOURCES, bad_files
from tests.service_fixtures import NPY, Server, assert_error, npy, serve, small_service_files, stop_server

MAX_BODY = 4 * 1024 * 1024

pytestmark = pytest.mark.timeout(300)


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, np.ndarray]:
    """A folder of SEG-Y files and the simulated gathers they hold (5, 1000, 70)."""
    from model.families import generate
    from model.simulator import simulate

    root = tmp_path_factory.mktemp("segy")
    g = simulate(generate("flatvel-a", 1, np.random.default_rng(5)))[0]
    write_segy(root / "native.sgy", g, 0.001, SOURCES, RX10, sample_format="ibm")
    write_segy(root / "coarse.sgy", g[:, ::2, ::2], 0.002, SOURCES, RX10[::2], endian="little")
    write_segy(root / "four_shots.sgy", g[:4], 0.001, SOURCES[:4], RX10)
    # 5 shots x 120 channels x 2 s at 0.5 ms: about 9.7 MB, over the 4 MiB limit
    big = np.zeros((5, 4000, 120), np.float32)
    big[:, :2000:2, :70] = g
    write_segy(root / "big.sgy", big, 0.0005, SOURCES, np.arange(120) * 10.0)
    return root, g


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    root = tmp_path_factory.mktemp("ingest_service")
    bundle, _, index = small_service_files(root, 12)
    env = {"SEISBIND_MAX_BODY_BYTES": str(MAX_BODY), "SEISBIND_MAX_GATHERS": "2", "SEISBIND_ORT_INTRA_OP_THREADS": "1",
           "SEISBIND_ENCODE_WORKERS": "1"}
    server = serve(bundle, index, root / "server.log", env)
    yield server
    stop_server(server)


def test_segy_retrieve_matches_npy_and_reports_the_ingest(served: Server, files) -> None:
    root, g = files
    body = (root / "native.sgy").read_bytes()
    with served.client() as c:
        r = c.post("/retrieve", content=body, params={"k": 3}, headers=SEGY)
        ref = c.post("/retrieve", content=npy(g), params={"k": 3}, headers=NPY)
    assert r.status_code == 200, r.text
    doc, want = r.json(), ref.json()
    assert [n["id"] for n in doc["results"][0]["neighbors"]] == [n["id"] for n in want["results"][0]["neighbors"]]
    np.testing.assert_allclose([n["score"] for n in doc["results"][0]["neighbors"]],
                               [n["score"] for n in want["results"][0]["neighbors"]], atol=1e-4)
    assert "ingest" not in want
    names = [s["name"] for s in doc["ingest"]["steps"]]
    assert names[0] == "read_segy" and "interpolate_receivers" in names and "scale_amplitudes" in names
    assert doc["ingest"]["warnings"] == []


def test_segy_infer_descriptors_with_warnings(served: Server, files) -> None:
    root, _ = files
    with served.client() as c:
        r = c.post("/infer-descriptors", content=(root / "coarse.sgy").read_bytes(), params={"k": 4}, headers=SEGY)
    assert r.status_code == 200, r.text
    doc = r.json()
    assert len(doc["results"]) == 1 and len(doc["results"][0]["neighbors"]) == 4
    codes = {w["code"] for w in doc["ingest"]["warnings"]}
    assert {"time_upsampled", "coarse_receiver_spacing"} <= codes
    assert all(w["message"] for w in doc["ingest"]["warnings"])


@pytest.mark.parametrize("path", ["/retrieve", "/infer-descriptors"])
def test_bad_segy_files_get_422_with_the_reason(served: Server, files, path: str) -> None:
    root, _ = files
    body = write_segy(root / "ieee.sgy", files[1], 0.001, SOURCES, RX10).read_bytes()
    cases = bad_files(body)
    cases["fewer than five shots"] = ((root / "four_shots.sgy").read_bytes(), "fewer than five shots within reach")
    with served.client() as c:
        for name, (data, fragment) in cases.items():
            r = c.post(path, content=data, headers=SEGY)
            body = assert_error(r, 422, fragment)
            assert "SEG-Y" in body["detail"], name
        assert_error(c.post(path, content=(root / "native.sgy").read_bytes(), params={"k": 0}, headers=SEGY), 422,
                     "k=0 is out of range")


def test_segy_over_the_body_limit_gets_413(served: Server, files) -> None:
    root, _ = files
    body = (root / "big.sgy").read_bytes()
    assert len(body) > MAX_BODY
    with served.client() as c:
        r = c.post("/retrieve", content=body, headers=SEGY)
        assert r.status_code == 413, r.text
        assert c.get("/healthz").status_code == 200


def test_unsupported_content_type_names_segy(served: Server) -> None:
    with served.client() as c:
        assert_error(c.post("/retrieve", content=b"xx", headers={"Content-Type": "application/octet-stream"}), 415,
                     "application/x-segy")
