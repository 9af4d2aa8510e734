"""POST /refine (learned: answered at once; fwi, both: a job on the Redis queue), GET and DELETE /refine/{job_id}."""

from __future__ import annotations

import re
from typing import Annotated, Any

import numpy as np
from fastapi import APIRouter, Path, Query, Request
from fastapi.responses import Response
from starlette.exceptions import HTTPException

from seisbind.bundle import BundleError

from service.api.deps import SearcherDep, ServiceState, StateDep
from service.api.payload import read_gathers
from service.api.routes.retrieval import _ERRORS, _gathers_body
from service.inputs import InputError, check_k
from service.refine_queue import RefineQueue, RefineSpec
from service.refine_schemas import (
    Method,
    RefineAccepted,
    RefineCancelled,
    RefineJob,
    RefineLearnedResponse,
    RefineRequest,
    StartKind,
)
from service.refine_start import Plan, job_document, model_entry, plan, start_models
from service.schemas import ErrorBody

router = APIRouter(tags=["refinement"])
JOB_ID = re.compile(r"^[0-9a-f]{32}$")

_POST_ERRORS: dict[int | str, dict[str, Any]] = {
    **_ERRORS,
    422: {"model": ErrorBody, "description": "as for /retrieve, and: iterations out of range, too many gathers for "
                                             "a job, a method or start the encoder bundle cannot do (no learned "
                                             "refiner); nothing is queued"},
    503: {"model": ErrorBody, "description": "no index loaded; no job queue configured or reachable; the queue full "
                                             "(Retry-After)"},
}
_JOB_ERRORS: dict[int | str, dict[str, Any]] = {
    404: {"model": ErrorBody, "description": "no such job (never submitted, or expired)"},
    422: {"model": ErrorBody, "description": "job id over 64 characters"},
    503: {"model": ErrorBody, "description": "the job queue cannot be reached"},
}


def learned_refiner(bundle: Any) -> Any:
    """The encoder bundle's learned refiner, or None when it has none; 503 when its graph cannot be used."""
    try:
        return getattr(bundle, "refiner", None)
    except BundleError as e:
        raise HTTPException(503, f"the encoder bundle's learned refiner cannot be used: {e}") from e


def require_queue(state: ServiceState) -> RefineQueue:
    """The job queue; 503 when SEISBIND_REDIS_URL is not set."""
    queue = state.refine_queue
    if queue is None:
        raise HTTPException(503, "no refinement job queue is configured (SEISBIND_REDIS_URL): only method 'learned' "
                                 "is served here")
    return queue


def _json(model: type[Any], doc: dict[str, Any], status: int = 200, headers: dict[str, str] | None = None,
          keep_none: bool = False) -> Response:
    """Validate and serialise a response; absent fields left out, except with ``keep_none`` (then only an absent
    ``results`` is left out: a job reports "error": null, "result": null)."""
    body = model.model_validate(doc)
    text = (body.model_dump_json(exclude={"results"} if doc.get("results") is None else None) if keep_none
            else body.model_dump_json(exclude_none=True))
    return Response(text, status_code=status, media_type="application/json", headers=headers)


def _neighbours(hits: Any, k: int) -> tuple[np.ndarray, np.ndarray, list[list[str]]]:
    """(models [B,K,70,70], scores [B,K], ids of the first k per gather) of a search's hits."""
    models = hits.searcher.velocity_models(hits.I)[:, :, 0]
    ids = [[hits.searcher.ids[i] for i in row[:k].tolist()] for row in hits.I]
    return models, np.asarray(hits.D, np.float32), ids


def _learned_response(state: ServiceState, hits: Any, gathers: np.ndarray, p: Plan,
                      ingest: dict[str, Any] | None) -> Response:
    refiner = state.engine.bundle.refiner  # plan() checked it exists
    models, scores, ids = _neighbours(hits, p.k)
    out = start_models(Plan("learned", "learned", p.k, p.search_k, 0), gathers, models, scores, refiner)
    doc = {"results": [model_entry(m, ids[b]) for b, m in enumerate(out)], "encoder": state.engine.bundle.bundle_id,
           "index_version": hits.searcher.version, "k": p.k, "ingest": ingest}
    return _json(RefineLearnedResponse, doc)


@router.post("/refine", responses=_POST_ERRORS, openapi_extra=_gathers_body(RefineRequest), status_code=202,
             response_model=RefineAccepted, summary="Shot gathers -> a refined velocity model (learned: at once; fwi, "
                                                    "both: a queued job)")
