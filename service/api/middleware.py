"""Pure ASGI middleware: request ids, access logs and request metrics; the request-body size limit."""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Collection

from starlette.datastructures import Headers, MutableHeaders
from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from service.api.errors import error_response
from service.core.logging import REQUEST_ID, new_request_id
from service.metrics import ServiceMetrics

log = logging.getLogger("service.access")
REQUEST_ID_HEADER = "X-Request-ID"
_VALID_REQUEST_ID = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")


def endpoint_label(scope: Scope, known_paths: Collection[str] = ()) -> str:
    """The route template that served a request (bounded label values); for a request answered before routing
    (e.g. 413 on Content-Length) its path when that is a known route path; else "unmatched"."""
    route = scope.get("route")
    path = getattr(route, "path", None)
    if path:
        return path
    return scope["path"] if scope["path"] in known_paths else "unmatched"


class RequestContextMiddleware:
    """Take the client's X-Request-ID (if well-formed) or make one, expose it to logs, echo it in the response;
    log one access line and count and time the request per endpoint."""

    def __init__(self, app: ASGIApp, metrics: ServiceMetrics, known_paths: Collection[str] = ()) -> None:
        self.app = app
        self.metrics = metrics
        self.known_paths = known_paths

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        given = Headers(scope=scope).get(REQUEST_ID_HEADER)
        rid = given if given and _VALID_REQUEST_ID.match(given) else new_request_id()
        token = REQUEST_ID.set(rid)
        start = time.perf_counter()
        status = 500
        started = False

        async def send_with_id(message: Message) -> None:
            nonlocal status, started
            if message["type"] == "http.response.start":
                status, started = message["status"], True
                MutableHeaders(scope=message)[REQUEST_ID_HEADER] = rid
            await send(message)

        try:
            await self.app(scope, receive, send_with_id)
        except Exception as exc:  # noqa: BLE001 - last line of defence: answer 500, keep serving
            log.exception("unhandled error on %s %s", scope["method"], scope["path"])
            if not started:
                await error_response(500, f"internal error ({type(exc).__name__}); quote request id {rid}")(
                    scope, receive, send_with_id)
        finally:
            took = time.perf_counter() - start
            endpoint = endpoint_label(scope, self.known_paths)
            self.metrics.requests.labels(endpoint, scope["method"], str(status)).inc()
            self.metrics.latency.labels(endpoint).observe(took)
            log.info("%s %s %d", scope["method"], scope["path"], status,
                     extra={"status": status, "ms": round(took * 1000, 2), "endpoint": endpoint,
                            "client": (scope.get("client") or ("?",))[0]})
            REQUEST_ID.reset(token)


class BodyLimitMiddleware:
    """Refuse request bodies over ``max_bytes`` with 413: at once when Content-Length says so, otherwise as soon as
    the bytes received pass the limit (so an unbounded chunked body is never buffered); refuse compressed bodies
    (any Content-Encoding but identity) with 415. With ``paths``, only requests to those paths (a smaller limit for
    endpoints whose bodies are small; ``limit_name`` and ``hint`` complete the message)."""

    def __init__(self, app: ASGIApp, max_bytes: int, paths: Collection[str] | None = None,
                 limit_name: str = "SEISBIND_MAX_BODY_BYTES", hint: str = "split the batch") -> None:
        self.app = app
        self.max_bytes = max_bytes
        self.paths = None if paths is None else frozenset(paths)
        self.limit_name, self.hint = limit_name, hint

    def _too_large(self) -> str:
        return f"request body exceeds the limit of {self.max_bytes} bytes ({self.limit_name}); {self.hint}"

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or (self.paths is not None and scope["path"] not in self.paths):
            await self.app(scope, receive, send)
            return
        headers = Headers(scope=scope)
        length = headers.get("content-length")
        if length is not None and (not length.isdigit() or int(length) > self.max_bytes):
            if not length.isdigit():
                response = error_response(400, f"invalid Content-Length header {length[:40]!r}")
            else:
                response = error_response(413, self._too_large())
            await response(scope, receive, send)
            return
        coding = headers.get("content-encoding", "").strip().lower()
        if coding not in ("", "identity"):  # bodies are never decompressed: no compression bomb gets past the limit
            await error_response(415, f"unsupported Content-Encoding {coding[:40]!r}: compressed request bodies are "
                                      "not accepted; send the body uncompressed")(scope, receive, send)
            return
        received = 0

        async def receive_with_limit() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_bytes:
                    raise HTTPException(413, self._too_large())
            return message

        await self.app(scope, receive_with_limit, send)
