"""POST /retrieve, /infer-descriptors (seismic queries, micro-batched) and /retrieve-by-descriptors (physics)."""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Annotated, Any

from fastapi import APIRouter, Query, Request
from fastapi.responses import Response
from pydantic import BaseModel

from seisbind.neighbours import Weighting
from seisbind.readout import Method

from service.api.deps import JsonBody, SearcherDep, ServiceState, StateDep
from service.api.payload import GathersPayload, check_query, read_gathers
from service.engine import Hits
from service.inputs import NPY_MEDIA_TYPE, SEGY_MEDIA_TYPE, check_descriptors, check_k, check_method
from service.plausibility import bank_range, check_descriptor_plausibility, descriptor_warnings
from service.results import inferred_descriptors, neighbours, with_confidence, with_warnings
from service.schemas import DescriptorQuery, ErrorBody, InferRequest, InferResponse, RetrieveRequest, RetrieveResponse

router = APIRouter(tags=["retrieval"])

_ERRORS: dict[int | str, dict[str, Any]] = {
    413: {"model": ErrorBody, "description": "body over SEISBIND_MAX_BODY_BYTES"},
    415: {"model": ErrorBody, "description": "Content-Type is none of application/json, application/x-npy, "
                                             "application/x-segy"},
    422: {"model": ErrorBody, "description": "wrong shape or dtype, NaN/Inf, k out of range, malformed body, a SEG-Y "
                                             "file that cannot be read or mapped (the reason in detail)"},
    503: {"model": ErrorBody, "description": "no index loaded (see /readyz)"},
}


_K_QUERY: dict[str, Any] = {"minimum": 1}
"""Documented lower bound of the k query parameter; check_k enforces the range (with the limits in its message)."""


def _gathers_body(model: type[BaseModel]) -> dict[str, Any]:
    """OpenAPI request body: the JSON model, or raw .npy bytes with the other fields as query parameters."""
    return {"requestBody": {"required": True, "content": {
        "application/json": {"schema": model.model_json_schema()},
        NPY_MEDIA_TYPE: {"schema": {"type": "string", "format": "binary",
                                    "description": "bytes written by numpy.save of a float32 (or float64) array "
                                                   "(5, 1000, 70) or (B, 5, 1000, 70)"}},
        SEGY_MEDIA_TYPE: {"schema": {"type": "string", "format": "binary",
                                     "description": "a shot-organised SEG-Y file of any 2-D geometry, ingested onto "
                                                    "the model's (docs/ingest.md); the response holds the report"}},
    }}}


def _json(model: type[BaseModel], doc: dict[str, Any]) -> Response:
    """Validate a response document against its model and serialise it (velocity_model left out when absent)."""
    return Response(model.model_validate(doc).model_dump_json(exclude_none=True), media_type="application/json")


def _retrieve_response(state: ServiceState, hits: Hits, k: int, include_models: bool,
                       warnings: Sequence[Sequence[str]] = (), ingest: dict[str, Any] | None = None) -> Response:
    """The /retrieve response document for ``hits`` (with each query's ``warnings`` and, for a SEG-Y body, the
    ingest report), validated and serialised."""
    names = state.engine.index_descriptor_names(hits.searcher)
    results = neighbours(hits.searcher, hits.D, hits.I, names, include_models)
    results = (with_confidence(results, hits.confidence, hits.out_of_distribution, warnings) if hits.confidence
               else with_warnings(results, warnings))
    doc = {"results": results,
           "encoder": state.engine.bundle.bundle_id,
           "index_version": hits.searcher.version, "k": k, "ingest": ingest}
    return _json(RetrieveResponse, doc)


def _record(state: ServiceState, endpoint: str, payload: GathersPayload | None, decode_s: float, queue_s: float,
            hits: Hits, fetch_s: float) -> None:
    stages = {"receive": payload.receive_s} if payload is not None else {}
    stages |= {"decode": decode_s, "queue": queue_s, "encode": hits.encode_s, "search": hits.search_s,
               "fetch": fetch_s}
    state.metrics.observe_stages(endpoint, stages)


@router.post("/retrieve", response_model=RetrieveResponse, responses=_ERRORS,
             openapi_extra=_gathers_body(RetrieveRequest),
             summary="Shot gathers -> the top-k velocity models of the bank")
