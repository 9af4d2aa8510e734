"""Fuzzing the running service (a real ``seisbind serve`` process on localhost) against its own OpenAPI schema.

* ``test_fuzz_operation``: schemathesis generates requests for every operation of /openapi.json (the admin ones
  with and without the bearer token), schema-valid and schema-violating ones, raw ``.npy`` and JSON bodies, and
  runs its checks on each response: no 5xx, status code, content type, headers and body as documented,
  schema-violating requests rejected with a 4xx (413 counts: a body over the limit is refused), authentication
  enforced. Not run: ``positive_data_acceptance`` (a schema-valid request must succeed): what is valid also
  depends on the running service (k <= the index size and SEISBIND_MAX_K, at most SEISBIND_MAX_GATHERS gathers, a
  bank that exists), which a static schema cannot say. The body media types of /retrieve, /infer-descriptors and
  /refine are fuzzed separately (the schema restricted to one of them), and JSON there only with
  schema-violating cases: a schema-valid JSON body is 350,000 numbers, seconds per case to generate (valid JSON
  gathers are covered by tests/service/test_api.py).
* ``test_coverage_phase_with_the_schemathesis_cli``: schemathesis' deterministic coverage phase, by its CLI.
* ``test_undocumented_methods_get_405``: every method a path does not document.
* ``test_fuzz_npy_bodies``: the fast path, raw ``.npy`` bodies built by hypothesis (valid gathers in any float
  dtype, byte order and memory order; wrong dtypes and shapes; truncated and padded data; NaN/Inf; too many
  gathers; corrupted headers), each checked against the outcome it must have.
* ``test_fuzz_hostile_json_bodies``: JSON bodies built to cost memory (empty lists, flat numbers, deep nesting,
  big fields besides the gathers) and wrong values hidden in valid-looking gathers: each its 422, memory bounded.
* ``test_schema_valid_requests_are_accepted``: schemathesis' positive_data_acceptance (ST202) on the three query
  endpoints: the schema states the ranges the service enforces (the one exception: descriptors contradicting each
  other, a cross-field rule no schema expresses).
* ``test_fuzz_case_count``: at least 1,000 schemathesis cases ran, and the server survived them all with no
  unhandled error in its log.

Reproducible: hypothesis runs derandomized, without an example database.
"""

from __future__ import annotations

import copy
import io
import json
import math
import subprocess
import sys
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest
import requests
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from schemathesis import GenerationMode
from schemathesis.specs.openapi.checks import positive_data_acceptance

from service.plausibility import AMPLITUDE_LIMIT, AMPLITUDE_WARN, WEAK_PEAK
from tests.redis_fixtures import RedisServer
from tests.service_fixtures import NPY, G, Server, serve, small_service_files, stop_server

TOKEN = "fuzz-admin-token-0123456789abcdef"
MAX_BODY = 5 * 1024 * 1024  # room for three float32 gathers (4.2 MB), not for two float64 ones (5.6 MB)
MAX_GATHERS = 2
MAX_K = 16
BANK_SIZE = 24
NPY_MEDIA = "application/x-npy"
JSON_MEDIA = "application/json"
SEGY_MEDIA = "application/x-segy"
GATHER_PATHS = {"/retrieve", "/infer-descriptors", "/refine"}

