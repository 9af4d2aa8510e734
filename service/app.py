"""The FastAPI application: ``create_app(settings)`` builds it (encoders and the current index loaded at start),
``run(settings)`` serves it with uvicorn (what ``seisbind serve`` calls)."""

from __future__ import annotations

import ctypes
import gc
import logging
import logging.config
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path

from fastapi import FastAPI
from starlette.middleware.cors import CORSMiddleware

from seisbind import __version__

from index.build import build_index
from service.api.body_budget import BodyBudgetMiddleware
from service.api.deps import ServiceState
from service.api.errors import install_error_handlers
from service.api.middleware import BodyLimitMiddleware, RequestContextMiddleware
from service.api.openapi_limits import install_openapi_limits
from service.api.routes.admin import router as admin_router
from service.api.routes.health import router as health_router
from service.api.routes.metrics import router as metrics_router
from service.api.routes.refine import router as refine_router
from service.api.routes.retrieval import router as retrieval_router
from service.api.routes.web import router as web_router
from service.core.config import Settings
from service.core.http_guard import http_options
from service.core.logging import log_config
from service.engine import Engine
from service.index_watch import CurrentWatcher
from service.jobs import RebuildJobs
from service.json_gathers import SMALL_JSON_BYTES
from service.metrics import ServiceMetrics
from service.refine_metrics import QueueCollector
from service.refine_queue import RefineQueue
from service.schemas import RebuildRequest

log = logging.getLogger("service.app")
GATHERS_PATHS = ("/retrieve", "/infer-descriptors", "/refine")
"""Endpoints whose bodies are gathers, up to SEISBIND_MAX_BODY_BYTES (read within the body budget)."""
SMALL_JSON_PATHS = ("/retrieve-by-descriptors", "/admin/rebuild-index")
"""Endpoints whose bodies are a small JSON object (at most SMALL_JSON_BYTES)."""

DESCRIPTION = """Search seismic shot gathers by physics. Send gathers (5 shots x 1000 samples x 70 receivers, OpenFWI
amplitudes) as raw `.npy` bytes (`Content-Type: application/x-npy`, the fast path) or JSON, or a shot-organised SEG-Y
file of any 2-D geometry (`Content-Type: application/x-segy`; ingested onto the model's geometry, with a report of
every step and its warnings in the response's `ingest`); get back the velocity models of the bank that explain them,
with cosine scores, and descriptors inferred from the nearest neighbours.
Every error is a JSON body `{"detail", "status", "request_id"}`."""


def release_memory() -> None:
    """Collect garbage and hand freed heap pages back to the OS (glibc), so that the memory a rebuild used (its own
    ONNX sessions, the bank's embeddings) does not stay resident."""
    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):  # not glibc
        pass


def freeze_startup_objects() -> None:
    """Exclude everything loaded at start (modules, schemas, the index) from later garbage collections, so that
    the full collections a request may trigger stay short (the objects are still freed when unreferenced)."""
    gc.collect()
    gc.freeze()


def make_rebuild(settings: Settings, engine: Engine, metrics: ServiceMetrics) -> Callable[..., str]:
    """The rebuild job's work: build and verify a new version (made current on disk), load it, swap it in."""

    def rebuild(bank: Path, index_type: str, progress: Callable[[float], None]) -> str:
        try:
            version = build_index(settings.encoders, bank, settings.index_root, index_type=index_type,
                                  keep=settings.index_keep, progress_cb=lambda f: progress(0.95 * f),
                                  providers=settings.providers, intra_op_threads=settings.rebuild_threads())
            searcher = engine.load_version(version)
            engine.swap(searcher)
        except BaseException:
            metrics.rebuilds.labels("failed").inc()
            raise
        finally:
            release_memory()
        metrics.rebuilds.labels("succeeded").inc()
        return version

    return rebuild


