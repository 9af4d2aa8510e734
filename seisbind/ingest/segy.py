"""Shot-organised SEG-Y with segyio: reading (any trace order, IBM/IEEE/integer samples, either byte order,
scaled coordinates) into :class:`ShotRecords`, and writing gathers of any geometry (used by tests and benchmarks).

No inline/crossline geometry is assumed (``ignore_geometry=True``). Every problem with a file is an
:class:`IngestError` naming it; segyio is only handed files whose headers and size have been checked first.
"""

from __future__ import annotations

import os
import struct
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Literal

import numpy as np
import segyio

from seisbind.files import write_with_atomic
from seisbind.ingest.records import IngestError, IngestReport, ShotRecords

SEGY_MEDIA_TYPE = "application/x-segy"
TEXT_HEADER_BYTES = 3200
BINARY_HEADER_BYTES = 400
TRACE_HEADER_BYTES = 240
HEADERS_BYTES = TEXT_HEADER_BYTES + BINARY_HEADER_BYTES
SAMPLE_BYTES = {1: 4, 2: 4, 3: 2, 5: 4, 6: 8, 8: 1, 10: 4, 11: 2, 16: 1}
"""Bytes per sample of the SEG-Y sample format codes segyio reads (1 IBM float, 5 IEEE float, 2/3/8 integers...)."""
FORMAT_NAMES = {1: "IBM float32", 2: "int32", 3: "int16", 5: "IEEE float32", 6: "IEEE float64", 8: "int8",
                10: "uint32", 11: "uint16", 16: "uint8"}
FEET = 0.3048
TF = segyio.TraceField


def _binary_header(head: bytes, endian: str) -> tuple[int, int, int, int, int]:
    """(interval µs, samples, format code, extended text headers, measurement system) in one byte order."""
    e = ">" if endian == "big" else "<"
    interval, = struct.unpack(e + "H", head[3216:3218])
    ns, = struct.unpack(e + "H", head[3220:3222])
    fmt, = struct.unpack(e + "h", head[3224:3226])
    units, = struct.unpack(e + "h", head[3254:3256])
    ext, = struct.unpack(e + "h", head[3504:3506])
    return interval, ns, fmt, ext, units


def check_segy_layout(head: bytes, size: int) -> tuple[str, int, int, int]:
    """Check the headers and the file size before segyio opens the file.

    Args:
        head: the file's first 3600 bytes, or more (the first trace header too, to name a disagreeing count).
        size: the file's size in bytes.

    Returns:
        (endian "big" or "little", sample format code, samples per trace, number of traces).

    Raises:
        IngestError naming what is wrong: too short, not SEG-Y, no traces, truncated, or a sample count that the
        file cannot hold.
    """
    if size < HEADERS_BYTES:
        raise IngestError(f"not a SEG-Y file: {size} bytes, shorter than the {HEADERS_BYTES}-byte textual and "
                          "binary headers")
    endian = next((e for e in ("big", "little") if _binary_header(head, e)[2] in SAMPLE_BYTES), None)
    if endian is None:
        codes = {e: _binary_header(head, e)[2] for e in ("big", "little")}
        raise IngestError(f"not a SEG-Y file (or an unsupported one): the binary header's sample format code "
                          f"(bytes 3225-3226) reads {codes['big']} (big-endian) / {codes['little']} (little-endian); "
                          f"expected one of {sorted(SAMPLE_BYTES)} (1 = IBM float, 5 = IEEE float)")
    _, ns, fmt, ext, _ = _binary_header(head, endian)
    if ext < 0:
        raise IngestError("the binary header declares a variable number of extended textual headers (-1); "
                          "only a fixed count is supported")
    if ns == 0:
        raise IngestError("the binary header gives 0 samples per trace (bytes 3221-3222); the sample count is "
                          "needed to read the traces")
    data_bytes = size - HEADERS_BYTES - ext * TEXT_HEADER_BYTES
    trace_bytes = TRACE_HEADER_BYTES + ns * SAMPLE_BYTES[fmt]
    if data_bytes <= 0:
        raise IngestError("the SEG-Y file holds no traces (nothing after the headers)")
    first_ns = _first_trace_samples(head, endian, ext)
    if data_bytes < trace_bytes or (data_bytes % trace_bytes and first_ns not in (0, ns)):
        said = f"; the first trace header says {first_ns}" if first_ns not in (None, 0, ns) else ""
        raise IngestError(f"the binary header claims {ns} samples per trace ({trace_bytes} bytes per trace with "
                          f"{FORMAT_NAMES[fmt]}), which does not fit the file's {data_bytes} bytes of traces{said}")
    if data_bytes % trace_bytes:
        raise IngestError(f"file size does not fit whole traces: {data_bytes} bytes of traces is not a multiple of "
                          f"{trace_bytes} bytes ({ns} samples of {FORMAT_NAMES[fmt]} + 240-byte header); the file "
                          "is truncated, or its traces do not all have the binary header's sample count")
    return endian, fmt, ns, data_bytes // trace_bytes


