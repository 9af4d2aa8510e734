"""Physics of model.simulator: travel times, wavelet timing, reflections, symmetry, absorbing edges, input checks.

All arrival times are measured by cross-correlation with parabolic sub-sample refinement, never by thresholds.
"""

from __future__ import annotations

import deepwave
import numpy as np
import pytest
import torch

from seisbind.acquisition import DT, DX, NT, PEAK_FREQUENCY, RECEIVER_Z, SOURCE_X, SOURCE_Z

from model import simulator
from model.families import generate
from model.simulator import simulate, simulate_torch

V1, V2 = 2000.0, 3500.0
"""Velocities (m/s) of the homogeneous model and of the two-layer model's upper / lower half-space."""
INTERFACE_CELL = 31
"""First depth cell of the two-layer model's lower layer."""
MS = 1000.0 * DT


@pytest.fixture(scope="module", autouse=True)
def two_threads() -> None:
    torch.set_num_threads(2)


@pytest.fixture(scope="module")
def models() -> dict[str, np.ndarray]:
    hom = np.full((1, 70, 70), V1, np.float32)
    two = hom.copy()
    two[:, INTERFACE_CELL:, :] = V2
    faulted = generate("curvefault-a", 1, np.random.default_rng(3))[0]  # asymmetric on purpose
    return {"hom": hom, "two": two, "faulted": faulted, "mirrored": faulted[..., ::-1].copy()}


