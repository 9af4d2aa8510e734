"""``seisbind refine-worker``: run refinement jobs from the Redis queue (the queue and torch load only when run)."""

from __future__ import annotations

from typing import Optional

import typer


def refine_worker(
    redis: str = typer.Option(..., "--redis", envvar="SEISBIND_REDIS_URL",
                              help="Redis URL of the refinement job queue (e.g. redis://localhost:6379/0)"),
    heartbeat_s: int = typer.Option(10, "--heartbeat-s", min=1, help="seconds between heartbeats while a job runs"),
    grace_s: int = typer.Option(60, "--grace-s", min=1, help="seconds heartbeats may lapse before the job counts as "
                                "abandoned (run again or failed)"),
    maintenance_s: int = typer.Option(60, "--maintenance-s", min=1, help="seconds between settling the jobs of dead "
                                      "workers"),
    threads: Optional[int] = typer.Option(None, "--threads", min=1, envvar="SEISBIND_THREADS",
                                          help="torch CPU threads per job (default: torch's)"),
    burst: bool = typer.Option(False, "--burst", help="exit once the queue is empty"),
    name: Optional[str] = typer.Option(None, "--name", help="worker name (default: rq's, unique)"),
) -> None:
    """Run refinement jobs (POST /refine, method fwi or both) from the Redis queue by full-waveform inversion."""
    from redis.exceptions import RedisError

    from cli.main import fail
    from cli.refine_worker import run_worker

    if threads:
        import torch

        torch.set_num_threads(threads)
    try:
        run_worker(redis, heartbeat_s=heartbeat_s, grace_s=grace_s, maintenance_s=maintenance_s, burst=burst,
                   name=name)
    except RedisError as e:
        fail(f"the refinement job queue cannot be reached: {type(e).__name__}: {e}")
