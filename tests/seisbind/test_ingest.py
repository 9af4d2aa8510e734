"""Ingest of SEG-Y files and arrays of other geometries (seisbind.ingest, ``seisbind ingest``), on files written by
the project's own writer from its own simulations: the native geometry comes back within float tolerance, other
sample intervals, spacings, record lengths, delays, channel counts, trace orders, sample formats and byte orders
map onto the simulated OpenFWI-geometry gathers, and files that cannot be mapped are refused saying why."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import segyio
from scipy.interpolate import CubicSpline

from seisbind.ingest import IngestError, ingest_array, ingest_segy, write_segy
from seisbind.ingest.amplitude import surface_velocity

from model.families import generate
from model.line_simulator import refine_model, simulate_line, widen_model
from model.simulator import simulate
from tests.segy_fixtures import RX10, SOURCES, bad_files

REPO = Path(__file__).resolve().parents[2]

pytestmark = pytest.mark.timeout(600)


def rel(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.linalg.norm(a - b) / np.linalg.norm(b))


def codes(report: dict) -> list[str]:
    return [w["code"] for w in report["warnings"]]


@pytest.fixture(scope="module")
def velocity() -> np.ndarray:
    return generate("curvevel-a", 1, np.random.default_rng(7))  # [1, 1, 70, 70]


@pytest.fixture(scope="module")
def native(velocity: np.ndarray) -> np.ndarray:
    """The project simulator's gathers (5, 1000, 70)."""
    return simulate(velocity)[0]


@pytest.fixture(scope="module")
def wide(velocity: np.ndarray) -> np.ndarray:
    """10 m / 1 ms, the model widened to 1200 m, 120 receivers every 10 m, 2.1 s: (5, 2100, 120)."""
    v = widen_model(velocity[:, 0], 120)
    return simulate_line(v, dx=10.0, dt=0.001, nt=2100, source_x_m=SOURCES, receiver_x_m=np.arange(120) * 10.0)[0]


@pytest.fixture(scope="module")
def fine(velocity: np.ndarray) -> np.ndarray:
    """5 m / 0.5 ms, receivers at every 5 m node (0-695 m), 1 s: (5, 2000, 140)."""
    return simulate_line(refine_model(velocity[:, 0], 2), dx=5.0, dt=0.0005, nt=2000, source_x_m=SOURCES,
                         receiver_x_m=np.arange(140) * 5.0)[0]


def test_line_simulator_matches_the_project_simulator_on_its_grid(velocity, native, fine) -> None:
    ours = simulate_line(velocity[:, 0], dx=10.0, dt=0.001, nt=1000, source_x_m=SOURCES, receiver_x_m=RX10)[0]
    np.testing.assert_array_equal(ours, native)
    # The 5 m / 0.5 ms grid: the same earth and amplitude convention; the rest is the 10 m grid's dispersion.
    assert rel(fine[:, ::2, ::2][:, :1000, :70], native) < 0.2


@pytest.mark.parametrize("sample_format", ["ieee", "ibm"])
@pytest.mark.parametrize("endian", ["big", "little"])
def test_native_geometry_round_trip(tmp_path, native, sample_format, endian) -> None:
    path = write_segy(tmp_path / "native.sgy", native, 0.001, SOURCES, RX10, sample_format=sample_format,
                      endian=endian)
    out, report = ingest_segy(path)
    assert out.shape == (5, 1000, 70) and out.dtype == np.float32
    if sample_format == "ieee":
        np.testing.assert_array_equal(out, native)
    else:  # IBM floats keep 21-24 mantissa bits
        np.testing.assert_allclose(out, native, rtol=2e-6, atol=2e-6 * np.abs(native).max())
    assert report["warnings"] == []
    read = report["steps"][0]["params"]
    assert read["endian"] == endian and read["sample_format"].startswith("IBM" if sample_format == "ibm" else "IEEE")
    names = [s["name"] for s in report["steps"]]
    for step in ("read_segy", "apply_coordinate_scalars", "group_shots", "select_shots", "resample", "remove_delay",
                 "crop_pad", "interpolate_receivers", "scale_amplitudes"):
        assert step in names


