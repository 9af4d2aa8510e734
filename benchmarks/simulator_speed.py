"""Seconds per velocity model (5 shots, 1000 steps) of ``model.simulator``: the default against the previous
simulator, the two changes between them on their own, and the plain torch reference (``benchmarks/reference_fd.py``),
forward and forward+backward, measured side by side in the same run, interleaved, on the same threads.

    python -m benchmarks.simulator_speed [--threads 2] [--runs 5] [--batch 8] [--grad-batch 2] [--reference-batch 1]
    python -m benchmarks.simulator_speed --smoke     # one model per call, 150 time steps; a temporary folder

Variants (``VARIANTS``): ``old`` = one deepwave call per batch, each time step spread over the torch threads, PML 20
cells (the simulator up to issue 15); ``shot_parallel`` = the same physics with the shots spread over worker
threads, one OpenMP thread each; ``pml10`` = the old threading with the 10-cell PML; ``new`` = both (the default).

Writes ``benchmarks/results/simulator_speed.json``: per variant the median (min/max) wall-clock and CPU seconds per
model, forward and forward+backward (loss = sum of squared data); speed-ups of ``new`` over ``old`` as medians of
per-run ratios; the agreement of ``new`` with ``old`` (relative L2 of the gathers, cosine of the velocity
gradients) and with the reference. Target: <= 0.05 s per model forward.

OpenMP's wait policy is left as the environment sets it (recorded in the JSON).
"""

from __future__ import annotations

import argparse
import functools
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from benchmarks._common import add_output_args, timing_summary, write_result
from benchmarks.reference_fd import simulate_reference
from model.families import generate
from model.simulator import PML_WIDTH, REFERENCE_PML_WIDTH, simulate_torch

TARGET_SECONDS_PER_MODEL = 0.05
VARIANTS: dict[str, dict[str, int | None]] = {
    "old": {"pml_width": REFERENCE_PML_WIDTH, "workers": 1},
    "shot_parallel": {"pml_width": REFERENCE_PML_WIDTH, "workers": None},
    "pml10": {"pml_width": PML_WIDTH, "workers": 1},
    "new": {"pml_width": PML_WIDTH, "workers": None},
}


@dataclass(frozen=True)
class Config:
    threads: int
    runs: int
    batch: int
    grad_batch: int
    reference_batch: int
    family: str
    seed: int
    write: bool
    smoke: bool = False
    out: Path | None = None
    time_steps: int = 1000


def parse_args(argv: Sequence[str] | None = None) -> Config:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--threads", type=int, default=2, help="torch threads (and worker threads) for every variant")
    p.add_argument("--runs", type=int, default=5, help="timed rounds (>= 3); each round times every variant once")
    p.add_argument("--batch", type=int, default=8, help="models per forward call (the simulator's default batch)")
    p.add_argument("--grad-batch", type=int, default=2, help="models per forward+backward call")
    p.add_argument("--reference-batch", type=int, default=1, help="models per reference call (it is slow)")
    p.add_argument("--family", default="curvevel-a", help="synthetic family of the test models")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--time-steps", type=int, default=1000, help="time steps per simulation (1000: 1 s at 1 ms)")
    p.add_argument("--no-write", dest="write", action="store_false", help="print only, write no result file")
    add_output_args(p)
    a = p.parse_args(argv)
    if a.smoke:
        a.batch, a.grad_batch, a.reference_batch, a.time_steps = 1, 1, 1, 150
    if a.runs < 3:
        p.error(f"--runs {a.runs}: need at least 3 for a median with min/max")
    if min(a.threads, a.batch, a.grad_batch, a.reference_batch) < 1:
        p.error("--threads, --batch, --grad-batch and --reference-batch must be >= 1")
    return Config(a.threads, a.runs, a.batch, a.grad_batch, a.reference_batch, a.family, a.seed, a.write,
                  a.smoke, a.out, a.time_steps)


def timed(fn: Callable[[], object], n_models: int) -> tuple[float, float]:
    """(wall-clock, process CPU) seconds per model of one call."""
    t0, c0 = time.perf_counter(), time.process_time()
    fn()
    return (time.perf_counter() - t0) / n_models, (time.process_time() - c0) / n_models


def forward(v: torch.Tensor, settings: dict[str, int | None], nt: int) -> torch.Tensor:
    with torch.no_grad():
        return simulate_torch(v, nt, **settings)  # type: ignore[arg-type]


def forward_backward(v: torch.Tensor, settings: dict[str, int | None], nt: int) -> torch.Tensor:
    """Gradient of the sum of squared data with respect to the velocity."""
    x = v.clone().requires_grad_(True)
    (simulate_torch(x, nt, **settings) ** 2).sum().backward()  # type: ignore[arg-type]
    assert x.grad is not None
    return x.grad


def correlation(a: torch.Tensor, b: torch.Tensor) -> float:
    x, y = a.double().ravel(), b.double().ravel()
    return float(x @ y / (x.norm() * y.norm()))


def relative_l2(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.double() - b.double()).norm() / b.double().norm())


