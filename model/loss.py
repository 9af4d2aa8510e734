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


def symmetric_info_nce(a: torch.Tensor, b: torch.Tensor, scale: torch.Tensor,
                       targets: torch.Tensor | None = None) -> torch.Tensor:
    """CLIP loss of paired, L2-normalised embeddings a, b [batch, d]: mean of the a->b and b->a cross-entropies
    of ``scale * cosine``, positives on the diagonal; the negatives span all ranks' rows. ``targets`` [batch,
    global batch] (rows summing to 1) replaces the one-hot positives in both directions, so it must score pair j
    for row i alike whichever side i is on (true of targets built from a symmetric distance between pairs)."""
    a_all, offset = gather_with_grad(a)
    b_all, _ = gather_with_grad(b)
    logits_ab = scale * a.float() @ b_all.float().T
    logits_ba = scale * b.float() @ a_all.float().T
    if targets is None:
        labels = torch.arange(a.shape[0], device=a.device) + offset
        return 0.5 * (F.cross_entropy(logits_ab, labels) + F.cross_entropy(logits_ba, labels))
    return 0.5 * (F.cross_entropy(logits_ab, targets) + F.cross_entropy(logits_ba, targets))


def velocity_soft_targets(velocity: torch.Tensor, tau_mps: float) -> torch.Tensor:
    """Soft positives of this rank's velocity models [b, ...] (m/s) over the global batch: row i is
    softmax_j(-MAE(v_i, v_j) / tau_mps), so a pair's own model keeps most of the mass and models that differ by
    little share the rest (MAE in m/s over all cells; ``tau_mps`` sets how fast the share falls)."""
    flat = velocity.detach().float().reshape(velocity.shape[0], -1)
    offset = 0
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        parts = [torch.empty_like(flat) for _ in range(dist.get_world_size())]
        dist.all_gather(parts, flat.contiguous())
        offset = dist.get_rank() * flat.shape[0]
        everyone = torch.cat(parts)
    else:
        everyone = flat
    mae = torch.cdist(flat, everyone, p=1) / flat.shape[1]
    mae[torch.arange(flat.shape[0]), torch.arange(flat.shape[0]) + offset] = 0.0  # exact self-distance
    return torch.softmax(-mae / tau_mps, dim=1)


@dataclass(frozen=True)
class TriModalLoss:
    """lambda1 * InfoNCE(seismic, velocity) + lambda2 * InfoNCE(velocity, physics)."""

    lambda1: float = 1.0
    lambda2: float = 0.1
    soft_tau_mps: float = 0.0
    """> 0: the seismic-velocity pair's positives are soft (velocity_soft_targets), so the embedding ranks the
    other models by how close they are to the true one; 0: one-hot positives."""

    def __call__(self, seis: torch.Tensor, vel: torch.Tensor, phys: torch.Tensor, scale: torch.Tensor,
                 velocity: torch.Tensor | None = None) -> tuple[torch.Tensor, dict[str, float]]:
        """Total loss (a scalar tensor) and its detached parts {"sv", "vp"}. ``scale``: one logit scale for both
        pairs (a scalar), or [2] = (seismic-velocity, velocity-physics). ``velocity``: the batch's models in m/s,
        needed when soft_tau_mps > 0."""
        s_sv, s_vp = (scale, scale) if scale.ndim == 0 else (scale[0], scale[1])
        targets = None
        if self.soft_tau_mps > 0:
            if velocity is None:
                raise ValueError("soft seismic-velocity targets need the batch's velocity models")
            targets = velocity_soft_targets(velocity, self.soft_tau_mps)
        sv = symmetric_info_nce(seis, vel, s_sv, targets)
        if self.lambda2 > 0:
            vp = symmetric_info_nce(vel, phys, s_vp)
            total = self.lambda1 * sv + self.lambda2 * vp
        else:
            with torch.no_grad():
                vp = symmetric_info_nce(vel, phys, s_vp)
            total = self.lambda1 * sv
        return total, {"sv": float(sv.detach()), "vp": float(vp.detach())}
