"""Map the traces of a line of shots onto the OpenFWI geometry (docs/formats.md): five shots nearest to the sources
at 0, 170, 340, 520, 690 m, 70 receivers every 10 m, 1000 samples at 1 ms, amplitudes on the training data's scale.

Each step is recorded with its parameters in an :class:`IngestReport`; warnings say where the result is less
trustworthy. Data that cannot be mapped raise :class:`IngestError` saying what is missing.
"""

from __future__ import annotations

import math
from fractions import Fraction

import numpy as np
from scipy.interpolate import CubicSpline
from scipy.signal import fftconvolve, firwin

from seisbind.acquisition import DT, DX, GATHER_SHAPE, N_RECEIVERS, NT, SOURCE_X
from seisbind.ingest.amplitude import AmplitudeMode, scale_amplitudes
from seisbind.ingest.records import IngestError, IngestReport, ShotRecords

NOMINAL_SOURCES_M = tuple(DX * s for s in SOURCE_X)
"""The five source positions of the OpenFWI geometry, m from the first receiver."""
RECEIVERS_M = DX * np.arange(N_RECEIVERS)
"""The 70 receiver positions, m."""
SHOT_REACH_M = 80.0
"""A shot further than this from a nominal source position cannot stand in for it (half the 170 m source spacing,
less a margin)."""
SOURCE_WARN_M = 20.0
SPACING_WARN_M = DX
GAP_FACTOR = 2.5
"""Receivers further apart than this many times the shot's median spacing leave a gap that is not interpolated."""
FILTER_HALF_LENGTH = 10
"""The anti-alias filter spans 10 samples of the slower rate each side (scipy.signal.resample_poly's design)."""
KAISER_BETA = 5.0


