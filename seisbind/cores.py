"""The CPU cores this process may use: its affinity mask, capped by a cgroup CPU quota (a container's
``--cpus``). The one place that counts cores; thread defaults everywhere derive from :func:`usable_cores`."""

from __future__ import annotations

import math
import os
from pathlib import Path

CGROUP_CPU_MAX = Path("/sys/fs/cgroup/cpu.max")
"""cgroup v2: "<quota> <period>" or "max <period>" (inside a container: the container's own limit)."""
CGROUP_V1_CPU = Path("/sys/fs/cgroup/cpu")
"""cgroup v1: cpu.cfs_quota_us (-1: unlimited) and cpu.cfs_period_us."""


def _affinity() -> list[int]:
    try:
        return sorted(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        return list(range(os.cpu_count() or 1))


_PROCESS_CPUS = _affinity()
"""The process's affinity mask, taken at import: later a thread's own mask may be one pinned CPU."""


def allowed_cpus() -> list[int]:
    """The CPUs this process may run on (its affinity mask before any thread was pinned), in order."""
    return list(_PROCESS_CPUS)


def cpu_quota(cpu_max: Path = CGROUP_CPU_MAX, v1: Path = CGROUP_V1_CPU) -> float | None:
    """Cores' worth of CPU time the cgroup allows, e.g. 2.0 for ``docker run --cpus 2``; None when unlimited or
    unknown."""
    try:
        quota, period = cpu_max.read_text().split()[:2]
    except (OSError, ValueError):
        try:
            quota, period = (v1 / "cpu.cfs_quota_us").read_text().strip(), (v1 / "cpu.cfs_period_us").read_text()
        except OSError:
            return None
    try:
        cores = int(quota) / int(period)
    except (ValueError, ZeroDivisionError):  # "max": unlimited
        return None
    return cores if cores > 0 else None  # v1 writes -1 for unlimited


def usable_cores() -> int:
    """Cores this process can use: the CPUs of its affinity mask, fewer when a cgroup CPU quota allows less."""
    cores = len(allowed_cpus())
    quota = cpu_quota()
    if quota is not None:
        cores = min(cores, math.ceil(quota))
    return max(1, cores)
