"""Hardening, second round (issue 19): what a hostile and a careless user got through, item by item, each against a
real ``seisbind serve`` process (uvicorn) on localhost. Every test here fails on the code before the fixes.

1. memory: JSON bodies are checked and parsed in bounded memory, and bodies are read and decoded within a byte
   budget; 8 concurrent worst-case bodies (JSON and .npy) keep the peak RSS under 2x idle + 4x the body limit;
2. physically implausible input is refused (422) or answered with a warning (docs/api.md);
3. no server paths in responses, no ``server`` header;
4. settings consistent with each other, checked at start;
5. unknown query parameters refused, as JSON bodies refuse unknown fields;
6. (the OpenAPI ranges: tests/service/test_fuzz.py, and the schema check here);
7. the small ones; 8. the Python client.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest

from seisbind.descriptors import DESCRIPTOR_NAMES

from service.client import SeisBindClient, SeisBindError
from tests.service_fixtures import (
    NPY,
    REPO,
    Server,
    as_json,
    assert_error,
    free_port,
    gathers,
    npy,
    serve,
    serve_command,
    small_service_files,
    stop_server,
)

TOKEN = "hardening-admin-token-0123456789"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
JSON = {"Content-Type": "application/json"}
MAX_BODY = 8 * 1024 * 1024
MAX_GATHERS = 4
BANK_SIZE = 12
DESC = dict(zip(DESCRIPTOR_NAMES, [3000.0, 500.0, 1500.0, 4500.0, 1600.0, 4400.0, 3.0, 0.0]))

pytestmark = pytest.mark.timeout(600)


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("hardening")
    bundle, banks, index = small_service_files(root, BANK_SIZE)
    return {"root": root, "bundle": bundle, "banks": banks, "index": index}


def _env(files: dict[str, Path], **extra: str) -> dict[str, str]:
    return {"SEISBIND_ADMIN_TOKEN": TOKEN, "SEISBIND_BANK_ROOT": str(files["banks"]),
            "SEISBIND_MAX_BODY_BYTES": str(MAX_BODY), "SEISBIND_MAX_GATHERS": str(MAX_GATHERS),
            "SEISBIND_ORT_INTRA_OP_THREADS": "1", "SEISBIND_ENCODE_WORKERS": "1", "SEISBIND_INDEX_POLL_S": "0",
            **extra}


@pytest.fixture(scope="module")
def served(files: dict[str, Path]) -> Iterator[Server]:
    server = serve(files["bundle"], files["index"], files["root"] / "server.log", _env(files))
    yield server
    stop_server(server)


def _info(served: Server) -> dict:
    with served.client() as c:
        return c.get("/v1/info").json()


# -- 1. memory -------------------------------------------------------------------------------------------------

def _status(pid: int) -> dict[str, int]:
    """VmRSS and VmHWM (peak RSS) of a process, KiB, from /proc."""
    out = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(("VmRSS:", "VmHWM:")):
            out[line.split(":")[0]] = int(line.split()[1])
    return out


def _reset_peak(pid: int) -> None:
    """Reset the process's VmHWM to its current RSS (Linux: "5" to /proc/PID/clear_refs)."""
    Path(f"/proc/{pid}/clear_refs").write_text("5")


def _filled(prefix: bytes, item: bytes, suffix: bytes, size: int) -> bytes:
    """prefix + item repeated to fill ``size`` bytes + suffix (items joined by commas)."""
    n = (size - len(prefix) - len(suffix)) // (len(item) + 1)
    return prefix + b",".join([item] * n) + suffix


def worst_json_bodies(limit: int, max_gathers: int) -> dict[str, bytes]:
    """JSON bodies just under ``limit`` that cost the most to parse, old and new: empty lists (a Python list each
    with json.loads), a flat list of 0.0 (a float each), the most gathers of the shortest numbers that are valid,
    and one gather padded with whitespace to the limit (the biggest slice parsed at once)."""
    row = b"[" + b",".join([b"0", b"1"] * 35) + b"]"  # not constant: a gather with every value the same is refused
    short = b"[" + b",".join([b"[" + b",".join([row] * 1000) + b"]"] * 5) + b"]"
    gather_text = json.dumps(as_json(gathers(seed=3))).encode()
    return {
        "empty lists": _filled(b'{"gathers": [', b"[]", b"]}", limit - 16),
        "flat zeros": _filled(b'{"gathers": [', b"0.0", b"]}", limit - 16),
        "shortest numbers": b'{"gathers": [' + b",".join([short] * max_gathers) + b'], "k": 3}',
        "padded gather": b'{"gathers": ' + gather_text[:-1] + b" " * (limit - len(gather_text) - 64) + b'], "k": 3}',
    }


