"""A memory budget for request bodies: how many bytes of gathers requests are being read, decoded and answered at
once. A request over what is left waits, first come first served, before its body is read (the HTTP protocol stops
reading from a connection whose body the application has not taken, so a waiting body holds a few MB at most).
Without it, eight concurrent bodies at the size limit hold eight times the limit, plus what decoding them takes."""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Collection

from starlette.datastructures import Headers
from starlette.types import ASGIApp, Receive, Scope, Send

JSON_FACTOR = 2
"""A JSON body is charged twice its size: parsing it (one gather at a time) holds about that much more."""


class ByteBudget:
    """An asyncio byte budget: ``acquire(n)`` waits until ``n`` bytes are free (FIFO), ``release(n)`` frees them.
    A request for more than the capacity is granted the whole capacity."""

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self.used = 0
        self._waiters: deque[tuple[int, asyncio.Future[None]]] = deque()

    def clamp(self, n: int) -> int:
        return max(0, min(n, self.capacity))

    async def acquire(self, n: int) -> int:
        """Wait for ``n`` bytes (clamped to the capacity); returns the bytes taken, to pass to release."""
        n = self.clamp(n)
        if not self._waiters and self.used + n <= self.capacity:
            self.used += n
            return n
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        entry = (n, future)
        self._waiters.append(entry)
        try:
            await future
        except BaseException:
            if future.done() and not future.cancelled():
                self.release(n)  # granted just as the wait was cancelled
            else:
                try:
                    self._waiters.remove(entry)
                except ValueError:
                    pass
                self._grant()
            raise
        return n

    def release(self, n: int) -> None:
        self.used -= n
        self._grant()

    def _grant(self) -> None:
        while self._waiters and self.used + self._waiters[0][0] <= self.capacity:
            n, future = self._waiters.popleft()
            if future.done():
                continue
            self.used += n
            future.set_result(None)


class BodyBudgetMiddleware:
    """Hold a share of a :class:`ByteBudget` for each request to ``paths`` from before its body is read until its
    response is sent: the Content-Length (twice it for JSON), or the body limit when the length is not declared."""

    def __init__(self, app: ASGIApp, paths: Collection[str], capacity: int, max_body_bytes: int) -> None:
        self.app = app
        self.paths = frozenset(paths)
        self.budget = ByteBudget(capacity)
        self.max_body_bytes = max_body_bytes

    def charge(self, headers: Headers) -> int:
        """Bytes a request is charged, from its headers."""
        length = headers.get("content-length", "")
        n = int(length) if length.isdigit() else self.max_body_bytes
        json = headers.get("content-type", "").split(";")[0].strip().lower() == "application/json"
        return min(n, self.max_body_bytes) * (JSON_FACTOR if json else 1)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] not in self.paths or scope["method"] != "POST":
            await self.app(scope, receive, send)
            return
        taken = await self.budget.acquire(self.charge(Headers(scope=scope)))
        try:
            await self.app(scope, receive, send)
        finally:
            self.budget.release(taken)
