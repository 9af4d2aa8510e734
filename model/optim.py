"""The optimiser's parameter groups and the learning-rate schedule of training."""

from __future__ import annotations

import math
from typing import Any

from torch import nn

MAX_LOGIT_SCALE = math.log(100.0)
"""Upper bound of the learnable log logit scales (temperature >= 0.01), as in CLIP."""


def param_groups(model: nn.Module, weight_decay: float, scale_lr_mult: float = 1.0) -> list[dict[str, Any]]:
    """AdamW groups: decay on weight matrices/kernels; none on biases, norms and the logit scales (which get their
    own group, learning rate times ``scale_lr_mult``, when that is not 1)."""
    decay: list[nn.Parameter] = []
    no_decay: list[nn.Parameter] = []
    scales: list[nn.Parameter] = []
    for name, p in model.named_parameters():
        if "logit_scale" in name:
            (scales if scale_lr_mult != 1.0 else no_decay).append(p)
        else:
            (decay if p.ndim >= 2 else no_decay).append(p)
    groups = [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    if scales:
        groups.append({"params": scales, "weight_decay": 0.0, "lr_mult": scale_lr_mult})
    return groups


def lr_factor(progress_fraction: float, warmup: float) -> float:
    """Linear warm-up then cosine decay, as a function of the schedule's progress in [0, 1]."""
    p = min(max(progress_fraction, 0.0), 1.0)
    if warmup > 0 and p < warmup:
        return p / warmup
    return 0.5 * (1 + math.cos(math.pi * (p - warmup) / max(1 - warmup, 1e-9)))
