"""The guarded HTTP protocol hands request bodies to the application whole (one message up to its buffer size),
byte for byte, with nothing carried over between requests on a kept-alive connection."""

from __future__ import annotations

import hashlib
import http.client
import json
import os
import socket
import threading
import time
from collections.abc import Iterator

import pytest
import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from service.core.http_guard import http_options


async def _echo(request: Request) -> JSONResponse:
    messages, body = 0, bytearray()
    async for chunk in request.stream():
        if chunk:
            messages += 1
            body += chunk
    return JSONResponse({"messages": messages, "size": len(body), "sha256": hashlib.sha256(body).hexdigest()})


def _serve(buffer_bytes: int | None) -> Iterator[int]:
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    protocol = http_options(30.0, 64 * 1024, 100)["http"]
    if buffer_bytes is not None:
        protocol = type("SmallBuffer", (protocol,), {"body_buffer_bytes": buffer_bytes})
    app = Starlette(routes=[Route("/echo", _echo, methods=["POST"])])
    server = uvicorn.Server(uvicorn.Config(app, http=protocol, log_level="warning", lifespan="off"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started and time.monotonic() < deadline:
        time.sleep(0.02)
    assert server.started
    try:
        yield port
    finally:
        server.should_exit = True
        thread.join(10)


@pytest.fixture(scope="module")
def default_port() -> Iterator[int]:
    yield from _serve(None)


@pytest.fixture(scope="module")
def small_buffer_port() -> Iterator[int]:
    yield from _serve(64 * 1024)


def _post(conn: http.client.HTTPConnection, body: bytes | Iterator[bytes], **headers: str) -> dict:
    conn.request("POST", "/echo", body=body, headers=headers)
    r = conn.getresponse()
    assert r.status == 200
    return json.loads(r.read())


def test_a_gather_sized_body_arrives_whole_and_intact(default_port: int) -> None:
    conn = http.client.HTTPConnection("127.0.0.1", default_port, timeout=30)
    for size in (1_400_128, 17, 3_000_000):  # kept alive: nothing of one body may leak into the next
        body = os.urandom(size)
        got = _post(conn, body)
        assert got == {"messages": 1, "size": size, "sha256": hashlib.sha256(body).hexdigest()}
    conn.close()


def test_bodies_over_the_buffer_arrive_in_buffer_sized_messages(small_buffer_port: int) -> None:
    conn = http.client.HTTPConnection("127.0.0.1", small_buffer_port, timeout=30)
    body = os.urandom(1_000_000)
    got = _post(conn, body)
    assert got["size"] == len(body) and got["sha256"] == hashlib.sha256(body).hexdigest()
    assert 1 < got["messages"] <= 1_000_000 // (64 * 1024) + 1  # handed over as each read passes the buffer
    parts = [os.urandom(50_000) for _ in range(10)]  # chunked transfer encoding, no Content-Length
    got = _post(conn, iter(parts))  # http.client sends an iterable chunked
    assert got["size"] == 500_000 and got["sha256"] == hashlib.sha256(b"".join(parts)).hexdigest()
    conn.close()
