"""The HTTP floor of the service on this machine: the same server stack as ``seisbind serve`` (uvicorn, uvloop, the
guarded httptools protocol of service.core.http_guard) around a bare ASGI application that reads the request body
whole and answers with fixed bytes, doing no other work. Timed beside the real service with the same client and
body (benchmarks/service.py, ``http_floor``), it is the part of a request's latency that no work in the application
can remove.

Run (by benchmarks/service.py):  python -m benchmarks._http_floor PORT RESPONSE_FILE
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

from service.core.config import Settings
from service.core.http_guard import http_options

RESPONSE = b"{}"
"""The answer to every request: the bytes of RESPONSE_FILE, read at start-up (e.g. a real /retrieve response)."""


async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    """Any HTTP request: read its body to the end, answer 200 with ``RESPONSE`` (JSON)."""
    if scope["type"] == "lifespan":
        while (await receive())["type"] != "lifespan.shutdown":
            await send({"type": "lifespan.startup.complete"})
        await send({"type": "lifespan.shutdown.complete"})
        return
    more = True
    while more:
        more = (await receive()).get("more_body", False)
    await send({"type": "http.response.start", "status": 200,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(RESPONSE)).encode())]})
    await send({"type": "http.response.body", "body": RESPONSE})


def main(port: int, response_file: Path) -> None:
    """Serve ``app`` on 127.0.0.1:``port`` with the service's own HTTP settings (defaults) until interrupted."""
    import uvicorn

    global RESPONSE
    RESPONSE = response_file.read_bytes()
    defaults = Settings.model_construct()
    uvicorn.run(app, host="127.0.0.1", port=port, log_level="warning", access_log=False, server_header=False,
                lifespan="on", **http_options(defaults.request_timeout_s, defaults.max_header_bytes,
                                              defaults.max_headers))


if __name__ == "__main__":
    main(int(sys.argv[1]), Path(sys.argv[2]))
