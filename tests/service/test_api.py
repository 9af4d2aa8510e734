"""The HTTP service end to end, against real uvicorn processes on localhost (docs/api.md).

Three servers share one small bank root and a real (untrained) encoder bundle:
* ``served``: started with ``seisbind serve``, an index of bank_a, admin token, small limits, threads pinned to
  cores — every endpoint, every error code, admin auth, garbage input, a failed rebuild and a rebuild under load;
* ``empty``: started with ``uvicorn --factory``, default settings, no index yet — 503s, then a rebuild makes it
  ready;
* ``mismatched``: an index built with other encoders and no admin token — not ready with the reason, admin 403.
"""

from __future__ import annotations

import json
import os
import socket
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest

from seisbind.descriptors import DESCRIPTOR_NAMES, DESCRIPTOR_UNITS, compute_descriptors
from seisbind.neighbours import consensus_pick

from index.build import build_index
from index.store import IndexStore
from service.client import SeisBindClient, SeisBindError
from tests.service_fixtures import (
    NPY,
    G,
    Server,
    as_json,
    assert_error,
    free_port,
    gathers,
    npy,
    serve,
    start_server,
    stop_server,
)

TOKEN = "test-admin-token-0123456789abcdef"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
MAX_BODY = 8 * 1024 * 1024
MAX_GATHERS = 4
MAX_K = 50

pytestmark = pytest.mark.timeout(600)


# -- fixtures: bundles, banks, indexes, servers ----------------------------------------------------------------

