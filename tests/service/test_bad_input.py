"""Bad input, case by case, against a real ``seisbind serve`` process: each gets its documented 4xx
(docs/api.md) with a JSON error body whose message says what is wrong.

Already covered in tests/service/test_api.py, and not repeated here: shape (5, 1000, 69), int16 and float16 .npy,
NaN and Inf in every gather, k = 0, k over SEISBIND_MAX_K when the index is larger, k not a number, too many
gathers, an empty .npy body, a body that is not .npy (test_bad_npy_bodies_get_422); a JSON gathers shape, JSON
k = 0, no "gathers", NaN in JSON gathers, a missing descriptor, descriptors not an object
(test_bad_json_bodies_get_422); float64 .npy and JSON accepted (test_retrieve_json_float64_and_npy_agree);
Content-Types (test_unsupported_content_type_gets_415); bodies over the limit, sized and chunked
(test_body_over_the_limit_gets_413); admin tokens and banks outside the root (test_admin_requires_the_bearer_token,
test_rebuild_refuses_banks_outside_the_root).

Issue 19 added the physically implausible (no signal, amplitudes beyond the limit, descriptors no model has),
JSON bodies that would cost json.loads gigabytes, values that are not numbers, unknown or repeated query
parameters, headers that used to be echoed, and a file taken for a folder (docs/api.md lists the rules).

Here the index (12 entries) is smaller than SEISBIND_MAX_K (50), so k is bounded by the index size.
"""

from __future__ import annotations

import gzip
import http.client
import io
import json
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from seisbind.descriptors import DESCRIPTOR_NAMES

from tests.service_fixtures import (
    NPY,
    G,
    Server,
    as_json,
    assert_error,
    gathers,
    npy,
    serve,
    small_service_files,
    stop_server,
)

TOKEN = "catalogue-admin-token-0123456789"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
JSON = {"Content-Type": "application/json"}
MAX_BODY = 8 * 1024 * 1024
MAX_GATHERS = 4
MAX_K = 50
BANK_SIZE = 12
DESC = dict(zip(DESCRIPTOR_NAMES, [3000.0, 500.0, 1500.0, 4500.0, 1600.0, 4400.0, 3.0, 0.0]))

pytestmark = pytest.mark.timeout(300)


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """``seisbind serve``: an untrained bundle, an index of 12 models, admin token, SEISBIND_MAX_K above 12."""
    root = tmp_path_factory.mktemp("catalogue")
    bundle, banks, index = small_service_files(root, BANK_SIZE)
    env = {"SEISBIND_ADMIN_TOKEN": TOKEN, "SEISBIND_BANK_ROOT": str(banks),
           "SEISBIND_MAX_BODY_BYTES": str(MAX_BODY), "SEISBIND_MAX_GATHERS": str(MAX_GATHERS),
           "SEISBIND_MAX_K": str(MAX_K), "SEISBIND_ORT_INTRA_OP_THREADS": "1", "SEISBIND_ENCODE_WORKERS": "1"}
    server = serve(bundle, index, root / "server.log", env)
    yield server
    stop_server(server)


# -- the catalogue: (id, path, request keywords, status, message fragment) -------------------------------------

def _header_only(descr: str, shape: tuple[int, ...]) -> bytes:
    """A .npy header (numpy.save's layout) without any data."""
    buf = io.BytesIO()
    np.lib.format.write_array_header_1_0(buf, {"descr": descr, "fortran_order": False, "shape": shape})
    return buf.getvalue()


ONE = npy(gathers())
NAN_IN_SECOND = gathers(2)
NAN_IN_SECOND[1, 4, 999, 69] = -np.inf
TOO_BIG_FOR_F32 = gathers().astype(np.float64)
TOO_BIG_FOR_F32[2, 10, 10] = 1e39
GATHER_TEXT = json.dumps(as_json(gathers()))
WITH_INFINITY = as_json(gathers())
WITH_INFINITY[3][500][7] = float("inf")  # json.dumps writes the non-standard Infinity, which json.loads reads

CONSTANT_SECOND = gathers(2)
CONSTANT_SECOND[1] = -3.0