# (method, path, body media type fuzzed (None: the operation's only one, if any), with the admin token)
#   -> hypothesis examples. Hypothesis stops early on operations with few distinct inputs (the GETs without
# parameters); the total is checked by test_fuzz_case_count.
FuzzKey = tuple[str, str, str | None, bool]
FUZZ_PLAN: dict[FuzzKey, int] = {
    ("POST", "/retrieve", NPY_MEDIA, False): 200,
    ("POST", "/retrieve", JSON_MEDIA, False): 20,
    ("POST", "/infer-descriptors", NPY_MEDIA, False): 160,
    ("POST", "/infer-descriptors", JSON_MEDIA, False): 20,
    ("POST", "/retrieve", SEGY_MEDIA, False): 40,
    ("POST", "/infer-descriptors", SEGY_MEDIA, False): 40,
    ("POST", "/refine", NPY_MEDIA, False): 80,
    ("POST", "/refine", JSON_MEDIA, False): 20,
    ("POST", "/refine", SEGY_MEDIA, False): 20,
    ("GET", "/refine/{job_id}", None, False): 30,
    ("DELETE", "/refine/{job_id}", None, False): 30,
    ("POST", "/retrieve-by-descriptors", None, False): 250,
    ("POST", "/admin/rebuild-index", None, False): 80,
    ("POST", "/admin/rebuild-index", None, True): 220,
    ("GET", "/admin/jobs/{job_id}", None, False): 60,
    ("GET", "/admin/jobs/{job_id}", None, True): 120,
    ("GET", "/healthz", None, False): 10,
    ("GET", "/readyz", None, False): 10,
    ("GET", "/metrics", None, False): 10,
    ("GET", "/v1/info", None, False): 10,
}
MIN_CASES = 1000
CASES: Counter[FuzzKey] = Counter()
NPY_OUTCOMES: Counter[str] = Counter()
COVERAGE_CASES: Counter[str] = Counter()
NEGATIVE_REJECTED = ["400", "401", "403", "404", "405", "406", "409", "413", "415", "422", "428", "429"]
"""The statuses that reject a schema-violating request: schemathesis' list, with 413 (over the body limit)."""
CONFIG = schemathesis.Config.from_dict({"checks": {"negative_data_rejection": {
    "expected-statuses": NEGATIVE_REJECTED}}})

pytestmark = pytest.mark.timeout(600)

# Raw .npy bodies are bytes, like application/octet-stream.
schemathesis.serializer.alias(NPY_MEDIA, "application/octet-stream")
schemathesis.serializer.alias(SEGY_MEDIA, "application/octet-stream")


# -- the server ------------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """``seisbind serve``: an untrained bundle, an index of a 24-model bank, admin token, small limits, a refinement
    queue on a real redis-server (no worker: accepted jobs wait; room for every one the fuzzing may queue)."""
    root = tmp_path_factory.mktemp("fuzz")
    bundle, banks, index = small_service_files(root, BANK_SIZE)
    redis_server = RedisServer(root / "redis")
    env = {"SEISBIND_ADMIN_TOKEN": TOKEN, "SEISBIND_BANK_ROOT": str(banks), "SEISBIND_REDIS_URL": redis_server.url,
           "SEISBIND_REFINE_MAX_QUEUED": "100000",
           "SEISBIND_MAX_BODY_BYTES": str(MAX_BODY), "SEISBIND_MAX_GATHERS": str(MAX_GATHERS),
           "SEISBIND_MAX_K": str(MAX_K), "SEISBIND_ORT_INTRA_OP_THREADS": "1", "SEISBIND_ENCODE_WORKERS": "1",
           "SEISBIND_REBUILD_INTRA_OP_THREADS": "1", "SEISBIND_LOG_LEVEL": "warning"}
    server = serve(bundle, index, root / "server.log", env)
    yield server
    stop_server(server)
    redis_server.stop()


@pytest.fixture(scope="module")
def spec(served: Server) -> dict:
    """The service's /openapi.json."""
    return httpx.get(served.url + "/openapi.json", timeout=30).json()


def _only_media(spec: dict, media: str) -> dict:
    """``spec`` with the gathers operations' request bodies restricted to one media type."""
    out = copy.deepcopy(spec)
    for path in GATHER_PATHS:
        content = out["paths"][path]["post"]["requestBody"]["content"]
        out["paths"][path]["post"]["requestBody"]["content"] = {media: content[media]}
    return out


@pytest.fixture(scope="module")
def api_schema(spec: dict) -> schemathesis.BaseSchema:
    return schemathesis.openapi.from_dict(spec, config=CONFIG)


@pytest.fixture(scope="module")
def media_schemas(spec: dict) -> dict[str, schemathesis.BaseSchema]:
    return {media: schemathesis.openapi.from_dict(_only_media(spec, media), config=CONFIG)
            for media in (NPY_MEDIA, JSON_MEDIA, SEGY_MEDIA)}


@pytest.fixture(scope="module")
def session() -> Iterator[requests.Session]:
    with requests.Session() as s:
        yield s


# -- schemathesis ----------------------------------------------------------------------------------------------