def create_app(settings: Settings | None = None) -> FastAPI:
    """Build the service: load and warm up the encoder bundle (raises BundleError when it is unusable), load the
    current index version (on any problem the service starts not ready, with the reason at /readyz)."""
    settings = settings if settings is not None else Settings()  # type: ignore[call-arg]
    metrics = ServiceMetrics()
    engine = Engine(settings, metrics)
    engine.warm_up()
    engine.load_current_index()
    queue = (RefineQueue(settings.redis_url, max_queued=settings.refine_max_queued, retries=settings.refine_retries,
                         keep_s=settings.refine_keep_s) if settings.redis_url else None)
    if queue is not None:
        metrics.registry.register(QueueCollector(queue))
    state = ServiceState(settings, metrics, engine, RebuildJobs(make_rebuild(settings, engine, metrics),
                                                                keep=settings.jobs_keep), queue)

    watcher = (CurrentWatcher(engine, settings.index_poll_s, busy=state.jobs.running)
               if settings.index_poll_s > 0 else None)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        await engine.start()
        if watcher is not None:
            watcher.start()
        log.info("service ready" if engine.searcher else "service started, not ready",
                 extra={"encoder": engine.bundle.bundle_id, "index_version": getattr(engine.searcher, "version", None),
                        "providers": engine.providers, "reason": engine.not_ready_reason})
        yield
        if watcher is not None:
            watcher.stop(timeout=2.0)  # a daemon thread: a long load in progress does not hold up the exit
        await engine.stop()

    app = FastAPI(title="SeisBind retrieval service", version=__version__, description=DESCRIPTION,
                  lifespan=lifespan)
    app.state.seisbind = state
    install_error_handlers(app)
    # memory: gathers bodies are read and decoded within a byte budget; small-JSON endpoints take small bodies only
    app.add_middleware(BodyBudgetMiddleware, paths=GATHERS_PATHS, capacity=settings.body_budget(),
                       max_body_bytes=settings.max_body_bytes)
    app.add_middleware(BodyLimitMiddleware, max_bytes=SMALL_JSON_BYTES, paths=SMALL_JSON_PATHS,
                       limit_name="this endpoint's limit", hint="its JSON body is a few hundred bytes")
    app.add_middleware(BodyLimitMiddleware, max_bytes=settings.max_body_bytes)
    if settings.cors_origins:  # off unless configured: no CORS headers at all, browsers keep other origins out
        app.add_middleware(CORSMiddleware, allow_origins=settings.cors_origins, allow_methods=["GET", "POST"],
                           allow_headers=["Authorization", "Content-Type", "X-Request-ID"],
                           expose_headers=["X-Request-ID"], max_age=600)
    for router in (retrieval_router, refine_router, admin_router, health_router, metrics_router, web_router):
        app.include_router(router)
    install_openapi_limits(app, settings, models=[RebuildRequest])  # read by its handler, after the token check
    static_paths = {str(getattr(r, "path")) for r in app.routes if "{" not in str(getattr(r, "path", "{"))}
    # outermost: request ids, access logs and request metrics for everything, errors included
    app.add_middleware(RequestContextMiddleware, metrics=metrics, known_paths=static_paths)
    return app


def app_from_env() -> FastAPI:
    """Factory for ``uvicorn --factory service.app:app_from_env``: settings from SEISBIND_* variables."""
    settings = Settings()  # type: ignore[call-arg]
    logging.config.dictConfig(log_config(settings.log_level, settings.log_json))
    app = create_app(settings)
    freeze_startup_objects()
    return app


def run(settings: Settings) -> None:
    """Serve with uvicorn on settings.host:settings.port until interrupted (JSON logs, our access log; the request
    deadline and header limits of service.core.http_guard)."""
    import uvicorn

    config = log_config(settings.log_level, settings.log_json)
    logging.config.dictConfig(config)
    app = create_app(settings)
    freeze_startup_objects()
    uvicorn.run(app, host=settings.host, port=settings.port, log_config=config, access_log=False,
                timeout_graceful_shutdown=10, server_header=False,
                **http_options(settings.request_timeout_s, settings.max_header_bytes, settings.max_headers))
