"""Running a training session under torchrun, and stopping it cleanly: process-group set-up, flags agreed across
ranks, and SIGINT/SIGTERM turned into a checkpoint-and-stop at the next step."""

from __future__ import annotations

import os
import signal
from typing import Any

import torch
import torch.distributed as dist


def init_distributed(device: str) -> tuple[int, int, torch.device]:
    """(rank, world size, device) under torchrun (env WORLD_SIZE > 1) or a single process."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    if device == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("--device cuda: no CUDA device is available")
    if world > 1 and not dist.is_initialized():
        dist.init_process_group(backend="nccl" if device == "cuda" else "gloo")
    if device == "cuda":
        local = int(os.environ.get("LOCAL_RANK", "0"))
        torch.cuda.set_device(local)
        return rank, world, torch.device("cuda", local)
    return rank, world, torch.device("cpu")


def agree_any(flags: list[bool], world: int, device: torch.device) -> list[bool]:
    """Logical OR of per-rank flags across ranks (so every rank stops at the same step)."""
    if world == 1:
        return flags
    t = torch.tensor([float(f) for f in flags], device=device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return [bool(x) for x in t.tolist()]


def barrier(world: int) -> None:
    """Wait for every rank (no-op in a single process)."""
    if world > 1:
        dist.barrier()


def shutdown(world: int) -> None:
    """Leave the process group (no-op in a single process)."""
    if world > 1:
        dist.destroy_process_group()


class StopFlag:
    """Set by SIGINT/SIGTERM; the loop checkpoints at the next step boundary and stops. A second signal raises
    KeyboardInterrupt at once."""

    def __init__(self) -> None:
        self.set = False
        self._old: dict[int, Any] = {}

    def __enter__(self) -> "StopFlag":
        for sig in (signal.SIGINT, signal.SIGTERM):
            try:
                self._old[sig] = signal.signal(sig, self._handle)
            except ValueError:  # not the main thread
                pass
        return self

    def _handle(self, signum: int, frame: object) -> None:
        if self.set:
            raise KeyboardInterrupt
        self.set = True

    def __exit__(self, *exc: object) -> None:
        for sig, old in self._old.items():
            signal.signal(sig, old)
