"""Security hardening of the HTTP service, against real uvicorn processes on localhost (``seisbind serve``):

* the admin token is compared in constant time on bytes (any header value, any length, non-ASCII: 401/403,
  never 500) and never written anywhere: not in the server's logs (JSON, debug level), /metrics, /v1/info,
  error bodies or job records, whether it comes from SEISBIND_ADMIN_TOKEN or SEISBIND_ADMIN_TOKEN_FILE;
* CORS is off unless SEISBIND_CORS_ORIGINS names origins, and then only those get CORS headers;
* requests are bounded in header size, header count and the time to send them (service.core.http_guard):
  431 and 408 with JSON bodies, idle connections closed, the server unharmed;
* the dependency lock files pin every dependency of pyproject's extras, with hashes, CPU torch.

Two servers share a real (untrained) encoder bundle and a small bank root:
``loud`` (token from the environment, debug logs, CORS for one origin, tight request limits) and
``filed`` (a non-ASCII token from a file, defaults otherwise).
"""

from __future__ import annotations

import asyncio
import base64
import inspect
import json
import re
import secrets
import socket
import threading
import time
import unicodedata
import urllib.parse
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace

import httpx
import numpy as np
import pytest
import tomllib
from fastapi.security import HTTPAuthorizationCredentials
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version
from pydantic import ValidationError
from starlette.exceptions import HTTPException

from tests.service_fixtures import Server, serve, stop_server

REPO = Path(__file__).resolve().parents[2]
TOKEN = "sb-" + secrets.token_urlsafe(24)  # unique: any occurrence in the output is a leak
FILE_TOKEN = "schlüssel-ÄÖÜ-ß-" + secrets.token_hex(12)  # non-ASCII, read from a file
ORIGIN = "https://app.example.org"
REQUEST_TIMEOUT_S = 4.0
MAX_HEADER_BYTES = 16384
MAX_HEADERS = 40
MAX_BODY = 1_500_000  # one float32 gather (1.4 MB) fits: SEISBIND_MAX_GATHERS=1

pytestmark = pytest.mark.timeout(600)


# -- servers ---------------------------------------------------------------------------------------------------