def _header_text(text: bytes) -> bytes:
    """A version 1.0 .npy header around ``text`` (padded as numpy.save pads)."""
    text = text + b" " * (63 - (len(text) + 10) % 64) + b"\n"
    return b"\x93NUMPY\x01\x00" + len(text).to_bytes(2, "little") + text


NPY_CASES: list[tuple[str, bytes, Any, str]] = [
    # truncated
    ("truncated data", ONE[:-1000], {}, "truncated or padded body"),
    ("padded data", ONE + b"\0" * 8, {}, "truncated or padded body"),
    ("truncated header", ONE[:40], {}, "not a readable .npy file"),
    ("magic only", ONE[:6], {}, "not a readable .npy file"),
    ("header only", _header_only("<f4", G), {}, "truncated or padded body"),
    ("unbalanced header", b"\x93NUMPY\x01\x00\x40\x00" + b"(" * 63 + b"\n", {}, "not a readable .npy file"),
    ("bool in header shape", _header_only("<f4", (True, 5, 1000, 70)) + ONE[128:], {}, "invalid shape"),
    ("format version 3", b"\x93NUMPY\x03\x00" + ONE[8:], {}, "version 3.0 is not supported"),
    # dtypes
    ("complex64", npy(np.zeros(G, np.complex64)), {}, "dtype complex64"),
    ("complex128", npy(np.zeros(G, np.complex128)), {}, "dtype complex128"),
    ("bool", npy(np.zeros(G, bool)), {}, "dtype bool"),
    ("uint8", npy(np.zeros(G, np.uint8)), {}, "dtype uint8"),
    ("datetime64", npy(np.zeros(G, "datetime64[s]")), {}, "dtype datetime64"),
    ("unicode", npy(np.zeros(G, "<U1")), {}, "dtype <U1"),
    ("structured", npy(np.zeros(G, [("a", "<f4")])), {}, "dtype"),
    ("longdouble", _header_only(np.dtype(np.longdouble).str, G), {}, "send float32"),
    ("object header", _header_only("|O", G), {}, "dtype object"),
    # rank and shape
    ("scalar", npy(np.float32(1.0)), {}, "shape ()"),
    ("1-D", npy(np.zeros(70, np.float32)), {}, "shape (70,)"),
    ("2-D", npy(np.zeros((1000, 70), np.float32)), {}, "shape (1000, 70)"),
    ("5-D", npy(np.zeros((1, *G, 1), np.float32)), {}, "shape (1, 5, 1000, 70, 1)"),
    ("transposed", npy(np.zeros((5, 70, 1000), np.float32)), {}, "shape (5, 70, 1000)"),
    ("six shots", npy(np.zeros((6, 1000, 70), np.float32)), {}, "shape (6, 1000, 70)"),
    ("empty batch", npy(np.zeros((0, *G), np.float32)), {}, "empty batch"),
    # values
    ("-Inf in the second gather", npy(NAN_IN_SECOND), {}, "gather 1 holds NaN or Inf"),
    ("float64 beyond float32", npy(TOO_BIG_FOR_F32), {}, "beyond float32's range"),
    # k
    ("k negative", ONE, {"k": -1}, "k=-1 is out of range"),
    ("k above the index size", ONE, {"k": BANK_SIZE + 1}, f"the index holds {BANK_SIZE} entries"),
    ("k above the limit", ONE, {"k": MAX_K + 1}, f"service limit {MAX_K}"),
    ("k huge", ONE, {"k": 10**30}, f"k={10**30} is out of range"),
    # physically implausible (issue 19; docs/api.md)
    ("all zero", npy(np.zeros(G, np.float32)), {}, "gather 0 carries no signal (every value is 0)"),
    ("constant second gather", npy(CONSTANT_SECOND), {}, "gather 1 carries no signal (every value is -3)"),
    ("amplitudes x 1e6", npy(gathers() * 1e6), {}, "gather 0 has amplitudes up to"),
    ("amplitudes x -1e4 float64", npy(gathers().astype(np.float64) * -1e4), {}, "over 5510"),
    # query parameters
    ("unknown query parameters", ONE, {"K": 1, "include_model": "true"}, "unknown query parameters 'K'"),
    ("a query parameter twice", ONE, [("k", 2), ("k", 3)], "'k' given more than once"),
    # headers are never echoed
    ("header with a call", _header_text(b"{'descr': '<f4', 'fortran_order': False, 'shape': (5, 1000, 70), "
                                        b"'x': __import__('os')}") + ONE[128:], {}, "not the dictionary numpy.save"),
    ("header of 1500 dimensions", _header_only("<f4", (1,) * 1500), {}, "1500 dimensions"),
]


