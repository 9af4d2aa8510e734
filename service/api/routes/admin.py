"""Admin: rebuild the index from a bank in the background and swap it in; follow the job. Bearer-token protected."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Path, Request, Response
from starlette.exceptions import HTTPException

from service.api.deps import AdminDep, JsonBody, StateDep
from service.api.payload import check_query, json_model
from service.banks import BankOutsideRootError, relative_bank, resolve_bank
from service.schemas import ErrorBody, JobStatus, RebuildAccepted, RebuildRequest

router = APIRouter(prefix="/admin", tags=["admin"])

_AUTH_ERRORS: dict[int | str, dict[str, Any]] = {
    401: {"model": ErrorBody, "description": "no bearer token"},
    403: {"model": ErrorBody, "description": "wrong token, admin disabled (no token configured), or a bank outside "
                                             "the bank root"},
}


@router.post("/rebuild-index", status_code=202, response_model=RebuildAccepted,
             openapi_extra={"requestBody": {"required": True, "content": {  # RebuildRequest: service.app adds it
                 "application/json": {"schema": {"$ref": "#/components/schemas/RebuildRequest"}}}}},
             responses=_AUTH_ERRORS | {
                 409: {"model": ErrorBody, "description": "a rebuild is already running"},
                 413: {"model": ErrorBody, "description": "body over SEISBIND_MAX_BODY_BYTES"},
                 415: {"model": ErrorBody, "description": "Content-Type is not application/json"},
                 422: {"model": ErrorBody, "description": "no such bank, or a malformed body"}},
             summary="Rebuild the index from a bank under SEISBIND_BANK_ROOT, then swap it in")
async def rebuild_index(request: Request, state: StateDep, _admin: AdminDep, _json_body: JsonBody,
                        response: Response) -> RebuildAccepted:
    """Starts a background job: embed the bank, build and verify a new index version, make it current, and swap
    it into the running service atomically. Requests keep being served by the old index until then; if the job
    fails, the old index keeps serving and the job reports the error."""
    check_query(request, ())
    body = await json_model(request, RebuildRequest)  # read only now: the token is checked first
    root = state.settings.bank_root
    if root is None:
        raise HTTPException(403, "rebuilds are disabled: SEISBIND_BANK_ROOT is not configured")
    try:
        bank = await state.engine.run_blocking(resolve_bank, root, body.bank)
    except BankOutsideRootError as e:
        raise HTTPException(403, str(e)) from e
    job = state.jobs.start(bank, body.index_type)
    response.headers["Location"] = f"/admin/jobs/{job.job_id}"
    return RebuildAccepted(job_id=job.job_id, state=job.state)


@router.get("/jobs/{job_id}", response_model=JobStatus,
            responses=_AUTH_ERRORS | {404: {"model": ErrorBody, "description": "unknown job id"},
                                      422: {"model": ErrorBody, "description": "job id over 64 characters"}},
            summary="State and progress of a rebuild job")
async def get_job(job_id: Annotated[str, Path(max_length=64)], state: StateDep, _admin: AdminDep) -> JobStatus:
    """queued | running | succeeded | failed, progress 0..1, the new version once succeeded, the error if failed."""
    job = state.jobs.get(job_id)
    if job is None:
        raise HTTPException(404, f"no job {job_id!r} (ids of finished jobs are kept for the last "
                                 f"{state.settings.jobs_keep} jobs)")
    return JobStatus(**{**job, "bank": relative_bank(job["bank"], state.settings.bank_root)})
