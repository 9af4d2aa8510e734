"""Every error as a JSON body ``{"detail", "status", "request_id"}``; nothing a client sends reaches the process
as an unhandled exception."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

from fastapi import FastAPI, Request
from fastapi.encoders import jsonable_encoder
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException
from starlette.requests import ClientDisconnect
from starlette.routing import Match

from service.core.logging import REQUEST_ID
from service.engine import NotReadyError
from service.inputs import InputError
from service.jobs import JobRunningError
from service.refine_queue import JobFinished, QueueFull, QueueUnavailable, UnknownJob

log = logging.getLogger("service.api")
HTTP_METHODS = ("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS")


def error_response(status: int, detail: str, headers: dict[str, str] | None = None,
                   errors: list[dict[str, Any]] | None = None) -> JSONResponse:
    """The JSON error body every failure uses."""
    body: dict[str, Any] = {"detail": detail, "status": status, "request_id": REQUEST_ID.get()}
    if errors is not None:
        body["errors"] = errors
    return JSONResponse(body, status_code=status, headers=headers)


def unreadable_json(exc: BaseException) -> str:
    """The message for a JSON body that cannot be decoded at all."""
    if isinstance(exc, UnicodeDecodeError):
        return f"body is not valid JSON: not UTF-8 text ({exc.reason} at byte {exc.start})"
    if isinstance(exc, RecursionError):
        return "body is not valid JSON: nested too deeply"
    return f"body is not valid JSON: {exc}"


def describe_validation_errors(errors: Sequence[Any]) -> tuple[str, list[dict[str, Any]]]:
    """A one-line summary naming each bad field, and the field errors without the (possibly huge) inputs."""
    parts, cleaned = [], []
    for e in errors:
        loc = ".".join(str(x) for x in e.get("loc", ()))
        if e.get("type") == "json_invalid":  # FastAPI's: loc ("body", character offset), the reason in ctx
            where = (tuple(e.get("loc", ())) or ("?",))[-1]
            parts.append(f"body is not valid JSON: {(e.get('ctx') or {}).get('error', 'decode error')} "
                         f"(at character {where})")
        elif e.get("type") == "missing" and tuple(e.get("loc", ())) == ("body",):
            parts.append("empty request body; send a JSON object")
        else:
            parts.append(f"{loc}: {e.get('msg', 'invalid')}" if loc else str(e.get("msg", "invalid")))
        cleaned.append({k: v for k, v in e.items() if k not in ("input", "url", "ctx")})
    return "; ".join(parts) or "invalid request", jsonable_encoder(cleaned)


def allowed_methods(request: Request) -> str:
    """The methods of every route whose path matches the request's: the Allow header of a 405 (Starlette names only
    the first matching route's, which is wrong when one path has a route per method, as /refine/{job_id} has)."""
    methods = {m for m in HTTP_METHODS for route in request.app.router.routes
               if route.matches({**request.scope, "method": m})[0] == Match.FULL}
    return ", ".join(sorted(methods))


def install_error_handlers(app: FastAPI) -> None:
    """Register the JSON error handlers on ``app``."""

    @app.exception_handler(HTTPException)
    async def http_error(request: Request, exc: HTTPException) -> JSONResponse:
        if exc.status_code == 400 and isinstance(exc.__cause__, (ValueError, RecursionError)):
            # FastAPI's "There was an error parsing the body": a JSON body that is not UTF-8 or nests too deeply
            return error_response(422, unreadable_json(exc.__cause__))
        headers = getattr(exc, "headers", None)
        if exc.status_code == 405:
            headers = {**(headers or {}), "Allow": allowed_methods(request)}
        return error_response(exc.status_code, str(exc.detail), headers=headers)

    @app.exception_handler(RequestValidationError)
    async def validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
        detail, errors = describe_validation_errors(exc.errors())
        return error_response(422, detail, errors=errors)

    @app.exception_handler(InputError)
    async def input_error(request: Request, exc: InputError) -> JSONResponse:
        return error_response(422, str(exc))

    @app.exception_handler(NotReadyError)
    async def not_ready(request: Request, exc: NotReadyError) -> JSONResponse:
        return error_response(503, str(exc), headers={"Retry-After": "5"})

    @app.exception_handler(JobRunningError)
    async def job_running(request: Request, exc: JobRunningError) -> JSONResponse:
        return error_response(409, str(exc))

    @app.exception_handler(QueueUnavailable)
    async def queue_unavailable(request: Request, exc: QueueUnavailable) -> JSONResponse:
        log.error("%s", exc)
        return error_response(503, str(exc), headers={"Retry-After": "5"})

    @app.exception_handler(QueueFull)
    async def queue_full(request: Request, exc: QueueFull) -> JSONResponse:
        retry_after = request.app.state.seisbind.settings.refine_retry_after_s
        return error_response(503, str(exc), headers={"Retry-After": str(retry_after)})

    @app.exception_handler(UnknownJob)
    async def unknown_job(request: Request, exc: UnknownJob) -> JSONResponse:
        return error_response(404, str(exc))

    @app.exception_handler(JobFinished)
    async def job_finished(request: Request, exc: JobFinished) -> JSONResponse:
        return error_response(409, str(exc))

    @app.exception_handler(ClientDisconnect)
    async def client_gone(request: Request, exc: ClientDisconnect) -> JSONResponse:
        log.info("client disconnected before sending the whole body of %s %s", request.method, request.url.path)
        return error_response(400, "client disconnected before the request body was complete")

    @app.exception_handler(Exception)
    async def unexpected(request: Request, exc: Exception) -> JSONResponse:
        log.exception("unhandled error on %s %s", request.method, request.url.path)
        return error_response(500, f"internal error ({type(exc).__name__}); quote request id {REQUEST_ID.get()}")
