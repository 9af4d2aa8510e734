"""Gather requests in either encoding: raw .npy bytes (fast path) or JSON. Body reading is bounded by the body-limit
middleware; parsing runs off the event loop."""

from __future__ import annotations

import json
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, replace
from typing import Any, Literal

import numpy as np
from fastapi import Request
from pydantic import BaseModel, ValidationError
from starlette.exceptions import HTTPException

from service.api.errors import describe_validation_errors, unreadable_json
from service.inputs import (
    NPY_MEDIA_TYPE, SEGY_MEDIA_TYPE, InputError, check_gathers, gathers_from_json, parse_npy, parse_segy,
)

JSON_MEDIA_TYPE = "application/json"
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
    if encoding == "segy":
        fields = _validate(model, {"gathers": None, **given})
        arr, report = parse_segy(body)
        fields.pop("gathers", None)
        return GathersPayload(check_gathers(arr, max_gathers), fields, encoding, ingest=report)
    if encoding == "npy":
        arr = parse_npy(body)
        fields = _validate(model, {"gathers": None, **given})
    else:
        try:
            doc = json.loads(body)
        except (ValueError, RecursionError) as e:
            raise InputError(unreadable_json(e)) from e
        if not isinstance(doc, dict) or "gathers" not in doc:
            raise InputError('JSON body must be an object with "gathers" (and optionally "k", ...)')
        fields = _validate(model, {**given, **doc, "gathers": None})  # the gathers are checked by numpy below
        arr = gathers_from_json(doc["gathers"])
    fields.pop("gathers", None)
    return GathersPayload(check_gathers(arr, max_gathers), fields, encoding)


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
    """Check the Content-Type (415), read the body (413 past the limit), parse and validate it (422); ``offload``
    runs the parsing of JSON, SEG-Y and large .npy bodies in a thread (``Engine.run_blocking``)."""
    encoding = body_encoding(request)
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
