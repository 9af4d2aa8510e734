"""Run a per-shot propagator over the shots of a batch in worker threads, one OpenMP thread each, forward and
backward (autograd).

deepwave's compiled CPU kernel parallelises each shot's stencil across threads, joining all of them at every time
step: 5,000 joins per velocity model, which is cheap on idle cores but stalls whenever another process holds one
of them. Giving each worker thread whole shots, with a single OpenMP thread, removes every join; the kernel
releases the GIL, so the workers run in parallel. Each shot's computation is unchanged, so the result is bit for bit
that of one call over all shots (given fixed PML and time-step settings, which the caller passes explicitly).
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import torch

ShotRunner = Callable[[torch.Tensor, slice], torch.Tensor]
"""(velocity of some shots [s, nz, nx], their slice of the batch's shots) -> data of those shots [s, ...]."""

_POOL: ThreadPoolExecutor | None = None
_POOL_SIZE = 0
_POOL_LOCK = threading.Lock()


def _forget_pool() -> None:
    """In a forked child the pool's threads do not exist: start a fresh pool when one is needed."""
    global _POOL, _POOL_SIZE, _POOL_LOCK
    _POOL, _POOL_SIZE, _POOL_LOCK = None, 0, threading.Lock()


os.register_at_fork(after_in_child=_forget_pool)


def _pool(workers: int) -> ThreadPoolExecutor:
    """The process's worker pool, grown to at least ``workers`` threads."""
    global _POOL, _POOL_SIZE
    with _POOL_LOCK:
        if _POOL is None or _POOL_SIZE < workers:
            if _POOL is not None:
                _POOL.shutdown(wait=True)
            _POOL = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="seisbind-shots")
            _POOL_SIZE = workers
        return _POOL


def _in_one_thread(fn: Callable[[], torch.Tensor]) -> torch.Tensor:
    """``fn()`` with torch (and so deepwave) limited to one intra-op thread in this worker thread."""
    if torch.get_num_threads() != 1:
        torch.set_num_threads(1)  # per-thread OpenMP setting; the caller restores the process-wide value
    return fn()


def _spans(n_shots: int, workers: int) -> list[slice]:
    bounds = [round(i * n_shots / workers) for i in range(workers + 1)]
    return [slice(a, b) for a, b in zip(bounds[:-1], bounds[1:]) if b > a]


def _map(tasks: list[Callable[[], torch.Tensor]]) -> list[torch.Tensor]:
    threads = torch.get_num_threads()
    try:
        futures = [_pool(len(tasks)).submit(_in_one_thread, t) for t in tasks]
        return [f.result() for f in futures]
    finally:
        torch.set_num_threads(threads)


class _ShotParallel(torch.autograd.Function):
    """Forward: the runner on each span of shots in its own worker; backward: each span's adjoint in its worker."""

    @staticmethod
    def forward(ctx: Any, v: torch.Tensor, run: ShotRunner, spans: list[slice]) -> torch.Tensor:  # type: ignore[override]
        grad = bool(ctx.needs_input_grad[0])
        leaves = [v.detach()[s].clone().requires_grad_(grad) for s in spans]

        def task(leaf: torch.Tensor, span: slice) -> Callable[[], torch.Tensor]:
            def go() -> torch.Tensor:
                with torch.set_grad_enabled(grad):
                    return run(leaf, span)
            return go

        outs = _map([task(leaf, s) for leaf, s in zip(leaves, spans)])
        if grad:
            ctx.graphs = list(zip(leaves, outs))
        return torch.cat([o.detach() for o in outs])

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx: Any, grad_out: torch.Tensor) -> tuple[torch.Tensor, None, None]:  # type: ignore[override]
        graphs, ctx.graphs = ctx.graphs, None
        sizes = [len(out) for _, out in graphs]

        def task(leaf: torch.Tensor, out: torch.Tensor, g: torch.Tensor) -> Callable[[], torch.Tensor]:
            return lambda: torch.autograd.grad(out, leaf, g)[0]

        grads = _map([task(leaf, out, g) for (leaf, out), g in zip(graphs, grad_out.split(sizes))])
        return torch.cat(grads), None, None


def run_shot_parallel(v_shots: torch.Tensor, run: ShotRunner, workers: int) -> torch.Tensor:
    """``run`` over all shots of ``v_shots`` [shots, nz, nx], split into up to ``workers`` contiguous spans run in
    parallel (one OpenMP thread each); differentiable in ``v_shots``. ``workers`` <= 1 or a non-CPU tensor: one
    call over all shots, on the caller's threads."""
    n = v_shots.shape[0]
    if workers <= 1 or n < 2 or v_shots.device.type != "cpu":
        return run(v_shots, slice(0, n))
    return _ShotParallel.apply(v_shots, run, _spans(n, min(workers, n)))  # type: ignore[no-any-return]
