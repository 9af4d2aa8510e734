"""The configured limits written into the OpenAPI schema, so that it states the ranges the service enforces: the
maximum of every ``k`` (SEISBIND_MAX_K) and the most gathers in a JSON batch (SEISBIND_MAX_GATHERS). What no
schema can state stays documented in words: k is also bounded by the size of the index being served."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from fastapi import FastAPI
from pydantic import BaseModel

from service.core.config import Settings

REF_TEMPLATE = "#/components/schemas/{model}"


def _integer_branch(schema: dict[str, Any]) -> dict[str, Any] | None:
    """The integer schema of ``schema`` itself or of its anyOf (an optional query parameter is integer | null)."""
    if schema.get("type") == "integer":
        return schema
    return next((s for s in schema.get("anyOf", []) if s.get("type") == "integer"), None)


def _patch_model(schema: dict[str, Any], settings: Settings) -> None:
    props = schema.get("properties", {})
    k = _integer_branch(props.get("k", {}))
    if k is not None:
        k["maximum"] = settings.max_k
    batch = [s for s in props.get("gathers", {}).get("anyOf", []) if s.get("items", {}).get("type") == "array"
             and s.get("items", {}).get("items", {}).get("items", {}).get("type") == "array"]
    for s in batch:  # (B, 5, 1000, 70): the one whose items are gathers
        s["maxItems"] = settings.max_gathers


def with_limits(schema: dict[str, Any], settings: Settings) -> dict[str, Any]:
    """``schema`` (an OpenAPI document) with the limits of ``settings`` filled in, in place; returns it."""
    for item in schema.get("paths", {}).values():
        for op in item.values():
            if not isinstance(op, dict):
                continue
            for param in op.get("parameters", []):
                k = _integer_branch(param.get("schema", {})) if param.get("name") == "k" else None
                if k is not None:
                    k["maximum"] = settings.max_k
            for media in op.get("requestBody", {}).get("content", {}).values():
                _patch_model(media.get("schema", {}), settings)
    for model in schema.get("components", {}).get("schemas", {}).values():
        _patch_model(model, settings)
    return schema


def install_openapi_limits(app: FastAPI, settings: Settings, models: Sequence[type[BaseModel]] = ()) -> None:
    """Make ``app.openapi()`` (and /openapi.json, /docs) return the schema with the configured limits, and with
    ``models`` among its components (request models that handlers read themselves, referenced by ``$ref``)."""
    generate = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            schema = generate()
            components = schema.setdefault("components", {}).setdefault("schemas", {})
            for model in models:
                components.setdefault(model.__name__, model.model_json_schema(ref_template=REF_TEMPLATE))
            app.openapi_schema = with_limits(schema, settings)
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]
