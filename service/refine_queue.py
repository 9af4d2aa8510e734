"""The refinement job queue on Redis (rq): what the API and the workers (``seisbind refine-worker``) share.

A job holds its gathers, start models and parameters in Redis (nothing lives in the API process, so a job survives
an API restart); a worker runs it (the job function ``JOB_FUNCTION``), writing progress into the job's meta; a
worker that dies mid-job stops sending heartbeats, and the next registry cleanup (any API request on the queue, or
a worker's maintenance) runs the job again while it has retries left, else fails it with the reason. Cancellation
is a flag the job function polls between iterations. Outcomes and durations are counted in Redis, so every API
replica's /metrics reports the whole queue. docs/architecture.md describes the flow.
"""

from __future__ import annotations

import io
import logging
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal
from urllib.parse import urlsplit, urlunsplit

import numpy as np
from redis import Redis
from redis.exceptions import RedisError
from rq import Callback, Queue, Retry
from rq.exceptions import AbandonedJobError, InvalidJobOperation, NoSuchJobError
from rq.job import Job, JobStatus
from rq.registry import StartedJobRegistry
from rq.timeouts import TimerDeathPenalty

from seisbind.npy import npy_bytes

log = logging.getLogger("service.refine_queue")

QUEUE_NAME = "seisbind-refine"
JOB_FUNCTION = "cli.refine_worker.run_refine_job"
"""The job function, named (not imported: it is torch side), resolved by the worker."""
KEY_PREFIX = "seisbind:refine:"
OUTCOMES_KEY = KEY_PREFIX + "outcomes"
"""Hash: outcome (succeeded, failed, cancelled, retried) -> jobs."""
DURATIONS_KEY = KEY_PREFIX + "durations"
"""Hash: histogram of job run times: bucket upper bound -> count (cumulative at read), "sum", "count"."""
ADMIT_LOCK = KEY_PREFIX + "admit"
DURATION_BUCKETS = (1.0, 2.0, 5.0, 10.0, 20.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1800.0, 3600.0)
OUTCOMES = ("succeeded", "failed", "cancelled", "retried")
JOB_MARGIN_S = 60
"""Added to a job's FWI time budgets for its hard time limit (start-up, descriptors, writing the result)."""

State = Literal["queued", "running", "succeeded", "failed", "cancelled"]
_STATES: dict[JobStatus, State] = {
    JobStatus.QUEUED: "queued", JobStatus.DEFERRED: "queued", JobStatus.SCHEDULED: "queued",
    JobStatus.STARTED: "running", JobStatus.FINISHED: "succeeded", JobStatus.FAILED: "failed",
    JobStatus.STOPPED: "cancelled", JobStatus.CANCELED: "cancelled",
}


class QueueUnavailable(RuntimeError):
    """No job queue configured, or Redis cannot be reached (HTTP 503); the message says which."""


class QueueFull(RuntimeError):
    """As many jobs wait as the queue takes (HTTP 503 with Retry-After)."""


class UnknownJob(LookupError):
    """No such job, or it has expired (HTTP 404)."""


class JobFinished(RuntimeError):
    """A job that has already ended cannot be cancelled (HTTP 409)."""


def _text(key: bytes | str) -> str:
    return key.decode() if isinstance(key, bytes) else key


def attempts_key(job_id: str) -> str:
    """The Redis counter of a job's runs, kept apart from the job's meta: a retry re-saves the job as its worker
    last read it, which would undo a count kept there."""
    return f"{KEY_PREFIX}attempts:{job_id}"


def cancel_key(job_id: str) -> str:
    """The Redis key whose presence asks the job's worker to stop."""
    return f"{KEY_PREFIX}cancel:{job_id}"


