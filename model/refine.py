"""Full-waveform inversion (FWI) of shot gathers from a start model, with the simulator's own conventions
(docs/refine.md): the forward model is :func:`model.simulator.simulate_torch` (deepwave, OpenFWI geometry,
15 Hz Ricker, dt = 1 ms, 10 m grid, training-data amplitude scale).

Frequency continuation: stages fit the data low-passed at increasing cut-offs (synthetic and observed data go
through the same zero-phase filter, which is the same as low-passing the wavelet), ending with the full band.
The misfit of a model is the relative L2 data misfit ``|d - d_obs|^2 / |d_obs|^2`` of its (filtered) gathers.
The velocity is optimised in normalised units with Adam and projected back into 1500-4500 m/s after every step;
the gradient is preconditioned (clipped at a percentile, scaled with depth, smoothed) and an optional total-
variation term favours blocky layered models. The best iterate on the full-band misfit is kept, so the result
never fits the data worse than the start.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch

from seisbind.acquisition import DT, GATHER_SHAPE, NX, NZ, V_MAX, V_MIN

from model.simulator import simulate_torch

STOP_REASONS = ("iterations", "time", "plateau", "cancelled")
V_MID = 0.5 * (V_MIN + V_MAX)
V_HALF = 0.5 * (V_MAX - V_MIN)


@dataclass(frozen=True)
class FwiConfig:
    """Settings of one FWI run; defaults tuned on openfwi-vel (docs/refine.md)."""

    iterations: int = 60
    """Budget of gradient steps over all stages."""
    max_seconds: float = 120.0
    """Wall-clock budget; no step starts that would end after it."""
    frequencies_hz: tuple[float, ...] = (5.0, 8.0, 12.0, 0.0)
    """Low-pass cut-offs of the continuation stages, in order; 0 means the full band."""
    learning_rate: float = 15.0
    """Adam step size in m/s."""
    seed: int = 0
    smooth_cells: float = 1.5
    """Standard deviation (cells) of the Gaussian that smooths the gradient; 0 turns it off."""
    depth_power: float = 1.0
    """Gradient scaled by ((z + 1) / 70) ** depth_power before smoothing (0: off)."""
    clip_percentile: float = 99.0
    """Gradient magnitudes clipped at this percentile (removes the source and receiver imprint)."""
    tv_weight: float = 0.0
    """Weight of the total-variation term (on velocity normalised to [-1, 1]) relative to the misfit."""
    plateau_patience: int = 8
    """Steps without a relative improvement of ``plateau_tolerance`` that end a stage (the last: the run)."""
    plateau_tolerance: float = 2e-3
    filter_order: int = 4
    """Order of the Butterworth-like zero-phase low-pass."""

    def __post_init__(self) -> None:
        if self.iterations < 0:
            raise ValueError(f"iterations={self.iterations}: must be >= 0")
        if not self.max_seconds > 0:
            raise ValueError(f"max_seconds={self.max_seconds}: must be > 0")
        if not self.frequencies_hz or any(not 0 <= f < 0.5 / DT for f in self.frequencies_hz):
            raise ValueError(f"frequencies_hz={self.frequencies_hz}: need at least one cut-off in [0, {0.5 / DT:g}) Hz "
                             "(0 = full band)")
        if not self.learning_rate > 0:
            raise ValueError(f"learning_rate={self.learning_rate}: must be > 0")
        if self.smooth_cells < 0 or self.tv_weight < 0 or self.plateau_patience < 1:
            raise ValueError("smooth_cells and tv_weight must be >= 0 and plateau_patience >= 1")
        if not 0 < self.clip_percentile <= 100:
            raise ValueError(f"clip_percentile={self.clip_percentile}: must be in (0, 100]")


@dataclass
class FwiResult:
    """The outcome of FWI of one set of gathers."""

    model: np.ndarray
    """[70, 70] float32 m/s: the best iterate on the full-band misfit (the start if nothing fitted better)."""
    misfit_history: list[float]
    """Misfit of each step's model in that step's frequency band (bands in ``band_history``)."""
    start_misfit: float
    """Full-band relative misfit of the start."""
    final_misfit: float
    """Full-band relative misfit of ``model`` (<= ``start_misfit``)."""
    iterations: int
    seconds: float
    stopped: str
    """Why it stopped: one of :data:`STOP_REASONS`."""
    band_history: list[float] = field(default_factory=list)
    """Low-pass cut-off (Hz, 0 = full band) of each step."""


def check_gathers(gathers: np.ndarray) -> np.ndarray:
    """[5,nt,70] or [n,5,nt,70] finite gathers (nt = 1000, or fewer for a shorter record fitted over its first nt
    ms) -> float32 [n,5,nt,70]; ValueError naming the problem."""
    g = np.asarray(gathers, np.float32)
    if g.ndim == 3:
        g = g[None]
    n_shots, nt, n_rec = GATHER_SHAPE
    if g.ndim != 4 or g.shape[1] != n_shots or g.shape[3] != n_rec or not 1 <= g.shape[2] <= nt or not len(g):
        raise ValueError(f"gathers: shape {np.shape(gathers)}, expected {GATHER_SHAPE} or (n, *{GATHER_SHAPE})")
    if not np.isfinite(g).all():
        raise ValueError("gathers: contain NaN or infinite values")
    if not (np.abs(g).reshape(len(g), -1).max(axis=1) > 0).all():
        raise ValueError("gathers: all zero; nothing to fit")
    return g


def check_start(start: np.ndarray, n: int) -> np.ndarray:
    """[70,70] / [1,70,70] or [n,70,70] / [n,1,70,70] finite m/s -> float32 [n,70,70] clipped to 1500-4500."""
    v = np.asarray(start, np.float32)
    if v.shape in ((NZ, NX), (1, NZ, NX)) and n == 1:
        v = v.reshape(1, NZ, NX)
    if v.ndim == 4 and v.shape[1] == 1:
        v = v[:, 0]
    if v.shape != (n, NZ, NX):
        raise ValueError(f"start: shape {np.shape(start)}, expected ({n}, {NZ}, {NX}) for {n} gather set(s)")
    if not np.isfinite(v).all():
        raise ValueError("start: contains NaN or infinite values")
    return np.clip(v, V_MIN, V_MAX)


def lowpass(x: torch.Tensor, cutoff_hz: float, order: int) -> torch.Tensor:
    """Zero-phase low-pass along the time axis (-2) of [..., nt, receivers] data; gain 1/(1 + (f/fc)^(2 order)),
    as a Butterworth filter run forwards and backwards. ``cutoff_hz`` 0 returns ``x`` unchanged."""
    if cutoff_hz <= 0:
        return x
    nt = x.shape[-2]
    n = 2 * nt  # zero padding keeps the acausal tail off the record
    f = torch.fft.rfftfreq(n, d=DT, dtype=x.dtype, device=x.device)
    gain = 1.0 / (1.0 + (f / cutoff_hz) ** (2 * order))
    spectrum = torch.fft.rfft(x, n=n, dim=-2) * gain[:, None]
    return torch.fft.irfft(spectrum, n=n, dim=-2)[..., :nt, :]


def _gaussian_kernel(sigma: float) -> torch.Tensor:
    half = max(1, int(math.ceil(3 * sigma)))
    t = torch.arange(-half, half + 1, dtype=torch.float32)
    k = torch.exp(-0.5 * (t / sigma) ** 2)
    return k / k.sum()


def precondition(grad: torch.Tensor, config: FwiConfig) -> torch.Tensor:
    """Preconditioned gradient [n,70,70]: clipped at the configured percentile of its magnitude (per model),
    scaled with depth, then smoothed by a separable Gaussian."""
    g = grad
    if config.clip_percentile < 100:
        cap = torch.quantile(g.abs().reshape(len(g), -1), config.clip_percentile / 100, dim=1)
        g = torch.maximum(torch.minimum(g, cap[:, None, None]), -cap[:, None, None])
    if config.depth_power:
        z = (torch.arange(NZ, dtype=g.dtype) + 1) / NZ
        g = g * z[None, :, None] ** config.depth_power
    if config.smooth_cells > 0:
        k = _gaussian_kernel(config.smooth_cells).to(g.dtype)
        pad = len(k) // 2
        x = torch.nn.functional.pad(g[:, None], (pad, pad, pad, pad), mode="replicate")
        x = torch.nn.functional.conv2d(x, k.reshape(1, 1, -1, 1))
        g = torch.nn.functional.conv2d(x, k.reshape(1, 1, 1, -1))[:, 0]
    return g


def total_variation(u: torch.Tensor, eps: float = 1e-3) -> torch.Tensor:
    """Smoothed isotropic total variation of each model [n,70,70] -> [n] (mean over cells)."""
    dz = u[:, 1:, :-1] - u[:, :-1, :-1]
    dx = u[:, :-1, 1:] - u[:, :-1, :-1]
    return torch.sqrt(dz ** 2 + dx ** 2 + eps ** 2).mean(dim=(1, 2))


def misfit(u: torch.Tensor, observed: torch.Tensor, cutoff_hz: float, order: int) -> torch.Tensor:
    """Relative L2 misfit [n] of normalised models ``u`` [n,70,70] against low-passed ``observed``."""
    syn = lowpass(simulate_torch(V_MID + V_HALF * u, nt=observed.shape[-2]), cutoff_hz, order)
    return ((syn - observed) ** 2).sum(dim=(1, 2, 3)) / (observed ** 2).sum(dim=(1, 2, 3))


@dataclass
class _State:
    """What a run carries across stages: timing, the best full-band iterate per model, the history."""

    t0: float
    best_u: torch.Tensor
    best_misfit: torch.Tensor
    history: list[list[float]]
    bands: list[float] = field(default_factory=list)
    step_seconds: float = 0.0

    def offer(self, u: torch.Tensor, full_band_misfit: torch.Tensor) -> None:
        better = full_band_misfit < self.best_misfit
        self.best_u[better] = u[better]
        self.best_misfit[better] = full_band_misfit[better]

    def out_of_time(self, config: FwiConfig) -> bool:
        # a step plus the closing full-band evaluation (a forward pass, about a third of a step) must fit
        return time.perf_counter() - self.t0 + 1.4 * self.step_seconds > config.max_seconds


def _plateaued(losses: Sequence[float], patience: int, tolerance: float) -> bool:
    if len(losses) <= patience:
        return False
    before, recent = min(losses[:-patience]), min(losses[-patience:])
    return recent > before * (1.0 - tolerance)


def _step(u: torch.Tensor, opt: torch.optim.Optimizer, observed: torch.Tensor, cutoff: float,
          config: FwiConfig) -> torch.Tensor:
    """One preconditioned, projected Adam step; returns the misfit [n] of the model before the step."""
    opt.zero_grad()
    m = misfit(u, observed, cutoff, config.filter_order)
    loss = m.sum()
    if config.tv_weight > 0:
        loss = loss + config.tv_weight * total_variation(u).sum()
    loss.backward()
    assert u.grad is not None
    u.grad = precondition(u.grad, config)
    opt.step()
    with torch.no_grad():
        u.clamp_(-1.0, 1.0)
    return m.detach()


def _run_stage(u: torch.Tensor, observed: torch.Tensor, cutoff: float, budget: int, config: FwiConfig,
               state: _State, progress: Callable[[int, float], None] | None,
               should_stop: Callable[[], bool] | None) -> str | None:
    """Up to ``budget`` steps in one band; returns a stop reason, or None when the stage's budget is spent."""
    opt = torch.optim.Adam([u], lr=config.learning_rate / V_HALF)
    losses: list[float] = []
    for _ in range(budget):
        if should_stop is not None and should_stop():
            return "cancelled"
        if state.out_of_time(config):
            return "time"
        started = time.perf_counter()
        before = u.detach().clone()
        m = _step(u, opt, observed, cutoff, config)
        if cutoff <= 0:
            state.offer(before, m)
        for row, value in zip(state.history, m.tolist()):
            row.append(value)
        state.bands.append(cutoff)
        losses.append(float(m.sum()))
        if progress is not None:
            progress(len(state.bands), float(m.mean()))
        state.step_seconds = time.perf_counter() - started
        if _plateaued(losses, config.plateau_patience, config.plateau_tolerance):
            return "plateau"
    return None