def _first_trace_samples(head: bytes, endian: str, ext: int) -> int | None:
    """TRACE_SAMPLE_COUNT (bytes 115-116) of the first trace header, if ``head`` reaches it."""
    at = HEADERS_BYTES + ext * TEXT_HEADER_BYTES + 114
    if len(head) < at + 2:
        return None
    return struct.unpack((">" if endian == "big" else "<") + "H", head[at:at + 2])[0]


def read_segy(source: str | os.PathLike[str] | bytes, report: IngestReport | None = None) -> ShotRecords:
    """Read a shot-organised SEG-Y file (a path, or the file's bytes) into :class:`ShotRecords`.

    Coordinates are scaled by SourceGroupScalar (feet converted to metres), projected onto the line, and traces are
    grouped into shots by FieldRecord (or, when every trace has the same FieldRecord, by source position). The steps
    are added to ``report``. Raises IngestError naming the problem for a file that cannot be read.
    """
    report = report if report is not None else IngestReport()
    if isinstance(source, (bytes, bytearray, memoryview)):
        body = bytes(source)
        endian, fmt, ns, ntr = check_segy_layout(body[:HEADERS_BYTES + 8 * TEXT_HEADER_BYTES + 240], len(body))
        with tempfile.NamedTemporaryFile(suffix=".sgy") as tmp:
            tmp.write(body)
            tmp.flush()
            return _read_checked(tmp.name, endian, fmt, ns, ntr, len(body), report)
    path = Path(source)
    try:
        size = path.stat().st_size
        with open(path, "rb") as f:
            head = f.read(HEADERS_BYTES + 8 * TEXT_HEADER_BYTES + 240)
    except OSError as e:
        raise IngestError(f"{path}: cannot read ({e.strerror or e})") from e
    endian, fmt, ns, ntr = check_segy_layout(head, size)
    return _read_checked(str(path), endian, fmt, ns, ntr, size, report)


def _read_checked(path: str, endian: str, fmt: int, ns: int, ntr: int, size: int,
                  report: IngestReport) -> ShotRecords:
    try:
        with segyio.open(path, "r", ignore_geometry=True, endian=endian) as f:
            f.mmap()  # header words and samples read from memory, not one seek per trace and field
            if f.tracecount != ntr:
                raise IngestError(f"segyio counts {f.tracecount} traces, the file size implies {ntr}")
            dt_us = float(segyio.tools.dt(f, fallback_dt=0.0))
            head = {k: np.asarray(f.attributes(getattr(TF, k))[:], np.int64) for k in (
                "FieldRecord", "SourceX", "SourceY", "GroupX", "GroupY", "SourceGroupScalar", "offset",
                "DelayRecordingTime", "TRACE_SAMPLE_COUNT", "CoordinateUnits")}
            data = np.asarray(f.trace.raw[:], dtype=np.float32).reshape(ntr, ns)
            units = int(f.bin[segyio.BinField.MeasurementSystem])
    except IngestError:
        raise
    except Exception as e:  # noqa: BLE001 - segyio raises RuntimeError, OSError, ValueError... for bad files
        raise IngestError(f"unreadable SEG-Y headers or traces: {e}") from e
    bad_ns = np.flatnonzero((head["TRACE_SAMPLE_COUNT"] != ns) & (head["TRACE_SAMPLE_COUNT"] != 0))
    if len(bad_ns):
        i = int(bad_ns[0])
        raise IngestError(f"inconsistent sample counts: trace {i} header says {head['TRACE_SAMPLE_COUNT'][i]} "
                          f"samples, the binary header {ns} ({len(bad_ns)} of {ntr} traces disagree); traces of "
                          "varying length are not supported")
    if not dt_us > 0:
        raise IngestError("no sample interval: the binary header (bytes 3217-3218) and the trace headers "
                          "(bytes 117-118) give 0 µs")
    geographic = np.flatnonzero(np.isin(head["CoordinateUnits"], (2, 3, 4)))
    if len(geographic):
        raise IngestError(f"coordinates are geographic (CoordinateUnits = {head['CoordinateUnits'][geographic[0]]} "
                          "in trace headers): projected coordinates in metres or feet are needed")
    report.step("read_segy", bytes=size, traces=ntr, samples=ns, dt_ms=dt_us / 1000, sample_format=FORMAT_NAMES[fmt],
                endian=endian, reader="segyio (ignore_geometry=True)")
    sx, rx, how = _line_positions(head, units, report)
    shot, key = _shot_keys(head["FieldRecord"], sx)
    report.step("group_shots", key=key, shots=int(len(np.unique(shot))), traces=ntr)
    return ShotRecords(data=data, dt_s=dt_us * 1e-6, delay_ms=head["DelayRecordingTime"].astype(np.float64),
                       shot=shot, source_x=sx, receiver_x=rx, shot_key=key)


