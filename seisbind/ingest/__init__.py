"""Ingest: shot gathers of any 2-D acquisition (SEG-Y, or arrays of a stated geometry) -> the OpenFWI geometry
(5, 1000, 70) float32, with a report of every step and its warnings (docs/ingest.md). numpy, scipy and segyio only.

    gathers, report = ingest_segy("line.sgy")                  # or the file's bytes
    gathers, report = ingest_array(data, dt_s=0.002, source_x_m=[...], receiver_x_m=[...])
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

import numpy as np

from seisbind.ingest.amplitude import AmplitudeMode
from seisbind.ingest.mapping import NOMINAL_SOURCES_M, map_records
from seisbind.ingest.records import IngestError, IngestReport, ShotRecords
from seisbind.ingest.segy import SEGY_MEDIA_TYPE, read_segy, write_segy

__all__ = ["IngestError", "IngestReport", "NOMINAL_SOURCES_M", "SEGY_MEDIA_TYPE", "ShotRecords", "ingest_array",
           "ingest_records", "ingest_segy", "records_from_array", "write_segy"]


def ingest_records(rec: ShotRecords, report: IngestReport | None = None, *, origin_m: float | None = None,
                   amplitude: AmplitudeMode = "auto") -> tuple[np.ndarray, dict[str, Any]]:
    """Map :class:`ShotRecords` onto the OpenFWI geometry: (gathers (5, 1000, 70) float32, report dict)."""
    report = report if report is not None else IngestReport()
    gathers = map_records(rec, report, origin_m=origin_m, amplitude=amplitude)
    return gathers, report.as_dict()


def ingest_segy(source: str | os.PathLike[str] | bytes, *, origin_m: float | None = None,
                amplitude: AmplitudeMode = "auto") -> tuple[np.ndarray, dict[str, Any]]:
    """A shot-organised SEG-Y file (path or bytes) -> (gathers (5, 1000, 70) float32, report dict).

    Raises IngestError saying what is wrong or missing for a file that cannot be read or mapped.
    """
    report = IngestReport()
    return ingest_records(read_segy(source, report), report, origin_m=origin_m, amplitude=amplitude)


def records_from_array(data: np.ndarray, *, dt_s: float, source_x_m: Sequence[float],
                       receiver_x_m: np.ndarray | Sequence[float] | None = None,
                       receiver_offsets_m: np.ndarray | Sequence[float] | None = None,
                       delay_ms: float = 0.0, report: IngestReport | None = None) -> ShotRecords:
    """Gathers of a stated geometry -> :class:`ShotRecords`.

    Args:
        data: [shot, time, receiver] float, finite.
        dt_s: sample interval, s.
        source_x_m: [shot] source positions along the line, m.
        receiver_x_m: [receiver] (a fixed spread) or [shot, receiver] receiver positions, m; or instead
        receiver_offsets_m: [receiver] or [shot, receiver] receiver positions relative to each shot's source, m.
        delay_ms: time of the first sample after the shot, ms.
    """
    arr = np.asarray(data)
    if arr.ndim != 3 or arr.dtype.kind not in "fiu" or min(arr.shape) < 1:
        raise IngestError(f"gathers array: expected [shot, time, receiver] numbers, got shape {arr.shape} "
                          f"{arr.dtype}")
    n_shots, nt, n_rec = arr.shape
    sx = np.asarray(source_x_m, np.float64).ravel()
    if sx.shape != (n_shots,):
        raise IngestError(f"{len(sx)} source positions given for {n_shots} shots")
    if (receiver_x_m is None) == (receiver_offsets_m is None):
        raise IngestError("give the receivers either as positions (receiver_x_m) or as offsets from each source "
                          "(receiver_offsets_m)")
    given = np.asarray(receiver_x_m if receiver_offsets_m is None else receiver_offsets_m, np.float64)
    if given.shape not in ((n_rec,), (n_shots, n_rec)):
        raise IngestError(f"receiver positions have shape {given.shape}; expected ({n_rec},) or ({n_shots}, {n_rec}) "
                          f"for gathers of shape {arr.shape}")
    rx = np.broadcast_to(given, (n_shots, n_rec)) + (sx[:, None] if receiver_offsets_m is not None else 0.0)
    if not (np.isfinite(rx).all() and np.isfinite(sx).all()):
        raise IngestError("source and receiver positions must be finite numbers")
    if not (np.isfinite(dt_s) and dt_s > 0):
        raise IngestError(f"sample interval {dt_s!r} s: must be a positive number")
    report = report if report is not None else IngestReport()
    report.step("read_array", shape=list(arr.shape), dtype=str(arr.dtype), dt_ms=dt_s * 1000, delay_ms=delay_ms,
                receivers="offsets from each source" if receiver_offsets_m is not None else "positions")
    report.step("group_shots", key="array axis 0", shots=n_shots, traces=n_shots * n_rec)
    return ShotRecords(
        data=np.ascontiguousarray(arr.transpose(0, 2, 1).reshape(n_shots * n_rec, nt), dtype=np.float32),
        dt_s=float(dt_s), delay_ms=np.full(n_shots * n_rec, float(delay_ms)),
        shot=np.repeat(np.arange(n_shots), n_rec), source_x=np.repeat(sx, n_rec), receiver_x=rx.ravel().copy(),
        shot_key="shot")


def ingest_array(data: np.ndarray, *, dt_s: float, source_x_m: Sequence[float],
                 receiver_x_m: np.ndarray | Sequence[float] | None = None,
                 receiver_offsets_m: np.ndarray | Sequence[float] | None = None, delay_ms: float = 0.0,
                 origin_m: float | None = None, amplitude: AmplitudeMode = "auto") -> tuple[np.ndarray, dict[str, Any]]:
    """Gathers of a stated geometry (see :func:`records_from_array`) -> (gathers (5, 1000, 70) float32, report)."""
    report = IngestReport()
    rec = records_from_array(data, dt_s=dt_s, source_x_m=source_x_m, receiver_x_m=receiver_x_m,
                             receiver_offsets_m=receiver_offsets_m, delay_ms=delay_ms, report=report)
    return ingest_records(rec, report, origin_m=origin_m, amplitude=amplitude)
