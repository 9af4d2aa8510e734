"""Request and response models of every endpoint (docs/api.md), with OpenAPI examples."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    SerializerFunctionWrapHandler,
    StrictFloat,
    model_serializer,
)

from seisbind.acquisition import GATHER_SHAPE
from seisbind.descriptors import DESCRIPTOR_NAMES, DESCRIPTOR_UNITS
from seisbind.neighbours import Weighting
from seisbind.readout import Method

from service.plausibility import AMPLITUDE_LIMIT, DESCRIPTOR_RANGES

_NEIGHBOR_EXAMPLE: dict[str, Any] = {
    "rank": 1, "id": "model/model3:12", "score": 0.83, "source": {"file": "model/model3.npy", "row": 12},
    "descriptors": {"v_mean": 2875.1, "v_std": 612.4, "v_min": 1712.0, "v_max": 4020.5, "v_top": 1790.2,
                    "v_bottom": 3950.7, "grad_z": 3.41, "grad_x": 0.05},
}
_DESCRIPTORS_EXAMPLE: dict[str, Any] = {"v_mean": 3000.0, "v_std": 600.0, "v_min": 1800.0, "v_max": 4200.0,
                                        "v_top": 1900.0,
                        "v_bottom": 4100.0, "grad_z": 3.2, "grad_x": 0.1}


def _nested_array(shape: tuple[int, ...]) -> dict[str, Any]:
    """JSON schema of nested lists of numbers with exactly this shape."""
    schema: dict[str, Any] = {"type": "number", "minimum": -AMPLITUDE_LIMIT, "maximum": AMPLITUDE_LIMIT}
    for n in reversed(shape):
        schema = {"type": "array", "items": schema, "minItems": n, "maxItems": n}
    return schema


_GATHERS_SCHEMA: dict[str, Any] = {
    "anyOf": [_nested_array(GATHER_SHAPE), {"type": "array", "items": _nested_array(GATHER_SHAPE), "minItems": 1}],
    "description": "one gather, nested lists of numbers of shape (5, 1000, 70) [shot][time sample][receiver], or a "
                   "batch of them (B, 5, 1000, 70), at most SEISBIND_MAX_GATHERS (/v1/info limits.max_gathers); "
                   f"finite amplitudes within +-{AMPLITUDE_LIMIT:g} (100x the OpenFWI extremes; a gather with "
                   "every value the same is refused too: docs/api.md)",
}
_K_SCHEMA: dict[str, Any] = {"minimum": 1}
"""k is documented as >= 1; the range check itself (with the index size and SEISBIND_MAX_K) is check_k's, for its
clearer message."""
_WARNINGS = ("present only when the query is possible but doubtful: amplitudes outside the training data's range, "
             "dead shots, descriptors outside the bank's range (docs/api.md)")
_K_LIMIT = " (1 <= k <= SEISBIND_MAX_K, /v1/info limits.max_k, and <= the index size)"
_DESCRIPTORS_SCHEMA: dict[str, Any] = {
    "properties": {n: {"type": "number", "description": DESCRIPTOR_UNITS[n], "minimum": DESCRIPTOR_RANGES[n][0],
                       "maximum": DESCRIPTOR_RANGES[n][1]} for n in DESCRIPTOR_NAMES},
    "required": list(DESCRIPTOR_NAMES), "additionalProperties": False,
}


def _whole_float_to_int(value: Any) -> Any:
    """1.0 -> 1: JSON Schema counts a number with no fractional part as an integer (the OpenAPI schema says
    "integer"), so the service does too; 1.5, "5" and true stay refused."""
    if isinstance(value, float) and value.is_integer() and abs(value) < 2**63:
        return int(value)
    return value


WholeInt = Annotated[int, BeforeValidator(_whole_float_to_int)]
"""An int field (used with strict=True) that also takes 1.0, as JSON Schema's "integer" does."""


# -- shared pieces ---------------------------------------------------------------------------------------------

class Source(BaseModel):
    """Where a bank entry came from: the bank file (relative to the bank) and the row in it."""

    file: str = Field(description="path relative to the bank the index was built from, e.g. model/model3.npy")
    row: int