@pytest.mark.parametrize("path", ["/retrieve", "/infer-descriptors"])
@pytest.mark.parametrize("case", NPY_CASES, ids=[c[0] for c in NPY_CASES])
def test_bad_npy_body(served: Server, path: str, case: tuple) -> None:
    _, body, params, fragment = case
    with served.client() as c:
        assert_error(c.post(path, content=body, params=params, headers=NPY), 422, fragment)


def _first_value(value: str) -> bytes:
    """A one-gather JSON body with ``value`` written in place of its first number."""
    return ('{"gathers": [[[' + value + GATHER_TEXT[GATHER_TEXT.index(","):] + "}").encode()


JSON_CASES: list[tuple[str, str, bytes, str]] = [
    # malformed JSON, on every JSON endpoint
    ("/retrieve", "cut short", b'{"gathers": [[[1.0, 2', "not valid JSON"),
    ("/retrieve-by-descriptors", "cut short", b'{"descriptors": {"v_mean": ', "not valid JSON"),
    ("/admin/rebuild-index", "cut short", b'{"bank": "bank_a"', "not valid JSON"),
    ("/retrieve", "not UTF-8", b'{"gathers": "\x80\x81"}', "not UTF-8"),
    ("/retrieve-by-descriptors", "not UTF-8", b'{"descriptors": "\x80\x81"}', "not UTF-8"),
    ("/admin/rebuild-index", "not UTF-8", b'{"bank": "\xff"}', "not UTF-8"),
    ("/retrieve", "nested too deeply", b"[" * 100_000, "nested too deeply"),
    ("/retrieve-by-descriptors", "nested too deeply", b"[" * 60_000, "nested too deeply"),  # under its 64 KiB limit
    ("/retrieve", "single quotes", b"{'gathers': []}", "not valid JSON"),
    # the wrong JSON
    ("/retrieve", "empty body", b"", "empty request body"),
    ("/retrieve-by-descriptors", "empty body", b"", "empty request body"),
    ("/admin/rebuild-index", "empty body", b"", "empty request body"),
    ("/retrieve", "a list", b"[1, 2]", 'must be an object with "gathers"'),
    ("/retrieve-by-descriptors", "null", b"null", "valid dictionary"),
    ("/retrieve", "unknown field", b'{"gathers": [], "kk": 3}', "kk: Extra inputs are not permitted"),
    ("/retrieve", "gathers a number", b'{"gathers": 5}', "must be nested lists of numbers, got int"),
    ("/retrieve", "gathers strings", b'{"gathers": [["a", "b"]]}', "must hold only numbers"),
    ("/retrieve", "gathers nulls", b'{"gathers": [[null]]}', "must hold only numbers"),
    ("/retrieve", "gathers booleans", b'{"gathers": [[true, false]]}', "must hold only numbers"),
    ("/retrieve", "gathers ragged", b'{"gathers": [[1.0, 2.0], [3.0]]}', "not a regular nested list"),
    ("/retrieve", "Infinity", json.dumps({"gathers": WITH_INFINITY}).encode(), "gather 0 holds NaN or Inf"),
    ("/retrieve", "include_models a string", ('{"gathers": ' + GATHER_TEXT + ', "include_models": "yes"}').encode(),
     "include_models: Input should be a valid boolean"),
    # k
    ("/retrieve", "k above the index size", ('{"gathers": ' + GATHER_TEXT + ', "k": 13}').encode(),
     f"need 1 <= k <= {BANK_SIZE}"),
    ("/retrieve-by-descriptors", "k negative", json.dumps({"descriptors": DESC, "k": -2}).encode(),
     "k=-2 is out of range"),
    ("/retrieve-by-descriptors", "k above the index size", json.dumps({"descriptors": DESC, "k": 13}).encode(),
     f"the index holds {BANK_SIZE} entries"),
    ("/retrieve-by-descriptors", "k above the limit", json.dumps({"descriptors": DESC, "k": 51}).encode(),
     f"service limit {MAX_K}"),
    ("/retrieve-by-descriptors", "k a float", json.dumps({"descriptors": DESC, "k": 1.5}).encode(),
     "k: Input should be a valid integer"),
    ("/retrieve-by-descriptors", "k a string", json.dumps({"descriptors": DESC, "k": "5"}).encode(),
     "k: Input should be a valid integer"),
    ("/retrieve-by-descriptors", "k a boolean", json.dumps({"descriptors": DESC, "k": True}).encode(),
     "k: Input should be a valid integer"),
    # descriptors
    ("/retrieve-by-descriptors", "unknown name", json.dumps({"descriptors": DESC | {"v_median": 3000.0}}).encode(),
     "unknown v_median"),
    ("/retrieve-by-descriptors", "names in capitals", json.dumps({"descriptors": {"V_MEAN": 3000.0} | {
        n: v for n, v in DESC.items() if n != "v_mean"}}).encode(), "missing v_mean; unknown V_MEAN"),
    ("/retrieve-by-descriptors", "a value as a string", json.dumps({"descriptors": DESC | {"v_top": "1600"}}).encode(),
     "descriptors.v_top: Input should be a valid number"),
    ("/retrieve-by-descriptors", "a value as a boolean", json.dumps({"descriptors": DESC | {"grad_x": False}}).encode(),
     "descriptors.grad_x: Input should be a valid number"),
    ("/retrieve-by-descriptors", "NaN", json.dumps({"descriptors": DESC | {"v_std": float("nan")}}).encode(),
     "v_std = nan: each must be a finite number"),
    ("/retrieve-by-descriptors", "beyond float32", json.dumps({"descriptors": DESC | {"v_max": 1e39}}).encode(),
     "v_max = 1e+39: each must be a finite number within float32"),
    # JSON bodies parsed in bounded memory, values that are not numbers (issue 19)
    ("/retrieve", "a boolean among numbers", b'{"gathers": [[1.0, true]]}', "found true (a boolean)"),
    ("/retrieve", "a null among numbers", b'{"gathers": [[1.0, null]]}', "found null (a null)"),
    ("/retrieve", "an integer beyond float32", _first_value("1" + "0" * 40), "beyond float32's range"),
    ("/retrieve", "an integer of 5000 digits", _first_value("1" + "0" * 5000), "gather 0 holds NaN or Inf"),
    ("/retrieve", "200,000 empty lists", b'{"gathers": [' + b",".join([b"[]"] * 200_000) + b"]}",
     f"at most {MAX_GATHERS * 5006 + 64} arrays"),
    ("/retrieve", "2,000,000 zeros", b'{"gathers": [' + b",".join([b"0.0"] * 2_000_000) + b"]}", "commas"),
    ("/retrieve", "600,000 zeros", b'{"gathers": [' + b",".join([b"0.0"] * 600_000) + b"]}",
     "holds more than 350000 values"),
    ("/retrieve", "big fields besides", ('{"gathers": ' + GATHER_TEXT + ', "k": [' + "1," * 40_000 + "1]}").encode(),
     'the fields besides "gathers" take'),
    ("/retrieve", "gathers twice", ('{"gathers": ' + GATHER_TEXT + ', "gathers": ' + GATHER_TEXT + "}").encode(),
     '"gathers" appears more than once'),
    ("/retrieve", "gathers not at the top", ('{"q": {"gathers": ' + GATHER_TEXT + "}}").encode(),
     'must be an object with "gathers"'),
    ("/retrieve", "a batch with a number", ('{"gathers": [' + GATHER_TEXT + ", 5]}").encode(),
     "must hold only gathers"),
    ("/retrieve", "an all-zero gather", json.dumps({"gathers": np.zeros(G).tolist()}).encode(), "carries no signal"),
    ("/retrieve", "unknown query on a JSON body", b'{"gathers": []}', "unknown query parameter 'kk'"),
    # descriptors no velocity model has (issue 19)
    ("/retrieve-by-descriptors", "v_mean 1e9", json.dumps({"descriptors": DESC | {"v_mean": 1e9}}).encode(),
     "v_mean = 1e+09 m/s is outside the physical range"),
    ("/retrieve-by-descriptors", "a negative velocity", json.dumps({"descriptors": DESC | {"v_top": -1.0}}).encode(),
     "v_top = -1 m/s is outside the physical range"),
    ("/retrieve-by-descriptors", "v_min above v_max",
     json.dumps({"descriptors": DESC | {"v_min": 4600.0, "v_max": 4550.0}}).encode(), "v_min = 4600 is above v_max"),
    ("/retrieve-by-descriptors", "v_bottom above v_max",
     json.dumps({"descriptors": DESC | {"v_bottom": 4600.0}}).encode(),
     "v_bottom = 4600 is outside [v_min, v_max]"),
    ("/retrieve-by-descriptors", "unknown query", json.dumps({"descriptors": DESC}).encode(),
     "unknown query parameter 'kk'; it takes none"),
    # banks
    ("/admin/rebuild-index", "a file taken for a folder", json.dumps({"bank": "bank_a/model1.npy/.."}).encode(),
     "Not a directory"),
    ("/admin/rebuild-index", "bank name too long", json.dumps({"bank": "b" * 300}).encode(), "not a usable path"),
    ("/admin/rebuild-index", "bank a NUL byte", json.dumps({"bank": "bank_a\0"}).encode(), "NUL byte"),
    ("/admin/rebuild-index", "bank empty", json.dumps({"bank": ""}).encode(), "bank: String should have at least"),
]


