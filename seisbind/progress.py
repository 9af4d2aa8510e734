"""Progress reporting for long commands: a tqdm bar on a terminal, periodic log lines otherwise."""

from __future__ import annotations

import logging
import sys
import time
from collections.abc import Callable
from typing import Any

from tqdm import tqdm

log = logging.getLogger("seisbind")


class LogProgress:
    """tqdm-like counter that logs a line at most every ``interval`` seconds (for pipes and CI logs)."""

    def __init__(self, total: int, desc: str, interval: float = 30.0, initial: int = 0) -> None:
        self.total, self.desc, self.interval, self.n = total, desc, interval, initial
        self._start = self._last = time.monotonic()

    def update(self, k: int = 1) -> None:
        self.n += k
        now = time.monotonic()
        if now - self._last >= self.interval or self.n >= self.total:
            self._last = now
            rate = self.n / max(now - self._start, 1e-9)
            print(f"{self.desc}: {self.n}/{self.total} ({rate:.1f}/s)", file=sys.stderr, flush=True)

    def set_postfix(self, **kw: Any) -> None:
        pass

    def close(self) -> None:
        pass

    def __enter__(self) -> "LogProgress":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def progress(total: int, desc: str, initial: int = 0, enabled: bool = True) -> Any:
    """A progress counter with ``update(k)``: a bar on a terminal, log lines otherwise, nothing if disabled."""
    if enabled and sys.stderr.isatty():
        return tqdm(total=total, desc=desc, initial=initial, unit="model", dynamic_ncols=True)
    return LogProgress(total, desc, interval=30.0 if enabled else float("inf"), initial=initial)


def fraction_progress(desc: str, resolution: int = 1000) -> tuple[Any, Callable[[float], None]]:
    """A progress counter and a callback that moves it to a completed fraction in [0, 1] (for APIs that report
    fractions, such as ``index.build.build_index(progress_cb=...)``)."""
    bar = progress(resolution, desc)
    done = [0]

    def report(fraction: float) -> None:
        step = int(fraction * resolution) - done[0]
        if step > 0:
            bar.update(step)
            done[0] += step

    return bar, report