def test_bytes_and_path_agree(tmp_path, native) -> None:
    path = write_segy(tmp_path / "n.sgy", native, 0.001, SOURCES, RX10)
    a, ra = ingest_segy(path)
    b, rb = ingest_segy(path.read_bytes())
    np.testing.assert_array_equal(a, b)
    assert ra == rb


def test_shuffled_traces_and_shot_numbers(tmp_path, native) -> None:
    rng = np.random.default_rng(3)
    path = write_segy(tmp_path / "shuffled.sgy", native, 0.001, SOURCES, RX10, field_records=[905, 17, 300, 4, 88],
                      trace_order=rng.permutation(350))
    out, report = ingest_segy(path)
    np.testing.assert_array_equal(out, native)
    chosen = next(s for s in report["steps"] if s["name"] == "select_shots")["params"]["chosen"]
    assert [c["FieldRecord"] for c in chosen] == [905, 17, 300, 4, 88]


def test_shots_grouped_by_source_position_when_field_records_are_equal(tmp_path, native) -> None:
    path = write_segy(tmp_path / "same_ffid.sgy", native[::-1], 0.001, SOURCES[::-1], RX10, field_records=[1] * 5)
    out, report = ingest_segy(path)
    np.testing.assert_array_equal(out, native)
    assert next(s for s in report["steps"] if s["name"] == "group_shots")["params"]["key"] == "source position"


def test_120_channels_two_second_records(tmp_path, wide) -> None:
    path = write_segy(tmp_path / "wide.sgy", wide[:, :2000], 0.001, SOURCES, np.arange(120) * 10.0)
    out, report = ingest_segy(path)
    np.testing.assert_array_equal(out, wide[:, :1000, :70])
    assert report["warnings"] == []
    assert any(s["name"] == "crop_input" for s in report["steps"])


def test_recording_delay_is_removed(tmp_path, wide) -> None:
    # 2 s records starting 100 ms after the shot
    late = write_segy(tmp_path / "late.sgy", wide[:, 100:2100], 0.001, SOURCES, np.arange(120) * 10.0, delay_ms=100)
    out, report = ingest_segy(late)
    np.testing.assert_array_equal(out[:, 100:], wide[:, 100:1000, :70])
    assert not out[:, :100].any()
    assert "delayed_recording" in codes(report)
    # records starting 100 ms before the shot
    early_data = np.concatenate([np.zeros((5, 100, 120), np.float32), wide[:, :1900]], axis=1)
    early = write_segy(tmp_path / "early.sgy", early_data, 0.001, SOURCES, np.arange(120) * 10.0, delay_ms=-100)
    out, report = ingest_segy(early)
    np.testing.assert_array_equal(out, wide[:, :1000, :70])
    assert "delayed_recording" not in codes(report)


@pytest.mark.parametrize("dt_ms", [0.5, 2.0, 4.0])
def test_sample_intervals(tmp_path, fine, dt_ms) -> None:
    ref = fine[:, ::2, ::2][:, :1000, :70]
    step = int(dt_ms / 0.5)
    path = write_segy(tmp_path / f"dt{dt_ms}.sgy", fine[:, ::step, ::2], dt_ms / 1000, SOURCES, RX10)
    out, report = ingest_segy(path)
    assert rel(out, ref) < 0.005
    assert ("time_upsampled" in codes(report)) == (dt_ms > 1)
    resample = next(s for s in report["steps"] if s["name"] == "resample")["params"]
    assert resample["from_dt_ms"] == dt_ms and resample["to_dt_ms"] == 1.0