@pytest.mark.parametrize("case", JSON_CASES, ids=[f"{c[0]} {c[1]}" for c in JSON_CASES])
def test_bad_json_body(served: Server, case: tuple) -> None:
    path, name, body, fragment = case
    headers = JSON | (AUTH if path.startswith("/admin") else {})
    params = {"kk": "1"} if name.startswith("unknown query") else None
    with served.client() as c:
        assert_error(c.post(path, content=body, headers=headers, params=params), 422, fragment)


# -- a pickled .npy is never loaded ----------------------------------------------------------------------------

class _CreatesFileWhenUnpickled:
    """Unpickling this calls open(path, "w"): the file appearing means some code unpickled it."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def __reduce__(self) -> tuple:
        return open, (str(self.path), "w")


def pickled_npy(marker: Path) -> bytes:
    """An object-array .npy of gather shape whose loading with allow_pickle=True creates ``marker``."""
    arr = np.full(G, None, dtype=object)
    arr[0, 0, 0] = _CreatesFileWhenUnpickled(marker)
    buf = io.BytesIO()
    np.save(buf, arr, allow_pickle=True)
    return buf.getvalue()


def test_pickled_npy_is_never_unpickled(served: Server, tmp_path: Path) -> None:
    control = tmp_path / "control"
    np.load(io.BytesIO(pickled_npy(control)), allow_pickle=True)  # the payload works: unpickling creates the file
    assert control.exists()
    marker = tmp_path / "marker"
    body = pickled_npy(marker)
    with served.client() as c:
        for path in ("/retrieve", "/infer-descriptors"):
            assert_error(c.post(path, content=body, headers=NPY), 422, "dtype object")
        # the same pickle behind a header that claims float32 data: refused on its length, never parsed
        lying = _header_only("<f4", G) + body[128:]
        assert_error(c.post("/retrieve", content=lying, headers=NPY), 422, "truncated or padded")
    assert not marker.exists()


# -- accepted variants: byte order and memory order ------------------------------------------------------------

def test_big_endian_and_fortran_order_are_read_as_native(served: Server) -> None:
    g = gathers(2, seed=7)
    with served.client() as c:
        ids = []
        for arr in (g, g.astype(">f4"), np.asfortranarray(g), np.asfortranarray(g.astype(">f8"))):
            r = c.post("/retrieve", content=npy(arr), headers=NPY, params={"k": 5})
            assert r.status_code == 200, r.text
            ids.append([[n["id"] for n in x["neighbors"]] for x in r.json()["results"]])
    assert ids[0] == ids[1] == ids[2] == ids[3]


# -- declared sizes and compressed bodies ----------------------------------------------------------------------

def _declared_length_response(server: Server, path: str, length: int, headers: dict[str, str]) -> tuple[int, dict]:
    """Send only the headers of a POST that declares ``length`` bytes, and read the answer."""
    host, port = server.url.rsplit("/", 1)[1].split(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=30)
    try:
        conn.putrequest("POST", path)
        for name, value in {**headers, "Content-Length": str(length)}.items():
            conn.putheader(name, value)
        conn.endheaders()
        r = conn.getresponse()
        return r.status, json.loads(r.read())
    finally:
        conn.close()


@pytest.mark.parametrize("path, headers", [("/retrieve", NPY), ("/infer-descriptors", JSON),
                                           ("/retrieve-by-descriptors", JSON), ("/admin/rebuild-index", JSON | AUTH)])
def test_declared_length_far_over_the_limit_gets_413_before_any_body(served: Server, path: str,
                                                                        headers: dict[str, str]) -> None:
    status, body = _declared_length_response(served, path, 10**12, headers)
    assert status == 413 and body["status"] == 413
    assert f"exceeds the limit of {MAX_BODY} bytes" in body["detail"] and body["request_id"]
    with served.client() as c:
        assert c.get("/healthz").status_code == 200


def _bomb() -> bytes:
    """64 MiB of zeros (a zero gather batch), gzip-compressed to about 64 KB."""
    return gzip.compress(b"\0" * (64 * 1024 * 1024), compresslevel=9)


@pytest.mark.parametrize("coding, compress", [("gzip", gzip.compress), ("deflate", zlib.compress), ("br", None),
                                              ("GZIP", gzip.compress), ("gzip, identity", gzip.compress)])
def test_compressed_bodies_get_415(served: Server, coding: str, compress: Any) -> None:
    raw = ONE if compress is None else compress(ONE)
    with served.client() as c:
        for path, ctype, body in (("/retrieve", NPY, raw), ("/infer-descriptors", NPY, raw),
                                  ("/retrieve-by-descriptors", JSON, gzip.compress(json.dumps({"descriptors": DESC})
                                                                                   .encode()))):
            r = c.post(path, content=body, headers=ctype | {"Content-Encoding": coding})
            assert_error(r, 415, f"unsupported Content-Encoding {coding.lower()!r}")
            assert "send the body uncompressed" in r.json()["detail"]
        ok = c.post("/retrieve", content=ONE, headers=NPY | {"Content-Encoding": "identity"})
        assert ok.status_code == 200, ok.text


def test_compression_bomb_is_refused_without_inflating(served: Server) -> None:
    bomb = _bomb()
    assert len(bomb) < MAX_BODY  # small enough to pass the size limit: only the encoding check stops it
    rss = _rss_kib(served)
    with served.client() as c:
        for path in ("/retrieve", "/infer-descriptors"):
            assert_error(c.post(path, content=bomb, headers=NPY | {"Content-Encoding": "gzip"}), 415,
                         "compressed request bodies are not accepted")
        assert c.get("/readyz").status_code == 200
    assert _rss_kib(served) - rss < 32 * 1024  # never inflated to 64 MiB


def _rss_kib(server: Server) -> int:
    status = Path(f"/proc/{server.proc.pid}/status")
    if not status.exists():
        pytest.skip("no /proc on this platform")
    return int(next(line for line in status.read_text().splitlines() if line.startswith("VmRSS")).split()[1])


def test_the_service_survived_the_catalogue(served: Server) -> None:
    assert served.proc.poll() is None
    with served.client() as c:
        assert c.get("/readyz").status_code == 200
        r = c.post("/retrieve-by-descriptors", json={"descriptors": DESC, "k": BANK_SIZE})
        assert r.status_code == 200 and len(r.json()["results"][0]["neighbors"]) == BANK_SIZE
    assert "unhandled error" not in served.log_tail(10_000_000)