def test_schema_lists_every_operation(api_schema: schemathesis.BaseSchema) -> None:
    """The fuzz plan covers every operation of the schema, and each gathers operation takes .npy, JSON and SEG-Y."""
    ops = {(op.method.upper(), op.path): op for op in (r.ok() for r in api_schema.get_all_operations())}
    assert set(ops) == {(m, p) for m, p, _, _ in FUZZ_PLAN}
    for path in GATHER_PATHS:
        assert set(ops[("POST", path)].get_request_payload_content_types()) == {JSON_MEDIA, NPY_MEDIA, SEGY_MEDIA}


def _strategy(op: schemathesis.APIOperation) -> st.SearchStrategy[schemathesis.Case]:
    """Schema-valid and schema-violating cases (see the module docstring for the one combination left out)."""
    modes = [GenerationMode.POSITIVE]
    if list(op.iter_parameters()) or op.get_request_payload_content_types():
        modes.append(GenerationMode.NEGATIVE)  # else nothing to violate
    if op.path in GATHER_PATHS and op.get_request_payload_content_types() == [JSON_MEDIA]:
        modes.remove(GenerationMode.POSITIVE)  # 350,000 numbers per case
    return st.one_of([op.as_strategy(generation_mode=mode) for mode in modes])


def _label(key: FuzzKey) -> str:
    method, path, media, token = key
    return f"{method} {path}{f' {media}' if media else ''}{' +token' if token else ''}"


@pytest.mark.parametrize("key", list(FUZZ_PLAN), ids=[_label(k) for k in FUZZ_PLAN])
def test_fuzz_operation(api_schema: schemathesis.BaseSchema, media_schemas: dict[str, schemathesis.BaseSchema],
                        session: requests.Session, served: Server, key: FuzzKey) -> None:
    method, path, media, with_token = key
    op = (media_schemas[media] if media else api_schema)[path][method]
    headers = {"Authorization": f"Bearer {TOKEN}"} if with_token else None

    @settings(max_examples=FUZZ_PLAN[key], derandomize=True, database=None, deadline=None,
              suppress_health_check=list(HealthCheck))
    @given(case=_strategy(op))
    def fuzz(case: schemathesis.Case) -> None:
        CASES[key] += 1
        case.call_and_validate(base_url=served.url, session=session, headers=headers,
                               excluded_checks=[positive_data_acceptance], timeout=60)

    fuzz()
    assert served.proc.poll() is None, served.log_tail()


def test_coverage_phase_with_the_schemathesis_cli(spec: dict, served: Server, tmp_path: Path) -> None:
    """schemathesis' deterministic coverage phase (boundary values, each constraint violated in turn, missing and
    wrong headers, methods not documented) and the schema's examples, through its command line: the coverage
    phase has no Python API. .npy bodies only (the JSON gathers' boundary values are 350,000 numbers each)."""
    (tmp_path / "openapi.json").write_text(json.dumps(_only_media(spec, NPY_MEDIA)))
    statuses = ", ".join(f'"{s}"' for s in NEGATIVE_REJECTED)
    (tmp_path / "schemathesis.toml").write_text(f"[checks.negative_data_rejection]\nexpected-statuses = [{statuses}]\n")
    report = tmp_path / "report.json"
    cmd = [sys.executable, "-m", "schemathesis.cli", "--config-file", str(tmp_path / "schemathesis.toml"), "--no-color",
           "run", str(tmp_path / "openapi.json"), "--url", served.url, "--phases", "examples,coverage",
           "--checks", "all", "--exclude-checks", "positive_data_acceptance", "-H", f"Authorization: Bearer {TOKEN}",
           "--seed", "1", "--workers", "1", "--report", "json", "--report-json-path", str(report)]
    run = subprocess.run(cmd, capture_output=True, text=True, timeout=300, cwd=tmp_path)  # its cache goes there
    assert run.returncode == 0, run.stdout[-8000:] + run.stderr[-2000:]
    result = json.loads(report.read_text())
    assert result["operations"]["tested"] == len({(m, p) for m, p, _, _ in FUZZ_PLAN}) and not result["failures"]
    COVERAGE_CASES["cli"] = result["test_cases"]["generated"]
    assert COVERAGE_CASES["cli"] > 100


