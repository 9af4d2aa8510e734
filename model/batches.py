"""Training batches and validation: decimated gathers mirrored, augmented on the fly and normalised; eval-mode
embeddings and validation R@k; BatchNorm statistics recomputed with the current weights ("precise BN").

Training holds the seismic front end's decimated gathers (``SeismicFrontEnd.decimate``, still linear in the
amplitudes), so every batch can be perturbed like field data (``model.augment``, at the decimated sample interval)
before the pointwise log-normalisation turns it into what the trainable layers see.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import nullcontext
from typing import Any

import numpy as np
import torch
from torch import nn

from seisbind.retrieval_metrics import recall_at_k, true_ranks

from model import augment
from model.config import AugmentConfig
from model.data import TensorPairs, mirror
from model.encoders import SeisBindModel, SeismicFrontEnd

Batch = tuple[torch.Tensor, torch.Tensor, torch.Tensor]


def autocast(device: torch.device, amp: bool) -> Any:
    """bf16 autocast on ``device`` when ``amp``, else a no-op context."""
    if not amp:
        return nullcontext()
    return torch.autocast(device.type, dtype=torch.bfloat16)


def epoch_generator(seed: int, epoch: int) -> torch.Generator:
    """The generator of one epoch's order and mirror flags: a function of the run's seed and the epoch only."""
    return torch.Generator().manual_seed(seed * 1_000_003 + epoch)


def augment_seed(seed: int, step: int, rank: int, stream: int = 0) -> torch.Generator:
    """The generator of one batch's perturbations: a function of the run's seed, the global step, the rank and
    the stream (0: training, 1: BatchNorm statistics), so a resumed run draws what an uninterrupted one would."""
    return torch.Generator().manual_seed(((seed * 1_000_003 + step) * 64 + rank) * 4 + stream)


def make_batch(pairs: TensorPairs, rows: torch.Tensor, flips: torch.Tensor, device: torch.device,
               channels_last: bool, front: SeismicFrontEnd, augment_cfg: AugmentConfig | None = None,
               generator: torch.Generator | None = None) -> Batch:
    """Normalised gathers, models and descriptors of ``rows``, with the flagged pairs mirrored and, given
    ``augment_cfg``, the gathers perturbed (draws from ``generator``)."""
    dec, vel = pairs.pre[rows], pairs.velocity[rows]
    if bool(flips.any()):
        md, mv = mirror(dec[flips], vel[flips])
        dec[flips], vel[flips] = md, mv
    if augment_cfg is not None:
        dec = augment.apply(dec, generator or torch.Generator(), augment_cfg, front.decimated_dt,
                            front.white_noise_gain)
    mf = torch.channels_last if channels_last else torch.contiguous_format
    return (front.normalise(dec).to(device).contiguous(memory_format=mf),
            vel.to(device).contiguous(memory_format=mf), pairs.descriptors[rows].to(device))


@torch.no_grad()
def embed_pre(model: SeisBindModel, pairs: TensorPairs, rows: np.ndarray, device: torch.device,
              amp: bool, batch: int = 256) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Eval-mode embeddings (seismic from the clean decimated gathers, velocity, physics) of ``rows``."""
    was = model.training
    model.eval()
    out: list[list[np.ndarray]] = [[], [], []]
    for s in range(0, len(rows), batch):
        r = torch.as_tensor(rows[s:s + batch])
        with autocast(device, amp):
            embs = model(model.seismic.normalise(pairs.pre[r]).to(device), pairs.velocity[r].to(device),
                         pairs.descriptors[r].to(device))[:3]
        for o, e in zip(out, embs):
            o.append(e.float().cpu().numpy())
    model.train(was)
    return tuple(np.concatenate(o) for o in out)  # type: ignore[return-value]


def validate(model: SeisBindModel, pairs: TensorPairs, rows: np.ndarray, device: torch.device, amp: bool,
             suffix: str = "") -> dict[str, float]:
    """Validation R@1/R@5 (seismic->velocity, velocity->physics) on the held-out pairs (keys end in ``suffix``)."""
    if len(rows) == 0:
        return {}
    s, v, p = embed_pre(model, pairs, rows, device, amp)
    sv, vp = recall_at_k(true_ranks(s, v), (1, 5)), recall_at_k(true_ranks(v, p), (1, 5))
    return {f"val_sv_R@1{suffix}": sv["R@1"], f"val_sv_R@5{suffix}": sv["R@5"],
            f"val_vp_R@1{suffix}": vp["R@1"], f"val_vp_R@5{suffix}": vp["R@5"]}


@torch.no_grad()
def recompute_batchnorm(model: nn.Module, batches: Iterator[Batch], amp: bool, device: torch.device) -> int:
    """Replace every BatchNorm layer's running statistics by their exact average over ``batches`` (forward passes
    in training mode with the current weights, no gradient); returns the number of batches used. The running
    averages otherwise mix the statistics of the last ~10 steps' weights, which move fast early in training."""
    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    if not norms:
        return 0
    saved = [(m, m.momentum) for m in norms]
    was = model.training
    for m in norms:
        m.reset_running_stats()
        m.momentum = None  # cumulative average over the batches
    model.train()
    n = 0
    try:
        for pre, vel, desc in batches:
            with autocast(device, amp):
                model(pre, vel, desc)
            n += 1
    finally:
        for m, mom in saved:
            m.momentum = mom
        model.train(was)
    return n
