"""Background index rebuilds: one at a time, with progress, swapped into the engine only when they succeed."""

from __future__ import annotations

import logging
import threading
import time
import uuid
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

from service.core.cpus import unpin_thread
from service.core.logging import REQUEST_ID

log = logging.getLogger("service.jobs")

JobState = Literal["queued", "running", "succeeded", "failed"]


class JobRunningError(RuntimeError):
    """A rebuild is already running (HTTP 409)."""


@dataclass
class Job:
    """One rebuild: its state, progress 0..1, the new version when done, the error when failed."""

    job_id: str
    bank: str
    index_type: str
    state: JobState = "queued"
    progress: float = 0.0
    version: str | None = None
    error: str | None = None
    created_at: float = field(default_factory=time.time)
    started_at: float | None = None
    finished_at: float | None = None

    def snapshot(self) -> dict[str, Any]:
        """A consistent copy of the job's fields."""
        return asdict(self)


RebuildFn = Callable[[Path, str, Callable[[float], None]], str]
"""(bank path, index type, progress callback) -> new version id; runs in the job's thread."""


class RebuildJobs:
    """Runs rebuilds in a background thread, one at a time, and remembers the last ``keep`` jobs.

    Args:
        rebuild: does the work and swaps the result in; its exception marks the job failed.
        keep: finished jobs remembered for GET /admin/jobs/{id}.
    """

    def __init__(self, rebuild: RebuildFn, keep: int = 50) -> None:
        self._rebuild = rebuild
        self._keep = keep
        self._jobs: OrderedDict[str, Job] = OrderedDict()
        self._lock = threading.Lock()
        self._running: Job | None = None
        self._thread: threading.Thread | None = None

    def start(self, bank: Path, index_type: str) -> Job:
        """Queue a rebuild of ``bank``; raises JobRunningError when one is in progress."""
        with self._lock:
            if self._running is not None:
                raise JobRunningError(f"rebuild job {self._running.job_id} is still {self._running.state}; "
                                      "wait for it (GET /admin/jobs/{id}) and retry")
            job = Job(job_id=uuid.uuid4().hex, bank=str(bank), index_type=index_type)
            self._running = job
            self._jobs[job.job_id] = job
            while len(self._jobs) > self._keep:
                oldest = next(iter(self._jobs))
                if self._jobs[oldest] is job:
                    break
                self._jobs.pop(oldest)
        rid = REQUEST_ID.get()
        self._thread = threading.Thread(target=self._run, args=(job, bank, rid), name=f"rebuild-{job.job_id[:8]}",
                                        daemon=True)
        self._thread.start()
        return job

    def get(self, job_id: str) -> dict[str, Any] | None:
        """A snapshot of job ``job_id``, or None when unknown."""
        with self._lock:
            job = self._jobs.get(job_id)
            return job.snapshot() if job else None

    def running(self) -> bool:
        """Whether a rebuild is queued or running."""
        with self._lock:
            return self._running is not None

    def join(self, timeout: float | None = None) -> None:
        """Wait for the current rebuild thread (tests, shutdown)."""
        t = self._thread
        if t is not None:
            t.join(timeout)

    def _run(self, job: Job, bank: Path, request_id: str | None) -> None:
        unpin_thread()  # started from the event loop's thread, which may be pinned to one core
        REQUEST_ID.set(request_id)
        job.state, job.started_at = "running", time.time()
        log.info("rebuild job %s started", job.job_id, extra={"bank": str(bank), "index_type": job.index_type})

        def progress(fraction: float) -> None:
            job.progress = max(job.progress, min(1.0, float(fraction)))

        try:
            version = self._rebuild(bank, job.index_type, progress)
        except BaseException as e:  # noqa: BLE001 - a failed rebuild is reported, the old index keeps serving
            with self._lock:
                job.error = f"{type(e).__name__}: {e}"
                job.state, job.finished_at = "failed", time.time()
                self._running = None
            log.error("rebuild job %s failed: %s", job.job_id, job.error)
            if not isinstance(e, Exception):
                raise
            return
        with self._lock:
            job.version, job.progress = version, 1.0
            job.state, job.finished_at = "succeeded", time.time()
            self._running = None
        log.info("rebuild job %s succeeded: version %s", job.job_id, version)
