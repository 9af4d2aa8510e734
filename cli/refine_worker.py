"""``seisbind refine-worker``: runs refinement jobs from the Redis queue (service.refine_queue) by full-waveform
inversion (model.refine.refine_fwi), one work-horse process per job (rq).

The worker sends a heartbeat every ``heartbeat_s`` while a job runs; when it dies (killed, out of memory, machine
lost) the heartbeats stop, and ``grace_s`` later the job is run again by another worker while it has retries left,
else failed with the reason. A work horse dies with its worker (Linux), so a job presumed dead never finishes
behind the queue's back. Cancellation: the job polls its cancel flag between FWI iterations.
"""

from __future__ import annotations

import ctypes
import logging
import os
import signal
import time
from typing import Any

import numpy as np
from redis import Redis
from rq import Queue, Worker, get_current_job
from rq.job import Job

from seisbind.npy import npy_bytes

from service.refine_queue import QUEUE_NAME, attempts_key, cancel_key, load_npy, record_outcome

log = logging.getLogger("cli.refine_worker")
PR_SET_PDEATHSIG = 1


def die_with_parent() -> None:
    """Have the kernel SIGKILL this process when its parent (the worker) dies (Linux; elsewhere a no-op)."""
    parent = os.getppid()
    try:
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    except (OSError, AttributeError):
        return
    if os.getppid() != parent:  # the parent died before the request took effect
        os._exit(1)


class RefineWorker(Worker):
    """An rq worker whose heartbeats may lapse ``grace_s`` before its job counts as abandoned (rq: 60 s), whose
    work horses die with it, and that counts the jobs whose work horse was killed."""

    grace_s = 60

    def get_heartbeat_ttl(self, job: Job, working_time: float = 0.0) -> int:
        interval = self.job_monitoring_interval
        if job.timeout is not None and job.timeout > 0:
            interval = int(min(max(job.timeout - working_time, 0), interval))
        return int(interval + self.grace_s)

    def main_work_horse(self, job: Job, queue: Queue) -> None:
        die_with_parent()
        super().main_work_horse(job, queue)

    def handle_work_horse_killed(self, job: Job, retpid: int, ret_val: int, rusage: Any) -> None:
        started = job.started_at
        seconds = None if started is None else max(0.0, time.time() - started.timestamp())
        record_outcome(self.connection, "retried" if job.should_retry else "failed", seconds)


def _fit_and_starts(gathers: np.ndarray, neighbours: np.ndarray | None, starts: np.ndarray,
                   best_fit_start: bool) -> tuple[np.ndarray, list[list[float]]]:
    """The neighbours' data misfits of every gather (none without neighbours) and the start models, the given ones
    or, with ``best_fit_start``, each gather's best-fitting neighbour."""
    from seisbind.start_models import best_fit_model

    from model.rerank import neighbour_misfits

    if neighbours is None:
        return starts, []
    misfits = neighbour_misfits(gathers, neighbours)
    if best_fit_start:
        starts = np.stack([best_fit_model(neighbours[b], misfits[b]) for b in range(len(gathers))])
    return starts, misfits.tolist()


def run_refine_job(gathers: bytes, starts: bytes, iterations: int, max_seconds: float,
                   neighbours: bytes | None = None, start_best_fit: bool = False) -> dict[str, Any]:
    """The job function: the retrieved neighbours' data misfits (when given; with ``start_best_fit`` the best of
    them is each gather's start), then FWI of each gather from its start model; progress (iteration, misfit) into the
    job's meta after every iteration; stops early when the job's cancel flag is set. Returns the refined models
    (.npy bytes, [n, 70, 70] m/s) with each gather's misfit history, the start models, the neighbours' misfits and
    ``cancelled``."""
    from model.refine import FwiConfig, refine_fwi

    job = get_current_job()
    if job is None:
        raise RuntimeError("run_refine_job runs inside an rq worker only")
    conn, flag = job.connection, cancel_key(job.id)
    g = load_npy(gathers)
    attempt = int(conn.incr(attempts_key(job.id)))
    conn.expire(attempts_key(job.id), max(int(job.failure_ttl or 0), int(job.result_ttl or 0), 86400))
    job.meta.update(attempt=attempt, progress=0.0, iteration=0, gather=0, misfit=[])
    job.save_meta()
    s, fit = _fit_and_starts(g, None if neighbours is None else load_npy(neighbours), load_npy(starts), start_best_fit)
    out: dict[str, Any] = {k: [] for k in ("misfit", "start_misfit", "final_misfit", "iterations", "seconds",
                                           "stopped")}
    models: list[np.ndarray] = []
    cancelled = False  # refine_fwi polls the flag before every step: a job cancelled before it ran stops at once
    for b in range(len(g)):
        history: list[float] = []

        def progress(iteration: int, misfit: float, b: int = b, history: list[float] = history) -> None:
            history.append(float(misfit))
            job.meta.update(gather=b, iteration=int(iteration), misfit=history,
                            progress=min(1.0, (b + iteration / iterations) / len(g)))
            job.save_meta()

        res = refine_fwi(g[b], s[b], FwiConfig(iterations=iterations, max_seconds=max_seconds), progress,
                         lambda: bool(conn.exists(flag)))
        models.append(np.asarray(res.model, np.float32))
        for key, value in (("misfit", [float(x) for x in res.misfit_history]), ("start_misfit", res.start_misfit),
                           ("final_misfit", res.final_misfit), ("iterations", res.iterations),
                           ("seconds", res.seconds), ("stopped", res.stopped)):
            out[key].append(value)
        if res.stopped == "cancelled":
            cancelled = True
            break
    if not cancelled:
        job.meta.update(progress=1.0)
        job.save_meta()
    return {"models": npy_bytes(np.stack(models) if models else np.zeros((0, 70, 70), np.float32)),
            "starts": npy_bytes(np.asarray(s, np.float32)), "cancelled": cancelled, "neighbour_misfits": fit, **out}


def run_worker(redis_url: str, *, heartbeat_s: int = 10, grace_s: int = 60, maintenance_s: int = 60,
               burst: bool = False, name: str | None = None) -> bool:
    """Run a worker on the refinement queue until stopped (SIGTERM/SIGINT: the running job finishes first; twice:
    at once), or, with ``burst``, until the queue is empty. torch and the FWI code are imported before the first
    job, so each work horse starts warm."""
    import model.refine  # noqa: F401 - imported once here, inherited by every forked work horse

    connection = Redis.from_url(redis_url, socket_connect_timeout=5.0, health_check_interval=30)
    RefineWorker.grace_s = grace_s
    worker = RefineWorker([Queue(QUEUE_NAME, connection=connection)], connection=connection, name=name,
                          job_monitoring_interval=heartbeat_s, maintenance_interval=maintenance_s,
                          log_job_description=False)
    return bool(worker.work(burst=burst, with_scheduler=False, logging_level="INFO"))
