"""The learned refiner network (docs/learned_refiner.md): gathers + k retrieved bank models + their scores ->
a velocity model in m/s.

A small U-Net looks at the k neighbours and their similarity-weighted mean (normalised to [-1, 1]), their scores
as constant planes, and a gather feature map on the model grid, and predicts k + 1 maps: per-cell logits added to
the log of the neighbours' similarity weights (the same weighting as seisbind.neighbours.neighbour_weights), whose
softmax over the neighbours mixes them cell by cell, and a residual bounded by ``max_residual_mps`` (tanh) added
to the mix. Mixing cell by cell is what the neighbours allow: on held-out openfwi-vel pairs the best of 20
neighbours per cell is 21 m/s from the truth while their weighted mean is 171 m/s away. The gather branch runs the
seismic encoder's own front end (model.encoders.SeismicFrontEnd), convolutions over (time, receiver) and a learned
linear map from the decimated time axis onto the 70 depth cells (receivers sit on the model's 70 lateral cells),
and a migration branch: per-shot gather features read at the reflection times of the neighbours' weighted mean
(model.migration.DepthMigration), so reflections show beside the interfaces that are too shallow or too deep.
The last convolution starts at zero, so an untrained refiner returns exactly the neighbours' weighted mean.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from seisbind.acquisition import N_SHOTS, NX, NZ, V_MAX, V_MIN
from seisbind.neighbours import SIMILARITY_FLOOR

from model.config import ModelConfig
from model.encoders import SeismicFrontEnd
from model.migration import DepthMigration
from model.refiner_config import RefinerConfig


def similarity_weights(scores: torch.Tensor) -> torch.Tensor:
    """[B, k] cosine similarities -> [B, k] weights summing to 1: proportional to the score clipped at a small
    positive floor, equal where no score is positive (seisbind.neighbours.neighbour_weights, "similarity")."""
    w = scores.float().clamp(min=0.0)
    total = w.sum(1, keepdim=True)
    w = w.clamp(min=SIMILARITY_FLOOR)
    w = w / w.sum(1, keepdim=True)
    return torch.where(total > 0, w, torch.full_like(w, 1.0 / scores.shape[1]))


def weighted_mean(models: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
    """Similarity-weighted mean of the neighbours: models [B, k, 70, 70] m/s, scores [B, k] -> [B, 70, 70] m/s,
    clipped to 1500-4500 (what seisbind.start_models.topk_mean returns for one query)."""
    w = similarity_weights(scores)
    return (w[:, :, None, None] * models.float()).sum(1).clamp(V_MIN, V_MAX)


def _block(cin: int, cout: int, stride: int = 1) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, 3, stride, 1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True),
                         nn.Conv2d(cout, cout, 3, 1, 1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True))


class RefinerNet(nn.Module):
    """gathers [B, 5, 1000, 70] (raw), models [B, k, 70, 70] m/s, scores [B, k] -> velocity [B, 70, 70] m/s."""

    def __init__(self, cfg: RefinerConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.front = SeismicFrontEnd(ModelConfig(decimation=cfg.decimation, lowpass_hz=cfg.lowpass_hz,
                                                 lowpass_taps=cfg.lowpass_taps))
        c, w = cfg.gather_channels, cfg.width
        self.gather_net = nn.Sequential(
            nn.Conv2d(N_SHOTS, c, (7, 3), 1, (3, 1), bias=False), nn.BatchNorm2d(c), nn.ReLU(inplace=True),
            nn.Conv2d(c, c, (5, 3), 1, (2, 1), bias=False), nn.BatchNorm2d(c), nn.ReLU(inplace=True))
        self.time_to_depth = nn.Linear(self.front.decimated_length, NZ)
        m = cfg.migrated_channels
        self.shot_net = nn.Sequential(nn.Conv2d(1, m, (7, 3), 1, (3, 1), bias=False), nn.BatchNorm2d(m),
                                      nn.ReLU(inplace=True)) if m else None
        self.migration = DepthMigration(self.front.decimated_dt)
        self.enc1 = _block(2 * cfg.k + 1 + c + N_SHOTS * m, w)
        self.enc2 = _block(w, 2 * w, stride=2)
        self.enc3 = _block(2 * w, 4 * w, stride=2)
        self.dec2 = _block(6 * w, 2 * w)
        self.dec1 = _block(3 * w, w)
        self.head = nn.Conv2d(w, cfg.k + 1, 3, 1, 1)
        nn.init.zeros_(self.head.weight)
        nn.init.zeros_(self.head.bias)  # type: ignore[arg-type]

    def preprocess(self, gathers: torch.Tensor) -> torch.Tensor:
        """The seismic front end: raw [B, 5, 1000, 70] -> [B, 5, T', 70] in [-1, 1]."""
        return self.front.preprocess(gathers)

    def gather_features(self, pre: torch.Tensor) -> torch.Tensor:
        """Preprocessed gathers [B, 5, T', 70] -> [B, gather_channels, 70 depth, 70 lateral]."""
        g = self.gather_net(pre)
        return self.time_to_depth(g.transpose(2, 3)).transpose(2, 3)

    def migrated_features(self, pre: torch.Tensor, velocity: torch.Tensor) -> torch.Tensor:
        """Preprocessed gathers [B, 5, T', 70] and a velocity [B, 70, 70] m/s -> [B, 5 * migrated_channels, 70,
        70]: each shot's learned features brought to depth through that velocity (empty when the branch is off)."""
        b, s, t, r = pre.shape
        if self.shot_net is None:
            return pre.new_zeros((b, 0, NZ, NX))
        f = self.shot_net(pre.reshape(b * s, 1, t, r))
        return self.migration(f.reshape(b, s, -1, t, r), velocity)

    def forward_features(self, pre: torch.Tensor, models: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        """The refiner on preprocessed gathers (training runs the front end once over the data set)."""
        b, k = scores.shape
        mean = weighted_mean(models, scores)
        norm = (models.float() - V_MIN) * (2.0 / (V_MAX - V_MIN)) - 1.0
        mean_n = (mean[:, None] - V_MIN) * (2.0 / (V_MAX - V_MIN)) - 1.0
        planes = scores.float()[:, :, None, None].expand(b, k, NZ, NX)
        x = torch.cat([norm, mean_n, planes, self.gather_features(pre), self.migrated_features(pre, mean)], 1)
        e1 = self.enc1(x)
        e2 = self.enc2(e1)
        e3 = self.enc3(e2)
        d2 = self.dec2(torch.cat([F.interpolate(e3, size=(e2.shape[2], e2.shape[3]), mode="bilinear",
                                                align_corners=False), e2], 1))
        d1 = self.dec1(torch.cat([F.interpolate(d2, size=(NZ, NX), mode="bilinear", align_corners=False), e1], 1))
        out = self.head(d1)
        logits = out[:, :k] + torch.log(similarity_weights(scores))[:, :, None, None]
        mixed = (torch.softmax(logits, dim=1) * models.float()).sum(1)
        residual = torch.tanh(out[:, k]) * self.cfg.max_residual_mps
        return (mixed + residual).clamp(V_MIN, V_MAX)

    def forward(self, gathers: torch.Tensor, models: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        return self.forward_features(self.preprocess(gathers), models, scores)


def create_refiner(cfg: RefinerConfig | None = None, seed: int | None = None) -> RefinerNet:
    """Build the refiner network (optionally with a fixed initialisation seed)."""
    cfg = cfg or RefinerConfig()
    if seed is None:
        return RefinerNet(cfg)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return RefinerNet(cfg)