def redacted(url: str) -> str:
    """A Redis URL without its password, for messages and logs."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    host = parts.hostname or ""
    netloc = f"{parts.username or ''}:***@{host}" + (f":{parts.port}" if parts.port else "")
    return urlunsplit(parts._replace(netloc=netloc))


def load_npy(data: bytes) -> np.ndarray:
    """An array stored by the queue (.npy bytes, never pickled)."""
    return np.load(io.BytesIO(data), allow_pickle=False)


@dataclass(frozen=True)
class RefineSpec:
    """What a job refines: gathers [B,5,1000,70] float32, start models [B,70,70] m/s and how they were chosen; the
    retrieved neighbours [B,k,70,70] m/s, whose data misfits the worker reports (and, for start ``bestfit``, whose
    best-fitting model replaces the given start)."""

    gathers: np.ndarray
    starts: np.ndarray
    method: str
    start: str
    iterations: int
    max_seconds: float
    start_ids: Sequence[Sequence[str]]
    neighbours: np.ndarray | None = None


def record_outcome(connection: Redis, outcome: str, seconds: float | None) -> None:
    """Count one job outcome and, for a job that ran, its run time (in the durations histogram)."""
    pipe = connection.pipeline(transaction=False)
    pipe.hincrby(OUTCOMES_KEY, outcome, 1)
    if seconds is not None:
        bucket = next((b for b in DURATION_BUCKETS if seconds <= b), float("inf"))
        pipe.hincrby(DURATIONS_KEY, repr(bucket), 1)
        pipe.hincrbyfloat(DURATIONS_KEY, "sum", seconds)
        pipe.hincrby(DURATIONS_KEY, "count", 1)
    pipe.execute()


def _run_seconds(job: Job) -> float | None:
    started = job.started_at
    return None if started is None else max(0.0, time.time() - started.timestamp())


def on_success(job: Job, connection: Redis, result: Any) -> None:
    """rq success callback: a job that returned either finished or stopped on a cancel request."""
    cancelled = isinstance(result, dict) and bool(result.get("cancelled"))
    record_outcome(connection, "cancelled" if cancelled else "succeeded", _run_seconds(job))


def on_failure(job: Job, connection: Redis, exc_type: type[BaseException] | None = None, *exc_info: Any) -> None:
    """rq failure callback, also run by the registry cleanup for a job whose worker died (AbandonedJobError). Only
    such a job is run again (while it has retries left): an error of the job itself, its time limit included, would
    come back, so the job fails at once. Counts the outcome."""
    if not (isinstance(exc_type, type) and issubclass(exc_type, AbandonedJobError)):
        job.retries_left = 0  # read by the worker right after this callback, when it decides on a retry
    record_outcome(connection, "retried" if (job.retries_left or 0) > 0 else "failed", _run_seconds(job))


def failure_reason(job: Job, attempts: int) -> str:
    """Why a failed job failed, in words (rq keeps a traceback or its own note); ``attempts``: its runs."""
    text = (job.exc_info or "").strip()
    tried = f" (attempt {attempts}; no retries left)" if attempts else " (no retries left)"
    if "AbandonedJobError" in text:
        return "the worker running the job stopped sending heartbeats (killed or lost)" + tried
    if "Work-horse terminated unexpectedly" in text:
        return "the worker process running the job was killed: " + text.split(";")[1].strip() + tried
    if "JobTimeoutException" in text:
        return f"the job ran past its time limit of {job.timeout} s"
    lines = [line for line in text.splitlines() if line.strip()]
    return lines[-1][:500] if lines else "failed (no reason recorded)"


def _state(job: Job) -> tuple[State, Any]:
    """A job's state and, once it has finished, what its function returned (a job stopped on a cancel request
    finishes with ``cancelled`` set)."""
    status = job.get_status(refresh=False)
    result = job.return_value() if status == JobStatus.FINISHED else None
    if isinstance(result, dict) and result.get("cancelled"):
        return "cancelled", result
    return _STATES.get(status, "queued"), result


class RefineQueue:
    """The refinement queue of one Redis server, as the API uses it.

    Args:
        url: Redis URL.
        max_queued: most jobs waiting; more are refused (QueueFull).
        retries: times a job whose worker died is run again.
        keep_s: how long finished jobs (results, failures) are kept.
    """

    def __init__(self, url: str, *, max_queued: int, retries: int, keep_s: int) -> None:
        self.url = url
        self.connection = Redis.from_url(url, socket_connect_timeout=2.0, socket_timeout=5.0,
                                         health_check_interval=30)
        self.queue = Queue(QUEUE_NAME, connection=self.connection)
        self.max_queued, self.retries, self.keep_s = max_queued, retries, keep_s

    def _unavailable(self, e: Exception) -> QueueUnavailable:
        return QueueUnavailable(f"the refinement job queue (Redis at {redacted(self.url)}) cannot be reached: "
                                f"{type(e).__name__}: {e}")

    def submit(self, spec: RefineSpec) -> str:
        """Enqueue a job, unless ``max_queued`` jobs already wait (QueueFull); returns its id. The count and the
        enqueue happen under one Redis lock, so the limit holds across API replicas."""
        job_id = uuid.uuid4().hex
        budget = int(spec.max_seconds * len(spec.gathers)) + JOB_MARGIN_S
        try:
            with self.connection.lock(ADMIT_LOCK, timeout=10, blocking_timeout=5):
                if self.queue.count >= self.max_queued:
                    raise QueueFull(f"the refinement queue is full ({self.max_queued} jobs waiting); try again later")
                self.queue.enqueue(
                    JOB_FUNCTION, job_id=job_id, job_timeout=budget,
                    description=f"refine {len(spec.gathers)} gather(s): {spec.method} from {spec.start}, "
                                f"{spec.iterations} iterations", result_ttl=self.keep_s, failure_ttl=self.keep_s,
                    retry=Retry(max=self.retries) if self.retries else None,
                    on_success=Callback(f"{__name__}.on_success"), on_failure=Callback(f"{__name__}.on_failure"),
                    meta={"method": spec.method, "start": spec.start, "iterations": spec.iterations,
                          "gathers": len(spec.gathers), "start_ids": [list(ids) for ids in spec.start_ids],
                          "progress": 0.0, "iteration": 0, "gather": 0, "misfit": []},
                    kwargs={"gathers": npy_bytes(spec.gathers), "starts": npy_bytes(spec.starts),
                            "iterations": spec.iterations, "max_seconds": spec.max_seconds,
                            **({} if spec.neighbours is None else {"neighbours": npy_bytes(spec.neighbours),
                                                                   "start_best_fit": spec.start == "bestfit"})})
        except RedisError as e:  # LockError included: Redis too slow to hand out the lock
            raise self._unavailable(e) from e
        log.info("refinement job %s queued", job_id,
                 extra={"job_id": job_id, "gathers": len(spec.gathers), "method": spec.method, "start": spec.start,
                        "iterations": spec.iterations})
        return job_id

    def _fetch(self, job_id: str) -> Job:
        try:
            return Job.fetch(job_id, connection=self.connection)
        except NoSuchJobError as e:
            raise UnknownJob(f"no refinement job {job_id} (never submitted, or expired after "
                             f"{self.keep_s} s)") from e

    def cleanup(self) -> None:
        """Settle jobs whose worker stopped sending heartbeats: run again (retries left) or failed."""
        # a timer, not SIGALRM, bounds the failure callback: this runs in the API's worker threads
        StartedJobRegistry(queue=self.queue, death_penalty_class=TimerDeathPenalty).cleanup()

    def status(self, job_id: str) -> dict[str, Any]:
        """The job's state, progress and, once ended, its result or error (service.refine_report shapes it)."""
        try:
            self.cleanup()
            job = self._fetch(job_id)
            state, result = _state(job)
            cancel_asked = bool(self.connection.exists(cancel_key(job_id)))
            attempts = int(self.connection.get(attempts_key(job_id)) or 0)
        except RedisError as e:
            raise self._unavailable(e) from e
        return {"job_id": job_id, "state": state, "meta": dict(job.meta), "result": result, "attempt": attempts,
                "error": failure_reason(job, attempts) if state == "failed" else None, "cancel_requested": cancel_asked,
                "created_at": job.created_at, "started_at": job.started_at, "ended_at": job.ended_at}

    def cancel(self, job_id: str) -> State:
        """Cancel a job: a waiting one is removed from the queue at once ("cancelled"); a running one is asked to
        stop, which its worker does at the next iteration ("running" until then). JobFinished when it has ended."""
        try:
            job = self._fetch(job_id)
            state, _ = _state(job)
            if state == "cancelled":
                return state
            if state in ("succeeded", "failed"):
                raise JobFinished(f"refinement job {job_id} has already {state}; there is nothing to cancel")
            self.connection.set(cancel_key(job_id), 1, ex=self.keep_s)
            if state == "queued":
                try:
                    job.cancel()
                except InvalidJobOperation:
                    return "cancelled"
                record_outcome(self.connection, "cancelled", None)
                return "cancelled"
            return state
        except RedisError as e:
            raise self._unavailable(e) from e

    def counts(self) -> dict[str, int]:
        """Jobs waiting and running now (settling jobs of dead workers first)."""
        try:
            self.cleanup()
            return {"queued": self.queue.count, "running": StartedJobRegistry(queue=self.queue).count}
        except RedisError as e:
            raise self._unavailable(e) from e

    def totals(self) -> tuple[dict[str, int], dict[str, float]]:
        """(outcome -> jobs, durations histogram hash) as counted so far."""
        try:
            outcomes = {_text(k): int(v) for k, v in self.connection.hgetall(OUTCOMES_KEY).items()}
            durations = {_text(k): float(v) for k, v in self.connection.hgetall(DURATIONS_KEY).items()}
        except RedisError as e:
            raise self._unavailable(e) from e
        return outcomes, durations