def _scaled(values: np.ndarray, scalar: np.ndarray) -> np.ndarray:
    """SEG-Y coordinate scalar: positive multiplies, negative divides, 0 means 1."""
    s = scalar.astype(np.float64)
    factor = np.where(s > 0, s, np.where(s < 0, -1.0 / np.where(s < 0, s, -1.0), 1.0))
    return values.astype(np.float64) * factor


def _line_positions(head: dict[str, np.ndarray], units: int,
                    report: IngestReport) -> tuple[np.ndarray, np.ndarray, str]:
    """Source and receiver positions along the line, m, from the scaled coordinates (or source + offset)."""
    scalar = head["SourceGroupScalar"]
    unit = FEET if units == 2 else 1.0
    src = np.stack([_scaled(head["SourceX"], scalar), _scaled(head["SourceY"], scalar)], 1) * unit
    grp = np.stack([_scaled(head["GroupX"], scalar), _scaled(head["GroupY"], scalar)], 1) * unit
    has_src, has_grp = bool(np.any(src != 0)), bool(np.any(grp != 0))
    has_off = bool(np.any(head["offset"] != 0))
    if not has_grp and not (has_src and has_off):
        raise IngestError("unreadable geometry: the trace headers hold no receiver coordinates (GroupX/GroupY are "
                          "0 in every trace) and no source coordinates with offsets; receiver positions are needed")
    uniq = np.unique(scalar)
    report.step("apply_coordinate_scalars", source_group_scalar=uniq[:8].tolist(),
                unit="feet -> m" if units == 2 else "m")
    if has_grp:
        pts = np.concatenate([src, grp])
        direction = _line_direction(pts)
        sx, rx = src @ direction, grp @ direction
        perp = np.abs(pts @ np.array([-direction[1], direction[0]]))
        bend = float(perp.max() - perp.min()) if len(perp) else 0.0
        how = "source and receiver coordinates projected onto the line"
        report.step("project_onto_line", direction=direction.round(6).tolist(), max_off_line_m=bend)
        if bend > 10.0:
            report.warn("crooked_line", f"sources and receivers lie up to {bend:.1f} m off a straight line; "
                                        "positions are their projections onto it")
    else:
        direction = _line_direction(src)
        sx = src @ direction
        rx = sx + _scaled(head["offset"], scalar) * unit
        how = "receiver = source position + signed offset (no receiver coordinates)"
        report.step("receivers_from_offsets", note=how)
    return sx, rx, how


def _line_direction(pts: np.ndarray) -> np.ndarray:
    """Unit vector of the line through ``pts`` (principal axis), pointing towards increasing x (or y)."""
    centred = pts - pts.mean(0)
    if not np.any(centred):
        return np.array([1.0, 0.0])
    if not np.any(centred[:, 1]):
        return np.array([1.0, 0.0])
    u = np.linalg.svd(centred, full_matrices=False)[2][0]
    if u[0] < -1e-12 or (abs(u[0]) <= 1e-12 and u[1] < 0):
        u = -u
    return u


def _shot_keys(field_record: np.ndarray, source_x: np.ndarray) -> tuple[np.ndarray, str]:
    """Shot key per trace: FieldRecord when it tells shots apart, else the index of the (rounded) source position."""
    if len(np.unique(field_record)) > 1:
        return field_record.astype(np.int64), "FieldRecord"
    _, inverse = np.unique(np.round(source_x, 2), return_inverse=True)
    return inverse.astype(np.int64), "source position"