class Neighbor(BaseModel):
    """One retrieved bank entry."""

    model_config = ConfigDict(json_schema_extra={"examples": [_NEIGHBOR_EXAMPLE]})

    rank: int = Field(description="1 for the best match")
    id: str = Field(description="stable entry id: bank file (relative, without .npy) and row")
    score: float = Field(description="cosine similarity between the query and the entry, -1..1")
    source: Source
    descriptors: dict[str, float] = Field(
        description="the entry's physical descriptors by name (m/s; grad_z and grad_x in 1/s)")
    velocity_model: list[list[float]] | None = Field(
        None, description="only with include_models: the velocity model, [depth 70][lateral 70] in m/s")


class Assessed(BaseModel):
    """How far a seismic query's answer can be trusted (docs/api.md#confidence). In /retrieve and /infer-descriptors
    results both are always present (confidence null when the bundle has no calibration); /retrieve-by-descriptors
    has neither."""

    confidence: float | None = Field(None, ge=0.0, le=1.0, description=(
        "probability that the top-1 bank model lies within 150 m/s mean absolute error of the true model, fitted "
        "on held-out data (seisbind calibrate); null when the encoder bundle carries no calibration"))
    out_of_distribution: bool | None = Field(None, description=(
        "true when the query is unlike the data the encoders were trained on: its search hits differ from those of "
        "held-out in-distribution queries, the gather is mostly white noise, or it earned a plausibility warning"))

    @model_serializer(mode="wrap")
    def _null_confidence_stays(self, handler: SerializerFunctionWrapHandler):  # no return type: keeps the schema
        """Responses are serialised without null fields; a seismic result keeps ``confidence: null``."""
        out = handler(self)
        if isinstance(out, dict) and self.out_of_distribution is not None:
            out.setdefault("confidence", self.confidence)
        return out


class QueryResult(Assessed):
    """The neighbours of one query, best first."""

    neighbors: list[Neighbor]
    consensus_rank: int | None = Field(None, ge=1, description=(
        "rank of the neighbour whose velocity model differs least (mean absolute difference) from all the returned "
        "neighbours' models: the single model of least expected error among them (docs/evaluation.md); 1 when "
        "that is the best match"))
    warnings: list[str] | None = Field(None, description=_WARNINGS)


class ErrorBody(BaseModel):
    """Every error response: what is wrong, the HTTP status, and the request id to quote."""

    model_config = ConfigDict(json_schema_extra={"examples": [
        {"detail": "gathers have shape (5, 999, 70); expected (5, 1000, 70) or (B, 5, 1000, 70)", "status": 422,
         "request_id": "4f6c0d2e9a1b4c7d8e9f0a1b2c3d4e5f"}]})

    detail: str
    status: int
    request_id: str | None = None
    errors: list[dict[str, Any]] | None = Field(None, description="field-level details of a validation error")


class IngestStep(BaseModel):
    """One step of the ingest of a SEG-Y body, with its parameters."""

    name: str
    params: dict[str, Any]


class IngestWarning(BaseModel):
    """Where the ingested gathers are less trustworthy: a stable code and a sentence."""

    code: str
    message: str


class IngestReport(BaseModel):
    """What was done to a SEG-Y body to bring it onto the model's geometry (docs/ingest.md)."""

    model_config = ConfigDict(json_schema_extra={"examples": [{
        "steps": [{"name": "resample", "params": {"from_dt_ms": 2.0, "to_dt_ms": 1.0, "up": 2, "down": 1}}],
        "warnings": [{"code": "time_upsampled", "message": "the time axis was upsampled from 2 ms to 1 ms: ..."}]}]})

    steps: list[IngestStep]
    warnings: list[IngestWarning]


# -- /retrieve -------------------------------------------------------------------------------------------------

class RetrieveRequest(BaseModel):
    """Shot gathers as JSON. For speed, send raw .npy bytes instead (Content-Type: application/x-npy, with k
    and include_models as query parameters)."""

    model_config = ConfigDict(extra="forbid")

    gathers: Any = Field(json_schema_extra=_GATHERS_SCHEMA)
    k: WholeInt = Field(5, strict=True, description="neighbours per gather" + _K_LIMIT, json_schema_extra=_K_SCHEMA)
    include_models: bool = Field(False, strict=True, description="return each neighbour's velocity model")


class RetrieveResponse(BaseModel):
    """For each input gather, in input order, its top-k bank entries."""

    model_config = ConfigDict(json_schema_extra={"examples": [
        {"results": [{"neighbors": [_NEIGHBOR_EXAMPLE], "confidence": 0.82, "out_of_distribution": False}],
         "encoder": "3f2a9c0b1d4e5f60",
         "index_version": "20260102T030405.123456Z-1a2b3c4d", "k": 1}]})

    results: list[QueryResult]
    encoder: str = Field(description="bundle_id of the encoders that embedded the query")
    index_version: str = Field(description="index version that was searched")
    k: int
    ingest: IngestReport | None = Field(None, description="only for a SEG-Y body: every step of its ingest and "
                                                          "the warnings")