async def refine(
    request: Request, state: StateDep, searcher: SearcherDep,
    method: Annotated[Method | None, Query(description="learned, fwi, both or check (.npy and SEG-Y bodies)")] = None,
    start: Annotated[StartKind | None, Query(description="learned, top1, topk, smooth or bestfit")] = None,
    k: Annotated[int | None, Query(description="neighbours for the start model", json_schema_extra={"minimum": 1})]
    = None,
    iterations: Annotated[int | None, Query(description="FWI iterations per gather",
                                            json_schema_extra={"minimum": 1})] = None,
) -> Response:
    """Retrieve each gather's k nearest bank models and make the start model from them (top-1, similarity-weighted
    top-k mean, smooth 1-D, the one whose simulated data fit best, or the learned refiner's model). method learned
    answers 200 with the learned refiner's models; fwi and both queue a full-waveform inversion job (202, its URL in
    Location) that workers run; the job also reports every neighbour's data misfit. check queues a job that only
    simulates the neighbours and returns the one whose data fit best (the physics check of the retrieval)."""
    engine, settings = state.engine, state.settings
    with engine.incoming():
        payload = await read_gathers(request, RefineRequest, {"method": method, "start": start, "k": k,
                                                              "iterations": iterations},
                                     settings.max_gathers, engine.run_blocking)
    refiner = await engine.run_blocking(learned_refiner, engine.bundle)  # its session is made on first use
    p = plan(payload.fields, refiner, len(payload.gathers), default_iterations=settings.refine_default_iterations,
             max_iterations=settings.refine_max_iterations, max_gathers=settings.refine_max_gathers)
    check_k(p.k, settings.max_k, searcher.count)
    if p.search_k > searcher.count:
        raise InputError(f"the learned refiner takes {p.search_k} neighbours, but the index holds {searcher.count} "
                         "entries: use method 'fwi' with another start")
    queue = require_queue(state) if p.method != "learned" else None
    hits, _ = await engine.search_gathers(payload.gathers, min(p.search_k, searcher.count))
    if queue is None:
        return await engine.run_blocking(_learned_response, state, hits, payload.gathers, p, payload.ingest)
    models, scores, ids = _neighbours(hits, p.k)
    starts = await engine.run_blocking(start_models, p, payload.gathers, models, scores, refiner)
    spec = RefineSpec(payload.gathers, starts, p.method, p.start, p.iterations, settings.refine_max_seconds, ids,
                      np.ascontiguousarray(models[:, :p.k]))
    job_id = await engine.run_blocking(queue.submit, spec)
    doc = {"job_id": job_id, "state": "queued", "method": p.method, "start": p.start, "iterations": p.iterations,
           "gathers": len(payload.gathers)}
    return _json(RefineAccepted, doc, 202, {"Location": f"/refine/{job_id}"})


def _job_id(job_id: str) -> str:
    if not JOB_ID.match(job_id):
        raise HTTPException(404, f"no refinement job {job_id[:64]!r}: job ids are 32 hexadecimal digits")
    return job_id


JobIdPath = Annotated[str, Path(description="the job_id POST /refine returned", max_length=64)]


@router.get("/refine/{job_id}", response_model=RefineJob, responses=_JOB_ERRORS,
            summary="A refinement job's state, progress and result")
async def refine_job(job_id: JobIdPath, state: StateDep) -> Response:
    """state (queued, running, succeeded, failed, cancelled), progress 0-1, the iteration and misfit history of the
    gather being refined, and once succeeded the refined model(s) with descriptors and misfit history; the reason
    when failed."""
    queue = require_queue(state)
    record = await state.engine.run_blocking(queue.status, _job_id(job_id))
    return _json(RefineJob, await state.engine.run_blocking(job_document, record), keep_none=True)


@router.delete("/refine/{job_id}", response_model=RefineCancelled, responses={
    **_JOB_ERRORS, 409: {"model": ErrorBody, "description": "the job has already succeeded or failed"}},
    summary="Cancel a refinement job")
async def cancel_refine_job(job_id: JobIdPath, state: StateDep) -> Response:
    """A waiting job is removed from the queue (state cancelled); a running one stops at its next iteration (state
    running until then, with cancel_requested)."""
    queue = require_queue(state)
    new_state = await state.engine.run_blocking(queue.cancel, _job_id(job_id))
    return _json(RefineCancelled, {"job_id": job_id, "state": new_state},
                 200 if new_state == "cancelled" else 202)
