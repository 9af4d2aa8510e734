"""The serving core: encoder sessions, the index being served, and batched encode + search.

The index is held as one reference (``self.searcher``); a rebuild publishes a new one by a single assignment, so
every batch sees either the old or the new index, never a mix. Each batch reads the reference once and returns
it with its hits, so a response's ids, descriptors and velocity models come from the index that was searched.
"""

from __future__ import annotations

import asyncio
import contextvars
import functools
import logging
import os
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, TypeVar

import numpy as np

from seisbind.acquisition import GATHER_SHAPE
from seisbind.bundle import EncoderBundle
from seisbind.calibration import assess, calibration_info
from seisbind.calibration_features import FEATURE_K
from seisbind.cores import usable_cores
from seisbind.descriptors import DESCRIPTOR_NAMES

from index.ann import set_search_threads
from index.searcher import Searcher
from index.store import IndexStore, IndexStoreError
from service.batching import BatchInfo, MicroBatcher
from service.core.config import Settings
from service.core.cpus import CpuPlan, pin_thread, unpin_thread
from service.metrics import ServiceMetrics

log = logging.getLogger("service.engine")
T = TypeVar("T")


class NotReadyError(RuntimeError):
    """No usable index is loaded (HTTP 503); the message says why."""


@dataclass(frozen=True)
class GatherQuery:
    """One request's gathers [b, 5, 1000, 70] float32, checked by ``service.inputs.check_gathers``, and its k."""

    gathers: np.ndarray
    k: int


@dataclass(frozen=True)
class Hits:
    """Search results of one request against one index: D [b, k] cosine, I [b, k] entry numbers."""

    searcher: Searcher
    D: np.ndarray
    I: np.ndarray  # noqa: E741 - faiss naming
    encode_s: float
    search_s: float
    confidence: list[float | None] = field(default_factory=list)
    """Per query (seismic queries only): P(top-1 within 150 m/s MAE of the truth); None without a calibration."""
    out_of_distribution: list[bool] = field(default_factory=list)
    """Per query (seismic queries only): the calibration's out-of-distribution test."""
    embeddings: np.ndarray | None = None
    """[b, dim] (seismic queries only): the queries' seismic embeddings (what the descriptor readout reads)."""