# -- /infer-descriptors ----------------------------------------------------------------------------------------

class InferRequest(BaseModel):
    """Shot gathers as JSON (or raw .npy with k and weighting as query parameters)."""

    model_config = ConfigDict(extra="forbid")

    gathers: Any = Field(json_schema_extra=_GATHERS_SCHEMA)
    k: WholeInt = Field(5, strict=True, description="neighbours averaged" + _K_LIMIT, json_schema_extra=_K_SCHEMA)
    weighting: Weighting = Field("mean", description="mean: plain average; similarity: weighted by cosine score")
    method: Method | None = Field(None, description="blend: the mean of the neighbours' estimate and the encoder "
                                                    "bundle's descriptor readout; neighbours: the neighbours' alone; "
                                                    "default blend when the bundle has a readout")


class DescriptorEstimate(BaseModel):
    """One inferred descriptor: the estimate, the (weighted) spread of the neighbours, the unit; for the blend also
    the two estimates it averages."""

    value: float
    std: float
    unit: str
    neighbours: float | None = Field(None, description="blend only: the neighbours' (weighted) mean")
    readout: float | None = Field(None, description="blend only: the bundle's descriptor readout of the gather")


class InferResult(Assessed):
    """Descriptors inferred for one gather, and the neighbours they were averaged over."""

    descriptors: dict[str, DescriptorEstimate]
    neighbors: list[str] = Field(description="ids of the neighbours, best first")
    scores: list[float] = Field(description="their cosine similarities")
    warnings: list[str] | None = Field(None, description=_WARNINGS)


class InferResponse(BaseModel):
    """For each input gather, in input order, its inferred descriptors."""

    model_config = ConfigDict(json_schema_extra={"examples": [
        {"results": [{"descriptors": {"v_mean": {"value": 2875.1, "std": 40.2, "unit": "m/s"},
                                      "grad_z": {"value": 3.3, "std": 0.4, "unit": "1/s"}},
                      "neighbors": ["model/model3:12", "model/model1:40"], "scores": [0.83, 0.80],
                      "confidence": 0.82, "out_of_distribution": False}],
         "encoder": "3f2a9c0b1d4e5f60", "index_version": "20260102T030405.123456Z-1a2b3c4d", "k": 5,
         "weighting": "mean", "method": "neighbours"}]})

    results: list[InferResult]
    encoder: str
    index_version: str
    k: int
    weighting: Weighting
    method: Method = Field(description="how the values were estimated: blend or neighbours")
    ingest: IngestReport | None = Field(None, description="only for a SEG-Y body: every step of its ingest and "
                                                          "the warnings")


# -- /retrieve-by-descriptors ----------------------------------------------------------------------------------

class DescriptorQuery(BaseModel):
    """A descriptor vector by name (all eight of DESCRIPTOR_NAMES, in their units) -> physics encoder -> search."""

    model_config = ConfigDict(extra="forbid", json_schema_extra={"examples": [
        {"descriptors": _DESCRIPTORS_EXAMPLE, "k": 5, "include_models": False}]})

    descriptors: dict[str, StrictFloat] = Field(description="all eight descriptors by name, in DESCRIPTOR_UNITS, "
                                                            "each within its physical range, and consistent (v_min "
                                                            "<= v_mean, v_top, v_bottom <= v_max ...: docs/api.md)",
                                                json_schema_extra=_DESCRIPTORS_SCHEMA)
    k: WholeInt = Field(5, strict=True, description="neighbours to return" + _K_LIMIT, json_schema_extra=_K_SCHEMA)
    include_models: bool = Field(False, strict=True, description="return each neighbour's velocity model")


# -- admin -----------------------------------------------------------------------------------------------------

class RebuildRequest(BaseModel):
    """Rebuild the index from a bank under the configured bank root (SEISBIND_BANK_ROOT)."""

    model_config = ConfigDict(extra="forbid", json_schema_extra={"examples": [{"bank": "flatvel_train",
                                                                               "index_type": "flat"}]})

    bank: str = Field(min_length=1, max_length=4096,
                      description="a bank name (folder or file under the bank root) or a path inside the bank root")
    index_type: Literal["auto", "flat", "ivf", "hnsw"] = "auto"