@pytest.mark.parametrize("spacing", [5.0, 12.5, 25.0])
def test_receiver_spacings(tmp_path, fine, spacing) -> None:
    ref = fine[:, ::2, ::2][:, :1000, :70]
    rx = np.arange(0.0, 695.0 + 1e-6, spacing)
    # Receivers between the 5 m grid nodes (12.5 m): band-limited interpolation of the densely sampled wavefield.
    data = CubicSpline(np.arange(140) * 5.0, fine, axis=2)(rx)[:, ::2].astype(np.float32)
    out, report = ingest_segy(write_segy(tmp_path / f"dx{spacing}.sgy", data, 0.001, SOURCES, rx))
    far = np.abs(RX10[None] - np.array(SOURCES)[:, None]) >= 30  # away from the source's near field
    err = rel(out.transpose(0, 2, 1)[far], ref.transpose(0, 2, 1)[far])
    assert err < {5.0: 1e-3, 12.5: 0.1, 25.0: 0.3}[spacing], err
    assert ("coarse_receiver_spacing" in codes(report)) == (spacing > 10)
    # at 25 m the spread ends at 675 m, more than half a spacing before the receiver at 690 m: zero-filled
    assert ("receivers_missing" in codes(report)) == (spacing == 25.0)


def test_extra_shots_and_sources_off_nominal(tmp_path, velocity) -> None:
    sources = [0.0, 90.0, 180.0, 250.0, 370.0, 520.0, 600.0, 680.0]
    data = simulate_line(velocity[:, 0], dx=10.0, dt=0.001, nt=1000, source_x_m=sources, receiver_x_m=RX10)[0]
    out, report = ingest_segy(write_segy(tmp_path / "eight.sgy", data, 0.001, sources, RX10))
    chosen = next(s for s in report["steps"] if s["name"] == "select_shots")["params"]["chosen"]
    assert [c["source_m"] for c in chosen] == [0.0, 180.0, 370.0, 520.0, 680.0]
    off = [w for w in report["warnings"] if w["code"] == "source_off_nominal"]
    assert len(off) == 1 and "370 m" in off[0]["message"]
    # offsets are kept: the shot at 180 m gives the traces at offsets -170..520 m, i.e. receivers 10..690 m
    np.testing.assert_array_equal(out[1, :, :69], data[2, :, 1:70])
    assert "receivers_missing" in codes(report)  # offset 520 m from the shot at 180 m is past the last receiver


def test_dead_clipped_and_short_records(tmp_path, native) -> None:
    data = native[:, :600].copy()
    data[2, :, 40] = 0.0  # a dead trace
    peak = np.abs(data[0, :, 5]).max()
    data[0, :, 5] = np.clip(data[0, :, 5], -0.5 * peak, 0.5 * peak)  # a clipped trace
    out, report = ingest_segy(write_segy(tmp_path / "bad_traces.sgy", data, 0.001, SOURCES, RX10))
    assert {"dead_traces", "clipped_traces", "short_record"} <= set(codes(report))
    # the dead trace's position is interpolated from the live ones: closer to the truth than a blend of its two
    # neighbours would be, and the live traces are kept bit for bit
    truth = native[2, :600, 40]
    blend = 0.5 * (native[2, :600, 39] + native[2, :600, 41])
    assert rel(out[2, :600, 40], truth) < 0.5 * rel(blend, truth)
    np.testing.assert_array_equal(out[2, :600, 41:], native[2, :600, 41:])
    assert not out[:, 600:].any()


def test_amplitudes_brought_to_the_training_scale(tmp_path, native) -> None:
    out, report = ingest_segy(write_segy(tmp_path / "small.sgy", native * 1e-4, 0.001, SOURCES, RX10))
    scale = next(s for s in report["steps"] if s["name"] == "scale_amplitudes")["params"]
    assert "amplitudes_rescaled" in codes(report)
    np.testing.assert_allclose(out, native * np.float32(1e-4 * scale["factor"]), rtol=1e-5, atol=1e-6)
    # the scale comes from the near-surface velocity the direct wave shows: the true factor (1e4) within 5 %
    assert "near-surface velocity" in scale["rule"] and abs(scale["factor"] * 1e-4 - 1) < 0.05
    kept, _ = ingest_segy(write_segy(tmp_path / "keep.sgy", native * 1e-4, 0.001, SOURCES, RX10), amplitude="keep")
    np.testing.assert_allclose(kept, native * np.float32(1e-4), rtol=1e-6)