@pytest.fixture(scope="module")
def gathers(models: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Gathers [5, 1000, 70] of every test model, simulated in one batch."""
    out = simulate(np.stack(list(models.values())), batch_size=len(models))
    return dict(zip(models, out.astype(np.float64)))


def delay_ms(a: np.ndarray, b: np.ndarray, max_lag: int = 400) -> tuple[float, float]:
    """(delay of trace a relative to trace b in ms, normalised correlation at that lag)."""
    n = len(a)
    lags = np.arange(-max_lag, max_lag + 1)
    c = np.array([a[max(0, k):n + min(0, k)] @ b[max(0, -k):n - max(0, k)] for k in lags])
    i = int(np.argmax(c))
    frac = 0.0
    if 0 < i < len(c) - 1:
        y0, y1, y2 = c[i - 1], c[i], c[i + 1]
        frac = 0.5 * (y0 - y2) / (y0 - 2 * y1 + y2)
    return (lags[i] + frac) * MS, float(c[i] / np.sqrt((a @ a) * (b @ b)))


def analytic_trace(offset_m: float, v: float) -> np.ndarray:
    """Pressure [1000] at ``offset_m`` from a line source in a homogeneous 2-D medium: the Ricker (15 Hz, peak at
    73 ms) convolved with the 2-D Green's function H(t - r/v) / sqrt(t² - r²/v²) (unscaled). Each sample holds the
    Green's function integrated exactly over its 1 ms bin (arccosh), so the singularity at t = r/v is handled."""
    a = offset_m / v
    edges = (np.arange(NT + 1) - 0.5) * DT
    prim = np.arccosh(np.maximum(edges, a) / a)
    green = np.diff(prim)
    return np.convolve(ricker(), green)[:NT]


def ricker(peak_frequency: float = 15.0, peak_time: float = 0.073) -> np.ndarray:
    """The wavelet docs/data.md prescribes, written out independently of the simulator: [1000] samples."""
    arg = (np.pi * peak_frequency * (np.arange(NT) * DT - peak_time)) ** 2
    return (1 - 2 * arg) * np.exp(-arg)


def test_direct_wave_moveout_matches_offset_over_velocity(gathers: dict[str, np.ndarray]) -> None:
    """Homogeneous model: between receivers at least 100 m apart on the same side of the source, the direct wave's
    arrival-time difference equals their offset difference / v, within 2 ms."""
    g = gathers["hom"]
    checked = 0
    for shot in (0, 2, 4):
        sx = SOURCE_X[shot]
        for side in (-1, 1):
            recs = [sx + side * d for d in range(20, 70, 7) if 0 <= sx + side * d < 70]
            for i, ra in enumerate(recs):
                for rb in recs[i + 1:]:
                    if abs(rb - ra) * DX < 100:
                        continue
                    expected = (abs(rb - sx) - abs(ra - sx)) * DX / V1 * 1000
                    got, rho = delay_ms(g[shot, :, rb], g[shot, :, ra])
                    assert abs(got - expected) <= 2.0, f"shot {shot}, {ra}->{rb}: {got:.2f} vs {expected:.2f} ms"
                    assert rho > 0.99
                    checked += 1
    assert checked >= 20


@pytest.mark.parametrize("offset_cells", [5, 10, 15])
def test_near_offset_arrival_is_the_73ms_wavelet_plus_travel_time(gathers: dict[str, np.ndarray],
                                                                  offset_cells: int) -> None:
    """Homogeneous model, receivers 50-150 m from the middle source: the trace is the source wavelet (peak at
    73 ms) delayed by the travel time r/v and shaped by 2-D cylindrical spreading. The spreading (the 2-D Green's
    function, a half-integration) delays the peak by a further ~6 ms, so the expected trace is computed exactly
    (``analytic_trace``) and the simulated one must match it in shape (correlation > 0.99) and time (0.5 ms)."""
    shot, sx = 2, SOURCE_X[2]
    expected = analytic_trace(offset_cells * DX, V1)
    for rec in (sx - offset_cells, sx + offset_cells):
        got, rho = delay_ms(gathers["hom"][shot, :, rec], expected, max_lag=100)
        assert abs(got) <= 0.5, f"receiver {rec}: arrival {got:+.2f} ms off the 73 ms wavelet + travel time"
        assert rho > 0.99, f"receiver {rec}: waveform correlation {rho:.4f}"
    # A plain reading of the same fact: the peak comes 73 ms + r/v + (0..12 ms of 2-D spreading delay) after t = 0.
    peak_ms = np.argmax(np.abs(gathers["hom"][shot, :, sx + offset_cells])) * MS
    lag_after_travel = peak_ms - offset_cells * DX / V1 * 1000 - 73.0
    assert 0.0 <= lag_after_travel <= 12.0, lag_after_travel


def test_reflection_delay_after_direct_wave(gathers: dict[str, np.ndarray]) -> None:
    """Two-layer model: the reflection (two-layer gather minus the homogeneous one) arrives
    sqrt(x² + 4h²)/v1 - x/v1 after the direct wave at the same receiver, within 4 ms.

    h is the depth of the interface below the sources: on the grid the interface lies halfway between the last
    v1 cell and the first v2 cell. Offsets stay below 60 % of the critical offset, where the reflection keeps the
    wavelet's phase."""
    h = (INTERFACE_CELL - 0.5 - SOURCE_Z) * DX
    critical_offset = 2 * h * np.tan(np.arcsin(V1 / V2))
    reflection = gathers["two"] - gathers["hom"]
    checked = 0
    for shot, direction in ((0, 1), (4, -1)):
        for offset in range(0, int(0.6 * critical_offset / DX) + 1, 4):
            rec = SOURCE_X[shot] + direction * offset
            x = offset * DX
            expected = (np.hypot(x, 2 * h) - x) / V1 * 1000
            got, rho = delay_ms(reflection[shot, :, rec], gathers["hom"][shot, :, rec], max_lag=450)
            assert abs(got - expected) <= 4.0, f"shot {shot}, offset {x:.0f} m: {got:.1f} ms vs {expected:.1f} ms"
            assert rho > 0.9, "same polarity as the direct wave (v2 > v1: positive reflection coefficient)"
            checked += 1
    assert checked >= 10


def test_mirrored_model_gives_mirrored_gathers(gathers: dict[str, np.ndarray]) -> None:
    """Mirroring a model left-right reverses the shot order and the receiver axis of its gathers. Sources 0<->69
    and 17<->52 are mirror images; the middle source (cell 34) mirrors to cell 35, which is not a source."""
    g, gm = gathers["faulted"], gathers["mirrored"]
    scale = np.abs(g).max()
    for shot in (0, 1, 3, 4):
        np.testing.assert_allclose(gm[shot], g[4 - shot][:, ::-1], rtol=0, atol=1e-4 * scale,
                                   err_msg=f"shot {shot} of the mirrored model vs shot {4 - shot} reversed")
    assert np.abs(gm[2] - g[2][:, ::-1]).max() > 1e-2 * scale, "premise: the middle shot is not mirrored"


def _padded_homogeneous_gathers(v: float, pad: int, shots: tuple[int, ...]) -> np.ndarray:
    """Gathers [shots, 1000, 70] of the acquisition placed in the middle of a homogeneous model extended by ``pad``
    cells on every side, with the simulator's own settings; reflections from its far edges arrive after 1 s."""
    n = 70 + 2 * pad
    src = torch.zeros(len(shots), 1, 2, dtype=torch.long)
    src[:, 0, 0] = SOURCE_Z + pad
    src[:, 0, 1] = torch.tensor([SOURCE_X[s] + pad for s in shots])
    rec = torch.zeros(len(shots), 70, 2, dtype=torch.long)
    rec[..., 0] = RECEIVER_Z + pad
    rec[..., 1] = torch.arange(70) + pad
    amp = simulator.ricker_wavelet().expand(len(shots), 1, NT).contiguous()
    with torch.no_grad():
        out = deepwave.scalar(
            torch.full((n, n), v), DX, DT, source_amplitudes=amp, source_locations=src, receiver_locations=rec,
            accuracy=4, pml_width=simulator.PML_WIDTH, pml_freq=PEAK_FREQUENCY,
            courant_number=simulator.COURANT_NUMBER,
        )[-1]
    return (simulator.AMPLITUDE_SCALE * out).transpose(1, 2).double().numpy()


def test_grid_edges_reflect_less_than_one_percent(gathers: dict[str, np.ndarray]) -> None:
    """The homogeneous model's gathers minus those of the same acquisition inside a much larger homogeneous model
    (no edge within reach in 1 s) is what the grid edges reflect: its energy must stay below 1 % of the direct
    wave's, for the whole gather and for every trace."""
    pad = int(np.ceil(V1 * NT * DT / (2 * DX))) + 10
    shots = (0, 2)
    reference = _padded_homogeneous_gathers(V1, pad, shots)
    for i, shot in enumerate(shots):
        direct = reference[i]
        edge = gathers["hom"][shot] - direct
        total = (edge ** 2).sum() / (direct ** 2).sum()
        per_trace = (edge ** 2).sum(0) / (direct ** 2).sum(0)
        assert total < 0.01, f"shot {shot}: edge reflections hold {100 * total:.3f} % of the direct wave's energy"
        assert per_trace.max() < 0.01, f"shot {shot}: worst trace {100 * per_trace.max():.3f} %"


def test_simulate_torch_matches_simulate(models: dict[str, np.ndarray], gathers: dict[str, np.ndarray]) -> None:
    """The torch entry point, alone and for fewer steps, gives the batched numpy entry point's first samples.

    Not bit-identical: deepwave tunes its PML to the fastest model of the batch, which moves the result by
    ~1e-4 of the peak amplitude."""
    with torch.no_grad():
        out = simulate_torch(torch.from_numpy(models["two"][None]), nt=300).numpy()
    assert out.shape == (1, 5, 300, 70) and out.dtype == np.float32
    np.testing.assert_allclose(out[0], gathers["two"][:, :300], rtol=0, atol=1e-3 * np.abs(gathers["two"]).max())


@pytest.mark.parametrize(
    ("bad", "message"),
    [
        (np.full((1, 1, 70, 70), np.nan, np.float32), r"model 0 holds NaN or Inf"),
        (np.concatenate([np.full((1, 1, 70, 70), 2000.0), np.full((1, 1, 70, 70), np.inf)]).astype(np.float32),
         r"model 1 holds NaN or Inf"),
        (np.zeros((1, 1, 70, 70), np.float32), r"non-positive velocities \(min 0 m/s\)"),
        (np.full((2, 1, 70, 70), -1500.0, np.float32), r"model 0 holds non-positive velocities"),
        (np.full((1, 1, 70, 71), 2000.0, np.float32), r"shape is \(1, 1, 70, 71\), expected \(n, 1, 70, 70\)"),
        (np.full((3, 70), 2000.0, np.float32), r"shape is \(3, 70\)"),
    ],
)
def test_bad_input_is_refused_with_the_problem_named(bad: np.ndarray, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        simulate(bad)
