"""Dynamic micro-batching: requests that arrive together are processed together, off the event loop.

``workers`` threads take batches from one queue. A worker takes the first waiting request and everything queued
behind it, and waits at most ``max_wait_s`` for more only while other requests are known to be on their way
(``incoming()`` > 0). A lone request is therefore never delayed, and under load the batches grow, which is what
makes throughput grow with concurrency.

A new request wakes the lowest-numbered idle worker (or the worker already gathering a batch), so with little load
worker 0 serves everything: it can share a core with the event loop (``service.core.cpus``). Results go back to the
event loop in one call per batch.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

P = TypeVar("P")
R = TypeVar("R")
log = logging.getLogger("service.batching")


@dataclass
class _Entry(Generic[P]):
    payload: P
    size: int
    future: asyncio.Future[Any]
    enqueued: float = field(default_factory=time.perf_counter)


@dataclass(frozen=True)
class BatchInfo:
    """How an item was processed: time queued, its batch's size (items and units), and the batch's wall time."""

    queue_s: float
    batch_items: int
    batch_size: int
    process_s: float


class MicroBatcher(Generic[P, R]):
    """Batch ``submit``-ted payloads for ``process(payloads) -> results`` (same length, same order), which runs in
    one of ``workers`` threads.

    Args:
        process: called in a worker thread with a list of payloads; returns one result per payload.
        max_size: a batch stops growing once the summed ``size`` of its payloads reaches this.
        max_wait_s: longest wait for more payloads after the first, only while ``incoming()`` > 0.
        workers: batches processed at the same time (one thread each).
        incoming: number of requests on their way to ``submit`` (decoding); 0 means nobody to wait for.
        initializer: run once in each worker thread when it starts, with the worker's number (0, 1, ...).
    """

    def __init__(self, process: Callable[[list[P]], Sequence[R]], max_size: int, max_wait_s: float, workers: int = 1,
                 incoming: Callable[[], int] = lambda: 0,
                 initializer: Callable[[int], None] | None = None) -> None:
        self._process = process
        self._max_size = max_size
        self._max_wait_s = max_wait_s
        self._workers = workers
        self._incoming = incoming
        self._initializer = initializer
        self._lock = threading.Lock()
        self._wake = [threading.Condition(self._lock) for _ in range(workers)]
        self._queue: deque[_Entry[P]] = deque()
        self._idle: set[int] = set()  # workers waiting for a request
        self._gathering: set[int] = set()  # workers waiting for more requests to join their batch
        self._threads: list[threading.Thread] = []
        self._running = False
        self._loop: asyncio.AbstractEventLoop | None = None
        self.on_batch: Callable[[int, int, float], None] | None = None
        """Optional hook called (in the worker thread) with (items, size, seconds) after each batch."""

    async def start(self) -> None:
        """Start the worker threads; results are delivered to the running event loop."""
        self._loop = asyncio.get_running_loop()
        self._running = True
        self._threads = [threading.Thread(target=self._work, args=(i,), name=f"seisbind-batch-{i}", daemon=True)
                         for i in range(self._workers)]
        for t in self._threads:
            t.start()

    async def stop(self) -> None:
        """Stop the workers (a batch in progress finishes); requests still queued fail with RuntimeError."""
        with self._lock:
            self._running = False
            left = list(self._queue)
            self._queue.clear()
            for cond in self._wake:
                cond.notify_all()
        for e in left:
            if not e.future.done():
                e.future.set_exception(RuntimeError("service is shutting down"))
        threads, self._threads = self._threads, []
        for t in threads:
            await asyncio.to_thread(t.join)

    async def submit(self, payload: P, size: int = 1) -> tuple[R, BatchInfo]:
        """Queue one payload and wait for its result and how it was batched."""
        fut: asyncio.Future[tuple[R, BatchInfo]] = asyncio.get_running_loop().create_future()
        with self._lock:
            if not self._running:
                raise RuntimeError("the micro-batcher is not running")
            self._queue.append(_Entry(payload, size, fut))
            if self._gathering:
                self._wake[min(self._gathering)].notify()
            elif self._idle:
                i = min(self._idle)
                self._idle.discard(i)  # claimed: the next request wakes another idle worker
                self._wake[i].notify()
        return await fut

    # -- worker threads ----------------------------------------------------------------------------------------

    def _work(self, i: int) -> None:
        if self._initializer is not None:
            self._initializer(i)
        while (batch := self._next_batch(i)) is not None:
            if batch:  # empty when every request of it gave up
                self._run_batch(i, batch)

    def _run_batch(self, i: int, batch: list[_Entry[P]]) -> None:
        start = time.perf_counter()
        infos: list[BatchInfo] | None = None
        try:
            processed = self._process([e.payload for e in batch])
            if len(processed) != len(batch):
                raise RuntimeError(f"batch processor returned {len(processed)} results for {len(batch)} payloads")
            results: Sequence[R] | BaseException = processed
        except Exception as exc:  # noqa: BLE001 - every waiting request gets the error
            log.exception("micro-batch of %d failed", len(batch))
            results = exc
        else:
            took = time.perf_counter() - start
            size = sum(e.size for e in batch)
            if self.on_batch is not None:
                self.on_batch(len(batch), size, took)
            infos = [BatchInfo(start - e.enqueued, len(batch), size, took) for e in batch]
        with self._lock:  # free before the results go out: a client's next request, sent on its answer, comes here
            self._idle.add(i)
        self._deliver(batch, results, infos)

    def _next_batch(self, i: int) -> list[_Entry[P]] | None:
        """Wait for a request, then gather a batch behind it (empty when all of them were cancelled); None once
        stopped."""
        wake = self._wake[i]
        with self._lock:
            while not self._queue:
                if not self._running:
                    return None
                self._idle.add(i)
                wake.wait()
            self._idle.discard(i)
            batch, size = [], 0
            deadline = time.perf_counter() + self._max_wait_s
            while self._running:
                while self._queue and size < self._max_size:
                    e = self._queue.popleft()
                    if not e.future.cancelled():  # a request that gave up is dropped
                        batch.append(e)
                        size += e.size
                remaining = deadline - time.perf_counter()
                if size >= self._max_size or remaining <= 0 or self._incoming() <= 0:
                    break
                self._gathering.add(i)
                wake.wait(remaining)
                self._gathering.discard(i)
            if self._queue and self._idle:  # more than this batch takes: hand the rest to another worker
                j = min(self._idle)
                self._idle.discard(j)
                self._wake[j].notify()
        return batch

    def _deliver(self, batch: list[_Entry[P]], results: Sequence[R] | BaseException,
                 infos: list[BatchInfo] | None) -> None:
        """Hand a batch's results (or its error) to the event loop, in one call."""
        def settle() -> None:
            for n, e in enumerate(batch):
                if e.future.done():
                    continue
                if isinstance(results, BaseException):
                    e.future.set_exception(results)
                else:
                    assert infos is not None
                    e.future.set_result((results[n], infos[n]))

        assert self._loop is not None
        try:
            self._loop.call_soon_threadsafe(settle)
        except RuntimeError:  # the loop closed while the batch ran (shutdown): nobody is waiting any more
            pass