def test_undocumented_methods_get_405(spec: dict, served: Server) -> None:
    """Every method a path does not document: 405, the Allow header naming the documented ones, a JSON error."""
    with served.client() as c:
        for path, item in spec["paths"].items():
            url = path.replace("{job_id}", "x")
            documented = {m.upper() for m in item}
            for method in {"GET", "POST", "PUT", "PATCH", "DELETE"} - documented:
                r = c.request(method, url)
                assert r.status_code == 405, (method, path, r.text)
                assert documented <= set(r.headers["allow"].replace(" ", "").split(","))
                assert r.json()["status"] == 405 and r.json()["request_id"]


# -- raw .npy bodies -------------------------------------------------------------------------------------------

def _npy_header(dtype: str, fortran: bool, shape: tuple[int, ...]) -> bytes:
    """A version 1.0 .npy header, as numpy.save writes it."""
    text = f"{{'descr': '{dtype}', 'fortran_order': {fortran}, 'shape': {shape}, }}"
    text += " " * (63 - (len(text) + 10) % 64) + "\n"
    return b"\x93NUMPY\x01\x00" + len(text).to_bytes(2, "little") + text.encode("latin-1")


FLOAT_DTYPES = ["<f4", ">f4", "<f8", ">f8"]
OTHER_DTYPES = ["<f2", "<i2", "<i4", "|u1", "|b1", "<c8", "<c16", "|O", "<U4", "<M8[s]", "|V4"]
BAD_SHAPES = [(), (70,), (1000, 70), (5, 1000, 69), (5, 70, 1000), (2, 1000, 70), (0, *G), (1, 5, 1000, 70, 1)]
FAULTS = ["none", "none", "none", "dtype", "shape", "truncated", "padded", "nan", "inf", "too many", "no signal",
          "loud", "unknown query"]
EXPECTED = {"dtype": "dtype", "shape": "shape", "truncated": "truncated or padded", "padded": "truncated or padded",
            "too many": f"at most {MAX_GATHERS} are accepted", "no signal": "carries no signal",
            "loud": "has amplitudes up to", "unknown query": "unknown query parameter"}
SCALES = [1e-3, 1.0, 30.0, 1e3]
"""Amplitude scales of the random gathers: weak (a warning), OpenFWI-like, loud (a warning), some beyond the limit."""
UNKNOWN_QUERY = [{"K": "1"}, {"include_model": "true"}, {"kk": "2", "k": "3"}, {"weighting": "mean"}]


@st.composite
def npy_bodies(draw: st.DrawFn) -> tuple[str, bytes, int, str | None, int, dict[str, str], list[bool]]:
    """(fault, body, expected status, expected message fragment, gathers in it, extra query parameters, whether
    each gather gets a warning): a .npy body with at most one fault; 413 whenever the body is over the limit (two
    float64 gathers are). Gathers of random amplitudes at several scales: refused beyond AMPLITUDE_LIMIT,
    answered with a warning past AMPLITUDE_WARN or under WEAK_PEAK (service.plausibility)."""
    fault = draw(st.sampled_from(FAULTS))
    dtype = draw(st.sampled_from(OTHER_DTYPES if fault == "dtype" else FLOAT_DTYPES))
    fortran = draw(st.booleans())
    batch = MAX_GATHERS + 1 if fault == "too many" else draw(st.sampled_from([None, 1, MAX_GATHERS]))
    shape = draw(st.sampled_from(BAD_SHAPES)) if fault == "shape" else G if batch is None else (batch, *G)
    n = math.prod(shape)
    fragment = EXPECTED.get(fault)
    query = draw(st.sampled_from(UNKNOWN_QUERY)) if fault == "unknown query" else {}
    warned: list[bool] = []
    if dtype in FLOAT_DTYPES:
        rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
        values = rng.standard_normal(n) * (1e6 if fault == "loud" else draw(st.sampled_from(SCALES)))
        if fault == "no signal":
            values[:] = draw(st.sampled_from([0.0, -0.0, 1.5]))
        if fault in ("nan", "inf"):
            i = draw(st.integers(0, n - 1))
            values[i] = np.nan if fault == "nan" else draw(st.sampled_from([np.inf, -np.inf]
                                                                           + ([1e39] if "f8" in dtype else [])))
            # the data is in the header's memory order: in Fortran order the gather index varies fastest
            gather = i % shape[0] if fortran and len(shape) == 4 else i // math.prod(G)
            fragment = f"gather {gather} holds NaN or Inf"
        data = values.astype(dtype).tobytes()
        if fault in ("none", "loud", "unknown query") and len(shape) in (3, 4):
            # the amplitudes as the service sees them (float32), gather by gather, in the header's memory order
            arr = values.astype(dtype).astype(np.float32).reshape(shape, order="F" if fortran else "C")
            peaks = np.abs(arr.reshape(-1, *G)).max(axis=(1, 2, 3))
            if fault != "unknown query" and (peaks > AMPLITUDE_LIMIT).any():
                fault, fragment = "loud", EXPECTED["loud"]
            warned = [bool(p > AMPLITUDE_WARN or p < WEAK_PEAK) for p in peaks]
    else:
        data = bytes(n * (8 if dtype == "|O" else np.dtype(dtype).itemsize))
    cut = draw(st.sampled_from([1, 7, 1000])) if fault == "truncated" else 0
    pad = draw(st.sampled_from([1, 64])) if fault == "padded" else 0
    body = _npy_header(dtype, fortran, shape) + data[:len(data) - cut] + b"\0" * pad
    gathers = 1 if len(shape) == 3 else shape[0] if shape else 0
    if len(body) > MAX_BODY:
        return "over the limit", body, 413, "exceeds the limit", gathers, {}, []
    return fault, body, 200 if fragment is None else 422, fragment, gathers, query, warned