def _write_traces(f: "segyio.SegyFile", g: np.ndarray, sx: np.ndarray, rx: np.ndarray, ffid: np.ndarray,
                  order: np.ndarray, dt_us: int, delay_ms: int, coordinate_scalar: int) -> None:
    """Headers and samples of every trace, in ``order`` (shot * receivers + receiver)."""
    scale = float(-coordinate_scalar) if coordinate_scalar < 0 else 1.0 / max(coordinate_scalar, 1)
    n_rec, nt = rx.shape[1], g.shape[1]
    for out_i, src_i in enumerate(order):
        s, r = divmod(int(src_i), n_rec)
        f.header[out_i] = {
            TF.TRACE_SEQUENCE_LINE: out_i + 1, TF.FieldRecord: int(ffid[s]), TF.TraceNumber: r + 1,
            TF.SourceX: int(round(sx[s] * scale)), TF.GroupX: int(round(rx[s, r] * scale)),
            TF.SourceGroupScalar: coordinate_scalar, TF.offset: int(round(rx[s, r] - sx[s])), TF.CoordinateUnits: 1,
            TF.DelayRecordingTime: int(delay_ms), TF.TRACE_SAMPLE_COUNT: nt, TF.TRACE_SAMPLE_INTERVAL: dt_us,
        }
        f.trace[out_i] = np.ascontiguousarray(g[s, :, r])


def write_segy(path: str | os.PathLike[str], gathers: np.ndarray, dt_s: float, source_x_m: Sequence[float],
               receiver_x_m: np.ndarray | Sequence[float], *, delay_ms: int = 0,
               sample_format: Literal["ieee", "ibm"] = "ieee", endian: Literal["big", "little"] = "big",
               coordinate_scalar: int = -100, field_records: Sequence[int] | None = None,
               trace_order: np.ndarray | None = None) -> Path:
    """Write shot gathers as a shot-organised SEG-Y file, atomically (temporary file, fsync, rename).

    Args:
        gathers: [shot, time, receiver] float, any geometry.
        dt_s: sample interval, s (whole microseconds).
        source_x_m: [shot] source positions along the line (x), m.
        receiver_x_m: [receiver] (fixed spread) or [shot, receiver] receiver positions, m.
        delay_ms: DelayRecordingTime of every trace: the first sample is at this time after the shot.
        sample_format: "ieee" (format 5) or "ibm" (format 1) floats.
        endian: byte order of the file.
        coordinate_scalar: SourceGroupScalar (-100: coordinates stored in cm).
        field_records: [shot] FieldRecord numbers (default 1, 2, ...).
        trace_order: permutation of the shot * receiver traces (default shot by shot), e.g. to shuffle them.

    Returns:
        The path written.
    """
    g = np.asarray(gathers, dtype=np.float32)
    if g.ndim != 3:
        raise ValueError(f"gathers: expected [shot, time, receiver], got shape {g.shape}")
    n_shots, nt, n_rec = g.shape
    rx = np.broadcast_to(np.asarray(receiver_x_m, np.float64), (n_shots, n_rec))
    sx = np.asarray(source_x_m, np.float64)
    if sx.shape != (n_shots,):
        raise ValueError(f"source_x_m: expected {n_shots} positions, got shape {sx.shape}")
    ffid = np.arange(1, n_shots + 1) if field_records is None else np.asarray(field_records)
    order = np.arange(n_shots * n_rec) if trace_order is None else np.asarray(trace_order)
    if sorted(order.tolist()) != list(range(n_shots * n_rec)):
        raise ValueError("trace_order must be a permutation of range(shots * receivers)")
    dt_us = int(round(dt_s * 1e6))
    spec = segyio.spec()
    spec.format = 5 if sample_format == "ieee" else 1
    spec.samples = list(range(nt))
    spec.tracecount = n_shots * n_rec
    spec.endian = endian
    path = Path(path)

    def write(tmp: Path) -> None:
        with segyio.create(str(tmp), spec) as f:
            f.text[0] = segyio.tools.create_text_header({1: "SEISBIND SHOT GATHERS", 2: f"{n_shots} SHOTS "
                                                         f"{n_rec} RECEIVERS {nt} SAMPLES DT {dt_us} US"})
            f.bin.update(hdt=dt_us, hns=nt, format=spec.format, mfeet=1)
            _write_traces(f, g, sx, rx, ffid, order, dt_us, delay_ms, coordinate_scalar)

    write_with_atomic(path, write)
    return path
