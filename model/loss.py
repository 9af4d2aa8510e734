"""Tri-modal contrastive loss: lambda1 * InfoNCE(seismic, velocity) + lambda2 * InfoNCE(velocity, physics).

Under DistributedDataParallel the embeddings of every rank are gathered *with* gradient, so the negatives are
the whole global batch; each rank scores its own rows against all columns ("local loss"), and the mean over ranks
equals the single-process loss on the global batch (DDP's gradient averaging then gives its gradient).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.distributed as dist
import torch.nn.functional as F


def gather_with_grad(x: torch.Tensor) -> tuple[torch.Tensor, int]:
    """All ranks' ``x`` [b, d] concatenated in rank order [world*b, d], differentiable; and this rank's row offset.
    Without an initialised process group: (x, 0)."""
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return x, 0
    import torch.distributed.nn.functional as dist_fn

    parts = dist_fn.all_gather(x)
    return torch.cat(parts, dim=0), dist.get_rank() * x.shape[0]


def symmetric_info_nce(a: torch.Tensor, b: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """CLIP loss of paired, L2-normalised embeddings a, b [batch, d]: mean of the a->b and b->a cross-entropies
    of ``scale * cosine``, positives on the diagonal; the negatives span all ranks' rows."""
    a_all, offset = gather_with_grad(a)
    b_all, _ = gather_with_grad(b)
    labels = torch.arange(a.shape[0], device=a.device) + offset
    logits_ab = scale * a.float() @ b_all.float().T
    logits_ba = scale * b.float() @ a_all.float().T
    return 0.5 * (F.cross_entropy(logits_ab, labels) + F.cross_entropy(logits_ba, labels))


@dataclass(frozen=True)
class TriModalLoss:
    """lambda1 * InfoNCE(seismic, velocity) + lambda2 * InfoNCE(velocity, physics)."""

    lambda1: float = 1.0
    lambda2: float = 0.1

    def __call__(self, seis: torch.Tensor, vel: torch.Tensor, phys: torch.Tensor, scale: torch.Tensor
                 ) -> tuple[torch.Tensor, dict[str, float]]:
        """Total loss (a scalar tensor) and its detached parts {"sv", "vp"}. ``scale``: one logit scale for both
        pairs (a scalar), or [2] = (seismic-velocity, velocity-physics)."""
        s_sv, s_vp = (scale, scale) if scale.ndim == 0 else (scale[0], scale[1])
        sv = symmetric_info_nce(seis, vel, s_sv)
        if self.lambda2 > 0:
            vp = symmetric_info_nce(vel, phys, s_vp)
            total = self.lambda1 * sv + self.lambda2 * vp
        else:
            with torch.no_grad():
                vp = symmetric_info_nce(vel, phys, s_vp)
            total = self.lambda1 * sv
        return total, {"sv": float(sv.detach()), "vp": float(vp.detach())}
