"""What ingest works on: the traces of a line of shots with their geometry, the error for data that cannot be mapped,
and the report of every step taken (docs/ingest.md)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np


class IngestError(ValueError):
    """Data that cannot be mapped onto the OpenFWI geometry; the message says what is missing or wrong."""


@dataclass
class ShotRecords:
    """Traces of a 2-D line of shots, one row per trace, any order.

    Attributes:
        data: [trace, time] float32, the recorded samples.
        dt_s: sample interval, s.
        delay_ms: [trace] time of the first sample after the source fired, ms (SEG-Y DelayRecordingTime; negative:
            recording started before the shot).
        shot: [trace] int64 shot key (FieldRecord, or an index of distinct source positions).
        source_x: [trace] float64 source position along the line, m.
        receiver_x: [trace] float64 receiver position along the line, m.
        shot_key: what ``shot`` holds, for the report ("FieldRecord" or "source position").
    """

    data: np.ndarray
    dt_s: float
    delay_ms: np.ndarray
    shot: np.ndarray
    source_x: np.ndarray
    receiver_x: np.ndarray
    shot_key: str = "FieldRecord"

    def __post_init__(self) -> None:
        n = len(self.data)
        for name in ("delay_ms", "shot", "source_x", "receiver_x"):
            if len(getattr(self, name)) != n:
                raise IngestError(f"{name} has {len(getattr(self, name))} entries for {n} traces")


@dataclass
class IngestReport:
    """Every step taken, with its parameters, and the warnings where the result is less trustworthy."""

    steps: list[dict[str, Any]] = field(default_factory=list)
    warnings: list[dict[str, str]] = field(default_factory=list)

    def step(self, name: str, **params: Any) -> None:
        """Record a step and its parameters (JSON-serialisable values)."""
        self.steps.append({"name": name, "params": _plain(params)})

    def warn(self, code: str, message: str) -> None:
        """Record a warning: a stable code and a sentence saying what is less trustworthy and why."""
        self.warnings.append({"code": code, "message": message})

    def as_dict(self) -> dict[str, Any]:
        """``{"steps": [{"name", "params"}], "warnings": [{"code", "message"}]}``."""
        return {"steps": list(self.steps), "warnings": list(self.warnings)}


def _plain(x: Any) -> Any:
    """numpy scalars and arrays -> Python numbers and lists (floats rounded to 6 significant digits)."""
    if isinstance(x, dict):
        return {str(k): _plain(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_plain(v) for v in x]
    if isinstance(x, np.ndarray):
        return _plain(x.tolist())
    if isinstance(x, (np.integer, bool, np.bool_)):
        return x.item() if isinstance(x, np.generic) else x
    if isinstance(x, (float, np.floating)):
        return float(f"{float(x):.6g}")
    return x
