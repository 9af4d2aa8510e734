"""uvicorn's HTTP/1.1 protocol (httptools) with the request limits uvicorn itself lacks.

uvicorn bounds neither the header section of a request (with httptools: a 10 MB header field or 20,000 fields
are accepted) nor the time a client may take to send a request: a connection that sends nothing, half the
headers, or a declared body that never comes is held open forever (``timeout_keep_alive`` only runs between
requests). ``GuardedHttpToolsProtocol`` adds, per connection:

* a deadline for receiving a whole request, headers and body, counted from its first byte (and from the
  connection's opening for the first request): past it the client gets 408 and the connection is closed; a
  connection that never sent a byte is closed silently;
* a bound on the size of the header section (request line and headers) and on the number of header fields:
  past either the client gets 431 and the connection is closed;
* request bodies handed to the application whole: uvicorn wakes the application for every chunk read from the
  socket, pauses reading past 64 KiB until it has taken them, and grows one bytearray that it copies again for
  each message; here the chunks are joined once and delivered in one message (bodies over
  ``body_buffer_bytes`` in messages of about that size, so the body limit is still enforced while they arrive).

Rejections are answered with the service's JSON error body and logged (``service.http`` logger).
"""

from __future__ import annotations

import asyncio
import http
import json
import logging
from typing import Any

from service.core.logging import new_request_id

log = logging.getLogger("service.http")

try:
    import httptools
    from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol
except ImportError:  # pragma: no cover - httptools comes with the cpu and gpu extras
    httptools = None  # type: ignore[assignment]
    HttpToolsProtocol = asyncio.Protocol  # type: ignore[assignment,misc]


class _Rejected(Exception):
    """Raised from a parser callback to stop parsing a request that breaks a limit."""

    def __init__(self, status: int, detail: str) -> None:
        super().__init__(detail)
        self.status = status