def test_surface_velocity_from_the_direct_wave(tmp_path, velocity, native) -> None:
    v0 = surface_velocity(native)
    assert v0 is not None and abs(v0 / velocity[0, 0, 0].mean() - 1) < 0.05
    assert surface_velocity(native * 1e-3) == pytest.approx(v0)  # whatever the units
    # no direct wave (the first 0.3 s muted): the training median, with a warning saying so
    muted = native.copy()
    muted[:, :300] = 0
    _, report = ingest_segy(write_segy(tmp_path / "muted.sgy", muted * 1e-3, 0.001, SOURCES, RX10))
    assert "no_direct_wave" in codes(report)


def test_array_of_stated_geometry(fine) -> None:
    ref = fine[:, ::2, ::2][:, :1000, :70]
    data = fine[:, ::4, ::5]  # 2 ms, 25 m from 0 m
    out, report = ingest_array(data, dt_s=0.002, source_x_m=SOURCES, receiver_x_m=np.arange(28) * 25.0)
    assert rel(out, ref) < 0.6 and "coarse_receiver_spacing" in codes(report)
    # the same data given as offsets from each source
    offs = np.arange(28)[None] * 25.0 - np.array(SOURCES)[:, None]
    out2, _ = ingest_array(data, dt_s=0.002, source_x_m=SOURCES, receiver_offsets_m=offs)
    np.testing.assert_array_equal(out, out2)
    with pytest.raises(IngestError, match="either as positions"):
        ingest_array(data, dt_s=0.002, source_x_m=SOURCES)
    with pytest.raises(IngestError, match="4 source positions given for 5 shots"):
        ingest_array(data, dt_s=0.002, source_x_m=SOURCES[:4], receiver_x_m=np.arange(28) * 25.0)


# -- data that cannot be mapped ----------------------------------------------------------------------------------

def test_fewer_than_five_shots(tmp_path, native) -> None:
    path = write_segy(tmp_path / "four.sgy", native[:4], 0.001, SOURCES[:4], RX10)
    with pytest.raises(IngestError, match="fewer than five shots within reach.*690 m"):
        ingest_segy(path)
    far = write_segy(tmp_path / "far.sgy", native, 0.001, [0, 170, 340, 420, 690], RX10)
    with pytest.raises(IngestError, match="no shot within 80 m of the nominal source at 520 m"):
        ingest_segy(far)


def test_no_receivers_within_the_spread(tmp_path, native) -> None:
    path = write_segy(tmp_path / "beyond.sgy", native, 0.001, SOURCES, RX10 + 2000.0)
    with pytest.raises(IngestError, match="no receivers within the 690 m spread"):
        ingest_segy(path)


def test_sample_intervals_that_cannot_be_resampled(tmp_path, native) -> None:
    for dt_s in (0.000333, 0.032):
        path = write_segy(tmp_path / "odd_dt.sgy", native[:, :100], dt_s, SOURCES, RX10)
        with pytest.raises(IngestError, match="cannot be resampled to 1 ms"):
            ingest_segy(path)


def test_headers_without_coordinates(tmp_path, native) -> None:
    path = write_segy(tmp_path / "nocoord.sgy", native, 0.001, SOURCES, RX10)
    with segyio.open(path, "r+", ignore_geometry=True) as f:
        for i in range(f.tracecount):
            f.header[i] = {segyio.TraceField.SourceX: 0, segyio.TraceField.GroupX: 0}
    with pytest.raises(IngestError, match="no receiver coordinates"):
        ingest_segy(path)


def _native_file(tmp_path: Path, native: np.ndarray) -> bytes:
    return write_segy(tmp_path / "ok.sgy", native, 0.001, SOURCES, RX10).read_bytes()


def test_bad_files_are_refused_with_the_reason(tmp_path, native) -> None:
    body = _native_file(tmp_path, native)
    for name, (data, fragment) in bad_files(body).items():
        with pytest.raises(IngestError, match=fragment):
            ingest_segy(data)
        p = tmp_path / f"{name}.sgy"
        p.write_bytes(data)
        with pytest.raises(IngestError, match=fragment):
            ingest_segy(p)


