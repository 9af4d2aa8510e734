"""Cached steps for multi-step commands (``seisbind quickstart``): each step runs once, and a later run skips it
when its stamp (key of its settings and upstream results, and its result) matches and its outputs are still valid."""

from __future__ import annotations

import fcntl
import hashlib
import json
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from seisbind.files import write_json_atomic


class PipelineError(RuntimeError):
    """A pipeline that cannot go on: its work folder is in use, or was prepared with other settings."""


def _key(step: str, params: dict[str, Any]) -> str:
    blob = json.dumps({"step": step, "params": params}, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


@dataclass
class Step:
    """One cached step: ``run()`` does the work and returns a JSON-able result; ``valid(result)`` checks that
    the outputs recorded in a stamp are still usable. ``params`` (settings and upstream results) key the cache."""

    name: str
    title: str
    params: dict[str, Any]
    run: Callable[[], dict[str, Any]]
    valid: Callable[[dict[str, Any]], bool]


class Pipeline:
    """Runs steps in order, skipping those whose stamp matches; prints one line per step."""

    def __init__(self, stamps: Path, out: Callable[[str], None]) -> None:
        self.stamps = stamps
        self.out = out
        self.results: dict[str, dict[str, Any]] = {}
        self.ran: list[str] = []

    def stamp(self, name: str) -> Path:
        """The stamp of step ``name``: its key, parameters and result, written when it finished."""
        return self.stamps / f"{name}.json"

    def cached(self, step: Step) -> dict[str, Any] | None:
        path = self.stamp(step.name)
        try:
            stamp = json.loads(path.read_text())
        except (OSError, ValueError):
            return None
        if stamp.get("key") != _key(step.name, step.params):
            return None
        result = stamp.get("result")
        try:
            return result if isinstance(result, dict) and step.valid(result) else None
        except (OSError, ValueError, KeyError, TypeError):
            return None

    def do(self, step: Step, number: int, total: int) -> dict[str, Any]:
        head = f"[{number}/{total}] {step.title}"
        result = self.cached(step)
        if result is not None:
            self.out(f"{head}: cached")
        else:
            self.out(f"{head} ...")
            t0, c0 = time.monotonic(), time.process_time()
            result = step.run()
            seconds, cpu = time.monotonic() - t0, time.process_time() - c0
            self.stamp(step.name).parent.mkdir(parents=True, exist_ok=True)
            write_json_atomic(self.stamp(step.name), {
                "step": step.name, "key": _key(step.name, step.params), "params": step.params, "result": result,
                "seconds": round(seconds, 1), "cpu_seconds": round(cpu, 1),
                "finished": datetime.now(timezone.utc).isoformat(timespec="seconds")})
            self.ran.append(step.name)
            self.out(f"{head}: done in {seconds:.0f} s")
        self.results[step.name] = result
        return result


@contextmanager
def workdir_lock(root: Path) -> Iterator[None]:
    """Hold an exclusive lock on the work folder (two quickstarts must not write it at once)."""
    root.mkdir(parents=True, exist_ok=True)
    with open(root / ".lock", "w") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError as e:
            raise PipelineError(f"{root}: another run is using this work folder") from e
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)