class GuardedHttpToolsProtocol(HttpToolsProtocol):  # type: ignore[misc,valid-type]
    """httptools HTTP/1.1 with a request-receipt deadline and header limits (class attributes; see
    ``http_options`` for a subclass configured from the settings)."""

    request_timeout: float = 60.0
    max_header_bytes: int = 64 * 1024
    max_headers: int = 100
    body_buffer_bytes: int = 4 * 1024 * 1024

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._deadline: asyncio.TimerHandle | None = None
        self._in_request = False  # from a request's first byte until all of it (body included) has arrived
        self._in_head = False  # from a request's first byte until its headers are complete
        self._head_bytes = 0
        self._head_fields = 0
        self._head_parsed = 0
        self._rejected = False
        self._body_parts: list[bytes] = []
        self._body_size = 0

    # -- the deadline ------------------------------------------------------------------------------------------

    def _arm(self) -> None:
        self._disarm()
        self._deadline = self.loop.call_later(self.request_timeout, self._on_deadline)

    def _disarm(self) -> None:
        if self._deadline is not None:
            self._deadline.cancel()
            self._deadline = None

    def _on_deadline(self) -> None:
        self._deadline = None
        if self.transport.is_closing():
            return
        if not self._in_request:  # opened and never used
            self.transport.close()
            return
        if not self._in_head and getattr(self.flow, "read_paused", False):
            # reading is paused because the application has not taken the body yet (e.g. it waits for its turn in
            # the body budget): the client is not the one keeping the request from completing
            self._arm()
            return
        self._reject(408, f"request not received within {self.request_timeout:g} s (SEISBIND_REQUEST_TIMEOUT_S)")

    # -- rejection ---------------------------------------------------------------------------------------------

    def _reject(self, status: int, detail: str) -> None:
        """Answer ``status`` with a JSON error body unless a response has begun, then close the connection."""
        self._rejected = True
        self._disarm()
        rid = new_request_id()
        log.warning("%s; closing the connection", detail,
                    extra={"status": status, "client": (self.client or ("?",))[0], "request_id": rid})
        if self.transport.is_closing():
            return
        cycle = self.cycle if not self._in_head else None  # the current request's cycle, once it has one
        if cycle is None or not cycle.response_started:
            body = json.dumps({"detail": detail, "status": status, "request_id": rid}).encode()
            head = (f"HTTP/1.1 {status} {http.HTTPStatus(status).phrase}\r\ncontent-type: application/json\r\n"
                    f"content-length: {len(body)}\r\nx-request-id: {rid}\r\nconnection: close\r\n\r\n")
            self.transport.write(head.encode("ascii") + body)
        if cycle is not None and not cycle.response_complete:
            cycle.disconnected = True  # the application's receive() sees http.disconnect; its sends are dropped
            cycle.message_event.set()
        self.transport.close()

    # -- asyncio.Protocol --------------------------------------------------------------------------------------

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._arm()

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        """uvicorn's data_received, plus the header-size check and the JSON answer to a rejection."""
        if self._rejected:
            return
        self._unset_keepalive_if_required()
        if self._in_head:
            self._head_bytes += len(data)
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserCallbackError as exc:
            if isinstance(exc.__context__, _Rejected):
                self._reject(exc.__context__.status, str(exc.__context__))
                return
            self.logger.warning("Invalid HTTP request received.")
            self.send_400_response("Invalid HTTP request received.")
            return
        except httptools.HttpParserError:
            self.logger.warning("Invalid HTTP request received.")
            self.send_400_response("Invalid HTTP request received.")
            return
        except httptools.HttpParserUpgrade:
            if self._should_upgrade():
                self._disarm()
                self.handle_websocket_upgrade()
            else:
                self._unsupported_upgrade_warning()
            return
        if self._in_head and self._head_bytes > self.max_header_bytes:
            self._reject(431, f"request header section exceeds {self.max_header_bytes} bytes "
                              "(SEISBIND_MAX_HEADER_BYTES)")

    # -- httptools parser callbacks ----------------------------------------------------------------------------

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._in_request = self._in_head = True
        self._head_bytes = self._head_fields = 0  # the bytes of the chunk it began in are not counted here ...
        self._head_parsed = 0  # ... but in the parser's callbacks
        self._body_parts, self._body_size = [], 0  # nothing of an earlier, abandoned body carries over
        self._arm()

    def on_url(self, url: bytes) -> None:
        self._count_head(len(url) + 16)  # with the method and "HTTP/1.1"
        super().on_url(url)

    def on_header(self, name: bytes, value: bytes) -> None:
        self._head_fields += 1
        if self._head_fields > self.max_headers:
            raise _Rejected(431, f"more than {self.max_headers} header fields (SEISBIND_MAX_HEADERS)")
        self._count_head(len(name) + len(value) + 4)
        super().on_header(name, value)

    def _count_head(self, n: int) -> None:
        """Count the header section by what the parser reports (the bytes of the chunk a request begins in are not
        known to be its own, so the per-chunk count of data_received alone lets one big first chunk through)."""
        self._head_parsed += n
        if self._head_parsed > self.max_header_bytes:
            raise _Rejected(431, f"request header section exceeds {self.max_header_bytes} bytes "
                                 "(SEISBIND_MAX_HEADER_BYTES)")

    def on_headers_complete(self) -> None:
        self._in_head = False
        super().on_headers_complete()

    def on_body(self, body: bytes) -> None:
        """Collect the body's chunks; hand them to the application joined once, when the body is complete
        (on_message_complete) or when ``body_buffer_bytes`` have gathered (then reading pauses until it takes
        them)."""
        if (self.parser.should_upgrade() and self._should_upgrade()) or self.cycle.response_complete:
            return
        self._body_parts.append(body)
        self._body_size += len(body)
        if self._body_size >= self.body_buffer_bytes:
            self._hand_over_body()
            self.flow.pause_reading()
            self.cycle.message_event.set()

    def _hand_over_body(self) -> None:
        """Move the collected chunks into the cycle as one ``bytes`` (uvicorn's receive() passes it on without
        another copy, and so does Starlette's request.body() when it is the only message)."""
        if not self._body_parts:
            return
        joined = b"".join(self._body_parts)
        self._body_parts, self._body_size = [], 0
        self.cycle.body = self.cycle.body + joined if self.cycle.body else joined  # type: ignore[assignment]

    def on_message_complete(self) -> None:
        self._in_request = False
        self._disarm()
        if not self.cycle.response_complete:
            self._hand_over_body()
        super().on_message_complete()


def http_options(request_timeout: float, max_header_bytes: int, max_headers: int) -> dict[str, Any]:
    """Keyword arguments for ``uvicorn.run``/``uvicorn.Config``: the guarded protocol configured with these limits;
    without httptools, uvicorn's h11 protocol with its incomplete-event bound (no request deadline then)."""
    if httptools is None:  # pragma: no cover
        log.warning("httptools is not installed: serving with h11, without a request deadline")
        return {"http": "h11", "h11_max_incomplete_event_size": max_header_bytes}
    protocol = type("GuardedHttpToolsProtocol", (GuardedHttpToolsProtocol,),
                    {"request_timeout": request_timeout, "max_header_bytes": max_header_bytes,
                     "max_headers": max_headers, "__module__": __name__})
    return {"http": protocol}