async def retrieve(
    request: Request, state: StateDep, searcher: SearcherDep,
    k: Annotated[int | None, Query(description="neighbours per gather (.npy bodies; JSON may set it too)",
                                   json_schema_extra=_K_QUERY)] = None,
    include_models: Annotated[bool | None, Query(description="return the velocity models (.npy bodies)")] = None,
) -> Response:
    """For each gather, in input order: rank, id, cosine score, source (file, row) and descriptors of its k nearest
    bank entries, and with ``include_models`` each entry's velocity model ([depth 70][lateral 70], m/s)."""
    engine, settings = state.engine, state.settings
    with engine.incoming():
        payload = await read_gathers(request, RetrieveRequest, {"k": k, "include_models": include_models},
                                     settings.max_gathers, engine.run_blocking)
    kk = check_k(payload.fields["k"], settings.max_k, searcher.count)
    hits, info = await engine.search_gathers(payload.gathers, kk)
    t1 = time.perf_counter()
    with_models = bool(payload.fields["include_models"])
    # Velocity models make the response large: build it off the event loop then.
    response = (await engine.run_blocking(_retrieve_response, state, hits, kk, True, payload.warnings, payload.ingest)
                if with_models else _retrieve_response(state, hits, kk, False, payload.warnings, payload.ingest))
    _record(state, "/retrieve", payload, payload.decode_s, info.queue_s, hits, time.perf_counter() - t1)
    return response


@router.post("/infer-descriptors", response_model=InferResponse, responses=_ERRORS,
             openapi_extra=_gathers_body(InferRequest),
             summary="Shot gathers -> descriptors averaged over the k nearest bank entries")
async def infer_descriptors(
    request: Request, state: StateDep, searcher: SearcherDep,
    k: Annotated[int | None, Query(description="neighbours averaged (.npy bodies), default 5",
                                   json_schema_extra=_K_QUERY)] = None,
    weighting: Annotated[Weighting | None, Query(description="mean or similarity (.npy bodies)")] = None,
    method: Annotated[Method | None, Query(description="blend or neighbours (.npy bodies)")] = None,
) -> Response:
    """For each gather: every descriptor's estimate, by default the mean of the neighbours' (the mean over its k
    nearest bank entries, plain or weighted by cosine similarity) and the encoder bundle's descriptor readout of
    the gather; the neighbours' standard deviation as the uncertainty, the unit, and the neighbours' ids and
    scores."""
    engine, settings = state.engine, state.settings
    with engine.incoming():
        payload = await read_gathers(request, InferRequest, {"k": k, "weighting": weighting, "method": method},
                                     settings.max_gathers, engine.run_blocking)
    kk = check_k(payload.fields["k"], settings.max_k, searcher.count)
    names = engine.index_descriptor_names(searcher)
    readout = engine.bundle.readout
    how = check_method(payload.fields["method"], None if readout is None else readout.names, names)
    hits, info = await engine.search_gathers(payload.gathers, kk)
    t1 = time.perf_counter()
    w = payload.fields["weighting"]
    blend_with = None
    if how == "blend" and readout is not None and hits.embeddings is not None:
        blend_with = readout.predict(hits.embeddings)
    results = inferred_descriptors(hits.searcher, hits.D, hits.I, engine.index_descriptor_names(hits.searcher), w,
                                   blend_with)
    results = with_confidence(results, hits.confidence, hits.out_of_distribution, payload.warnings)
    doc = {"results": results, "encoder": engine.bundle.bundle_id, "index_version": hits.searcher.version,
           "k": kk, "weighting": w, "method": how, "ingest": payload.ingest}
    response = _json(InferResponse, doc)
    _record(state, "/infer-descriptors", payload, payload.decode_s, info.queue_s, hits, time.perf_counter() - t1)
    return response


@router.post("/retrieve-by-descriptors", response_model=RetrieveResponse,
             responses=_ERRORS,
             summary="A descriptor vector (all eight, by name) -> the top-k velocity models (physics -> velocity)")
async def retrieve_by_descriptors(request: Request, body: DescriptorQuery, state: StateDep, searcher: SearcherDep,
                                  _json_body: JsonBody) -> Response:
    """Embed the descriptors with the physics encoder and search the bank; the response has the shape of
    /retrieve with one result."""
    engine, settings = state.engine, state.settings
    t0 = time.perf_counter()
    check_query(request, ())
    x = check_descriptors(body.descriptors, engine.query_descriptor_names)
    check_descriptor_plausibility(body.descriptors)
    lo, hi = bank_range(searcher.version, searcher.descriptors)
    warnings = [descriptor_warnings(body.descriptors, engine.index_descriptor_names(searcher), lo, hi)]
    kk = check_k(body.k, settings.max_k, searcher.count)
    decode_s = time.perf_counter() - t0
    hits = await engine.run_blocking(engine.search_descriptors, x, kk)
    t1 = time.perf_counter()
    response = await engine.run_blocking(_retrieve_response, state, hits, kk, body.include_models, warnings)
    _record(state, "/retrieve-by-descriptors", None, decode_s, 0.0, hits, time.perf_counter() - t1)
    return response
