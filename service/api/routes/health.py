"""GET /healthz (liveness), /readyz (encoders and index loaded), /v1/info (what is served, and how)."""

from __future__ import annotations

from fastapi import APIRouter
from fastapi.responses import JSONResponse

from service.api.deps import StateDep
from service.core.logging import REQUEST_ID
from service.schemas import Health, Info, Readiness

router = APIRouter(tags=["health"])


@router.get("/healthz", response_model=Health, summary="Liveness: the process answers")
async def healthz() -> Health:
    return Health()


@router.get("/readyz", response_model=Readiness, responses={503: {"model": Readiness}},
            summary="Readiness: encoders and an index built with them are loaded")
async def readyz(state: StateDep) -> JSONResponse:
    """200 when requests can be served; 503 with the reason otherwise (no index, index built with other encoders,
    corrupt index). ``current_refused`` says why the version CURRENT names is not the one served (an earlier
    verified version serves instead, or none)."""
    engine = state.engine
    s = engine.searcher
    body = Readiness(ready=s is not None, reason=None if s else engine.not_ready_reason,
                     encoder=engine.bundle.bundle_id, index_version=s.version if s else None,
                     current_version=engine.current_version, current_refused=engine.current_refused).model_dump()
    if s is None:
        body |= {"detail": f"not ready: {engine.not_ready_reason}", "status": 503, "request_id": REQUEST_ID.get()}
    return JSONResponse(body, status_code=200 if s is not None else 503)


@router.get("/v1/info", response_model=Info, summary="Encoder bundle, index version and size, execution providers")
async def info(state: StateDep) -> Info:
    return Info(**state.engine.info(), rebuild_running=state.jobs.running())