def refine_fwi_batch(gathers: np.ndarray, start: np.ndarray, config: FwiConfig,
                     progress: Callable[[int, float], None] | None = None,
                     should_stop: Callable[[], bool] | None = None) -> list[FwiResult]:
    """FWI of n gather sets at once (the same steps as n separate runs; the stop is shared).

    Args:
        gathers: [n,5,1000,70] (or [5,1000,70]) float32, training-data amplitude scale (see
            :func:`check_gathers` for shorter records).
        start: [n,70,70] (or [n,1,70,70]; [70,70] for one) m/s; clipped to 1500-4500.
        config: budgets, continuation schedule and preconditioning.
        progress: called after every step with (step number from 1, mean misfit in the step's band).
        should_stop: polled before every step; True cancels (the best model so far is still returned).

    Returns:
        One :class:`FwiResult` per gather set.
    """
    t0 = time.perf_counter()
    obs = torch.from_numpy(check_gathers(gathers))
    v0 = check_start(start, len(obs))
    torch.manual_seed(config.seed)
    u = torch.from_numpy((v0 - V_MID) / V_HALF).requires_grad_(True)
    with torch.no_grad():
        m0 = misfit(u, obs, 0.0, config.filter_order)
    state = _State(t0, u.detach().clone(), m0.clone(), [[] for _ in range(len(obs))])
    stopped = "iterations"
    stages = config.frequencies_hz
    for i, cutoff in enumerate(stages):
        budget = (config.iterations - len(state.bands)) // (len(stages) - i)  # the remainder goes to the last
        reason = _run_stage(u, lowpass(obs, cutoff, config.filter_order), cutoff, budget, config, state, progress,
                            should_stop)
        if reason in ("time", "cancelled") or (reason == "plateau" and i == len(stages) - 1):
            stopped = reason
            break
    with torch.no_grad():
        state.offer(u.detach(), misfit(u, obs, 0.0, config.filter_order))
    seconds = time.perf_counter() - t0
    models = (V_MID + V_HALF * state.best_u).clamp(V_MIN, V_MAX).numpy().astype(np.float32)
    return [FwiResult(model=models[j], misfit_history=state.history[j], start_misfit=float(m0[j]),
                      final_misfit=float(state.best_misfit[j]), iterations=len(state.bands), seconds=seconds,
                      stopped=stopped, band_history=list(state.bands)) for j in range(len(obs))]


def refine_fwi(gathers: np.ndarray, start: np.ndarray, config: FwiConfig,
               progress: Callable[[int, float], None] | None = None,
               should_stop: Callable[[], bool] | None = None) -> FwiResult:
    """FWI of one gather set [5,1000,70] (training-data amplitude scale) from ``start`` [70,70] m/s; see
    :func:`refine_fwi_batch`. Never returns a model that fits the data worse than the start."""
    g = np.asarray(gathers)
    if g.ndim != 3:
        raise ValueError(f"gathers: shape {g.shape}, expected {GATHER_SHAPE} (use refine_fwi_batch for several)")
    return refine_fwi_batch(g, start, config, progress, should_stop)[0]