@pytest.fixture(scope="module")
def bundles(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Two real encoder bundles (untrained, different seeds so different bundle ids)."""
    import torch

    from model.export import export_untrained_bundle

    torch.set_num_threads(2)
    root = tmp_path_factory.mktemp("bundles")
    out = {}
    for name, seed in (("main", 0), ("other", 1)):
        export_untrained_bundle(root / name, seed=seed)
        out[name] = root / name
    return out


@pytest.fixture(scope="module")
def bank_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """bank_a (300 flatvel-a), bank_b (200 curvevel-a), bad (a NaN model), and a symlink pointing outside."""
    from model.families import generate

    root = tmp_path_factory.mktemp("banks")
    rng = np.random.default_rng(0)
    for name, family, n in (("bank_a", "flatvel-a", 300), ("bank_b", "curvevel-a", 200)):
        (root / name / "model").mkdir(parents=True)
        np.save(root / name / "model" / "model1.npy", generate(family, n, rng))
    bad = generate("flatvel-a", 20, rng)
    bad[7, 0, 3, 3] = np.nan
    (root / "bad").mkdir()
    np.save(root / "bad" / "model1.npy", bad)
    outside = tmp_path_factory.mktemp("outside")
    np.save(outside / "model1.npy", generate("flatvel-a", 10, rng))
    (root / "escape").symlink_to(outside)
    return root


@pytest.fixture(scope="module")
def served(bundles: dict[str, Path], bank_root: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """``seisbind serve`` over an index of bank_a, with an admin token, small limits and pinned threads."""
    index_root = tmp_path_factory.mktemp("index_main")
    build_index(bundles["main"], bank_root / "bank_a", index_root, index_type="flat")
    env = {"SEISBIND_ADMIN_TOKEN": TOKEN, "SEISBIND_BANK_ROOT": str(bank_root),
           "SEISBIND_MAX_BODY_BYTES": str(MAX_BODY), "SEISBIND_MAX_GATHERS": str(MAX_GATHERS),
           "SEISBIND_MAX_K": str(MAX_K), "SEISBIND_PIN_THREADS": "true"}
    server = serve(bundles["main"], index_root, tmp_path_factory.mktemp("logs") / "served.log", env)
    yield server
    stop_server(server)


@pytest.fixture(scope="module")
def bank_a(bank_root: Path) -> np.ndarray:
    return np.load(bank_root / "bank_a" / "model" / "model1.npy")


# -- health, readiness, info, docs -----------------------------------------------------------------------------

def test_health_ready_and_info(served: Server, bundles: dict[str, Path]) -> None:
    bundle_id = json.loads((bundles["main"] / "manifest.json").read_text())["bundle_id"]
    with served.client() as c:
        assert c.get("/healthz").json() == {"status": "ok"}
        ready = c.get("/readyz")
        assert ready.status_code == 200 and ready.json()["ready"] is True
        info = c.get("/v1/info").json()
    assert info["encoder"] == bundle_id and info["ready"] is True and info["reason"] is None
    assert info["index_version"] == ready.json()["index_version"]
    assert info["count"] == 300 and info["dim"] == 256 and info["index_type"] == "flat"
    assert info["providers"]["seismic"] and "CPUExecutionProvider" in info["providers"]["seismic"]
    assert info["descriptor_names"] == list(DESCRIPTOR_NAMES)
    assert info["variants"] == {"seismic": "full", "physics": "full"}  # a bundle without variants
    assert info["limits"] == {"max_body_bytes": MAX_BODY, "max_gathers": MAX_GATHERS, "max_k": MAX_K}


def test_openapi_documents_every_endpoint_with_examples(served: Server) -> None:
    with served.client() as c:
        spec = c.get("/openapi.json").json()
        assert c.get("/docs").status_code == 200
    paths = spec["paths"]
    for p in ("/retrieve", "/infer-descriptors", "/retrieve-by-descriptors", "/admin/rebuild-index",
              "/admin/jobs/{job_id}", "/healthz", "/readyz", "/metrics", "/v1/info"):
        assert p in paths, p
    body = paths["/retrieve"]["post"]["requestBody"]["content"]
    assert set(body) == {"application/json", "application/x-npy", "application/x-segy"}
    schemas = spec["components"]["schemas"]
    for name in ("RetrieveResponse", "InferResponse", "DescriptorQuery", "RebuildRequest", "JobStatus", "Info"):
        assert schemas[name].get("examples"), name
    assert "HTTPBearer" in json.dumps(spec["components"].get("securitySchemes", {}))


def test_server_process_never_loads_torch(served: Server) -> None:
    maps = Path(f"/proc/{served.proc.pid}/maps")
    if not maps.exists():
        pytest.skip("no /proc on this platform")
    assert "libtorch" not in maps.read_text()
    assert "onnxruntime" in maps.read_text()  # the check can fail: the real runtime is mapped


def _thread_cpus(pid: int) -> dict[int, set[int]]:
    """CPU affinity of the threads of process ``pid`` (Linux /proc), but libuv's resolver threads (uvloop starts
    them when uvicorn binds its socket; they only ever resolve host names)."""
    out = {}
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            status, name = (task / "status").read_text(), (task / "comm").read_text().strip()
        except OSError:  # the thread ended meanwhile
            continue
        if name == "libuv-worker":
            continue
        spec = next(line.split(":", 1)[1].strip() for line in status.splitlines()
                    if line.startswith("Cpus_allowed_list"))
        cpus: set[int] = set()
        for part in spec.split(","):
            lo, _, hi = part.partition("-")
            cpus.update(range(int(lo), int(hi or lo) + 1))
        out[int(task.name)] = cpus
    return out


def test_pinned_event_loop_shares_a_core_with_the_first_worker_and_nothing_else_is_pinned(served: Server) -> None:
    allowed = sorted(os.sched_getaffinity(0))
    if not Path("/proc/self/task").exists() or len(allowed) < 2:
        pytest.skip("needs Linux and two CPUs")
    with served.client() as c:
        info = c.get("/v1/info").json()
        assert c.post("/retrieve", json={"gathers": as_json(gathers()), "k": 2}).status_code == 200  # blocking pool
        assert c.get("/admin/jobs/nothing", headers={"Authorization": f"Bearer {TOKEN}"}).status_code == 404
    workers = info["batching"]["workers"]
    assert info["cpus"] == {"event_loop": allowed[0], "workers": [allowed[i % len(allowed)] for i in range(workers)]}
    threads = _thread_cpus(served.proc.pid)
    assert threads[served.proc.pid] == {allowed[0]}  # the main thread runs the event loop
    pinned = sorted(min(c) for tid, c in threads.items() if len(c) == 1 and tid != served.proc.pid)
    assert pinned == sorted(info["cpus"]["workers"])  # one per batch worker
    assert all(c == set(allowed) for c in threads.values() if len(c) > 1)  # JSON parsing, watcher, ONNX Runtime


# -- /retrieve -------------------------------------------------------------------------------------------------

def test_retrieve_npy_single_and_batch_in_input_order(served: Server, bank_root: Path, bank_a: np.ndarray) -> None:
    g = gathers(3, seed=1)
    with served.client() as c:
        singles = [c.post("/retrieve?k=5", content=npy(g[i]), headers=NPY).json() for i in range(3)]
        batch = c.post("/retrieve", params={"k": 5}, content=npy(g), headers=NPY).json()
    assert len(batch["results"]) == 3 and batch["k"] == 5
    for i in range(3):
        one = singles[i]["results"][0]["neighbors"]
        many = batch["results"][i]["neighbors"]
        assert [n["id"] for n in one] == [n["id"] for n in many]
        np.testing.assert_allclose([n["score"] for n in one], [n["score"] for n in many], atol=1e-5)
    hits = batch["results"][0]["neighbors"]
    assert [n["rank"] for n in hits] == [1, 2, 3, 4, 5]
    scores = [n["score"] for n in hits]
    assert scores == sorted(scores, reverse=True) and all(-1.0 <= s <= 1.0 for s in scores)
    for n in hits:
        assert "velocity_model" not in n
        assert n["source"]["file"] == "model/model1.npy"  # relative to the bank: no server path in responses
        truth = compute_descriptors(bank_a[n["source"]["row"]])[0]
        assert list(n["descriptors"]) == list(DESCRIPTOR_NAMES)
        np.testing.assert_allclose(list(n["descriptors"].values()), truth, rtol=1e-6)


def test_retrieve_json_float64_and_npy_agree(served: Server) -> None:
    g = gathers(seed=2)
    with served.client() as c:
        a = c.post("/retrieve", content=npy(g), headers=NPY, params={"k": 4}).json()
        b = c.post("/retrieve", json={"gathers": as_json(g), "k": 4}).json()
        d = c.post("/retrieve", content=npy(g.astype(np.float64)), headers=NPY, params={"k": 4}).json()
    ids = [[n["id"] for n in r["neighbors"]] for r in (a["results"][0], b["results"][0], d["results"][0])]
    assert ids[0] == ids[1] == ids[2]
    assert a["encoder"] == b["encoder"] and a["index_version"] == b["index_version"]


def test_retrieve_include_models_returns_the_bank_models(served: Server, bank_a: np.ndarray) -> None:
    with SeisBindClient(served.url) as client:
        r = client.retrieve(gathers(2, seed=3), k=3, include_models=True)
        models = client.velocity_models(r)
    assert len(models) == 2 and models[0].shape == (3, 70, 70)
    for hit, model in zip(r["results"][0]["neighbors"], models[0]):
        np.testing.assert_array_equal(model, bank_a[hit["source"]["row"], 0])
    for result, m in zip(r["results"], models):  # the consensus pick, as evaluation measures it
        scores = np.array([[n["score"] for n in result["neighbors"]]])
        assert result["consensus_rank"] == consensus_pick(m[None], scores)[0] + 1


def test_retrieve_consensus_rank_is_the_neighbour_closest_to_the_others(served: Server) -> None:
    with SeisBindClient(served.url) as client:
        r = client.retrieve(gathers(4, seed=11), k=5, include_models=True)
        single = client.retrieve(gathers(1, seed=12), k=1)
        models = client.velocity_models(r)
    for result, m in zip(r["results"], models):
        spread = np.abs(m[:, None] - m[None]).mean(axis=(2, 3)).mean(1)  # mean MAE of each to all five
        assert spread[result["consensus_rank"] - 1] == pytest.approx(spread.min())
    assert single["results"][0]["consensus_rank"] == 1


def test_concurrent_requests_each_get_their_own_results(served: Server) -> None:
    """Requests that arrive together are encoded together; each must still get the neighbours of its own gathers."""
    bodies = [npy(gathers(1 + i % 2, seed=20 + i)) for i in range(8)]
    with served.client() as c:
        expected = [[[n["id"] for n in r["neighbors"]] for r in c.post("/retrieve?k=4", content=b,
                                                                           headers=NPY).json()["results"]]
                    for b in bodies]
    barrier = threading.Barrier(len(bodies))
    got: list[list[list[str]] | None] = [None] * len(bodies)

    def one(i: int) -> None:
        with served.client() as c:
            barrier.wait(30)
            r = c.post("/retrieve?k=4", content=bodies[i], headers=NPY)
            got[i] = [[n["id"] for n in x["neighbors"]] for x in r.json()["results"]]

    threads = [threading.Thread(target=one, args=(i,)) for i in range(len(bodies))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert got == expected


# -- /infer-descriptors ----------------------------------------------------------------------------------------

def test_infer_descriptors_mean_and_similarity_weighting(served: Server) -> None:
    g = gathers(seed=4)
    with SeisBindClient(served.url) as client:
        hits = client.retrieve(g, k=5)["results"][0]["neighbors"]
        est = client.infer_descriptors(g)  # default k = 5
        weighted = client.infer_descriptors(g, k=5, weighting="similarity")
    res = est["results"][0]
    assert est["k"] == 5 and est["weighting"] == "mean"
    assert res["neighbors"] == [h["id"] for h in hits]
    values = np.array([[h["descriptors"][n] for n in DESCRIPTOR_NAMES] for h in hits])
    for j, name in enumerate(DESCRIPTOR_NAMES):
        d = res["descriptors"][name]
        assert d["unit"] == DESCRIPTOR_UNITS[name]
        assert d["value"] == pytest.approx(values[:, j].mean(), rel=1e-9, abs=1e-9)
        assert d["std"] == pytest.approx(values[:, j].std(), rel=1e-6, abs=1e-9)
    w = np.clip(np.array([h["score"] for h in hits]), 1e-6, None)
    w = w / w.sum() if (np.array([h["score"] for h in hits]) > 0).any() else np.full(5, 0.2)
    assert weighted["weighting"] == "similarity"
    assert weighted["results"][0]["descriptors"]["v_mean"]["value"] == pytest.approx(w @ values[:, 0], rel=1e-4)


def test_infer_descriptors_without_a_readout_are_the_neighbours_and_blend_is_refused(served: Server) -> None:
    g = gathers(seed=6)
    with SeisBindClient(served.url) as client:
        assert client.infer_descriptors(g)["method"] == "neighbours"  # this bundle has no readout
        assert client.info()["descriptor_readout"] is None
        with pytest.raises(SeisBindError, match="method=blend: the encoder bundle has no descriptor readout") as e:
            client.infer_descriptors(g, method="blend")
    assert e.value.status == 422


def test_infer_descriptors_json_batch(served: Server) -> None:
    g = gathers(2, seed=5)
    with served.client() as c:
        r = c.post("/infer-descriptors", json={"gathers": as_json(g), "k": 3, "weighting": "similarity"})
    assert r.status_code == 200, r.text
    body = r.json()
    assert len(body["results"]) == 2 and all(len(x["neighbors"]) == 3 for x in body["results"])


# -- /retrieve-by-descriptors ----------------------------------------------------------------------------------

def test_retrieve_by_descriptors(served: Server, bank_a: np.ndarray) -> None:
    desc = dict(zip(DESCRIPTOR_NAMES, compute_descriptors(bank_a[17])[0].tolist()))
    with SeisBindClient(served.url) as client:
        r = client.retrieve_by_descriptors(desc, k=4, include_models=True)
        with pytest.raises(SeisBindError, match="missing grad_x") as e:
            client.retrieve_by_descriptors({k: v for k, v in desc.items() if k != "grad_x"})
    assert e.value.status == 422
    hits = r["results"][0]["neighbors"]
    assert len(r["results"]) == 1 and len(hits) == 4 and np.shape(hits[0]["velocity_model"]) == (70, 70)
    assert r["encoder"] and r["index_version"]


# -- every error of docs/api.md ---------------------------------------------------------------------------

BAD_NPY_CASES = [
    ("wrong shape", npy(np.zeros((5, 1000, 69), np.float32)), {}, "shape (5, 1000, 69)"),
    ("int dtype", npy(np.zeros(G, np.int16)), {}, "dtype int16"),
    ("float16 dtype", npy(np.zeros(G, np.float16)), {}, "dtype float16"),
    ("NaN", npy(np.where(np.arange(350_000).reshape(G) == 7, np.nan, 0).astype(np.float32)), {}, "NaN or Inf"),
    ("Inf", npy(np.full((2, *G), np.inf, np.float32)), {}, "gather 0 holds NaN or Inf"),
    ("k zero", npy(gathers()), {"k": 0}, "k=0 is out of range"),  # (an all-zero gather is refused on its own)
    ("k over max", npy(gathers()), {"k": MAX_K + 1}, f"k={MAX_K + 1} is out of range"),
    ("k not a number", npy(gathers()), {"k": "five"}, "query.k"),
    ("too many gathers", npy(np.zeros((MAX_GATHERS + 1, *G), np.float32)), {}, "at most 4"),
    ("empty body", b"", {}, "empty request body"),
    ("not npy", b"hello", {}, "not a .npy file"),
]


@pytest.mark.parametrize("path", ["/retrieve", "/infer-descriptors"])
@pytest.mark.parametrize("case", BAD_NPY_CASES, ids=[c[0] for c in BAD_NPY_CASES])
def test_bad_npy_bodies_get_422(served: Server, path: str, case: tuple) -> None:
    _, body, params, fragment = case
    with served.client() as c:
        assert_error(c.post(path, content=body, params=params, headers=NPY), 422, fragment)


def test_bad_json_bodies_get_422(served: Server) -> None:
    with served.client() as c:
        assert_error(c.post("/retrieve", json={"gathers": [[1.0, 2.0]]}), 422, "shape (1, 2)")
        assert_error(c.post("/retrieve", json={"gathers": as_json(gathers()), "k": 0}), 422, "out of range")
        assert_error(c.post("/retrieve", json={"k": 3}), 422, '"gathers"')
        assert_error(c.post("/retrieve", content=b'{"gathers": [NaN', headers={"Content-Type": "application/json"}),
                     422, "not valid JSON")
        nan = gathers()
        nan[0, 0, 0] = np.nan
        assert_error(c.post("/retrieve", content=json.dumps({"gathers": as_json(nan)}),
                            headers={"Content-Type": "application/json"}), 422, "NaN or Inf")
        assert_error(c.post("/retrieve-by-descriptors", json={"descriptors": {"v_mean": 1.0}, "k": 3}), 422,
                     "missing v_std")
        assert_error(c.post("/retrieve-by-descriptors", json={"descriptors": "fast"}), 422, "descriptors")


def test_unsupported_content_type_gets_415(served: Server) -> None:
    with served.client() as c:
        assert_error(c.post("/retrieve", content=b"abc", headers={"Content-Type": "text/plain"}), 415, "text/plain")
        assert_error(c.post("/infer-descriptors", content=b"abc", headers={"Content-Type": "image/png"}), 415,
                     "application/x-npy")
        assert_error(c.post("/retrieve", content=b"abc"), 415, "(none)")
        assert_error(c.post("/retrieve-by-descriptors", content=b"{}", headers={"Content-Type": "text/plain"}), 415,
                     "application/json")


def test_body_over_the_limit_gets_413(served: Server) -> None:
    big = npy(np.zeros((6, *G), np.float32))  # 8.4 MB > 8 MiB
    assert len(big) > MAX_BODY

    def chunks() -> Iterator[bytes]:  # no Content-Length: the limit applies while reading
        for i in range(0, len(big), 1 << 20):
            yield big[i:i + (1 << 20)]

    with served.client() as c:
        assert_error(c.post("/retrieve", content=big, headers=NPY), 413, "exceeds the limit")
        assert_error(c.post("/retrieve", content=chunks(), headers=NPY), 413, "exceeds the limit")
        assert_error(c.post("/retrieve-by-descriptors", content=chunks(), headers={"Content-Type": "application/json"}),
                     413, "exceeds the limit")
        assert c.get("/healthz").status_code == 200  # the connection and the server survive


def test_garbage_never_crashes_the_service(served: Server) -> None:
    header = b"{'descr': '<f4', 'fortran_order': False, 'shape': (100000, 5, 1000, 70), }"
    header += b" " * (118 - len(header)) + b"\n"
    bodies = [
        (b"\x93NUMPY\x01\x00" + len(header).to_bytes(2, "little") + header, NPY),  # claims 140 GB
        (b"\x93NUMPY\x01\x00\xff\xff" + b"{" * 1000, NPY),
        (b"\x93NUMPY\x01\x00\x40\x00{'descr': 'O', 'fortran_order': False, 'shape': (5, 1000, 70)}" + b" " * 8, NPY),
        (bytes(np.random.default_rng(0).integers(0, 256, 5000, dtype=np.uint8)), NPY),
        (b"[" * 200_000, {"Content-Type": "application/json"}),
        (b'{"gathers": ' + b"[" * 50 + b"1" + b"]" * 50 + b"}", {"Content-Type": "application/json"}),
        (b'{"gathers": [1e999]}', {"Content-Type": "application/json"}),
        (b"\xff\xfe\x00", {"Content-Type": "application/json; charset=utf-8"}),
    ]
    with served.client() as c:
        for body, headers in bodies:
            r = c.post("/retrieve", content=body, headers=headers)
            assert 400 <= r.status_code < 500, (r.status_code, r.text)
            assert r.json()["detail"]
    host, port = served.url.rsplit("/", 1)[1].split(":")
    for raw in (b"POST /retrieve HTTP/1.1\r\nHost: x\r\nContent-Length: abc\r\n\r\nabc",
                b"POST /retrieve HTTP/1.1\r\nHost: x\r\nContent-Length: 999999999999\r\n\r\n",
                b"\x00\x01garbage\r\n\r\n"):
        with socket.create_connection((host, int(port)), timeout=10) as sock:
            sock.sendall(raw)
            assert sock.recv(4096).split(b" ")[1][:1] == b"4"  # a 4xx status line
    assert served.proc.poll() is None
    with served.client() as c:
        assert c.get("/healthz").status_code == 200 and c.get("/readyz").status_code == 200


def test_request_ids_are_echoed_or_created(served: Server) -> None:
    with served.client() as c:
        assert c.get("/healthz", headers={"X-Request-ID": "trace-42"}).headers["X-Request-ID"] == "trace-42"
        made = c.get("/healthz", headers={"X-Request-ID": "bad id\twith spaces"}).headers["X-Request-ID"]
        assert made != "bad id\twith spaces" and len(made) == 32
        c.get("/healthz", headers={"X-Request-ID": "trace-43"})
    time.sleep(0.2)
    lines = [json.loads(line) for line in served.log_tail(200_000).splitlines() if line.startswith("{")]
    access = [x for x in lines if x.get("logger") == "service.access" and x.get("request_id") == "trace-43"]
    assert access and access[-1]["status"] == 200 and access[-1]["endpoint"] == "/healthz"


def test_metrics_per_endpoint_and_stage(served: Server) -> None:
    with served.client() as c:
        c.post("/retrieve", content=npy(gathers()), headers=NPY)
        c.post("/retrieve", content=b"x", headers={"Content-Type": "text/csv"})
        text = c.get("/metrics").text
        info = c.get("/v1/info").json()
    assert 'seisbind_requests_total{endpoint="/retrieve",method="POST",status="200"}' in text
    assert 'seisbind_requests_total{endpoint="/retrieve",method="POST",status="415"}' in text
    assert 'seisbind_request_seconds_count{endpoint="/retrieve"}' in text
    for stage in ("receive", "decode", "queue", "encode", "search", "fetch"):
        assert f'seisbind_stage_seconds_count{{endpoint="/retrieve",stage="{stage}"}}' in text, stage
    labels = f'bundle_id="{info["encoder"]}",index_type="flat",version="{info["index_version"]}"'
    assert f"seisbind_index_info{{{labels}}} 1.0" in text
    assert f"seisbind_index_entries {float(info['count'])}" in text
    assert f'seisbind_model_info{{bundle_id="{info["encoder"]}",providers="CPUExecutionProvider"}} 1.0' in text
    assert "seisbind_batch_gathers_bucket" in text


# -- admin -----------------------------------------------------------------------------------------------------

def test_admin_requires_the_bearer_token(served: Server) -> None:
    with served.client() as c:
        r = c.post("/admin/rebuild-index", json={"bank": "bank_b"})
        assert_error(r, 401, "missing admin token")
        assert r.headers["WWW-Authenticate"] == "Bearer"
        assert_error(c.post("/admin/rebuild-index", json={"bank": "bank_b"},
                            headers={"Authorization": "Bearer " + "x" * 32}), 403, "wrong admin token")
        assert_error(c.post("/admin/rebuild-index", json={"bank": "bank_b"},
                            headers={"Authorization": "Basic dXNlcjpwYXNz"}), 401, "missing admin token")
        assert_error(c.get("/admin/jobs/abc"), 401, "missing admin token")
        assert_error(c.get("/admin/jobs/abc", headers={"Authorization": "Bearer nope"}), 403, "wrong")
        assert_error(c.get("/admin/jobs/abc", headers=AUTH), 404, "no job 'abc'")


@pytest.mark.parametrize("bank, status, fragment", [
    ("../", 403, "outside the bank root"),
    ("/etc", 403, "outside the bank root"),
    ("escape", 403, "outside the bank root"),
    ("bank_a/../../", 403, "outside the bank root"),
    ("no_such_bank", 422, "no such folder"),
])
def test_rebuild_refuses_banks_outside_the_root(served: Server, bank: str, status: int, fragment: str) -> None:
    with served.client() as c:
        assert_error(c.post("/admin/rebuild-index", json={"bank": bank}, headers=AUTH), status, fragment)


def test_rebuild_request_validation(served: Server) -> None:
    with served.client() as c:
        assert_error(c.post("/admin/rebuild-index", json={"bank": "bank_b", "index_type": "lsh"}, headers=AUTH),
                     422, "index_type")
        assert_error(c.post("/admin/rebuild-index", json={}, headers=AUTH), 422, "bank")
        assert_error(c.post("/admin/rebuild-index", content=b"bank=bank_b",
                            headers={**AUTH, "Content-Type": "application/x-www-form-urlencoded"}), 415, "json")


def test_failed_rebuild_reports_the_error_and_keeps_serving(served: Server) -> None:
    with SeisBindClient(served.url, admin_token=TOKEN) as client:
        before = client.info()["index_version"]
        job = client.wait_job(client.rebuild_index("bad", "flat"), timeout=120)
        assert job["state"] == "failed" and "NaN" in job["error"] and job["version"] is None
        assert client.info()["index_version"] == before
        assert client.retrieve(gathers(), k=2)["index_version"] == before


def test_rebuild_while_four_clients_query(served: Server, bank_root: Path) -> None:
    with SeisBindClient(served.url, admin_token=TOKEN) as admin:
        old = admin.info()["index_version"]
    stop = threading.Event()
    seen: list[list[str]] = [[] for _ in range(4)]
    failures: list[str] = []
    body = npy(gathers(seed=9))

    def query(i: int) -> None:
        with httpx.Client(base_url=served.url, timeout=60.0) as c:
            while not stop.is_set():
                try:
                    r = c.post("/retrieve", content=body, headers=NPY, params={"k": 5})
                    if r.status_code != 200:
                        failures.append(f"{r.status_code} {r.text[:200]}")
                        continue
                    seen[i].append(r.json()["index_version"])
                except httpx.HTTPError as e:  # pragma: no cover - reported below
                    failures.append(repr(e))

    threads = [threading.Thread(target=query, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    try:
        time.sleep(0.5)
        with SeisBindClient(served.url, admin_token=TOKEN) as admin:
            job_id = admin.rebuild_index("bank_b", "flat")
            with pytest.raises(SeisBindError) as busy:  # one rebuild at a time
                admin.rebuild_index("bank_a", "flat")
            assert busy.value.status == 409 and job_id in busy.value.detail
            job = admin.wait_job(job_id, timeout=180)
            assert job["state"] == "succeeded", job
            counts = [len(s) for s in seen]
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline and not all(len(s) >= c + 3 for s, c in zip(seen, counts)):
                time.sleep(0.05)
    finally:
        stop.set()
        for t in threads:
            t.join(60)
    new = job["version"]
    assert failures == []
    assert new != old and IndexStore(served.index_root).current() == new  # also current on disk
    for s in seen:
        assert s and s[0] == old and s[-1] == new, (s[:3], s[-3:])
        changes = sum(1 for a, b in zip(s, s[1:]) if a != b)
        assert changes == 1 and set(s) == {old, new}
    with served.client() as c:
        info = c.get("/v1/info").json()
        assert info["index_version"] == new and info["count"] == 200
        metrics = c.get("/metrics").text
    assert "seisbind_index_swaps_total 1.0" in metrics
    assert 'seisbind_rebuilds_total{outcome="succeeded"} 1.0' in metrics


# -- a service with no index yet -------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def empty(bundles: dict[str, Path], bank_root: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """``uvicorn --factory service.app:app_from_env`` with an empty index root."""
    port = free_port()
    env = {"SEISBIND_ENCODERS": str(bundles["main"]), "SEISBIND_INDEX_ROOT": str(tmp_path_factory.mktemp("none")),
           "SEISBIND_ADMIN_TOKEN_FILE": str(_token_file(tmp_path_factory)), "SEISBIND_BANK_ROOT": str(bank_root),
           "SEISBIND_PORT": str(port)}
    cmd = [sys.executable, "-m", "uvicorn", "--factory", "service.app:app_from_env", "--host", "127.0.0.1",
           "--port", str(port), "--no-access-log"]
    server = start_server(cmd, env, tmp_path_factory.mktemp("logs") / "empty.log", ready=False)
    yield server
    stop_server(server)


def _token_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    f = tmp_path_factory.mktemp("secrets") / "admin_token"
    f.write_text(TOKEN + "\n")
    return f


def test_no_index_gives_503_until_a_rebuild(empty: Server) -> None:
    g = npy(gathers())
    with empty.client() as c:
        ready = c.get("/readyz")
        assert ready.status_code == 503 and ready.json()["ready"] is False
        assert "no index version" in ready.json()["reason"]
        for path in ("/retrieve", "/infer-descriptors"):
            assert_error(c.post(path, content=g, headers=NPY), 503, "no index version")
        desc = dict(zip(DESCRIPTOR_NAMES, [3000.0, 500, 1500, 4500, 1600, 4400, 3, 0]))
        assert_error(c.post("/retrieve-by-descriptors", json={"descriptors": desc}), 503, "not ready")
        info = c.get("/v1/info").json()
        assert info["ready"] is False and info["index_version"] is None and info["count"] == 0
    # Default settings pin no thread.
    assert info["cpus"] == {"event_loop": None, "workers": [None] * info["batching"]["workers"]}
    if Path("/proc/self/task").exists():
        assert all(c == set(os.sched_getaffinity(0)) for c in _thread_cpus(empty.proc.pid).values())
    with SeisBindClient(empty.url, admin_token=TOKEN) as client:  # token read from SEISBIND_ADMIN_TOKEN_FILE
        job = client.wait_job(client.rebuild_index("bank_a"), timeout=180)
        assert job["state"] == "succeeded" and job["progress"] == 1.0
        client.wait_ready(10)
        r = client.retrieve(gathers(), k=3)
    assert r["index_version"] == job["version"] and len(r["results"][0]["neighbors"]) == 3


# -- an index built with other encoders ------------------------------------------------------------------------

@pytest.fixture(scope="module")
def mismatched(bundles: dict[str, Path], bank_root: Path,
               tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    index_root = tmp_path_factory.mktemp("index_other")
    build_index(bundles["other"], bank_root / "bank_b", index_root, index_type="flat")
    server = serve(bundles["main"], index_root, tmp_path_factory.mktemp("logs") / "mismatched.log",
                   {"SEISBIND_BANK_ROOT": str(bank_root)}, ready=False)
    yield server
    stop_server(server)


def test_index_of_other_encoders_is_refused(mismatched: Server, bundles: dict[str, Path]) -> None:
    other = json.loads((bundles["other"] / "manifest.json").read_text())["bundle_id"]
    with mismatched.client() as c:
        ready = c.get("/readyz")
        assert ready.status_code == 503 and other in ready.json()["reason"]
        assert "rebuild the index" in ready.json()["reason"]
        assert_error(c.post("/retrieve", content=npy(gathers()), headers=NPY), 503, other)


def test_admin_disabled_without_a_token(mismatched: Server) -> None:
    with mismatched.client() as c:
        for headers in ({}, AUTH, {"Authorization": "Bearer x"}):
            assert_error(c.post("/admin/rebuild-index", json={"bank": "bank_a"}, headers=headers), 403, "disabled")
            assert_error(c.get("/admin/jobs/x", headers=headers), 403, "disabled")
