"""Gather requests in any encoding: raw .npy bytes (fast path), JSON, or a SEG-Y file (ingested onto the model's
geometry). Body reading is bounded by the body-limit
middleware; parsing runs off the event loop."""

from __future__ import annotations

import json
import time
from collections.abc import Awaitable, Callable, Collection
from dataclasses import dataclass, replace
from typing import Any, Literal, TypeVar

import numpy as np
from fastapi import Request
from pydantic import BaseModel, ValidationError
from starlette.exceptions import HTTPException

from service.api.errors import describe_validation_errors, unreadable_json
from service.inputs import NPY_MEDIA_TYPE, SEGY_MEDIA_TYPE, InputError, check_gathers, parse_npy, parse_segy
from service.json_gathers import parse_gathers_json
from service.plausibility import check_gathers_plausibility

JSON_MEDIA_TYPE = "application/json"
M = TypeVar("M", bound=BaseModel)
Encoding = Literal["npy", "json", "segy"]
INLINE_NPY_BYTES = 4 * 1024 * 1024
""".npy bodies up to this size (two gathers) are parsed on the event loop: about a millisecond of work, cheaper
than two thread hand-offs; larger ones and every JSON body are parsed in the thread pool."""


@dataclass(frozen=True)
class GathersPayload:
    """Validated gathers [B, 5, 1000, 70] float32 and the request's other fields (body over query parameters)."""

    gathers: np.ndarray
    fields: dict[str, Any]
    encoding: Encoding
    receive_s: float = 0.0
    """Time spent reading the body from the connection."""
    decode_s: float = 0.0
    """Time spent parsing and validating it."""
    ingest: dict[str, Any] | None = None
    """For a SEG-Y body: the ingest report (steps and warnings), returned with the response."""
    warnings: tuple[tuple[str, ...], ...] = ()
    """Per gather, what makes its result doubtful (service.plausibility); empty when nothing."""


def body_encoding(request: Request) -> Encoding:
    """npy, json or segy from the Content-Type; 415 for anything else."""
    ctype = request.headers.get("content-type", "")
    media = ctype.split(";")[0].strip().lower()
    if media == NPY_MEDIA_TYPE:
        return "npy"
    if media == JSON_MEDIA_TYPE:
        return "json"
    if media == SEGY_MEDIA_TYPE:
        return "segy"
    raise HTTPException(415, f"unsupported Content-Type {ctype or '(none)'!r}; send {NPY_MEDIA_TYPE} (raw .npy "
                             f"bytes), {JSON_MEDIA_TYPE} or {SEGY_MEDIA_TYPE} (a shot-organised SEG-Y file)")


def decode(body: bytes, encoding: Encoding, model: type[BaseModel], query: dict[str, Any],
           max_gathers: int) -> GathersPayload:
    """Parse and validate a gathers request (blocking; run it in a thread).

    For .npy and SEG-Y, the other fields come from the query parameters; for JSON, from the body (query parameters
    fill in what the body leaves out). The request ``model`` validates those fields (and, for JSON, the body's
    keys). A SEG-Y file is ingested onto the OpenFWI geometry (one gather) and its report kept in the payload.
    """
    given = {k: v for k, v in query.items() if v is not None}
    report = None
    if encoding == "segy":
        arr, report = parse_segy(body)
        fields = _validate(model, {"gathers": None, **given})
    elif encoding == "npy":
        arr = parse_npy(body)
        fields = _validate(model, {"gathers": None, **given})
    else:  # bounded memory: never a Python object per number (service.json_gathers)
        doc, arr = parse_gathers_json(body, max_gathers,
                                      lambda doc: _validate(model, {**given, **doc, "gathers": None}))
        fields = _validate(model, {**given, **doc, "gathers": None})  # the gathers were checked by the parser
    fields.pop("gathers", None)
    gathers = check_gathers(arr, max_gathers)
    warnings = check_gathers_plausibility(gathers)
    return GathersPayload(gathers, fields, encoding, ingest=report, warnings=tuple(tuple(w) for w in warnings))


def check_query(request: Request, known: Collection[str]) -> None:
    """422 naming the query parameters an endpoint does not take, or gives more than once (a JSON body refuses
    unknown fields the same way)."""
    names = [name for name, _ in request.query_params.multi_items()]
    unknown = sorted({n for n in names if n not in known})
    if unknown:
        takes = f"it takes {', '.join(sorted(known))}" if known else "it takes none"
        raise InputError(f"unknown query parameter{'s' if len(unknown) > 1 else ''} "
                         f"{', '.join(repr(n[:40]) for n in unknown[:10])}; {takes}")
    repeated = sorted({n for n in names if names.count(n) > 1})
    if repeated:
        raise InputError(f"query parameter {', '.join(map(repr, repeated))} given more than once")


async def json_model(request: Request, model: type[M]) -> M:
    """A small JSON body read and validated against ``model`` by the handler itself (so that what the handler
    checks first, e.g. the admin token, is checked before the body is even read); 422 with the usual messages."""
    body = await read_body(request)
    if not body:
        raise InputError("empty request body; send a JSON object")
    try:
        doc = json.loads(body)
    except (ValueError, RecursionError) as e:
        raise InputError(unreadable_json(e)) from e
    try:
        return model.model_validate(doc)
    except ValidationError as e:
        raise InputError(describe_validation_errors(e.errors())[0]) from e


def _validate(model: type[BaseModel], doc: dict[str, Any]) -> dict[str, Any]:
    try:
        return model.model_validate(doc).model_dump()
    except ValidationError as e:
        raise InputError(describe_validation_errors(e.errors())[0]) from e


async def read_body(request: Request) -> bytes:
    """The request body. Unlike ``Request.body()``, a body that arrives in one message (the HTTP protocol of
    ``service.core.http_guard`` hands over whole bodies) is returned as is, not copied."""
    chunks = [chunk async for chunk in request.stream() if chunk]
    return chunks[0] if len(chunks) == 1 else b"".join(chunks)


async def read_gathers(request: Request, model: type[BaseModel], query: dict[str, Any], max_gathers: int,
                       offload: Callable[..., Awaitable[GathersPayload]]) -> GathersPayload:
    """Check the Content-Type (415) and the query parameters (422 for one not in ``query``), read the body (413 past
    the limit), parse and validate it, physical plausibility included (422; warnings in the payload); ``offload``
    runs the parsing of JSON, SEG-Y and large .npy bodies in a thread (``Engine.run_blocking``)."""
    encoding = body_encoding(request)
    check_query(request, query)
    t0 = time.perf_counter()
    body = await read_body(request)
    if not body:
        raise InputError("empty request body; send gathers as .npy bytes, JSON or a SEG-Y file")
    t1 = time.perf_counter()
    if encoding == "npy" and len(body) <= INLINE_NPY_BYTES:
        payload = decode(body, encoding, model, query, max_gathers)
    else:
        payload = await offload(decode, body, encoding, model, query, max_gathers)
    return replace(payload, receive_s=t1 - t0, decode_s=time.perf_counter() - t1)