class RebuildAccepted(BaseModel):
    """The rebuild job was queued; poll GET /admin/jobs/{job_id}."""

    model_config = ConfigDict(json_schema_extra={"examples": [{"job_id": "9b1deb4d3b7d4bad9bdd2b0d7b3dcb6d",
                                                               "state": "queued"}]})

    job_id: str
    state: str


class JobStatus(BaseModel):
    """A rebuild job."""

    model_config = ConfigDict(json_schema_extra={"examples": [
        {"job_id": "9b1deb4d3b7d4bad9bdd2b0d7b3dcb6d", "state": "running", "progress": 0.42, "version": None,
         "error": None, "bank": "flatvel_train", "index_type": "flat", "created_at": 1767322800.0,
         "started_at": 1767322800.1, "finished_at": None}]})

    job_id: str
    state: Literal["queued", "running", "succeeded", "failed"]
    progress: float = Field(ge=0.0, le=1.0)
    version: str | None
    error: str | None
    bank: str = Field(description="the bank, relative to the bank root")
    index_type: str
    created_at: float
    started_at: float | None
    finished_at: float | None


# -- health and info -------------------------------------------------------------------------------------------

class Health(BaseModel):
    """The process is up."""

    status: Literal["ok"] = "ok"


class Readiness(BaseModel):
    """Whether encoders and an index are loaded; when not, why."""

    model_config = ConfigDict(json_schema_extra={"examples": [
        {"ready": True, "reason": None, "encoder": "3f2a9c0b1d4e5f60",
         "index_version": "20260102T030405.123456Z-1a2b3c4d"}]})

    ready: bool
    reason: str | None
    encoder: str
    index_version: str | None
    current_version: str | None = Field(None, description="the version the index root's CURRENT names")
    current_refused: str | None = Field(None, description="why that version is not served (corrupt, built with "
                                                          "other encoders, ...); null when it is")


class CpuPlacement(BaseModel):
    """The CPU the event loop and each batch worker are pinned to (SEISBIND_PIN_THREADS); null: not pinned."""

    event_loop: int | None
    workers: list[int | None]


class Info(BaseModel):
    """What is being served and how."""

    model_config = ConfigDict(json_schema_extra={"examples": [
        {"encoder": "3f2a9c0b1d4e5f60", "index_version": "20260102T030405.123456Z-1a2b3c4d", "count": 10000,
         "dim": 256, "index_type": "flat", "index_device": "cpu",
         "providers": {"seismic": ["CPUExecutionProvider"], "physics": ["CPUExecutionProvider"]},
         "variants": {"seismic": "int8", "physics": "full"}, "intra_op_threads": 2, "ready": True, "reason": None,
         "descriptor_names": list(_DESCRIPTORS_EXAMPLE),
         "batching": {"max_gathers": 32, "wait_ms": 2.0, "workers": 2},
         "cpus": {"event_loop": 0, "workers": [0, 1]},
         "limits": {"max_body_bytes": 67108864, "max_gathers": 64, "max_k": 100}, "rebuild_running": False}]})

    encoder: str = Field(description="bundle_id of the encoder bundle")
    index_version: str | None
    count: int = Field(description="entries in the index being served")
    dim: int
    index_type: str | None
    index_device: str | None
    providers: dict[str, list[str]] = Field(description="ONNX Runtime execution providers in use, per session")
    variants: dict[str, str] = Field(default_factory=dict,
                                     description="graph each session runs: 'full' (full precision) or a variant of "
                                                 "the bundle, e.g. 'int8'")
    intra_op_threads: int
    ready: bool
    reason: str | None
    descriptor_names: list[str]
    batching: dict[str, int | float]
    cpus: CpuPlacement
    limits: dict[str, int]
    rebuild_running: bool
    calibration: dict[str, Any] | None = Field(None, description=(
        "the encoder bundle's calibration (what it was fitted on: index_version, bank_count, n, event_rate, ...); "
        "null when it carries none, and then every confidence is null"))
    descriptor_readout: dict[str, Any] | None = Field(None, description=(
        "the encoder bundle's descriptor readout (pairs, data, date it was fitted on); null without one, and "
        "/infer-descriptors then answers with the neighbours' estimate"))
    current_version: str | None = Field(None, description="the version the index root's CURRENT names")
    current_refused: str | None = Field(None, description="why that version is not served (corrupt, built with "
                                                          "other encoders, ...); null when it is")
