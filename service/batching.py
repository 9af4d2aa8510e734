"""Dynamic micro-batching: requests that arrive together are processed together, off the event loop.

A worker takes the first waiting request, then everything already queued, and waits at most ``max_wait_s`` for
more only while other requests are known to be on their way (``incoming()`` > 0). A lone request is therefore
never delayed, and under load the batches grow, which is what makes throughput grow with concurrency.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
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
        workers: batches processed at the same time.
        incoming: number of requests on their way to ``submit`` (decoding); 0 means nobody to wait for.
        initializer: run once in each worker thread when it starts.
    """

    def __init__(self, process: Callable[[list[P]], Sequence[R]], max_size: int, max_wait_s: float, workers: int = 1,
                 incoming: Callable[[], int] = lambda: 0, initializer: Callable[[], None] | None = None) -> None:
        self._process = process
        self._max_size = max_size
        self._max_wait_s = max_wait_s
        self._workers = workers
        self._incoming = incoming
        self._initializer = initializer
        self._queue: asyncio.Queue[_Entry[P]] | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._executor: ThreadPoolExecutor | None = None
        self.on_batch: Callable[[int, int, float], None] | None = None
        """Optional hook called with (items, size, seconds) after each batch."""

    async def start(self) -> None:
        """Start the worker tasks on the running event loop."""
        self._queue = asyncio.Queue()
        self._executor = ThreadPoolExecutor(self._workers, thread_name_prefix="seisbind-batch",
                                            initializer=self._initializer)
        self._tasks = [asyncio.create_task(self._run(), name=f"batch-worker-{i}") for i in range(self._workers)]

    async def stop(self) -> None:
        """Stop the workers; requests still queued fail with RuntimeError."""
        for t in self._tasks:
            t.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks = []
        if self._queue is not None:
            while not self._queue.empty():
                e = self._queue.get_nowait()
                if not e.future.done():
                    e.future.set_exception(RuntimeError("service is shutting down"))
        if self._executor is not None:
            self._executor.shutdown(wait=True, cancel_futures=True)

    async def submit(self, payload: P, size: int = 1) -> tuple[R, BatchInfo]:
        """Queue one payload and wait for its result and how it was batched."""
        if self._queue is None or not self._tasks:
            raise RuntimeError("the micro-batcher is not running")
        fut: asyncio.Future[tuple[R, BatchInfo]] = asyncio.get_running_loop().create_future()
        self._queue.put_nowait(_Entry(payload, size, fut))
        return await fut

    async def _collect(self, first: _Entry[P]) -> list[_Entry[P]]:
        assert self._queue is not None
        batch, size = [first], first.size
        deadline = time.perf_counter() + self._max_wait_s
        while size < self._max_size:
            try:
                e = self._queue.get_nowait()
            except asyncio.QueueEmpty:
                remaining = deadline - time.perf_counter()
                if remaining <= 0 or self._incoming() <= 0:
                    break
                try:
                    e = await asyncio.wait_for(self._queue.get(), remaining)
                except asyncio.TimeoutError:
                    break
            batch.append(e)
            size += e.size
        return batch

    async def _run(self) -> None:
        assert self._queue is not None
        loop = asyncio.get_running_loop()
        while True:
            first = await self._queue.get()
            batch = [e for e in await self._collect(first) if not e.future.done()]  # drop cancelled requests
            if not batch:
                continue
            start = time.perf_counter()
            try:
                results = await loop.run_in_executor(self._executor, self._process, [e.payload for e in batch])
                if len(results) != len(batch):
                    raise RuntimeError(f"batch processor returned {len(results)} results for {len(batch)} payloads")
            except asyncio.CancelledError:
                for e in batch:
                    if not e.future.done():
                        e.future.set_exception(RuntimeError("service is shutting down"))
                raise
            except Exception as exc:  # noqa: BLE001 - every waiting request gets the error
                log.exception("micro-batch of %d failed", len(batch))
                for e in batch:
                    if not e.future.done():
                        e.future.set_exception(exc)
                continue
            took = time.perf_counter() - start
            size = sum(e.size for e in batch)
            if self.on_batch is not None:
                self.on_batch(len(batch), size, took)
            for e, r in zip(batch, results):
                if not e.future.done():
                    e.future.set_result((r, BatchInfo(start - e.enqueued, len(batch), size, took)))
