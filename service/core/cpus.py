"""The CPUs this process may use, and where the serving threads run on them.

A request with nothing else in flight goes from the event loop to a batch worker and back. When the two threads
are on different cores, each hand-off wakes an idle core (on a virtual machine, an exit to the hypervisor) and the
request's data moves between their caches. ``CpuPlan`` therefore puts the event loop and the first batch worker on
one core, where a lone request runs from arrival to answer, and one more worker on each other core, so batches
still run side by side under load (``SEISBIND_PIN_THREADS``; off by default: a pinned thread cannot leave a core
that other processes keep busy). Threads inherit the CPUs of the thread that starts them: every other thread the
service starts calls ``unpin_thread`` first, so only the event loop and the batch workers stay pinned.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass

from seisbind.cores import allowed_cpus, usable_cores

log = logging.getLogger("service.cpus")


def pin_thread(cpus: set[int] | None) -> None:
    """Restrict the calling thread to ``cpus`` (all allowed CPUs when None). Never raises: on a platform or in a
    sandbox that refuses, the thread keeps the CPUs it had."""
    try:
        os.sched_setaffinity(0, cpus if cpus is not None else set(allowed_cpus()))
    except (AttributeError, OSError, ValueError) as e:
        log.debug("could not set the CPU affinity of a thread: %s", e)


def unpin_thread() -> None:
    """Let the calling thread run on every allowed CPU again (for threads started by a pinned one)."""
    pin_thread(None)


@dataclass(frozen=True)
class CpuPlan:
    """CPUs of the event-loop thread and of each batch worker; None everywhere means no pinning."""

    loop: set[int] | None
    workers: tuple[set[int] | None, ...]

    @classmethod
    def make(cls, workers: int, pin: bool, cpus: list[int] | None = None) -> CpuPlan:
        """The event loop and worker 0 on the first CPU, worker i on CPU i (round robin past the last). No pinning
        when ``pin`` is false or fewer than two CPUs are usable."""
        if cpus is None:
            cpus = allowed_cpus()[:usable_cores()]
        if not pin or len(cpus) < 2:
            return cls(None, (None,) * workers)
        return cls({cpus[0]}, tuple({cpus[i % len(cpus)]} for i in range(workers)))

    def describe(self) -> dict[str, object]:
        """For logs and /v1/info: the CPU of the event loop and of each worker (None: not pinned)."""
        def one(s: set[int] | None) -> int | None:
            return None if s is None else min(s)

        return {"event_loop": one(self.loop), "workers": [one(w) for w in self.workers]}
