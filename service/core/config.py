"""Service settings: one pydantic-settings class, read from ``SEISBIND_*`` environment variables, built once."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from seisbind.cores import usable_cores

GATHER_BYTES = 5 * 1000 * 70 * 4
"""One float32 gather (5, 1000, 70)."""
NPY_HEADER_BYTES = 128
"""The header numpy.save writes for a gathers array."""
MIN_TOKEN_LENGTH = 16
_PLACEHOLDER_TOKENS = {"changethis", "changeme", "secret", "token", "admin", "password"}
_ORIGIN = re.compile(r"^https?://(\[[0-9A-Fa-f:.]+\]|[^/\s:\[\]]+)(:[0-9]{1,5})?$")


class Settings(BaseSettings):
    """Everything the service can be configured with. Each field is the environment variable ``SEISBIND_<NAME>``."""

    model_config = SettingsConfigDict(env_prefix="SEISBIND_", extra="ignore", frozen=True)

    # Paths: no defaults.
    encoders: Path = Field(description="encoder bundle folder (seismic/velocity/physics.onnx, manifest.json)")
    index_root: Path = Field(description="index root holding the versions and the CURRENT pointer")
    bank_root: Path | None = Field(None, description="the only folder /admin/rebuild-index may read banks from; "
                                                     "unset: rebuilds disabled")
    # Secrets: no defaults. Neither set: the admin endpoints answer 403.
    admin_token: SecretStr | None = Field(None, description="bearer token of /admin/*")
    admin_token_file: Path | None = Field(None, description="file holding the admin token (e.g. a mounted secret)")

    host: str = "127.0.0.1"
    port: int = Field(8000, ge=0, le=65535)
    log_level: Literal["debug", "info", "warning", "error"] = "info"
    log_json: bool = Field(True, description="structured JSON log lines (false: plain text)")

    example_gather: Path | None = Field(None, description="a .npy gather served at GET /example/query.npy for the web "
                                                          "page's example button (the quickstart writes "
                                                          "<workdir>/example/query.npy); unset: 404")

    # Request limits.
    max_body_bytes: int = Field(64 * 1024 * 1024, ge=1024, description="largest request body, bytes (413 above)")
    max_gathers: int = Field(32, ge=1, description="most gathers in one request (their float32 .npy must fit in "
                                                   "SEISBIND_MAX_BODY_BYTES: checked at start)")
    body_budget_bytes: int | None = Field(
        None, ge=1024, description="request bodies being read and decoded at once, bytes (JSON counted twice: parsing "
                                   "it takes more); requests past it wait their turn, unread. Default: twice "
                                   "SEISBIND_MAX_BODY_BYTES; at least SEISBIND_MAX_BODY_BYTES")
    max_k: int = Field(100, ge=1, description="largest k a request may ask for")
    request_timeout_s: float = Field(60.0, gt=0.0, le=3600.0,
                                     description="longest time to receive a whole request, headers and body, from its "
                                                 "first byte (408 after; an unused connection is closed)")
    max_header_bytes: int = Field(64 * 1024, ge=1024, description="largest request header section, bytes (431 above)")
    max_headers: int = Field(100, ge=10, description="most header fields in a request (431 above)")
    cors_origins: list[str] = Field(default_factory=list,
                                    description="origins allowed to call the API from a browser, JSON list, e.g. "
                                                "'[\"https://app.example.org\"]' (\"*\": any); empty: no CORS headers")

    # Micro-batching and ONNX Runtime.
    batch_max_gathers: int = Field(32, ge=1, description="a micro-batch stops growing at this many gathers")
    batch_wait_ms: float = Field(2.0, ge=0.0, le=100.0,
                                 description="longest wait for more requests to join a micro-batch")
    encode_workers: int | None = Field(None, ge=1, le=64,
                                       description="micro-batches encoded at the same time (default: the cores "
                                                   "available)")
    ort_intra_op_threads: int | None = Field(None, ge=1,
                                             description="ONNX Runtime intra-op threads of each micro-batch (default: "
                                                         "cores / workers, i.e. 1 with the default workers)")
    ort_allow_spinning: bool = Field(False, description="let ONNX Runtime threads spin-wait between runs (faster on "
                                                        "an idle dedicated machine, slower when cores are shared)")
    pin_threads: bool = Field(False, description="run the event loop and the first batch worker on one core and "
                                                 "each other worker on its own core (Linux): lower latency when the "
                                                 "service has its cores to itself; off by default, since a pinned "
                                                 "thread cannot move away from a busy core")
    search_threads: int = Field(1, ge=1, description="FAISS threads of each worker's search (the workers already "
                                                     "search in parallel; more only pays off for big exact banks)")
    seismic_variant: str = Field("auto", min_length=1,
                                 description="seismic encoder graph: 'auto' (the bundle's default variant, e.g. its "
                                             "int8 graph; the full-precision one when it offers none), 'full' (force "
                                             "full precision) or a variant the bundle lists")
    providers: list[str] | None = Field(None, description="ONNX Runtime execution providers in order "
                                                          "(default: CUDA when present, then CPU)")

    # Admin rebuilds.
    rebuild_intra_op_threads: int | None = Field(
        None, ge=1, description="ONNX Runtime threads of a rebuild (default: half the cores; serving keeps the rest)")
    index_keep: int = Field(5, ge=1, description="index versions kept on disk after a rebuild")
    jobs_keep: int = Field(50, ge=1, description="finished admin jobs remembered")
    index_poll_s: float = Field(
        5.0, ge=0.0, description="seconds between checks of the index root's CURRENT pointer: a version another "
                                 "process made current is verified and swapped in without a restart (0: off)")

    # Refinement jobs: POST /refine with method fwi or both, run by `seisbind refine-worker` processes (docs/api.md).
    redis_url: str | None = Field(None, description="Redis server of the refinement job queue, e.g. "
                                                    "redis://redis:6379/0; unset: only method learned is served")
    refine_default_iterations: int = Field(60, ge=1, description="FWI iterations of a job that does not ask")
    refine_max_iterations: int = Field(300, ge=1, description="most FWI iterations a job may ask for")
    refine_max_seconds: float = Field(120.0, gt=0.0, description="FWI time budget per gather, seconds (the job is "
                                                                 "stopped past its gathers' budgets plus a minute)")
    refine_max_gathers: int = Field(4, ge=1, description="most gathers in one refinement job")
    refine_max_queued: int = Field(32, ge=1, description="jobs waiting for a worker at most (503 beyond)")
    refine_retries: int = Field(1, ge=0, description="times a job whose worker died is run again before it fails")
    refine_keep_s: int = Field(86400, ge=60, description="seconds a finished job and its result are kept")
    refine_retry_after_s: int = Field(30, ge=1, description="Retry-After of a 503 when the queue is full")

    @model_validator(mode="after")
    def _check_token(self) -> Settings:
        if self.admin_token is not None and self.admin_token_file is not None:
            raise ValueError("set SEISBIND_ADMIN_TOKEN or SEISBIND_ADMIN_TOKEN_FILE, not both")
        if self.admin_token_file is not None and not self.admin_token_file.is_file():
            raise ValueError(f"SEISBIND_ADMIN_TOKEN_FILE {self.admin_token_file}: no such file")
        token = self.resolved_admin_token()
        if self.admin_token_file is not None and token is None:
            raise ValueError(f"SEISBIND_ADMIN_TOKEN_FILE {self.admin_token_file}: empty or unreadable")
        if token is not None:
            if token.lower() in _PLACEHOLDER_TOKENS or len(token) < MIN_TOKEN_LENGTH:
                raise ValueError(
                    f"the admin token is a placeholder or shorter than {MIN_TOKEN_LENGTH} characters; use a random "
                    "one, e.g. python -c 'import secrets; print(secrets.token_urlsafe(32))'")
        return self

    @model_validator(mode="after")
    def _check_limits(self) -> Settings:
        need = npy_bytes_of_gathers(self.max_gathers)
        if need > self.max_body_bytes:
            fits = max(0, (self.max_body_bytes - NPY_HEADER_BYTES) // GATHER_BYTES)
            raise ValueError(
                f"SEISBIND_MAX_GATHERS={self.max_gathers} gathers take {need} bytes as float32 .npy, more than "
                f"SEISBIND_MAX_BODY_BYTES={self.max_body_bytes}: such a request could never be sent. Raise the body "
                f"limit to at least {need}, or lower SEISBIND_MAX_GATHERS to at most {fits}")
        if self.refine_default_iterations > self.refine_max_iterations:
            raise ValueError(f"SEISBIND_REFINE_DEFAULT_ITERATIONS={self.refine_default_iterations} is above "
                             f"SEISBIND_REFINE_MAX_ITERATIONS={self.refine_max_iterations}")
        if self.body_budget_bytes is not None and self.body_budget_bytes < self.max_body_bytes:
            raise ValueError(f"SEISBIND_BODY_BUDGET_BYTES={self.body_budget_bytes} is below SEISBIND_MAX_BODY_BYTES="
                             f"{self.max_body_bytes}: a body at the limit could never be read")
        return self

    @field_validator("cors_origins")
    @classmethod
    def _check_origins(cls, origins: list[str]) -> list[str]:
        for origin in origins:
            if origin != "*" and not _ORIGIN.match(origin):
                raise ValueError(f"CORS origin {origin!r} is not '*' or scheme://host[:port] (no path, no trailing /)")
        return origins

    def resolved_admin_token(self) -> str | None:
        """The admin token from SEISBIND_ADMIN_TOKEN or the token file (stripped), or None when admin is disabled."""
        if self.admin_token is not None:
            return self.admin_token.get_secret_value().strip() or None
        if self.admin_token_file is not None:
            try:
                return self.admin_token_file.read_text().strip() or None
            except OSError:
                return None  # an unreadable secret disables admin rather than opening it
        return None

    def body_budget(self) -> int:
        """Bytes of request bodies read and decoded at once (service.api.body_budget)."""
        return self.body_budget_bytes or 2 * self.max_body_bytes

    def workers(self) -> int:
        """Micro-batches encoded at the same time: the setting, else the cores available to this process (its CPU
        affinity, capped by a cgroup CPU quota)."""
        return self.encode_workers or min(usable_cores(), 64)

    def intra_op_threads(self) -> int:
        """ONNX Runtime intra-op threads per micro-batch: the setting, else the cores shared out among the workers
        (one each by default: batches side by side use the cores best under load)."""
        return self.ort_intra_op_threads or max(1, usable_cores() // self.workers())

    def rebuild_threads(self) -> int:
        """ONNX Runtime intra-op threads of an admin rebuild."""
        return self.rebuild_intra_op_threads or max(1, usable_cores() // 2)


def npy_bytes_of_gathers(n: int) -> int:
    """Size of ``n`` float32 gathers as the .npy numpy.save writes."""
    return NPY_HEADER_BYTES + n * GATHER_BYTES
