"""GET /metrics: Prometheus text exposition."""

from __future__ import annotations

from fastapi import APIRouter
from fastapi.responses import Response
from prometheus_client import CONTENT_TYPE_LATEST

from service.api.deps import StateDep

router = APIRouter(tags=["metrics"])


@router.get("/metrics", response_class=Response, summary="Prometheus metrics",
            responses={200: {"content": {CONTENT_TYPE_LATEST: {}}, "description": "text exposition format"}})
async def metrics(state: StateDep) -> Response:
    """Request counts and latencies per endpoint, time per stage (decode, queue, encode, search, fetch) per
    endpoint, micro-batch sizes, index entries, index version and encoder bundle info, rebuild outcomes; with a
    refinement queue, its jobs waiting and running, job outcomes and run times."""
    body = await state.engine.run_blocking(state.metrics.exposition)  # the refinement queue's figures: from Redis
    return Response(body, media_type=CONTENT_TYPE_LATEST)