def start_server(name: str, env: dict[str, str], bundle: Path, index_root: Path, logs: Path) -> Server:
    """``seisbind serve`` at debug level with JSON logs in ``logs/<name>.log``, waited for until /readyz answers."""
    return serve(bundle, index_root, logs / f"{name}.log",
                 {"SEISBIND_LOG_LEVEL": "debug", "SEISBIND_LOG_JSON": "true", "SEISBIND_ORT_INTRA_OP_THREADS": "1",
                  **env})


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A real untrained bundle, a bank root (good: 40 flatvel-a models; bad: one NaN) and an index of ``good``."""
    import torch

    from index.build import build_index
    from model.export import export_untrained_bundle
    from model.families import generate

    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("security")
    export_untrained_bundle(root / "bundle", seed=0)
    rng = np.random.default_rng(0)
    (root / "banks" / "good" / "model").mkdir(parents=True)
    np.save(root / "banks" / "good" / "model" / "model1.npy", generate("flatvel-a", 40, rng))
    bad = generate("flatvel-a", 8, rng)
    bad[3, 0, 5, 5] = np.nan
    (root / "banks" / "bad").mkdir()
    np.save(root / "banks" / "bad" / "model1.npy", bad)
    build_index(root / "bundle", root / "banks" / "good", root / "index", index_type="flat")
    (root / "logs").mkdir()
    return {"bundle": root / "bundle", "banks": root / "banks", "index": root / "index", "logs": root / "logs",
            "root": root}


@pytest.fixture(scope="module")
def loud(setup: dict[str, Path]) -> Iterator[Server]:
    env = {"SEISBIND_ADMIN_TOKEN": TOKEN, "SEISBIND_BANK_ROOT": str(setup["banks"]),
           "SEISBIND_CORS_ORIGINS": json.dumps([ORIGIN]), "SEISBIND_REQUEST_TIMEOUT_S": str(REQUEST_TIMEOUT_S),
           "SEISBIND_MAX_HEADER_BYTES": str(MAX_HEADER_BYTES), "SEISBIND_MAX_HEADERS": str(MAX_HEADERS),
           "SEISBIND_MAX_BODY_BYTES": str(MAX_BODY), "SEISBIND_MAX_GATHERS": "1", "SEISBIND_INDEX_POLL_S": "0"}
    server = start_server("loud", env, setup["bundle"], setup["index"], setup["logs"])
    yield server
    stop_server(server)


@pytest.fixture(scope="module")
def filed(setup: dict[str, Path]) -> Iterator[Server]:
    secret = setup["root"] / "admin_token"
    secret.write_bytes(FILE_TOKEN.encode("utf-8") + b"\n")
    env = {"SEISBIND_ADMIN_TOKEN_FILE": str(secret), "SEISBIND_BANK_ROOT": str(setup["banks"]),
           "SEISBIND_INDEX_POLL_S": "0"}
    server = start_server("filed", env, setup["bundle"], setup["index"], setup["logs"])
    yield server
    stop_server(server)


def leaked_forms(token: str, text: str) -> list[str]:
    """The forms of ``token`` found in ``text``: as is, JSON-escaped, URL-quoted, base64, UTF-8 read as latin-1."""
    forms = {token, json.dumps(token)[1:-1], urllib.parse.quote(token), base64.b64encode(token.encode()).decode(),
             token.encode("utf-8").decode("latin-1"), json.dumps(token.encode("utf-8").decode("latin-1"))[1:-1]}
    return sorted(f for f in forms if f in text)


def raw_request(port: int, data: bytes, timeout: float = 30.0) -> bytes:
    """Send raw bytes on a fresh connection; everything the server answers until it closes (or the timeout)."""
    out = b""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        try:
            sock.sendall(data)
        except OSError:  # the server may close first (a rejected header section): read what it answered
            pass
        try:
            while chunk := sock.recv(65536):
                out += chunk
        except (TimeoutError, ConnectionResetError):
            pass
    return out


def status_of(response: bytes) -> int:
    assert response.startswith(b"HTTP/1.1 "), response[:200]
    return int(response.split(b" ", 2)[1])


def json_body(response: bytes) -> dict:
    return json.loads(response.split(b"\r\n\r\n", 1)[1])


# -- the admin token -------------------------------------------------------------------------------------------

def test_require_admin_compares_bytes_in_constant_time_and_never_raises_otherwise(tmp_path: Path) -> None:
    """The dependency itself: wrong tokens of every length and encoding are 403, the right one passes."""
    from service.api.deps import require_admin
    from service.core.config import Settings

    settings = Settings(encoders=tmp_path, index_root=tmp_path, admin_token="tök€n-" + "x" * 20)
    state = SimpleNamespace(settings=settings)
    right = settings.resolved_admin_token().encode("utf-8").decode("latin-1")  # as a header value arrives

    def check(value: str) -> int:
        creds = HTTPAuthorizationCredentials(scheme="Bearer", credentials=value)
        try:
            result = require_admin(state, creds)
            if inspect.iscoroutine(result):
                asyncio.run(result)
        except HTTPException as e:
            return e.status_code
        return 200

    assert check(right) == 200
    for wrong in ("", "x", right[:-1], right + "x", right.upper(), "tök€n-" + "x" * 19, "\xff\xfe" * 5000,
                  "\x00", "a" * 100_000):
        assert check(wrong) == 403, wrong[:40]
    assert check("tök€n-" + "x" * 20) == 200  # a str that did not come through latin-1 is taken as UTF-8
    assert check("\ud800" + "x" * 30) == 403  # a lone surrogate does not raise either
    source = inspect.getsource(require_admin)
    assert "hmac.compare_digest(" in source and "==" not in source.split("compare_digest", 1)[1].split("\n")[0]


def test_admin_token_never_leaks(loud: Server) -> None:
    auth = {"Authorization": f"Bearer {TOKEN}"}
    wrong_headers: list[dict[str, str | bytes]] = [
        {"Authorization": f"Bearer {TOKEN[:-1]}"}, {"Authorization": f"Bearer {TOKEN}x"},
        {"Authorization": f"Bearer {TOKEN.upper()}"}, {"Authorization": "Bearer " + "y" * 5000},
        {"Authorization": f"Basic {base64.b64encode(f'admin:{TOKEN}'.encode()).decode()}"},
        {"Authorization": TOKEN}, {"Authorization": "Bearer"}, {"Authorization": "Bearer    x"},
        {"Authorization": b"Bearer \xff\xfe\x80 token \xc3\xa9"}, {"Authorization": f"Token {TOKEN}"},
        {"Authorization": f"Bearer {TOKEN} {TOKEN}"},
    ]
    bodies: list[str] = []
    with loud.client() as c:
        for headers in wrong_headers:
            r = c.get("/admin/jobs/none", headers=headers)
            assert r.status_code in (401, 403), (headers, r.status_code, r.text)
            bodies.append(r.text)
        r = c.post("/admin/rebuild-index", json={"bank": "good"}, headers={"Authorization": "Bearer nope"})
        assert r.status_code == 403
        bodies.append(r.text)
        # The right token: a rebuild that succeeds, one that fails, bad requests, a body over the limit.
        ok = c.post("/admin/rebuild-index", json={"bank": "good", "index_type": "flat"}, headers=auth)
        assert ok.status_code == 202, ok.text
        jobs = [ok.json()["job_id"]]
        for job in jobs:
            state = c.get(f"/admin/jobs/{job}", headers=auth).json()
            deadline = time.monotonic() + 180
            while state["state"] not in ("succeeded", "failed") and time.monotonic() < deadline:
                time.sleep(0.3)
                state = c.get(f"/admin/jobs/{job}", headers=auth).json()
            assert state["state"] == "succeeded", state
            bodies.append(json.dumps(state))
        bad = c.post("/admin/rebuild-index", json={"bank": "bad", "index_type": "flat"}, headers=auth)
        assert bad.status_code == 202, bad.text
        deadline = time.monotonic() + 180
        while (state := c.get(f"/admin/jobs/{bad.json()['job_id']}", headers=auth).json())["state"] not in (
                "succeeded", "failed") and time.monotonic() < deadline:
            time.sleep(0.3)
        assert state["state"] == "failed" and "NaN" in state["error"], state
        bodies.append(json.dumps(state))
        for method, path, kw in (
                ("POST", "/admin/rebuild-index", {"json": {"bank": "../etc"}}),
                ("POST", "/admin/rebuild-index", {"json": {"bank": "good", "index_type": "lsh"}}),
                ("POST", "/admin/rebuild-index",
                 {"content": b"{not json", "headers": {"Content-Type": "application/json"}}),
                ("POST", "/admin/rebuild-index", {"content": b"x" * (MAX_BODY + 1)}),
                ("POST", "/retrieve", {"content": b"garbage", "headers": {"Content-Type": "application/x-npy"}}),
                ("GET", "/admin/jobs/" + "z" * 100, {})):
            headers = {**auth, **kw.pop("headers", {})}
            r = c.request(method, path, headers=headers, **kw)
            assert 400 <= r.status_code < 500, (path, r.status_code, r.text)
            bodies.append(r.text)
        for path in ("/metrics", "/v1/info", "/readyz", "/healthz", "/openapi.json"):
            r = c.get(path, headers=auth)
            assert r.status_code == 200
            bodies.append(r.text)
    assert not leaked_forms(TOKEN, "\n".join(bodies))
    # Invalid header bytes straight on the socket: a 4xx, never a 500 or a dropped connection.
    for value in (b"Bearer \xff\xff\xff", b"Bearer " + TOKEN.encode() + b"\x00", b"\x80\x81", b"Bearer \t" + b"a" * 64,
                  b"Bearer    ", b"Bearer " + TOKEN.encode() + b" "):
        answer = raw_request(loud.port, b"GET /admin/jobs/x HTTP/1.1\r\nHost: a\r\nAuthorization: " + value +
                             b"\r\nConnection: close\r\n\r\n")
        assert 400 <= status_of(answer) < 500, answer[:300]
        assert not leaked_forms(TOKEN, answer.decode("latin-1"))
    time.sleep(0.5)
    logs = loud.logs()
    lines = [json.loads(x) for x in logs.splitlines() if x.startswith("{")]
    statuses = {x.get("status") for x in lines if x.get("logger") == "service.access"}
    assert {202, 401, 403}.issubset(statuses), statuses  # the capture works: the admin calls were logged
    assert any(x.get("level") == "error" and "failed" in x["msg"] for x in lines), "the failed rebuild is logged"
    assert not leaked_forms(TOKEN, logs)
    assert loud.proc.poll() is None


def test_token_from_a_file_works_and_is_never_logged(filed: Server, setup: dict[str, Path]) -> None:
    right = b"Bearer " + FILE_TOKEN.encode("utf-8")  # the file holds UTF-8; curl sends the same bytes
    with filed.client() as c:
        ok = c.get("/admin/jobs/nope", headers={"Authorization": right})
        assert ok.status_code == 404 and "no job 'nope'" in ok.json()["detail"], ok.text  # past the token check
        for wrong in (b"Bearer " + FILE_TOKEN.encode("latin-1", errors="replace"),  # same text, other bytes
                      b"Bearer " + FILE_TOKEN.encode("ascii", errors="ignore"), right + b"\xc3\xa9", right[:-1],
                      b"Bearer " + unicodedata.normalize("NFD", FILE_TOKEN).encode("utf-8")):  # looks the same
            r = c.get("/admin/jobs/nope", headers={"Authorization": wrong})
            assert r.status_code == 403 and r.json()["detail"] == "wrong admin token", (wrong, r.text)
            assert not leaked_forms(FILE_TOKEN, r.text)
        job = c.post("/admin/rebuild-index", json={"bank": "bad", "index_type": "flat"},
                     headers={"Authorization": right})
        assert job.status_code == 202, job.text
        for text in (c.get("/metrics").text, c.get("/v1/info").text, job.text):
            assert not leaked_forms(FILE_TOKEN, text)
    time.sleep(0.5)
    assert not leaked_forms(FILE_TOKEN, filed.logs())
    assert str(setup["root"] / "admin_token") not in filed.logs()  # nor where it lies
    assert '"status": 404' in filed.logs()  # the capture works


# -- CORS ------------------------------------------------------------------------------------------------------

PREFLIGHT = {"Access-Control-Request-Method": "POST",
             "Access-Control-Request-Headers": "content-type, authorization"}


def cors_headers(r: httpx.Response) -> dict[str, str]:
    return {k.lower(): v for k, v in r.headers.items() if k.lower().startswith("access-control-")}


def test_cors_is_off_unless_configured(filed: Server) -> None:
    with filed.client() as c:
        pre = c.options("/retrieve", headers={"Origin": ORIGIN, **PREFLIGHT})
        assert cors_headers(pre) == {} and pre.status_code == 405, (pre.status_code, pre.headers)
        for path in ("/healthz", "/v1/info"):
            r = c.get(path, headers={"Origin": ORIGIN})
            assert r.status_code == 200 and cors_headers(r) == {}, r.headers


def test_cors_answers_only_the_configured_origins(loud: Server) -> None:
    with loud.client() as c:
        pre = c.options("/retrieve", headers={"Origin": ORIGIN, **PREFLIGHT})
        assert pre.status_code == 200, pre.text
        h = cors_headers(pre)
        assert h["access-control-allow-origin"] == ORIGIN
        assert {"GET", "POST"} <= {m.strip() for m in h["access-control-allow-methods"].split(",")}
        allowed = {x.strip().lower() for x in h["access-control-allow-headers"].split(",")}
        assert {"authorization", "content-type"} <= allowed
        assert "access-control-allow-credentials" not in h
        simple = c.get("/v1/info", headers={"Origin": ORIGIN})
        assert simple.status_code == 200 and cors_headers(simple)["access-control-allow-origin"] == ORIGIN
        assert "x-request-id" in cors_headers(simple)["access-control-expose-headers"].lower()
        # A browser can read the JSON error of a request it made (413 from the body limit, 401 from admin).
        big = c.post("/retrieve", content=b"x" * (MAX_BODY + 1),
                     headers={"Origin": ORIGIN, "Content-Type": "application/x-npy"})
        assert big.status_code == 413 and cors_headers(big)["access-control-allow-origin"] == ORIGIN
        # Any other origin: the preflight is refused, a simple request gets no CORS headers.
        for other in ("https://evil.example.com", "http://app.example.org", "https://app.example.org.evil.io", "null"):
            pre = c.options("/retrieve", headers={"Origin": other, **PREFLIGHT})
            assert pre.status_code == 400 and "access-control-allow-origin" not in cors_headers(pre), other
            r = c.get("/v1/info", headers={"Origin": other})
            assert r.status_code == 200 and "access-control-allow-origin" not in cors_headers(r), other


def test_cors_origins_setting_is_validated(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from service.core.config import Settings

    assert Settings(encoders=tmp_path, index_root=tmp_path).cors_origins == []
    origins = ["https://a.example.org", "http://localhost:3000", "http://[::1]:8080"]
    monkeypatch.setenv("SEISBIND_CORS_ORIGINS", json.dumps(origins))
    assert Settings(encoders=tmp_path, index_root=tmp_path).cors_origins == origins
    monkeypatch.delenv("SEISBIND_CORS_ORIGINS")
    for bad in (["https://a.example.org/"], ["a.example.org"], ["https://a.example.org/path"], ["ftp://a.org"]):
        with pytest.raises(ValidationError, match="CORS origin"):
            Settings(encoders=tmp_path, index_root=tmp_path, cors_origins=bad)


# -- request limits: headers and slow clients ------------------------------------------------------------------

def test_header_size_and_count_are_bounded(loud: Server) -> None:
    get = b"GET /healthz HTTP/1.1\r\nHost: a\r\nConnection: close\r\n"
    assert status_of(raw_request(loud.port, get + b"X-Big: " + b"a" * 8000 + b"\r\n\r\n")) == 200
    fields = b"".join(b"X-F%d: v\r\n" % i for i in range(MAX_HEADERS - 5))
    assert status_of(raw_request(loud.port, get + fields + b"\r\n")) == 200
    many = raw_request(loud.port, get + b"".join(b"X-F%d: v\r\n" % i for i in range(MAX_HEADERS + 1)) + b"\r\n")
    assert status_of(many) == 431 and "header fields" in json_body(many)["detail"]

    # A header section that never ends, sent in pieces: 431 once past the limit, the connection closed.
    answer = b""
    with socket.create_connection(("127.0.0.1", loud.port), timeout=30) as sock:
        sock.sendall(get + b"X-Endless: ")
        try:
            for _ in range(64):  # 1 MiB in all, far past the limit
                sock.sendall(b"a" * 16384)
                time.sleep(0.005)
        except OSError:
            pass
        try:
            while chunk := sock.recv(65536):
                answer += chunk
        except (TimeoutError, ConnectionResetError):
            pass
    assert status_of(answer) == 431, answer[:300]
    body = json_body(answer)
    assert "header section exceeds" in body["detail"] and body["status"] == 431 and body["request_id"]
    with loud.client() as c:
        assert c.get("/healthz").status_code == 200


def test_slow_clients_are_cut_off(loud: Server) -> None:
    """An idle connection, headers that never end, a declared body never sent: each closed after the request
    deadline (408 where a request began), concurrently, while a slow but steady client is served."""
    results: dict[str, tuple[float, bytes]] = {}

    def hold(name: str, data: bytes) -> None:
        t0 = time.monotonic()
        answer = raw_request(loud.port, data, timeout=REQUEST_TIMEOUT_S * 10)
        results[name] = (time.monotonic() - t0, answer)

    cases = {
        "idle": b"",
        "partial headers": b"GET /healthz HTTP/1.1\r\nHost: a\r\nX-Slow: ",
        "stalled body": b"POST /retrieve-by-descriptors HTTP/1.1\r\nHost: a\r\nContent-Type: application/json\r\n"
                        b"Content-Length: 500\r\n\r\n{\"k\": 3, ",
    }
    threads = [threading.Thread(target=hold, args=item) for item in cases.items()]
    for t in threads:
        t.start()
    # Meanwhile: a body trickled over half the deadline is served normally.
    from seisbind.descriptors import DESCRIPTOR_NAMES

    body = json.dumps({"descriptors": dict.fromkeys(DESCRIPTOR_NAMES, 0.0) | {"v_mean": 3000.0, "v_min": 2000.0,
                                                                              "v_max": 4000.0}, "k": 3}).encode()
    head = (f"POST /retrieve-by-descriptors HTTP/1.1\r\nHost: a\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n").encode()
    answer = b""
    with socket.create_connection(("127.0.0.1", loud.port), timeout=60) as sock:
        sock.sendall(head)
        pieces = [body[i:i + 16] for i in range(0, len(body), 16)]
        for piece in pieces:
            sock.sendall(piece)
            time.sleep(REQUEST_TIMEOUT_S / 2 / len(pieces))
        while chunk := sock.recv(65536):
            answer += chunk
    assert status_of(answer) in (200, 422), answer[:300]  # served (422: the descriptors may be out of range)
    assert b"request not received" not in answer
    for t in threads:
        t.join(REQUEST_TIMEOUT_S * 12)
    took, idle = results["idle"]
    assert idle == b"" and REQUEST_TIMEOUT_S * 0.9 <= took < REQUEST_TIMEOUT_S * 8, (took, idle)
    for name in ("partial headers", "stalled body"):
        took, answer = results[name]
        assert status_of(answer) == 408, (name, answer[:300])
        assert "request not received within" in json_body(answer)["detail"]
        assert REQUEST_TIMEOUT_S * 0.9 <= took < REQUEST_TIMEOUT_S * 8, (name, took)
    with loud.client() as c:
        assert c.get("/healthz").status_code == 200
    assert loud.proc.poll() is None
    assert "request not received within" in loud.logs()


def test_guarded_protocol_is_importable_by_uvicorn() -> None:
    """``uvicorn --factory service.app:app_from_env --http service.core.http_guard:GuardedHttpToolsProtocol``
    gets the guard with its default limits."""
    from uvicorn.importer import import_from_string
    from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

    from service.core.http_guard import http_options

    cls = import_from_string("service.core.http_guard:GuardedHttpToolsProtocol")
    assert issubclass(cls, HttpToolsProtocol) and cls.request_timeout == 60.0
    configured = http_options(7.0, 4096, 20)["http"]
    assert issubclass(configured, cls)
    assert (configured.request_timeout, configured.max_header_bytes, configured.max_headers) == (7.0, 4096, 20)


# -- dependency locks ------------------------------------------------------------------------------------------

def read_lock(path: Path) -> dict[str, list[tuple[Version, str, list[str]]]]:
    """name -> [(version, marker, hashes)] of a pip-compile/uv lock file (``name==version ; marker \\`` lines)."""
    entries: dict[str, list[tuple[Version, str, list[str]]]] = {}
    text = re.sub(r"\\\n\s*", " ", path.read_text())
    for line in text.splitlines():
        line = line.split("#", 1)[0].strip()
        if not line or line.startswith("-"):
            continue
        hashes = re.findall(r"--hash=(sha256:[0-9a-f]{64})", line)
        spec = line.split(" --hash", 1)[0]
        req = Requirement(spec)
        (op, version), = [(s.operator, s.version) for s in req.specifier]
        assert op == "==", line
        entries.setdefault(canonicalize_name(req.name), []).append((Version(version), str(req.marker or ""), hashes))
    return entries


def project_requirements(*extras: str) -> list[Requirement]:
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    reqs = list(project["dependencies"])
    for extra in extras:
        reqs += project["optional-dependencies"][extra]
    return [Requirement(r) for r in reqs]


@pytest.mark.parametrize("lock, extras", [("serve-cpu.lock", ("cpu",)), ("dev-cpu.lock", ("cpu", "train", "dev"))])
def test_lock_pins_every_project_dependency_with_hashes(lock: str, extras: tuple[str, ...]) -> None:
    entries = read_lock(REPO / "requirements" / lock)
    for req in project_requirements(*extras):
        name = canonicalize_name(req.name)
        assert name in entries, f"{req} of pyproject.toml is not pinned in requirements/{lock}: regenerate it " \
                                "(scripts/lock.sh)"
        for version, _marker, _hashes in entries[name]:
            assert req.specifier.contains(version, prereleases=True), \
                f"requirements/{lock} pins {name}=={version}, outside pyproject's {req}: run scripts/lock.sh"
    for name, pins in entries.items():
        for version, _marker, hashes in pins:
            assert hashes, f"{name}=={version} in requirements/{lock} has no --hash"
    assert "torch" not in entries or all(v.local == "cpu" for v, _, _ in entries["torch"]), \
        "the lock must pin the CPU torch build (+cpu)"
    if lock == "serve-cpu.lock":
        assert "torch" not in entries and not any(n.startswith("nvidia-") for n in entries)


def test_recorded_audit_covers_the_current_locks() -> None:
    """benchmarks/results/audit.json (scripts/audit.sh) audited exactly the pins of the current lock files and left
    no finding unresolved: rerun scripts/audit.sh after scripts/lock.sh."""
    audit = json.loads((REPO / "benchmarks" / "results" / "audit.json").read_text())
    assert audit["tool"].startswith("pip-audit ") and audit["date"] and audit["unresolved"] == []
    audited = {lock["lock"]: {(p["package"], p["version"]) for p in lock["packages"]} for lock in audit["locks"]}
    for lock in ("serve-cpu.lock", "dev-cpu.lock"):
        pins = {(name, str(v) if v.local is None else f"{v.public}+{v.local}")
                for name, entries in read_lock(REPO / "requirements" / lock).items() for v, _, _ in entries}
        assert audited.get(f"requirements/{lock}") == pins, f"requirements/{lock} changed since the audit: " \
                                                            "run scripts/audit.sh"
    for lock in audit["locks"]:
        for pkg in lock["packages"]:
            assert pkg["audited"] in ("yes", "partial", "no")
            for finding in pkg["findings"]:
                assert finding["decision"].get("not_applicable"), (pkg["package"], finding)