GATHER_F4 = (np.random.default_rng(1).standard_normal(G) * 5).astype("<f4").tobytes()
"""A plausible gather's data (a constant one is refused for carrying no signal)."""


@st.composite
def corrupted_npy_bodies(draw: st.DrawFn) -> bytes:
    """A valid one-gather .npy with random bytes of its header overwritten (or the header cut short)."""
    body = bytearray(_npy_header("<f4", False, G) + GATHER_F4)
    if draw(st.booleans()):
        return bytes(body[:draw(st.integers(0, 128))])
    for _ in range(draw(st.integers(1, 4))):
        body[draw(st.integers(0, 127))] = draw(st.integers(0, 255))
    return bytes(body)


def _npy_case(client: httpx.Client, body: bytes, k: int, query: dict[str, str] | None = None) -> httpx.Response:
    r = client.post("/retrieve", content=body, headers=NPY, params={"k": k, **(query or {})})
    assert r.status_code < 500, r.text
    assert r.headers["content-type"] == "application/json"
    return r


@settings(max_examples=160, derandomize=True, database=None, deadline=None,
          suppress_health_check=list(HealthCheck))
@given(case=npy_bodies(), k=st.integers(1, MAX_K))
def _fuzz_npy(client: httpx.Client, case: tuple, k: int) -> None:
    fault, body, status, fragment, gathers, query, warned = case
    r = _npy_case(client, body, k, query)
    NPY_OUTCOMES[fault] += 1
    assert r.status_code == status, (fault, status, fragment, r.text)
    if fragment is None:
        results = r.json()["results"]
        assert len(results) == gathers and all(len(x["neighbors"]) == k for x in results)
        assert [bool(x.get("warnings")) for x in results] == warned, (warned, [x.get("warnings") for x in results])
    else:
        assert fragment.lower() in r.json()["detail"].lower(), (fragment, r.text)


@settings(max_examples=60, derandomize=True, database=None, deadline=None,
          suppress_health_check=list(HealthCheck))
@given(body=corrupted_npy_bodies())
def _fuzz_corrupted_npy(client: httpx.Client, body: bytes) -> None:
    """Outcome unknown in advance: a 4xx naming the problem, or 200 only for what numpy itself reads as a valid
    gather (a corrupted header can still be a valid one)."""
    r = _npy_case(client, body, 3)
    if r.status_code == 200:
        arr = np.load(io.BytesIO(body), allow_pickle=False)
        assert arr.shape == G and arr.dtype.kind == "f"
    else:
        assert r.status_code == 422 and r.json()["detail"], r.text


def test_fuzz_npy_bodies(served: Server) -> None:
    with served.client() as client:
        _fuzz_npy(client)
        _fuzz_corrupted_npy(client)
    print(f"\n.npy cases: {sum(NPY_OUTCOMES.values())} + corrupted headers", dict(NPY_OUTCOMES))
    assert set(NPY_OUTCOMES) == {*FAULTS, "over the limit"}  # every kind of body was sent
    assert served.proc.poll() is None, served.log_tail()