def resample(x: np.ndarray, up: int, down: int) -> np.ndarray:
    """Resample [trace, time] by up/down along time: scipy.signal.resample_poly's result (its zero-phase Kaiser
    windowed FIR, beta 5, cutoff at the lower Nyquist frequency), computed by FFT convolution, which is several times
    faster for long filters on many traces."""
    n_in = x.shape[1]
    n_out = -(-n_in * up // down)
    rate = max(up, down)
    half = FILTER_HALF_LENGTH * rate
    h = firwin(2 * half + 1, 1.0 / rate, window=("kaiser", KAISER_BETA)) * up
    z = np.zeros((x.shape[0], n_in * up), np.float32)
    z[:, ::up] = x
    # y[i + half] is the zero-phase filter's output at upsampled sample i
    y = fftconvolve(z, h[None].astype(np.float32), mode="full", axes=1)
    return y[:, half:half + n_out * down:down].astype(np.float32)


def map_records(rec: ShotRecords, report: IngestReport, *, origin_m: float | None = None,
                amplitude: AmplitudeMode = "auto") -> np.ndarray:
    """Gathers (5, 1000, 70) float32 in the OpenFWI geometry from ``rec``; the steps and warnings go to ``report``.

    Args:
        rec: traces and geometry (positions along the line, m).
        report: collects the steps and warnings.
        origin_m: line position of the OpenFWI lateral origin (first receiver, first nominal source); default: the
            first (smallest) source position.
        amplitude: "auto" (keep amplitudes already on the training scale, else rescale), "keep", "match", or a
            factor to multiply by.
    """
    origin = float(rec.source_x.min()) if origin_m is None else float(origin_m)
    chosen = _select_shots(rec, origin, report)
    selected = np.flatnonzero(np.isin(rec.shot, [key for _, key, _ in chosen]))
    live = selected[_screen_traces(rec.data[selected], report)]
    dt_ms = rec.dt_s * 1000.0
    shots = []
    for nominal, key, src in chosen:
        idx = live[rec.shot[live] == key]
        if not len(idx):
            raise IngestError(f"the shot at {src:g} m (for the source at {nominal:g} m) has no usable traces")
        shots.append((nominal, src, idx))
    every = np.concatenate([s[2] for s in shots])
    delay = np.round(rec.delay_ms[every]).astype(np.int64)
    data = _crop_input(rec.data[every], dt_ms, delay, report)
    offsets = rec.receiver_x[every] - rec.source_x[every]
    counts = [len(idx) for _, _, idx in shots]
    if np.all(delay == delay[0]):  # one time axis: map the receivers first, leaving fewer traces to resample
        rows = _receivers(data, offsets, shots, counts, report)
        rows = _to_one_ms(rows, dt_ms, np.full(len(rows), delay[0]), rec.data.shape[1], report)
    else:
        data = _to_one_ms(data, dt_ms, delay, rec.data.shape[1], report)
        rows = _receivers(data, offsets, shots, counts, report)
    out = np.ascontiguousarray(rows.reshape(GATHER_SHAPE[0], N_RECEIVERS, NT).transpose(0, 2, 1))
    return scale_amplitudes(out, amplitude, report)


def _screen_traces(data: np.ndarray, report: IngestReport) -> np.ndarray:
    """Indices of the usable rows of ``data`` [trace, time]: NaN/Inf and dead (all-zero) traces are dropped, clipped
    ones flagged."""
    a = np.abs(data)
    peak = a.max(1)  # NaN or Inf anywhere in a trace makes its peak non-finite
    finite = np.isfinite(peak)
    dead = finite & (peak == 0)
    at_peak = a >= (np.where(finite, peak, np.inf) * (1 - 1e-6))[:, None]
    suspects = np.flatnonzero(finite & ~dead & (at_peak.sum(1) >= 3))
    clipped = np.zeros(len(data), bool)
    if len(suspects):
        run = at_peak[suspects, :-2] & at_peak[suspects, 1:-1] & at_peak[suspects, 2:]
        clipped[suspects] = run.any(1)
    live = np.flatnonzero(finite & ~dead)
    report.step("screen_traces", traces=len(data), dead=int(dead.sum()), non_finite=int((~finite).sum()),
                clipped=int(clipped.sum()), kept=len(live), scope="the traces of the five selected shots")
    if dead.any():
        report.warn("dead_traces", f"{int(dead.sum())} of {len(data)} traces are dead (all zero); they were dropped "
                                   "and their positions interpolated from their neighbours")
    if (~finite).any():
        report.warn("non_finite_traces", f"{int((~finite).sum())} traces hold NaN or Inf values; they were dropped")
    if clipped.any():
        report.warn("clipped_traces", f"{int(clipped.sum())} of {len(data)} traces are clipped (three or more "
                                      "consecutive samples at the trace's peak amplitude); their amplitudes are "
                                      "too low where clipped")
    if not len(live):
        raise IngestError(f"no usable traces: all {len(data)} traces of the selected shots are dead (all zero) or "
                          "hold NaN/Inf")
    return live


def _select_shots(rec: ShotRecords, origin: float, report: IngestReport) -> list[tuple[float, int, float]]:
    """For each nominal source, the nearest shot: (nominal m, shot key, its source position m from the origin).
    A shot's source position is the median over its traces."""
    keys, inverse, counts = np.unique(rec.shot, return_inverse=True, return_counts=True)
    xs = rec.source_x[np.lexsort((rec.source_x, inverse))]
    starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
    src = 0.5 * (xs[starts + (counts - 1) // 2] + xs[starts + counts // 2]) - origin
    chosen, used, details = [], set(), []
    for nominal in NOMINAL_SOURCES_M:
        order = [i for i in np.argsort(np.abs(src - nominal), kind="stable") if i not in used]
        if not order or abs(src[order[0]] - nominal) > SHOT_REACH_M:
            near = f"; the nearest unused shot is {abs(src[order[0]] - nominal):.1f} m away" if order else ""
            raise IngestError(f"fewer than five shots within reach: no shot within {SHOT_REACH_M:g} m of the nominal "
                              f"source at {nominal:g} m (the file has {len(keys)} shots, sources "
                              f"at {_positions(src)} m from the origin {origin:g} m{near})")
        i = int(order[0])
        used.add(i)
        chosen.append((nominal, int(keys[i]), float(src[i])))
        details.append({"nominal_m": nominal, rec.shot_key: int(keys[i]), "source_m": float(src[i]),
                        "distance_m": abs(float(src[i]) - nominal)})
    report.step("select_shots", origin_m=origin, shots_available=len(keys), chosen=details)
    far = [d for d in details if d["distance_m"] > SOURCE_WARN_M]
    for d in far:
        report.warn("source_off_nominal", f"the shot used for the source at {d['nominal_m']:g} m is at "
                                          f"{d['source_m']:g} m, {d['distance_m']:.1f} m from it (more than "
                                          f"{SOURCE_WARN_M:g} m)")
    return chosen


def _positions(x: np.ndarray, at_most: int = 12) -> str:
    shown = ", ".join(f"{v:g}" for v in np.sort(x)[:at_most])
    return shown + (", ..." if len(x) > at_most else "")


def _receivers(data: np.ndarray, offsets: np.ndarray, shots: list[tuple[float, float, np.ndarray]],
               counts: list[int], report: IngestReport) -> np.ndarray:
    """The five shots' traces [trace, time] (consecutive, ``counts`` each) -> [5 * 70, time] at the OpenFWI
    receivers' offsets from each nominal source."""
    rows = np.zeros((len(shots) * N_RECEIVERS, data.shape[1]), np.float32)
    start, spacings, missing = 0, [], 0
    for i, ((nominal, src, _), n) in enumerate(zip(shots, counts)):
        rows[i * N_RECEIVERS:(i + 1) * N_RECEIVERS], spacing, miss = _onto_receivers(
            data[start:start + n], offsets[start:start + n], nominal, src)
        start += n
        spacings.append(spacing)
        missing += miss
    spacing = float(max(spacings))
    report.step("interpolate_receivers", method="cubic spline (not-a-knot) in offset from the source",
                target_receivers=N_RECEIVERS,
                target_spacing_m=DX, offsets_relative_to="each shot's nominal source position",
                input_spacing_m=[round(s, 3) for s in spacings], zero_filled=missing)
    if spacing > SPACING_WARN_M + 1e-6:
        report.warn("coarse_receiver_spacing", f"receiver spacing {spacing:g} m is coarser than the model's 10 m: "
                                               "traces between receivers are interpolated (cubic spline in "
                                               "offset), and the traces nearest the source, where the direct wave "
                                               "peaks sharply, are the least exact")
    if missing:
        report.warn("receivers_missing", f"{missing} of {GATHER_SHAPE[0] * N_RECEIVERS} receiver positions lie "
                                         "outside the recorded spread or in gaps of it and were set to zero")
    return rows


def _crop_input(data: np.ndarray, dt_ms: float, delay: np.ndarray, report: IngestReport) -> np.ndarray:
    """Only the input samples needed for t < 1 s, plus the anti-alias filter's reach."""
    up, down = _ratio(dt_ms)
    ns = data.shape[1]
    reach = FILTER_HALF_LENGTH * max(1, math.ceil(down / up)) + 2
    need = math.ceil((NT * DT * 1000 - int(delay.min())) / dt_ms) + reach
    if need >= ns:
        return data
    report.step("crop_input", samples_kept=need, samples=ns, reason="only t < 1 s (+ filter reach) is used")
    return data[:, :need]


MAX_UP, MAX_DOWN = 16, 64
"""Largest resampling factors: sample intervals up to 16 ms, and down to 1/64 ms, in simple ratios of 1 ms."""


def _ratio(dt_ms: float) -> tuple[int, int]:
    """(up, down) with dt_ms * up / down = 1 ms exactly; IngestError for an interval that is not a simple ratio."""
    ratio = Fraction(round(dt_ms * 1000), round(DT * 1e6))
    if ratio.numerator > MAX_UP or ratio.denominator > MAX_DOWN:
        raise IngestError(f"sample interval {dt_ms:g} ms cannot be resampled to 1 ms: it must be p/q ms with "
                          f"p <= {MAX_UP} and q <= {MAX_DOWN} (e.g. 0.25, 0.5, 2, 4 or 8 ms)")
    return ratio.numerator, ratio.denominator


def _to_one_ms(data: np.ndarray, dt_ms: float, delay: np.ndarray, ns: int, report: IngestReport) -> np.ndarray:
    """[trace, time] at ``dt_ms`` starting at ``delay`` ms -> [trace, 1000] at 1 ms starting at t = 0; ``ns`` is the
    recorded samples per trace (before any cropping)."""
    up, down = _ratio(dt_ms)
    record_ms = float(delay.max() + ns * dt_ms)
    if up == down == 1:
        y = data
        report.step("resample", from_dt_ms=dt_ms, to_dt_ms=1.0, skipped="already 1 ms")
    else:
        y = resample(data, up, down)
        report.step("resample", from_dt_ms=dt_ms, to_dt_ms=1.0, up=up, down=down,
                    filter=f"zero-phase FIR of {2 * FILTER_HALF_LENGTH * max(up, down) + 1} taps, Kaiser window "
                           f"(beta {KAISER_BETA:g}), cutoff at the lower of the two Nyquist frequencies "
                           "(scipy.signal.resample_poly's filter)")
        if up > down:
            report.warn("time_upsampled", f"the time axis was upsampled from {dt_ms:g} ms to 1 ms: the data hold no "
                                          f"frequencies above {500 / dt_ms:g} Hz, which the model's 1 ms data "
                                          "may have")
    out = np.zeros((len(y), NT), np.float32)
    for shift in np.unique(delay):  # usually one value for the whole file
        rows = delay == shift
        lo_out, lo_in = max(0, int(shift)), max(0, -int(shift))
        n = max(0, min(NT - lo_out, y.shape[1] - lo_in))
        out[rows, lo_out:lo_out + n] = y[rows, lo_in:lo_in + n]
    report.step("remove_delay", delay_ms=sorted({int(d) for d in delay})[:8],
                note="first sample placed at its time after the shot; earlier times are zero, later than 1 s dropped")
    if delay.max() > 0:
        report.warn("delayed_recording", f"recording started {int(delay.max())} ms after the shot: the first "
                                         f"{int(delay.max())} ms (including the direct wave near the source, which "
                                         "peaks at 73 ms) are zero-filled")
    end_ms = min(record_ms, float(NT))
    report.step("crop_pad", samples=NT, record_ms=record_ms, zero_padded_ms=max(0.0, NT - record_ms))
    if end_ms < NT - 1e-6:
        report.warn("short_record", f"the record ends at {record_ms:g} ms, before 1 s: the last "
                                    f"{NT - record_ms:g} ms are zero-filled")
    return out


def _onto_receivers(traces: np.ndarray, offsets: np.ndarray, nominal: float,
                    source: float) -> tuple[np.ndarray, float, int]:
    """One shot's traces [trace, time] at signed ``offsets`` -> [70, time] at the OpenFWI receivers' offsets from
    the ``nominal`` source (cubic spline in offset); returns (traces, median spacing, zero-filled count)."""
    order = np.argsort(offsets, kind="stable")
    off, tr = offsets[order], traces[order]
    uniq, inverse, counts = np.unique(np.round(off, 6), return_inverse=True, return_counts=True)
    if len(uniq) < len(off):  # traces at the same offset: averaged
        summed = np.zeros((len(uniq), tr.shape[1]), np.float64)
        np.add.at(summed, inverse, tr)
        tr = (summed / counts[:, None]).astype(np.float32)
        off = uniq
    spacing = float(np.median(np.diff(off))) if len(off) > 1 else 0.0
    target = RECEIVERS_M - nominal
    tol = 0.5 * spacing if spacing > 0 else 0.5 * DX  # a receiver stands in for positions up to half a spacing off
    segment = np.concatenate([[0], np.cumsum(np.diff(off) > GAP_FACTOR * max(spacing, DX))])
    j = np.clip(np.searchsorted(off, target, side="right") - 1, 0, len(off) - 1)
    j1 = np.minimum(j + 1, len(off) - 1)
    inside = (target >= off[0] - tol) & (target <= off[-1] + tol) & (segment[j] == segment[j1])
    if not inside.any():
        raise IngestError(f"no receivers within the 690 m spread for the shot at {source:g} m (standing in for the "
                          f"source at {nominal:g} m): its receivers are at offsets {off[0]:g} to {off[-1]:g} m, the "
                          f"model needs offsets {target[0]:g} to {target[-1]:g} m")
    g = np.zeros((N_RECEIVERS, tr.shape[1]), np.float32)
    for seg in np.unique(segment[j[inside]]):
        nodes = segment == seg
        want = inside & (segment[j] == seg)
        g[want] = _spline(off[nodes], tr[nodes], target[want])
    return g, spacing, int((~inside).sum())


def _spline(off: np.ndarray, tr: np.ndarray, target: np.ndarray) -> np.ndarray:
    """Traces [node, time] at increasing offsets ``off`` -> [target, time] by a not-a-knot cubic spline in offset
    (linear between two nodes); targets beyond the ends take the end trace, and a target on a node keeps that
    node's samples bit for bit. The spline is exact for events whose moveout is locally cubic, so it follows dipping
    events between receivers far better than a linear blend of neighbours, which smears them."""
    hit = np.searchsorted(off, target)
    on_node = (hit < len(off)) & (off[np.minimum(hit, len(off) - 1)] == target)
    out = np.empty((len(target), tr.shape[1]), np.float32)
    out[on_node] = tr[hit[on_node]]
    rest = ~on_node
    if rest.any():
        at = np.clip(target[rest], off[0], off[-1])
        if len(off) == 1:
            out[rest] = tr[0]
        else:
            out[rest] = CubicSpline(off, tr, axis=0, bc_type="not-a-knot")(at)
    return out
