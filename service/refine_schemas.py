"""Request and response models of POST /refine, GET and DELETE /refine/{job_id} (docs/api.md)."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from service.schemas import _GATHERS_SCHEMA, _K_SCHEMA, WholeInt

Method = Literal["learned", "fwi", "both", "check"]
StartKind = Literal["learned", "top1", "topk", "smooth", "bestfit"]
JobStateName = Literal["queued", "running", "succeeded", "failed", "cancelled"]


class RefineRequest(BaseModel):
    """Shot gathers as JSON (or .npy / SEG-Y bytes with the other fields as query parameters) and how to refine
    them."""

    model_config = ConfigDict(extra="forbid")

    gathers: Any = Field(json_schema_extra=_GATHERS_SCHEMA)
    method: Method | None = Field(None, description="learned (the bundle's learned refiner, answered at once), fwi "
                                                    "(full-waveform inversion, a queued job), both (FWI from the "
                                                    "learned model) or check (a queued job that simulates the k "
                                                    "neighbours and returns the one whose data fit best, no FWI). "
                                                    "Default fwi")
    start: StartKind | None = Field(None, description="FWI start model: learned, top1, topk (similarity-weighted "
                                                      "mean of the top k), smooth (1-D) or bestfit (the neighbour "
                                                      "whose simulated data fit the gathers best, chosen by the "
                                                      "worker). Default topk (learned for methods learned and both, "
                                                      "bestfit for check)")
    k: WholeInt = Field(5, strict=True, description="neighbours retrieved for the start model (1 <= k <= "
                                                    "SEISBIND_MAX_K)", json_schema_extra=_K_SCHEMA)
    iterations: WholeInt | None = Field(None, strict=True, description="FWI iterations per gather (1 <= iterations "
                                                                       "<= SEISBIND_REFINE_MAX_ITERATIONS; default "
                                                                       "SEISBIND_REFINE_DEFAULT_ITERATIONS)",
                                        json_schema_extra={"minimum": 1})


class RefinedModel(BaseModel):
    """One gather's refined model."""

    velocity_model: list[list[float]] = Field(description="[depth 70][lateral 70], m/s")
    descriptors: dict[str, float] = Field(description="physical descriptors of the refined model")
    start_ids: list[str] = Field(description="ids of the retrieved bank models the start was made from, best first")
    start_model: list[list[float]] | None = Field(None, description="FWI: the start model, [depth 70][lateral 70], "
                                                                    "m/s")
    neighbour_misfits: list[float] | None = Field(None, description="FWI jobs: the data misfit of each retrieved "
                                                                    "neighbour (in start_ids order), simulated by "
                                                                    "the worker: how well each explains the gathers")
    best_fit_rank: int | None = Field(None, description="FWI jobs: position in start_ids of the neighbour that fits "
                                                        "the data best")
    misfit: list[float] | None = Field(None, description="FWI data misfit after each iteration")
    start_misfit: float | None = Field(None, description="data misfit of the start model")
    final_misfit: float | None = Field(None, description="data misfit of the returned model (never above the start)")
    iterations: int | None = Field(None, description="FWI iterations run")
    seconds: float | None = Field(None, description="FWI run time, s")
    stopped: str | None = Field(None, description="why FWI stopped: iterations, time, plateau or cancelled")


class RefineLearnedResponse(BaseModel):
    """method learned: one refined model per gather, in input order."""

    results: list[RefinedModel]
    encoder: str
    index_version: str
    k: int
    ingest: dict[str, Any] | None = None


class RefineAccepted(BaseModel):
    """method fwi or both: the job queued (poll GET /refine/{job_id}, the Location header)."""

    job_id: str
    state: JobStateName = "queued"
    method: Method
    start: StartKind
    iterations: int
    gathers: int


class RefineJob(BaseModel):
    """A refinement job: state, progress and, once it has succeeded, the refined model(s)."""

    job_id: str
    state: JobStateName
    progress: float = Field(description="0-1 over all the job's gathers and iterations")
    iteration: int = Field(description="iterations done on the gather being refined")
    gather: int = Field(description="index of the gather being refined (0-based)")
    gathers: int
    misfit: list[float] = Field(description="data misfit after each iteration of the gather being refined")
    attempt: int = Field(description="runs started (more than 1 after a worker died and the job was run again)")
    method: Method
    start: StartKind
    iterations: int
    cancel_requested: bool
    error: str | None = Field(None, description="why the job failed")
    created_at: str | None = None
    started_at: str | None = None
    ended_at: str | None = None
    result: RefinedModel | None = Field(None, description="the (first) gather's refined model, once succeeded (or "
                                                          "the best so far when cancelled mid-run)")
    results: list[RefinedModel] | None = Field(None, description="every gather's, when the job has more than one")


class RefineCancelled(BaseModel):
    """DELETE /refine/{job_id}: cancelled at once (it was waiting), or asked to stop at the next iteration."""

    job_id: str
    state: JobStateName
    cancel_requested: bool = True