# -- hostile JSON bodies ---------------------------------------------------------------------------------------

JSON_OUTCOMES: Counter[str] = Counter()
_ROW = "[" + ", ".join(["0.5", "-1.25"] * 35) + "]"
_GATHER = "[" + ", ".join(["[" + ", ".join([_ROW] * 1000) + "]"] * 5) + "]"


@st.composite
def hostile_json_bodies(draw: st.DrawFn) -> tuple[str, bytes, int, str]:
    """(kind, body, expected status, message fragment): JSON bodies that cost json.loads the most or hide a wrong
    value in a valid-looking gather, each of a size drawn up to the body limit."""
    kind = draw(st.sampled_from(["empty lists", "flat numbers", "deep", "value in a gather", "ragged batch",
                                 "big integer", "fields besides", "duplicate gathers", "wrapped"]))
    size = draw(st.integers(1_000, MAX_BODY - 100))
    if kind == "empty lists":
        n = size // 3
        return kind, b'{"gathers": [' + b",".join([b"[]"] * n) + b"]}", 422, \
            "holds" if n + 1 > MAX_GATHERS * 5006 + 64 else "shape"
    if kind == "flat numbers":
        item = draw(st.sampled_from([b"0.0", b"1", b"-2.5e3"]))
        n = size // (len(item) + 1)
        return kind, b'{"gathers": [' + b",".join([item] * n) + b"]}", 422, "values" if n - 1 > 355_006 else "shape"
    if kind == "deep":
        depth = draw(st.integers(5, 60_000))
        return kind, b'{"gathers": ' + b"[" * depth + b"1" + b"]" * depth + b"}", 422, "deep"
    if kind == "value in a gather":
        value, fragment = draw(st.sampled_from([("true", "(a boolean)"), ("false", "(a boolean)"), ("null", "(a null)"),
                                                ('"0.5"', "(a string)"), ("{}", "(an object)"),
                                                ("1" + "0" * 45, "beyond float32"), ("NaN", "NaN or Inf"),
                                                ("-Infinity", "NaN or Inf"), ("1e9999", "NaN or Inf")]))
        at = draw(st.integers(0, 69))
        row = "[" + ", ".join(["0.5"] * at + [value] + ["-1.25"] * (69 - at)) + "]"
        gather = _GATHER.replace(_ROW, row, 1)
        return kind, ('{"gathers": ' + gather + "}").encode(), 422, fragment
    if kind == "ragged batch":
        return kind, ('{"gathers": [' + _GATHER + ", [" + _ROW + "]]}").encode(), 422, "shape"
    if kind == "big integer":
        return kind, ('{"gathers": ' + _GATHER.replace("0.5", "1" + "0" * 30, 1) + "}").encode(), 422, \
            "amplitudes up to 1e+30"
    if kind == "fields besides":
        n = draw(st.integers(140_000, 600_000))
        return kind, ('{"gathers": ' + _GATHER + ', "k": [' + ",".join(["1"] * (n // 2)) + "]}").encode(), 422, \
            'fields besides "gathers"'
    if kind == "duplicate gathers":
        return kind, ('{"gathers": ' + _GATHER + ', "gathers": ' + _GATHER + "}").encode(), 422, "more than once"
    return kind, ('{"request": {"gathers": ' + _GATHER + "}}").encode(), 422, 'must be an object with "gathers"'


@settings(max_examples=60, derandomize=True, database=None, deadline=None, suppress_health_check=list(HealthCheck))
@given(case=hostile_json_bodies())
def _fuzz_hostile_json(client: httpx.Client, case: tuple[str, bytes, int, str]) -> None:
    kind, body, status, fragment = case
    r = client.post("/retrieve", content=body, headers={"Content-Type": JSON_MEDIA})
    JSON_OUTCOMES[kind] += 1
    assert r.status_code == status, (kind, r.text[:500])
    assert fragment.lower() in r.json()["detail"].lower(), (kind, fragment, r.json()["detail"][:500])


def test_fuzz_hostile_json_bodies(served: Server) -> None:
    """JSON bodies built to cost memory, and wrong values hidden in valid-looking gathers: each gets its 422, and
    the server's peak RSS stays under 2x its RSS before them plus 4x the body limit."""
    status = Path(f"/proc/{served.proc.pid}/status")
    def peak() -> int:
        return int(next(x for x in status.read_text().splitlines() if x.startswith("VmHWM")).split()[1])

    Path(f"/proc/{served.proc.pid}/clear_refs").write_text("5")  # VmHWM := VmRSS
    before = peak()  # the server has served requests before: this is its RSS between requests
    with served.client() as client:
        _fuzz_hostile_json(client)
    top = peak()
    print(f"\nhostile JSON bodies: {dict(JSON_OUTCOMES)}; RSS {before / 1024:.0f} MiB before, peak {top / 1024:.0f}")
    assert len(JSON_OUTCOMES) == 9
    assert top < 2 * before + 4 * MAX_BODY / 1024
    assert served.proc.poll() is None, served.log_tail()


# -- schema-valid requests are accepted (no ST202 from a range the schema does not state) --------------------

QUERY_ENDPOINTS = [("/retrieve", NPY_MEDIA), ("/infer-descriptors", NPY_MEDIA), ("/retrieve-by-descriptors", None)]
CROSS_FIELD = "descriptors are not those of any velocity model"
"""The one refusal of a schema-valid request the schema cannot express: descriptors that contradict each other
(v_min > v_max ...); refusals of a single value out of range would mean the schema misstates a range."""
POSITIVE: Counter[str] = Counter()


@pytest.mark.parametrize("path, media", QUERY_ENDPOINTS, ids=[p for p, _ in QUERY_ENDPOINTS])
def test_schema_valid_requests_are_accepted(media_schemas: dict[str, schemathesis.BaseSchema], api_schema:
                                            schemathesis.BaseSchema, session: requests.Session, served: Server,
                                            path: str, media: str | None) -> None:
    """schemathesis' positive_data_acceptance (ST202) on the three query endpoints: every schema-valid request is
    answered 200, except descriptors that contradict each other (a cross-field rule). For the .npy endpoints the
    body is a valid gather (random bytes are schema-valid binary but not .npy, which no schema can say): what is
    fuzzed there are the query parameters, k up to the SEISBIND_MAX_K the schema states."""
    op = (media_schemas[media] if media else api_schema)[path]["POST"]
    gather = _npy_header("<f4", False, G) + (np.random.default_rng(0).standard_normal(G) * 5).astype("<f4").tobytes()

    @settings(max_examples=120 if media is None else 40, derandomize=True, database=None, deadline=None,
              suppress_health_check=list(HealthCheck))
    @given(case=op.as_strategy(generation_mode=GenerationMode.POSITIVE))
    def positive(case: schemathesis.Case) -> None:
        if media is not None:
            case.body = gather
        response = case.call(base_url=served.url, session=session, timeout=60)
        if response.status_code == 422 and media is None:
            detail = response.json()["detail"]
            assert detail.startswith(CROSS_FIELD) and "physical range" not in detail, detail
            POSITIVE[f"{path} cross-field 422"] += 1
            return
        case.validate_response(response, checks=[positive_data_acceptance])
        POSITIVE[f"{path} 200"] += 1

    positive()
    print(f"\npositive cases: {dict(POSITIVE)}")
    assert POSITIVE[f"{path} 200"] > 0


# -- totals and survival ---------------------------------------------------------------------------------------

def test_fuzz_case_count(served: Server) -> None:
    """Runs last: enough cases, the service still ready and serving, and no unhandled error logged."""
    if set(CASES) != set(FUZZ_PLAN):
        pytest.skip("run the whole module to count the fuzz cases")
    total = sum(CASES.values())
    print(f"\nschemathesis cases: {total} generated + {COVERAGE_CASES['cli']} coverage phase",
          {_label(k): n for k, n in CASES.items()})
    assert total >= MIN_CASES, dict(CASES)
    with served.client() as c:
        assert c.get("/readyz").status_code == 200
        r = c.post("/retrieve", content=_npy_header("<f4", False, G) + GATHER_F4,
                   headers=NPY, params={"k": 3})
        assert r.status_code == 200 and len(r.json()["results"][0]["neighbors"]) == 3
    log = served.log_tail(10_000_000)
    assert "unhandled error" not in log and "Traceback" not in log, log[-5000:]
