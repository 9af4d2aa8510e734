"""Seconds per velocity model (5 shots, 1000 steps) of ``model.simulator`` against the plain torch reference
(``benchmarks/reference_fd.py``), measured side by side in the same run, interleaved, on the same threads.

    python -m benchmarks.simulator_speed [--threads 2] [--runs 3] [--batch 8] [--reference-batch 2]
    python -m benchmarks.simulator_speed --smoke     # one model per call; result in a temporary folder

Writes ``benchmarks/results/simulator_speed.json``: seconds_per_model and reference_seconds_per_model (medians,
with min/max), speedup_vs_reference (ratio of the medians), threads, and the agreement (correlation) of the two
simulators' gathers on the reference batch. Target: <= 0.1 s per model.

OpenMP's wait policy is left as the environment sets it (recorded in the JSON): on cores the simulator has to itself,
the default (spinning) is about 3.5x faster than ``OMP_WAIT_POLICY=PASSIVE`` (0.10 vs 0.37 s per model, measured
here); on an oversubscribed machine spinning is up to 15x slower, and PASSIVE is the setting to use.
"""

from __future__ import annotations

import argparse
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
from model.simulator import simulate

TARGET_SECONDS_PER_MODEL = 0.1


@dataclass(frozen=True)
class Config:
    threads: int
    runs: int
    batch: int
    reference_batch: int
    family: str
    seed: int
    write: bool
    smoke: bool = False
    out: Path | None = None


def parse_args(argv: Sequence[str] | None = None) -> Config:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--threads", type=int, default=2, help="torch intra-op threads for both simulators")
    p.add_argument("--runs", type=int, default=3, help="timed runs of each (>= 3)")
    p.add_argument("--batch", type=int, default=8, help="models per model.simulator call (its default batch)")
    p.add_argument("--reference-batch", type=int, default=2, help="models per reference call (it is slow)")
    p.add_argument("--family", default="curvevel-a", help="synthetic family of the test models")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--no-write", dest="write", action="store_false", help="print only, write no result file")
    add_output_args(p)
    a = p.parse_args(argv)
    if a.smoke:
        a.batch, a.reference_batch = 1, 1
    if a.runs < 3:
        p.error(f"--runs {a.runs}: need at least 3 for a median with min/max")
    if a.threads < 1 or a.batch < 1 or a.reference_batch < 1:
        p.error("--threads, --batch and --reference-batch must be >= 1")
    return Config(a.threads, a.runs, a.batch, a.reference_batch, a.family, a.seed, a.write, a.smoke, a.out)


def seconds_per_model(fn: Callable[[], object], n_models: int) -> tuple[float, float]:
    """(wall-clock, process CPU) seconds per model of one call."""
    t0, c0 = time.perf_counter(), time.process_time()
    fn()
    return (time.perf_counter() - t0) / n_models, (time.process_time() - c0) / n_models


def correlation(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a.ravel().astype(np.float64), b.ravel().astype(np.float64)
    return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))


def main(argv: Sequence[str] | None = None) -> dict[str, object]:
    cfg = parse_args(argv)
    torch.set_num_threads(cfg.threads)
    v = generate(cfg.family, max(cfg.batch, cfg.reference_batch), np.random.default_rng(cfg.seed))
    v_sim, v_ref = v[:cfg.batch], torch.from_numpy(v[:cfg.reference_batch])
    with torch.no_grad():
        simulate(v_sim[:1])  # warm-up: allocations, thread pool
        simulate_reference(v_ref[:1], nt=10)
        sim_t, ref_t, sim_cpu, ref_cpu = [], [], [], []
        for _ in range(cfg.runs):  # interleaved, so both see the same machine load
            wall, cpu = seconds_per_model(lambda: simulate(v_sim, batch_size=cfg.batch), cfg.batch)
            sim_t.append(wall)
            sim_cpu.append(cpu)
            wall, cpu = seconds_per_model(lambda: simulate_reference(v_ref), cfg.reference_batch)
            ref_t.append(wall)
            ref_cpu.append(cpu)
        agreement = correlation(simulate(v[:cfg.reference_batch]), simulate_reference(v_ref).numpy())
    sim, ref = timing_summary(sim_t), timing_summary(ref_t)
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else None
    figures: dict[str, object] = {
        "seconds_per_model": sim["median"],
        "seconds_per_model_min": sim["min"],
        "seconds_per_model_max": sim["max"],
        "reference_seconds_per_model": ref["median"],
        "reference_seconds_per_model_min": ref["min"],
        "reference_seconds_per_model_max": ref["max"],
        "speedup_vs_reference": ref["median"] / sim["median"],
        "speedup_per_run_median": float(np.median(np.array(ref_t) / np.array(sim_t))),
        "cpu_seconds_per_model": float(np.median(sim_cpu)),
        "reference_cpu_seconds_per_model": float(np.median(ref_cpu)),
        "threads": cfg.threads,
        "runs": cfg.runs,
        "batch": cfg.batch,
        "reference_batch": cfg.reference_batch,
        "shots_per_model": 5,
        "time_steps": 1000,
        "models": f"{cfg.family} seed {cfg.seed}",
        "target_seconds_per_model": TARGET_SECONDS_PER_MODEL,
        "meets_target": sim["median"] <= TARGET_SECONDS_PER_MODEL,
        "reference_agreement_correlation": agreement,
        "all_seconds_per_model": sim_t,
        "all_reference_seconds_per_model": ref_t,
        "device": "cpu",
        "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY"),
        "load_average_1min_at_end": load,
    }
    print(
        f"model.simulator: {sim['median']:.4f} s/model (min {sim['min']:.4f}, max {sim['max']:.4f}); "
        f"reference: {ref['median']:.3f} s/model (min {ref['min']:.3f}, max {ref['max']:.3f}); "
        f"speed-up {figures['speedup_vs_reference']:.1f}x on {cfg.threads} threads; "
        f"gathers agree to correlation {agreement:.4f}"
    )
    if cfg.write:
        print(f"wrote {write_result('simulator_speed', figures, cfg.out, cfg.smoke)}")
    return figures


if __name__ == "__main__":
    main()