def worst_npy_bodies(limit: int, max_gathers: int) -> dict[str, bytes]:
    """.npy bodies under ``limit``: the most float32 gathers (the biggest encode), float64 (a cast copy), and big
    endian Fortran order (a copy in another layout)."""
    f64 = max(1, (limit - 128) // (8 * 350_000))
    return {"float32 max gathers": npy(gathers(max_gathers, seed=4)),
            "float64": npy(gathers(f64, seed=5).astype(np.float64)),
            "big-endian fortran": npy(np.asfortranarray(gathers(min(max_gathers, f64 * 2), seed=6).astype(">f4")))}


def _concurrent(server: Server, bodies: list[tuple[str, bytes, dict[str, str]]]) -> list[int]:
    """Send the bodies at once, each on its own connection; their statuses (-1: no answer)."""
    statuses = [-1] * len(bodies)
    barrier = threading.Barrier(len(bodies))

    def one(i: int) -> None:
        path, body, headers = bodies[i]
        with httpx.Client(base_url=server.url, timeout=300) as c:
            barrier.wait()
            try:
                statuses[i] = c.post(path, content=body, headers=headers).status_code
            except httpx.HTTPError:
                pass

    threads = [threading.Thread(target=one, args=(i,)) for i in range(len(bodies))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(600)
    return statuses


@pytest.fixture(scope="module")
def memory_server(files: dict[str, Path]) -> Iterator[Server]:
    """A server of its own, so that its idle RSS is not that of one the other tests have used."""
    server = serve(files["bundle"], files["index"], files["root"] / "memory.log", _env(files))
    yield server
    stop_server(server)


def _idle_kib(server: Server) -> int:
    """RSS after one small request of each kind (a warm, idle server)."""
    with server.client() as c:
        assert c.post("/retrieve", content=npy(gathers()), headers=NPY).status_code == 200
        assert c.post("/retrieve", json={"gathers": as_json(gathers()), "k": 3}).status_code == 200
    time.sleep(0.5)
    return _status(server.proc.pid)["VmRSS"]


def test_json_bodies_of_empty_lists_or_zeros_are_refused_before_parsing(served: Server) -> None:
    """The issue's bodies (scaled to this server's limit): refused at once, without growing the process."""
    bodies = worst_json_bodies(MAX_BODY, MAX_GATHERS)
    with served.client() as c:
        for name in ("empty lists", "flat zeros"):
            _reset_peak(served.proc.pid)
            before = _status(served.proc.pid)["VmRSS"]
            r = c.post("/retrieve", content=bodies[name], headers=JSON)
            assert_error(r, 422, "holds")
            assert "SEISBIND_MAX_GATHERS" in r.json()["detail"]
            grew = _status(served.proc.pid)["VmHWM"] - before
            assert grew < 3 * MAX_BODY // 1024, (name, grew)  # the body, received; json.loads: 20x it and more


def test_memory_stays_bounded_under_concurrent_worst_bodies(memory_server: Server) -> None:
    """8 concurrent requests with the worst bodies of each kind within the limit: every one answered, and the
    peak RSS (VmHWM, /proc) under 2x the idle RSS plus 4x the body limit."""
    idle = _idle_kib(memory_server)
    bound = 2 * idle + 4 * MAX_BODY // 1024
    js, nps = worst_json_bodies(MAX_BODY, MAX_GATHERS), worst_npy_bodies(MAX_BODY, MAX_GATHERS)
    rounds = {
        "json": [("/retrieve", b, JSON) for b in list(js.values()) * 2],
        "npy": [("/retrieve", b, NPY) for b in (list(nps.values()) * 3)[:8]],
        "mixed": [(p, b, JSON) for p, b in zip(["/retrieve", "/infer-descriptors"] * 2, js.values())]
                 + [(p, b, NPY) for p, b in zip(["/infer-descriptors", "/retrieve"] * 2, list(nps.values()) * 2)],
    }
    peaks = {}
    for name, bodies in rounds.items():
        assert len(bodies) == 8
        _reset_peak(memory_server.proc.pid)
        statuses = _concurrent(memory_server, bodies)
        peaks[name] = _status(memory_server.proc.pid)["VmHWM"]
        assert all(200 <= s < 500 for s in statuses), (name, statuses)
        assert statuses.count(200) == sum(1 for _, b, _ in bodies if b not in (js["empty lists"], js["flat zeros"]))
    print(f"\nidle RSS {idle / 1024:.0f} MiB, bound {bound / 1024:.0f} MiB, peaks (MiB):",
          {k: round(v / 1024) for k, v in peaks.items()})
    assert max(peaks.values()) < bound, (idle, peaks)
    with memory_server.client() as c:
        assert c.get("/readyz").status_code == 200


# -- 2. implausible input --------------------------------------------------------------------------------------

def test_gathers_without_signal_or_far_out_of_range_are_refused(served: Server) -> None:
    g = gathers(3, seed=11)
    zero, constant, loud = g.copy(), g.copy(), g.copy()
    zero[1] = 0.0
    constant[0] = 2.5
    loud[2] *= 1e6
    with served.client() as c:
        assert_error(c.post("/retrieve", content=npy(zero), headers=NPY), 422, "gather 1 carries no signal")
        assert_error(c.post("/infer-descriptors", content=npy(constant), headers=NPY), 422,
                     "gather 0 carries no signal (every value is 2.5)")
        r = c.post("/retrieve", content=npy(loud), headers=NPY)
        assert_error(r, 422, "gather 2 has amplitudes up to")
        assert "rescaled to that convention" in r.json()["detail"]
        assert_error(c.post("/retrieve", json={"gathers": as_json(zero[1])}), 422, "gather 0 carries no signal")


def test_doubtful_gathers_are_answered_with_warnings(served: Server) -> None:
    g = gathers(3, seed=12)
    g[1] *= 8.0  # peaks over 2x the training extremes
    g[2, 3] = 0.0  # a dead shot
    with served.client() as c:
        r = c.post("/retrieve", content=npy(g), headers=NPY, params={"k": 3})
        assert r.status_code == 200, r.text
        results = r.json()["results"]
        assert "warnings" not in results[0]
        assert "beyond the training data's range" in results[1]["warnings"][0]
        assert results[2]["warnings"] == ["shot 3 carries no signal (constant values)"]
        inferred = c.post("/infer-descriptors", content=npy(g), headers=NPY).json()["results"]
        assert [("warnings" in x) for x in inferred] == [False, True, True]
        weak = c.post("/retrieve", content=npy(g[0] * 1e-3), headers=NPY).json()["results"][0]
        assert "far weaker than in the training data" in weak["warnings"][0]


@pytest.mark.parametrize("change, fragment", [
    ({"v_mean": 1e9}, "v_mean = 1e+09 m/s is outside the physical range 100..10000"),
    ({"v_min": -1500.0}, "v_min = -1500 m/s is outside the physical range"),
    ({"v_std": -1.0}, "v_std = -1 m/s is outside the physical range"),
    ({"v_min": 4500.0, "v_max": 1500.0}, "v_min = 4500 is above v_max = 1500"),
    ({"v_mean": 5000.0}, "v_mean = 5000 is outside [v_min, v_max] = [1500, 4500]"),
    ({"v_std": 2000.0}, "v_std = 2000 is over half of v_max - v_min"),
    ({"grad_z": 500.0}, "|grad_z| = 500 1/s is steeper than"),
])
def test_impossible_descriptors_are_refused(served: Server, change: dict, fragment: str) -> None:
    with served.client() as c:
        r = c.post("/retrieve-by-descriptors", json={"descriptors": DESC | change})
        assert_error(r, 422, fragment)
        assert "descriptors are not those of any velocity model" in r.json()["detail"]


def test_descriptors_outside_the_bank_get_a_warning(served: Server) -> None:
    with served.client() as c:
        own = c.post("/retrieve", content=npy(gathers()), headers=NPY).json()["results"][0]["neighbors"][0]
        plain = c.post("/retrieve-by-descriptors", json={"descriptors": own["descriptors"], "k": 3}).json()
        high = c.post("/retrieve-by-descriptors",
                      json={"descriptors": DESC | {"v_max": 7000.0, "v_bottom": 6500.0}, "k": 3})
    assert high.status_code == 200, high.text
    notes = high.json()["results"][0]["warnings"]
    assert any(n.startswith("v_max = 7000 m/s is outside the bank's range") for n in notes), notes
    assert any(n.startswith("v_bottom = 6500") for n in notes), notes
    assert "warnings" not in plain["results"][0]  # a bank entry's own descriptors


# -- 3. no server paths, no server header ----------------------------------------------------------------------

def test_sources_are_relative_to_the_bank_and_no_server_header(served: Server) -> None:
    with served.client() as c:
        responses = [c.post("/retrieve", content=npy(gathers(2)), headers=NPY, params={"k": BANK_SIZE}),
                     c.post("/retrieve-by-descriptors", json={"descriptors": DESC, "k": BANK_SIZE}),
                     c.post("/retrieve", json={"gathers": as_json(gathers()), "k": 2})]
        files = {n["source"]["file"] for r in responses for x in r.json()["results"] for n in x["neighbors"]}
        assert files == {"model1.npy"}, files
        others = [c.get(p) for p in ("/healthz", "/readyz", "/v1/info", "/metrics", "/openapi.json", "/nope")]
        others.append(c.post("/retrieve", content=b"x", headers=NPY))
        text = c.get("/openapi.json").text
    assert "/banks/" not in text  # the schema's example too
    for r in responses + others:
        assert "server" not in r.headers, (r.request.url, r.headers)


# -- 4. settings consistent ------------------------------------------------------------------------------------

def test_inconsistent_limits_are_refused_at_start(files: dict[str, Path]) -> None:
    cmd = serve_command(files["bundle"], files["index"], free_port())
    env = {k: v for k, v in os.environ.items() if not k.startswith("SEISBIND_")}
    run = subprocess.run(cmd, env=env | _env(files, SEISBIND_MAX_GATHERS="8"),
                         cwd=REPO, capture_output=True, text=True, timeout=120)
    assert run.returncode != 0
    out = run.stdout + run.stderr
    assert "SEISBIND_MAX_GATHERS=8" in out and f"SEISBIND_MAX_BODY_BYTES={MAX_BODY}" in out, out[-2000:]
    assert "lower SEISBIND_MAX_GATHERS to at most 5" in out, out[-2000:]


def test_the_advertised_number_of_gathers_can_be_sent(served: Server) -> None:
    limits = _info(served)["limits"]
    body = npy(gathers(limits["max_gathers"], seed=8))
    assert len(body) <= limits["max_body_bytes"]
    with served.client() as c:
        r = c.post("/retrieve", content=body, headers=NPY, params={"k": 2})
    assert r.status_code == 200 and len(r.json()["results"]) == limits["max_gathers"]


# -- 5. unknown query parameters -------------------------------------------------------------------------------

def test_unknown_query_parameters_are_refused(served: Server) -> None:
    one = npy(gathers())
    with served.client() as c:
        r = c.post("/retrieve?include_model=true&K=1", content=one, headers=NPY)
        assert_error(r, 422, "unknown query parameters 'K', 'include_model'")
        assert "it takes include_models, k" in r.json()["detail"]
        assert_error(c.post("/infer-descriptors?weight=mean", content=one, headers=NPY), 422,
                     "unknown query parameter 'weight'; it takes k, method, weighting")
        assert_error(c.post("/retrieve?kk=3", json={"gathers": as_json(gathers())}), 422,
                     "unknown query parameter 'kk'")
        assert_error(c.post("/retrieve?k=2&k=3", content=one, headers=NPY), 422, "'k' given more than once")
        assert_error(c.post("/retrieve-by-descriptors?k=3", json={"descriptors": DESC}), 422,
                     "unknown query parameter 'k'; it takes none")
        ok = c.post("/retrieve?k=2&include_models=true", content=one, headers=NPY)
        assert ok.status_code == 200 and len(ok.json()["results"][0]["neighbors"]) == 2


# -- 6. the schema states the real ranges ----------------------------------------------------------------------

def test_schema_states_the_ranges_the_service_enforces(served: Server) -> None:
    with served.client() as c:
        spec = c.get("/openapi.json").json()
    desc = spec["components"]["schemas"]["DescriptorQuery"]["properties"]["descriptors"]["properties"]
    assert desc["v_mean"]["minimum"] == 100 and desc["v_mean"]["maximum"] == 10_000
    assert desc["v_std"]["minimum"] == 0 and desc["grad_x"]["minimum"] == 0
    body = spec["paths"]["/retrieve"]["post"]["requestBody"]["content"]["application/json"]["schema"]
    number = body["properties"]["gathers"]["anyOf"][0]
    while number.get("type") == "array":
        number = number["items"]
    assert number["minimum"] == -5510.0 and number["maximum"] == 5510.0
    # each bound is where the service starts refusing
    with served.client() as c:
        over = DESC | {"v_max": 10_000.5}
        assert_error(c.post("/retrieve-by-descriptors", json={"descriptors": over}), 422, "physical range")
        g = gathers()
        g[0, 0, 0] = 5510.0
        assert c.post("/retrieve", content=npy(g), headers=NPY).status_code == 200
        g[0, 0, 0] = 5511.0
        assert_error(c.post("/retrieve", content=npy(g), headers=NPY), 422, "amplitudes up to 5511")


# -- 7. the smaller ones ---------------------------------------------------------------------------------------

def test_admin_checks_the_token_before_reading_the_body(served: Server) -> None:
    with served.client() as c:
        assert_error(c.post("/admin/rebuild-index", content=b"{not json", headers=JSON), 401, "missing admin token")
        wrong = {"Authorization": "Bearer wrong-token-0123456789"}
        assert_error(c.post("/admin/rebuild-index", content=b"{not json", headers=JSON | wrong), 403,
                     "wrong admin token")
        assert_error(c.post("/admin/rebuild-index", content=b"{not json", headers=JSON | AUTH), 422, "not valid JSON")


def test_a_file_is_not_taken_for_a_folder(served: Server) -> None:
    with served.client() as c:
        for bank in ("bank_a/model1.npy/..", "bank_a/model1.npy/../model1.npy"):
            r = c.post("/admin/rebuild-index", json={"bank": bank}, headers=AUTH)
            assert_error(r, 422, "not a usable path (Not a directory)")


@pytest.mark.parametrize("value, fragment", [
    (b"true", "found true (a boolean)"), (b"null", "found null (a null)"), (b'"1.0"', '(a string)'),
    (b"1" + b"0" * 30, "amplitudes up to 1e+30"), (b"1" + b"0" * 39, "beyond float32's range"),
    (b"1" + b"0" * 5000, "holds NaN or Inf"),
])
def test_json_gathers_values_are_numbers(served: Server, value: bytes, fragment: str) -> None:
    text = json.dumps(as_json(gathers(seed=9))).encode()
    at = text.index(b",") + 1  # the second value of the first trace
    body = b'{"gathers": ' + text[:at] + b" " + value + text[text.index(b",", at):] + b"}"
    with served.client() as c:
        assert_error(c.post("/retrieve", content=body, headers=JSON), 422, fragment)


@pytest.mark.parametrize("header, fragment", [
    (b"{'descr': '<f4', 'fortran_order': False, 'shape': (5, 1000, 70), 'x': print('hi')}", "not a readable .npy"),
    (b"{'descr': '<f4', 'fortran_order': False, 'shape': (" + b"1, " * 1500 + b")}", "1500 dimensions"),
])
def test_malformed_npy_headers_are_not_echoed(served: Server, header: bytes, fragment: str) -> None:
    header = header + b" " * (63 - (len(header) + 10) % 64) + b"\n"
    body = b"\x93NUMPY\x01\x00" + len(header).to_bytes(2, "little") + header + bytes(1000)
    with served.client() as c:
        r = assert_error(c.post("/retrieve", content=body, headers=NPY), 422, fragment)
    assert len(r["detail"]) < 300 and "ast." not in r["detail"] and "print" not in r["detail"], r["detail"]


def test_a_header_section_over_the_limit_in_one_read_gets_431(served: Server) -> None:
    head = (b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 70_000 + b"\r\n\r\n")
    with socket.create_connection(("127.0.0.1", served.port), timeout=30) as s:
        s.sendall(head)  # one write: the server reads it in one or few chunks
        reply = b""
        while chunk := s.recv(65536):
            reply += chunk
    assert reply.startswith(b"HTTP/1.1 431"), reply[:200]
    assert b"exceeds 65536 bytes" in reply


# -- 8. the client ---------------------------------------------------------------------------------------------

def test_client_errors_name_the_url(served: Server) -> None:
    port = free_port()
    with SeisBindClient(f"http://127.0.0.1:{port}", timeout=5) as down:
        with pytest.raises(SeisBindError) as err:
            down.info()
    assert err.value.status == 0 and err.value.url == f"http://127.0.0.1:{port}/v1/info"
    assert f"cannot reach http://127.0.0.1:{port}/v1/info" in str(err.value)
    with SeisBindClient(served.url) as c:
        with pytest.raises(SeisBindError) as err:
            c.retrieve(gathers(), k=10_000)
    assert err.value.status == 422 and err.value.url.startswith(served.url + "/retrieve")
    assert f"HTTP 422 from {served.url}/retrieve" in str(err.value)


@pytest.mark.parametrize("url", ["127.0.0.1:8000", "localhost:8000", "ftp://127.0.0.1", "http://"])
def test_client_refuses_a_bad_url(url: str) -> None:
    with pytest.raises(ValueError, match="bad service URL"):
        SeisBindClient(url)


def test_client_velocity_models_needs_include_models(served: Server) -> None:
    with SeisBindClient(served.url) as c:
        plain = c.retrieve(gathers(), k=2)
        with_models = c.retrieve(gathers(), k=2, include_models=True)
    with pytest.raises(ValueError, match="include_models=True"):
        SeisBindClient.velocity_models(plain)
    models = SeisBindClient.velocity_models(with_models)
    assert models[0].shape == (2, 70, 70)


def test_client_escapes_job_ids(served: Server) -> None:
    with SeisBindClient(served.url, admin_token=TOKEN) as c:
        for job_id in ("x?y=1", "a#b", "%2e%2e", "../../healthz", "../rebuild-index", "a/b"):
            with pytest.raises(SeisBindError) as err:  # unescaped, "../../healthz" got /healthz's 200
                c.job(job_id)
            assert err.value.status == 404, err.value
            if "/" not in job_id:  # the id reached the job endpoint whole ("/" is never a path parameter's)
                assert f"no job {job_id!r}" in err.value.detail, err.value


def test_the_service_survived(served: Server) -> None:
    assert served.proc.poll() is None
    assert "unhandled error" not in served.log_tail(10_000_000)


def test_byte_budget_is_first_come_first_served_and_survives_cancellation() -> None:
    """The budget behind the memory bound: a big request is not overtaken forever by small ones, a cancelled
    waiter gives its place back, and everything taken is released."""
    import asyncio

    from service.api.body_budget import ByteBudget

    async def scenario() -> list[str]:
        budget, order = ByteBudget(10), []
        first = await budget.acquire(6)

        async def take(name: str, n: int, hold: float) -> None:
            got = await budget.acquire(n)
            order.append(name)
            await asyncio.sleep(hold)
            budget.release(got)

        big = asyncio.create_task(take("big", 8, 0.01))
        await asyncio.sleep(0)
        small = asyncio.create_task(take("small", 2, 0.0))  # fits now, but waits behind "big"
        gone = asyncio.create_task(take("cancelled", 1, 0.0))
        await asyncio.sleep(0.01)
        assert order == [] and budget.used == 6
        gone.cancel()
        budget.release(first)
        await asyncio.gather(big, small, return_exceptions=True)
        assert budget.used == 0
        assert await budget.acquire(50) == 10  # more than the capacity: the whole of it
        return order

    assert asyncio.run(scenario()) == ["big", "small"]