class Engine:
    """Encoders, the served index, and the micro-batcher of seismic queries.

    Args:
        settings: service settings (bundle, index root, threads, batching).
        metrics: where index/model info and batch sizes are recorded.
    """

    def __init__(self, settings: Settings, metrics: ServiceMetrics) -> None:
        self.settings = settings
        self.metrics = metrics
        self.bundle = EncoderBundle(settings.encoders, providers=settings.providers,
                                    intra_op_threads=settings.intra_op_threads(),
                                    allow_spinning=settings.ort_allow_spinning,
                                    variants={"seismic": settings.seismic_variant})
        self.seismic = self.bundle.seismic
        self.physics = self.bundle.physics
        self.providers = {"seismic": self.seismic.providers, "physics": self.physics.providers}
        names = list(self.bundle.manifest.descriptor_names) or list(DESCRIPTOR_NAMES)
        self.query_descriptor_names: list[str] = list(names)
        self.searcher: Searcher | None = None
        self.not_ready_reason: str | None = "index not loaded yet"
        self.current_version: str | None = None
        """The version CURRENT named when last loaded (may differ from the one served when it was refused)."""
        self.current_refused: str | None = None
        """Why that version is not served (corrupt, other encoders, ...), or None."""
        self._incoming = 0
        self._incoming_lock = threading.Lock()
        self.cpu_plan = CpuPlan.make(settings.workers(), settings.pin_threads)
        self.batcher: MicroBatcher[GatherQuery, Hits] = MicroBatcher(
            self._encode_and_search, max_size=settings.batch_max_gathers,
            max_wait_s=settings.batch_wait_ms / 1000.0, workers=settings.workers(),
            incoming=lambda: self._incoming, initializer=self._start_worker)
        self.batcher.on_batch = lambda items, size, s: metrics.batch_size.observe(size)
        self._blocking = ThreadPoolExecutor(usable_cores() + 4, thread_name_prefix="seisbind-blocking",
                                            initializer=unpin_thread)
        metrics.set_model(self.bundle.bundle_id, self.seismic.providers)
        log.info("encoder bundle %s loaded (seismic graph: %s)", self.bundle.bundle_id, self.seismic.variant,
                 extra={"providers": self.providers, "intra_op_threads": settings.intra_op_threads(),
                        "cpus": self.cpu_plan.describe()})

    # -- threads -----------------------------------------------------------------------------------------------

    def _start_worker(self, i: int) -> None:
        pin_thread(self.cpu_plan.workers[i])
        set_search_threads(self.settings.search_threads)

    async def start(self) -> None:
        """Start serving on the running event loop: pin its thread (``CpuPlan``) and start the batch workers."""
        pin_thread(self.cpu_plan.loop)
        await self.batcher.start()

    async def stop(self) -> None:
        """Stop the batch workers and the blocking-work threads."""
        await self.batcher.stop()
        self._blocking.shutdown(wait=False, cancel_futures=True)

    async def run_blocking(self, fn: Callable[..., T], *args: Any) -> T:
        """Run blocking work (JSON parsing, large responses, file access) in a thread that may use every CPU (the
        event loop's own thread may be pinned to one), with the caller's context (request id) carried over."""
        ctx = contextvars.copy_context()
        return await asyncio.get_running_loop().run_in_executor(self._blocking, functools.partial(ctx.run, fn, *args))

    # -- index -------------------------------------------------------------------------------------------------

    def load_version(self, version: str) -> Searcher:
        """Load ``version`` of the index root, verifying every file's checksum and the encoder bundle id."""
        return Searcher.load(self.settings.index_root, version, expected_bundle_id=self.bundle.bundle_id)

    def load_current_index(self) -> None:
        """Serve the version CURRENT names. When it does not verify (corrupt, incomplete, other encoders), log an
        ERROR naming it and the problem and serve the newest earlier version that verifies, reporting the refusal
        (``current_refused``); when none does, stay not ready with the reason. Never rewrites CURRENT (the index
        root may be a read-only volume shared by replicas)."""
        root = self.settings.index_root
        store = IndexStore(root)
        self._clean_stale_builds(store)
        try:
            current = store.current()
        except IndexStoreError as e:  # a garbled pointer: try the versions there are, newest first
            current, refused = None, str(e)
            log.error("index CURRENT refused: %s", e, extra={"index_root": str(root)})
        else:
            if current is None:
                self._not_ready(f"no index version under {root}: build one with `seisbind build-index` "
                                "or POST /admin/rebuild-index")
                return
            try:
                self.swap(self.load_version(current))
                return
            except Exception as e:  # noqa: BLE001 - any failure: refuse this version, try the previous ones
                refused = str(e)
                log.error("index version %s (CURRENT) refused: %s", current, e,
                          extra={"version": current, "index_root": str(root)})
        for version in reversed(store.versions()):
            if current is not None and version >= current:
                continue  # only versions before CURRENT: never undo a deliberate rollback
            try:
                searcher = self.load_version(version)
            except Exception as e:  # noqa: BLE001
                log.error("index version %s refused too: %s", version, e, extra={"version": version})
                continue
            self.swap(searcher)
            self.current_version, self.current_refused = current, refused
            log.warning("serving the previous verified index version %s instead of CURRENT %s", version, current,
                        extra={"version": version, "current": current, "current_refused": refused})
            return
        self.current_version, self.current_refused = current, refused
        what = f"index version {current} named by CURRENT" if current else "the CURRENT pointer"
        self._not_ready(f"{what} refused: {refused}; no earlier version verifies either")

    def _not_ready(self, reason: str) -> None:
        self.not_ready_reason = reason
        self.metrics.set_index(None, self.bundle.bundle_id, "", 0)
        log.error("index not loaded: %s", reason)

    def _clean_stale_builds(self, store: IndexStore) -> None:
        """Delete what builds killed midway left in the index root (skipped on a read-only root)."""
        if not os.access(store.root, os.W_OK):
            return
        try:
            removed = store.clean_stale_builds()
        except OSError as e:
            log.warning("index %s: could not clean up interrupted builds: %s", store.root, e)
            return
        if removed:
            log.warning("index %s: removed what interrupted builds left: %s", store.root, ", ".join(removed))

    def swap(self, searcher: Searcher) -> None:
        """Serve ``searcher`` from now on (one reference assignment: requests in flight finish on the old one)."""
        if searcher.bundle_id != self.bundle.bundle_id:
            raise NotReadyError(f"index {searcher.version} was built with encoder bundle {searcher.bundle_id}, "
                                f"not {self.bundle.bundle_id}")
        old = self.searcher
        self.searcher = searcher
        self.not_ready_reason = None
        self.current_version, self.current_refused = searcher.version, None
        self.metrics.set_index(searcher.version, searcher.bundle_id, searcher.manifest.index_type,
                               searcher.count)
        if old is not None:
            self.metrics.swaps.inc()
        log.info("serving index version %s (%d entries)", searcher.version, searcher.count,
                 extra={"previous_version": old.version if old else None})

    def require_searcher(self) -> Searcher:
        """The index being served; NotReadyError when there is none."""
        s = self.searcher
        if s is None:
            raise NotReadyError(f"not ready: {self.not_ready_reason}")
        return s

    def index_descriptor_names(self, searcher: Searcher) -> list[str]:
        """Names of the columns of ``searcher.descriptors``."""
        return list(searcher.manifest.descriptor_names)

    # -- seismic queries (batched) -----------------------------------------------------------------------------

    def incoming(self) -> _Incoming:
        """Context manager marking a request on its way to the batcher (lets a batch wait for it)."""
        return _Incoming(self)

    async def search_gathers(self, gathers: np.ndarray, k: int) -> tuple[Hits, BatchInfo]:
        """Encode gathers [b, 5, 1000, 70] float32 and search the index, batched with concurrent requests."""
        return await self.batcher.submit(GatherQuery(gathers, k), size=len(gathers))

    def _encode_and_search(self, queries: list[GatherQuery]) -> list[Hits]:
        """Run in a batch worker thread: one ONNX run and one FAISS search for all queries together."""
        searcher = self.require_searcher()  # read once: the whole batch uses this index
        t0 = time.perf_counter()
        x = queries[0].gathers if len(queries) == 1 else np.concatenate([q.gathers for q in queries])
        emb = self.seismic.run(x)  # checked by service.inputs.check_gathers
        t1 = time.perf_counter()
        k = min(max(FEATURE_K, *(q.k for q in queries)), searcher.count)  # the confidence reads FEATURE_K hits
        D, I = searcher.search(emb, k)
        confidence, ood = assess(self.bundle.calibration, D, I, searcher.velocity_models, x)
        t2 = time.perf_counter()
        out, start = [], 0
        for q in queries:
            n, rows = len(q.gathers), slice(start, start + len(q.gathers))
            out.append(Hits(searcher, D[rows, :q.k], I[rows, :q.k], t1 - t0, t2 - t1, confidence[rows], ood[rows],
                            emb[rows]))
            start += n
        return out

    # -- descriptor queries ------------------------------------------------------------------------------------

    def search_descriptors(self, descriptors: np.ndarray, k: int) -> Hits:
        """Encode descriptors [b, 8] with the physics encoder and search (physics -> velocity); blocking."""
        searcher = self.require_searcher()
        t0 = time.perf_counter()
        emb = self.physics.encode(descriptors)
        t1 = time.perf_counter()
        D, I = searcher.search(emb, min(k, searcher.count))
        return Hits(searcher, D, I, t1 - t0, time.perf_counter() - t1)

    def warm_up(self) -> None:
        """One inference per session, so the first request does not pay for ONNX Runtime's lazy initialisation."""
        self.seismic.encode(np.zeros((1, *GATHER_SHAPE), np.float32))
        self.physics.encode(np.ones((1, len(self.query_descriptor_names)), np.float32) * 1000.0)

    def info(self) -> dict[str, Any]:
        """What /v1/info reports."""
        s = self.searcher
        return {
            "encoder": self.bundle.bundle_id,
            "index_version": s.version if s else None,
            "count": s.count if s else 0,
            "dim": self.bundle.embedding_dim,
            "index_type": s.manifest.index_type if s else None,
            "index_device": s.device if s else None,
            "providers": self.providers,
            "variants": {"seismic": self.seismic.variant, "physics": self.physics.variant},
            "intra_op_threads": self.settings.intra_op_threads(),
            "ready": s is not None,
            "reason": None if s else self.not_ready_reason,
            "current_version": self.current_version,
            "current_refused": self.current_refused,
            "descriptor_names": self.query_descriptor_names,
            "calibration": calibration_info(self.bundle.calibration),
            "descriptor_readout": None if self.bundle.readout is None else {
                k: self.bundle.readout.fit.get(k) for k in ("pairs", "data", "date")},
            "batching": {"max_gathers": self.settings.batch_max_gathers, "wait_ms": self.settings.batch_wait_ms,
                         "workers": self.settings.workers()},
            "cpus": self.cpu_plan.describe(),
            "limits": {"max_body_bytes": self.settings.max_body_bytes, "max_gathers": self.settings.max_gathers,
                       "max_k": self.settings.max_k},
        }


class _Incoming:
    def __init__(self, engine: Engine) -> None:
        self._engine = engine

    def __enter__(self) -> None:
        with self._engine._incoming_lock:
            self._engine._incoming += 1

    def __exit__(self, *exc: object) -> None:
        with self._engine._incoming_lock:
            self._engine._incoming -= 1