def test_corrupted_bytes_give_a_result_or_an_ingest_error(tmp_path, native) -> None:
    """Random byte damage anywhere in the headers or data never escapes as another exception."""
    body = bytearray(_native_file(tmp_path, native))
    rng = np.random.default_rng(0)
    outcomes = {"ok": 0, "refused": 0}
    for _ in range(150):
        b = bytearray(body)
        where = rng.choice([3200 + rng.integers(0, 400), 3600 + rng.integers(0, 240 * 3),
                            rng.integers(0, len(b))])
        for k in range(int(rng.integers(1, 8))):
            b[min(len(b) - 1, int(where) + k)] = int(rng.integers(0, 256))
        try:
            out, _ = ingest_segy(bytes(b))
            assert out.shape == (5, 1000, 70) and np.isfinite(out).all()
            outcomes["ok"] += 1
        except IngestError:
            outcomes["refused"] += 1
    assert outcomes["ok"] and outcomes["refused"], outcomes


# -- command line --------------------------------------------------------------------------------------------

def _cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "cli.main", "ingest", *args], cwd=REPO, capture_output=True,
                          text=True, timeout=120)


def test_cli_ingest_segy_and_npy(tmp_path, native, fine) -> None:
    src = write_segy(tmp_path / "in.sgy", native, 0.001, SOURCES, RX10, sample_format="ibm", endian="little")
    r = _cli(str(src), "--out", str(tmp_path / "q.npy"), "--report", str(tmp_path / "r.json"))
    assert r.returncode == 0, r.stderr
    np.testing.assert_allclose(np.load(tmp_path / "q.npy"), native, rtol=2e-6, atol=1e-4)
    report = json.loads((tmp_path / "r.json").read_text())
    assert report["steps"][0]["name"] == "read_segy" and report["warnings"] == []
    assert json.loads(r.stdout)["shape"] == [5, 1000, 70]
    np.save(tmp_path / "g.npy", fine[:, ::4, ::5])
    r = _cli(str(tmp_path / "g.npy"), "--out", str(tmp_path / "q2.npy"), "--dt-ms", "2", "--sources-m",
             "0,170,340,520,690", "--receiver-spacing-m", "25")
    assert r.returncode == 0, r.stderr
    assert "coarse_receiver_spacing" in r.stdout and np.load(tmp_path / "q2.npy").shape == (5, 1000, 70)


def test_cli_refuses_bad_input_without_writing(tmp_path, native) -> None:
    bad = tmp_path / "notes.sgy"
    bad.write_text("this is a text file\n" * 300)
    r = _cli(str(bad), "--out", str(tmp_path / "q.npy"))
    assert r.returncode == 2 and "not a SEG-Y file" in r.stderr
    np.save(tmp_path / "g.npy", native)
    r = _cli(str(tmp_path / "g.npy"), "--out", str(tmp_path / "q.npy"))
    assert r.returncode == 2 and "--dt-ms" in r.stderr
    assert not list(tmp_path.glob("q.npy*"))


def test_resampler_matches_scipy_resample_poly() -> None:
    from scipy.signal import resample_poly

    from seisbind.ingest.mapping import resample

    x = np.random.default_rng(0).standard_normal((6, 1200)).astype(np.float32)
    for up, down in [(1, 2), (2, 1), (4, 1), (1, 4), (3, 2), (2, 3)]:
        want = resample_poly(x.astype(np.float64), up, down, axis=1)
        np.testing.assert_allclose(resample(x, up, down), want, atol=2e-6 * np.abs(want).max())


def test_delays_that_differ_between_shots(tmp_path, wide) -> None:
    data = wide[:, :1500].copy()
    data[1] = wide[1, 40:1540]  # shot 2 recorded from 40 ms
    path = write_segy(tmp_path / "mixed.sgy", data, 0.001, SOURCES, np.arange(120) * 10.0)
    with segyio.open(path, "r+", ignore_geometry=True) as f:
        for i in range(120, 240):
            f.header[i] = {segyio.TraceField.DelayRecordingTime: 40}
    out, report = ingest_segy(path)
    np.testing.assert_array_equal(out[[0, 2, 3, 4]], wide[[0, 2, 3, 4], :1000, :70])
    np.testing.assert_array_equal(out[1, 40:], wide[1, 40:1000, :70])
    assert next(s for s in report["steps"] if s["name"] == "remove_delay")["params"]["delay_ms"] == [0, 40]
