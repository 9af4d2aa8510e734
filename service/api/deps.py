"""Request dependencies, as ``Annotated`` aliases: the service state, readiness, admin auth, JSON bodies."""

from __future__ import annotations

import hmac
from dataclasses import dataclass
from typing import Annotated

from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from starlette.exceptions import HTTPException

from index.searcher import Searcher
from service.core.config import Settings
from service.engine import Engine
from service.jobs import RebuildJobs
from service.metrics import ServiceMetrics
from service.refine_queue import RefineQueue


@dataclass
class ServiceState:
    """Everything a request handler needs, built once by create_app."""

    settings: Settings
    metrics: ServiceMetrics
    engine: Engine
    jobs: RebuildJobs
    refine_queue: RefineQueue | None = None
    """The refinement job queue (SEISBIND_REDIS_URL), or None when none is configured."""


async def get_state(request: Request) -> ServiceState:
    """The service state (async: FastAPI would run a plain function in the thread pool, a hand-off per request)."""
    return request.app.state.seisbind


StateDep = Annotated[ServiceState, Depends(get_state)]


async def get_searcher(state: StateDep) -> Searcher:
    """The index being served; 503 (NotReadyError) when there is none."""
    return state.engine.require_searcher()


SearcherDep = Annotated[Searcher, Depends(get_searcher)]

_bearer = HTTPBearer(auto_error=False, description="SEISBIND_ADMIN_TOKEN (or the content of SEISBIND_ADMIN_TOKEN_FILE)")


async def require_admin(state: StateDep,
                        credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)]) -> None:
    """Bearer-token check: 403 when no token is configured (admin disabled), 401 without a token, 403 when wrong.
    (async: a plain function would run in a thread pool, a hand-off per request for a check of microseconds)"""
    expected = state.settings.resolved_admin_token()
    if expected is None:
        raise HTTPException(403, "admin endpoints are disabled: no SEISBIND_ADMIN_TOKEN or SEISBIND_ADMIN_TOKEN_FILE "
                                 "is configured")
    if credentials is None:
        raise HTTPException(401, "missing admin token: send 'Authorization: Bearer <token>'",
                            headers={"WWW-Authenticate": "Bearer"})
    if not hmac.compare_digest(_sent_bytes(credentials.credentials), expected.encode()):  # constant time
        raise HTTPException(403, "wrong admin token")


def _sent_bytes(value: str) -> bytes:
    """The bytes a client sent for a header value: ASGI servers hand them over decoded as latin-1, so encoding back
    restores them (a UTF-8 token then matches its UTF-8 setting); anything else is taken as UTF-8. Never raises."""
    try:
        return value.encode("latin-1")
    except UnicodeEncodeError:
        return value.encode("utf-8", errors="surrogatepass")


AdminDep = Annotated[None, Depends(require_admin)]


async def require_json(request: Request) -> None:
    """415 unless the body is declared as JSON."""
    ctype = request.headers.get("content-type", "")
    if ctype.split(";")[0].strip().lower() != "application/json":
        raise HTTPException(415, f"unsupported Content-Type {ctype or '(none)'!r}; send application/json")


JsonBody = Annotated[None, Depends(require_json)]
