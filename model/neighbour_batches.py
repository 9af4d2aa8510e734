"""Training batches made of small groups of similar velocity models (hard negatives).

In a batch of 128 openfwi-vel pairs drawn at random, the nearest other model is a median 204 m/s (MAE) away,
157 m/s in a batch of groups of 4, and about 100 m/s among all 10,000 training models: a model that only ever
has to tell apart models that differ a lot never learns the fine differences a large gallery asks for.
:func:`grouped_order` lays out one epoch so that consecutive groups of ``group`` pairs are near neighbours by
pixel L2 (from :func:`model_neighbours`), still visiting every training pair exactly once, so a batch holds
``batch_size / group`` such groups. The order is a
function of (seed, epoch) only, as :func:`model.train.epoch_order` is, so a resumed run sees what an uninterrupted
one would.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from seisbind.neighbours import l2_top_k

from model.batches import epoch_generator

NEIGHBOURS = 16
"""Nearest models kept per training model to build groups from."""
POOL = 2
"""Models are average-pooled by this factor (70 x 70 -> 35 x 35) before the distances, a quarter of the arithmetic
(3.8 s for 10,000 models on 2 cores); smooth at the scale of a few cells, layered models lose little by it."""


def model_neighbours(velocity: torch.Tensor, k: int = NEIGHBOURS) -> np.ndarray:
    """Velocity models [n, 1, 70, 70] (m/s) -> [n, k] indices of each model's k nearest other models by pixel L2,
    nearest first."""
    pooled = F.avg_pool2d(velocity.float(), POOL).reshape(len(velocity), -1).numpy()
    idx = l2_top_k(pooled, pooled, min(k + 1, len(pooled)))
    out = np.empty((len(idx), idx.shape[1] - 1), np.int64)
    for i, row in enumerate(idx):  # drop the model itself (first, except among exact duplicates)
        out[i] = row[row != i][:out.shape[1]]
    return out


def grouped_order(seed: int, epoch: int, neighbours: np.ndarray, group: int, mirror_p: float
                  ) -> tuple[torch.Tensor, torch.Tensor]:
    """One epoch's permutation [n] of the training rows, in which consecutive groups of ``group`` rows are near
    neighbours (each row a random anchor followed by its nearest rows not yet taken; groups in random order), and
    the mirror flags [n], drawn per group so a group stays alike. Deterministic given (seed, epoch)."""
    n = len(neighbours)
    g = epoch_generator(seed, epoch)
    anchors = torch.randperm(n, generator=g).numpy()
    taken = np.zeros(n, bool)
    groups: list[list[int]] = []
    for a in anchors:
        if taken[a]:
            continue
        members = [int(a)]
        taken[a] = True
        for j in neighbours[a]:
            if len(members) == group:
                break
            if not taken[j]:
                members.append(int(j))
                taken[j] = True
        groups.append(members)
    order = torch.randperm(len(groups), generator=g).tolist()
    flip_group = (torch.rand(len(groups), generator=g) < mirror_p).tolist()
    perm = [r for i in order for r in groups[i]]
    flips = [flip_group[i] for i in order for _ in groups[i]]
    return torch.tensor(perm, dtype=torch.long), torch.tensor(flips, dtype=torch.bool)