def measure(cfg: Config, v: torch.Tensor) -> dict[str, dict[str, list[float]]]:
    """Per timed series ("<variant>", "<variant>_grad", "reference"): wall and CPU seconds per model, one per run."""
    vf, vg, vr = v[:cfg.batch], v[:cfg.grad_batch], v[:cfg.reference_batch]
    series: dict[str, Callable[[], object]] = {}
    sizes: dict[str, int] = {}
    for name, settings in VARIANTS.items():
        series[name], sizes[name] = functools.partial(forward, vf, settings, cfg.time_steps), cfg.batch
        series[f"{name}_grad"] = functools.partial(forward_backward, vg, settings, cfg.time_steps)
        sizes[f"{name}_grad"] = cfg.grad_batch
    series["reference"] = functools.partial(simulate_reference, vr, cfg.time_steps)
    sizes["reference"] = cfg.reference_batch
    for settings in VARIANTS.values():  # warm-up: allocations, thread pools
        forward(v[:1], settings, cfg.time_steps)
    times: dict[str, dict[str, list[float]]] = {k: {"wall": [], "cpu": []} for k in series}
    for r in range(cfg.runs):  # interleaved, in an order that rotates each round, so all see the same load
        keys = list(series)
        for k in keys[r % len(keys):] + keys[:r % len(keys)]:
            wall, cpu = timed(series[k], sizes[k])
            times[k]["wall"].append(wall)
            times[k]["cpu"].append(cpu)
    return times


def agreement(cfg: Config, v: torch.Tensor) -> dict[str, float]:
    """How far the default is from the previous simulator (data and gradient) and from the torch reference."""
    vg = v[:max(cfg.grad_batch, 1)]
    nt = cfg.time_steps
    new, old = forward(vg, VARIANTS["new"], nt), forward(vg, VARIANTS["old"], nt)
    g_new, g_old = forward_backward(vg, VARIANTS["new"], nt), forward_backward(vg, VARIANTS["old"], nt)
    vr = v[:cfg.reference_batch]
    ref = simulate_reference(vr, nt)
    return {
        "relative_l2_vs_old": relative_l2(new, old),
        "shot_parallel_max_abs_difference_vs_old": float(
            (forward(vg, VARIANTS["shot_parallel"], nt) - old).abs().max()),
        "gradient_cosine_vs_old": correlation(g_new, g_old),
        "gradient_relative_l2_vs_old": relative_l2(g_new, g_old),
        "reference_agreement_correlation": correlation(forward(vr, VARIANTS["new"], nt), ref),
        "old_reference_agreement_correlation": correlation(forward(vr, VARIANTS["old"], nt), ref),
    }


def summarise(cfg: Config, times: dict[str, dict[str, list[float]]], agree: dict[str, float]) -> dict[str, object]:
    def med(k: str, what: str = "wall") -> float:
        return float(np.median(times[k][what]))

    def ratio(a: str, b: str) -> float:
        return float(np.median(np.array(times[a]["wall"]) / np.array(times[b]["wall"])))

    variants = {k: {"seconds_per_model": timing_summary(t["wall"]), "cpu_seconds_per_model": med(k, "cpu"),
                    "all_seconds_per_model": t["wall"]} for k, t in times.items()}
    return {
        "seconds_per_model": med("new"),
        "old_seconds_per_model": med("old"),
        "speedup_vs_old": ratio("old", "new"),
        "forward_backward_seconds_per_model": med("new_grad"),
        "old_forward_backward_seconds_per_model": med("old_grad"),
        "speedup_forward_backward_vs_old": ratio("old_grad", "new_grad"),
        "reference_seconds_per_model": med("reference"),
        "speedup_vs_reference": ratio("reference", "new"),
        "cpu_seconds_per_model": med("new", "cpu"),
        "old_cpu_seconds_per_model": med("old", "cpu"),
        **agree,
        "target_seconds_per_model": TARGET_SECONDS_PER_MODEL,
        "meets_target": med("new") <= TARGET_SECONDS_PER_MODEL,
        "variants": variants,
        "variant_settings": VARIANTS,
        "threads": cfg.threads, "runs": cfg.runs, "batch": cfg.batch, "grad_batch": cfg.grad_batch,
        "reference_batch": cfg.reference_batch, "shots_per_model": 5, "time_steps": cfg.time_steps,
        "models": f"{cfg.family} seed {cfg.seed}", "device": "cpu",
        "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY"),
        "load_average_1min_at_end": os.getloadavg()[0] if hasattr(os, "getloadavg") else None,
    }


def main(argv: Sequence[str] | None = None) -> dict[str, object]:
    cfg = parse_args(argv)
    torch.set_num_threads(cfg.threads)
    n = max(cfg.batch, cfg.grad_batch, cfg.reference_batch)
    v = torch.from_numpy(generate(cfg.family, n, np.random.default_rng(cfg.seed)))
    figures = summarise(cfg, measure(cfg, v), agreement(cfg, v))
    for k, d in figures["variants"].items():  # type: ignore[attr-defined]
        s = d["seconds_per_model"]
        print(f"{k:20s} {s['median']:.4f} s/model (min {s['min']:.4f}, max {s['max']:.4f}), "
              f"CPU {d['cpu_seconds_per_model']:.4f} s/model")
    print(f"new vs old: {figures['speedup_vs_old']:.2f}x forward, {figures['speedup_forward_backward_vs_old']:.2f}x "
          f"forward+backward on {cfg.threads} threads; gathers within {figures['relative_l2_vs_old']:.2e} rel. L2, "
          f"gradient cosine {figures['gradient_cosine_vs_old']:.5f}")
    if cfg.write:
        print(f"wrote {write_result('simulator_speed', figures, cfg.out, cfg.smoke)}")
    return figures


if __name__ == "__main__":
    main()
