"""The three SeisBind encoders and the tri-modal model, built from one dataclass config by :func:`create_model`.

Every encoder takes physical units and returns an L2-normalised embedding [batch, embed_dim] float32; the
normalisation of docs/data.md is part of each module (and so of the exported ONNX graphs):

* seismic: gathers [batch, 5, 1000, 70] float32 (OpenFWI amplitudes) -> fixed anti-aliased low-pass and time
  decimation (the 15 Hz Ricker carries no energy above ~50 Hz) -> sign(x)·log1p(|x|) -> min-max to [-1, 1] with
  the log-transformed widest family extremes -> a per-shot trunk shared by the five shots (each shot also sees
  its receivers' |offset| from its source, which is unchanged by mirroring) -> a fusion network over the shots
  stacked in acquisition order -> projection;
* velocity: models [batch, 1, 70, 70] m/s -> min-max of 1500-4500 m/s to [-1, 1] -> ResNet-18 (1-channel stem)
  -> projection;
* physics: descriptors [batch, 8] in DESCRIPTOR_UNITS -> standardised with the training statistics (buffers)
  -> MLP.

The seismic front end (:meth:`SeismicEncoder.preprocess`) is deterministic and parameter-free, so training can
run it once over the whole data set and feed :meth:`SeismicEncoder.forward_features` directly.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from seisbind.acquisition import (
    DT,
    FAMILY_DATA_RANGE,
    N_RECEIVERS,
    N_SHOTS,
    NT,
    PEAK_FREQUENCY,
    SOURCE_X,
    V_MAX,
    V_MIN,
    VELOCITY_SHAPE,
)
from seisbind.descriptors import DESCRIPTOR_NAMES

from model.config import ModelConfig

DATA_MIN = min(lo for lo, _ in FAMILY_DATA_RANGE.values())
"""Widest published family data extremes (OpenFWI amplitude units), used for min-max after the log transform."""
DATA_MAX = max(hi for _, hi in FAMILY_DATA_RANGE.values())
N_DESCRIPTORS = len(DESCRIPTOR_NAMES)


def lowpass_filter(taps: int, cutoff_hz: float, dt: float = DT) -> np.ndarray:
    """Windowed-sinc (Blackman) low-pass FIR [taps] float64 with unit DC gain."""
    n = np.arange(taps) - (taps - 1) / 2
    fc = cutoff_hz * dt  # cycles per sample
    h = 2 * fc * np.sinc(2 * fc * n) * np.blackman(taps)
    return h / h.sum()


def log_minmax(x: torch.Tensor, lo: float, hi: float) -> torch.Tensor:
    """sign(x)·log1p(|x|) then min-max of [log-transformed lo, hi] to [-1, 1]."""
    llo = -math.log1p(-lo) if lo < 0 else math.log1p(lo)
    lhi = math.log1p(hi)
    y = torch.sign(x) * torch.log1p(torch.abs(x))
    return (y - llo) * (2.0 / (lhi - llo)) - 1.0


def _conv_bn(cin: int, cout: int, k: tuple[int, int] | int, s: tuple[int, int] | int, p: tuple[int, int] | int
             ) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, k, s, p, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True))


class BasicBlock(nn.Module):
    """ResNet basic block: two 3x3 convolutions with a residual connection."""

    def __init__(self, cin: int, cout: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.down = None
        if stride != 1 or cin != cout:
            self.down = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.relu(self.bn1(self.conv1(x)), inplace=True)
        y = self.bn2(self.conv2(y))
        return F.relu(y + (x if self.down is None else self.down(x)), inplace=True)


def _head(channels: int, spatial: tuple[int, int], embed_dim: int, kind: str) -> nn.Module:
    if kind == "avg":
        return nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(channels, embed_dim))
    return nn.Sequential(nn.Flatten(), nn.Linear(channels * spatial[0] * spatial[1], embed_dim))


def _out_size(n: int, k: int, s: int, p: int) -> int:
    return (n + 2 * p - k) // s + 1


class SeismicFrontEnd(nn.Module):
    """The seismic encoder's fixed front end on its own (also used by the learned refiner): :meth:`preprocess` of
    raw gathers with ``cfg``'s decimation, low-pass and log-normalisation; the ``lowpass`` buffer only."""

    lowpass: torch.Tensor

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.cfg = cfg
        h = lowpass_filter(cfg.lowpass_taps, cfg.lowpass_hz) if cfg.decimation > 1 else np.ones(1)
        self.register_buffer("lowpass", torch.tensor(h, dtype=torch.float32).view(1, 1, -1, 1))

    @property
    def decimated_length(self) -> int:
        k, s = self.cfg.lowpass_taps if self.cfg.decimation > 1 else 1, self.cfg.decimation
        return _out_size(NT, k, s, k // 2)

    @property
    def decimated_dt(self) -> float:
        """Sample interval of the decimated gathers, s."""
        return DT * self.cfg.decimation

    @property
    def white_noise_gain(self) -> float:
        """Power gain of the low-pass on white noise (sum of the squared taps): white noise of power p at the raw
        rate has power p * gain after :meth:`decimate`, while the signal (all below the cut-off) keeps its power."""
        return float(self.lowpass.double().pow(2).sum())

    def decimate(self, gathers: torch.Tensor) -> torch.Tensor:
        """The linear part of the front end: [batch, 5, 1000, 70] raw -> [batch, 5, T', 70] low-passed and
        decimated, still in amplitude units (float32)."""
        b = gathers.shape[0]
        x = gathers.reshape(b * N_SHOTS, 1, NT, N_RECEIVERS).float()
        if self.cfg.decimation > 1:
            k = self.lowpass.shape[2]
            x = F.conv2d(x, self.lowpass, stride=(self.cfg.decimation, 1), padding=(k // 2, 0))
        return x.reshape(b, N_SHOTS, x.shape[2], N_RECEIVERS)

    @staticmethod
    def normalise(decimated: torch.Tensor) -> torch.Tensor:
        """The pointwise part of the front end: decimated gathers -> log-normalised to [-1, 1]."""
        return log_minmax(decimated.float(), DATA_MIN, DATA_MAX)

    def preprocess(self, gathers: torch.Tensor) -> torch.Tensor:
        """Fixed front end: [batch, 5, 1000, 70] raw -> [batch, 5, T', 70] low-passed, decimated, log-normalised
        to [-1, 1] (float32). Deterministic, no parameters. Being linear up to the log, its :meth:`decimate` part
        commutes with amplitude scaling, muting, filtering and time shifts, which lets training augment decimated
        gathers (``model.augment``)."""
        return self.normalise(self.decimate(gathers))

    def forward(self, gathers: torch.Tensor) -> torch.Tensor:
        return self.preprocess(gathers)


class SeismicEncoder(SeismicFrontEnd):
    """Shot gathers [batch, 5, 1000, 70] float32 (OpenFWI amplitudes) -> embedding [batch, embed_dim], L2-normalised."""

    offset: torch.Tensor

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__(cfg)
        offset = np.abs(np.arange(N_RECEIVERS)[None, :] - np.array(SOURCE_X)[:, None]) / (N_RECEIVERS - 1)
        self.register_buffer("offset",
                             torch.tensor(offset * 2 - 1, dtype=torch.float32).view(1, N_SHOTS, 1, N_RECEIVERS))
        c1, c2, c3 = cfg.seis_trunk
        # per-shot trunk: (time, receiver) image with 2 channels (amplitude, |offset|)
        self.trunk = nn.Sequential(
            _conv_bn(2, c1, (7, 3), (2, 1), (3, 1)),
            _conv_bn(c1, c2, (3, 3), (2, 2), (1, 1)),
            _conv_bn(c2, c3, (3, 3), (2, 1), (1, 1)),
        )
        t = self.decimated_length
        t, x = _out_size(t, 7, 2, 3), N_RECEIVERS
        t, x = _out_size(t, 3, 2, 1), _out_size(x, 3, 2, 1)
        t = _out_size(t, 3, 2, 1)
        w = cfg.seis_width
        self.fuse = nn.Sequential(
            _conv_bn(N_SHOTS * c3, w, 1, 1, 0),
            BasicBlock(w, w),
            BasicBlock(w, w, stride=2),
            BasicBlock(w, w * 2, stride=2),
        )
        t, x = _out_size(_out_size(t, 3, 2, 1), 3, 2, 1), _out_size(_out_size(x, 3, 2, 1), 3, 2, 1)
        self.head = _head(w * 2, (t, x), cfg.embed_dim, cfg.head)

    def forward_features(self, pre: torch.Tensor) -> torch.Tensor:
        """Preprocessed gathers [batch, 5, T', 70] -> embedding [batch, embed_dim], L2-normalised."""
        b, s, t, r = pre.shape
        off = self.offset.to(pre.dtype).expand(b, s, t, r)
        x = torch.stack([pre, off], dim=2).reshape(b * s, 2, t, r)
        x = self.trunk(x)
        x = x.reshape(b, s * x.shape[1], x.shape[2], x.shape[3])
        x = self.fuse(x)
        return F.normalize(self.head(x).float(), dim=-1)

    def forward(self, gathers: torch.Tensor) -> torch.Tensor:
        return self.forward_features(self.preprocess(gathers))


class VelocityEncoder(nn.Module):
    """Velocity models [batch, 1, 70, 70] m/s -> embedding [batch, embed_dim], L2-normalised (ResNet-18)."""

    def __init__(self, cfg: ModelConfig, in_chans: int = 1) -> None:
        super().__init__()
        w = cfg.vel_width
        self.stem = nn.Sequential(
            nn.Conv2d(in_chans, w, 7, 2, 3, bias=False), nn.BatchNorm2d(w), nn.ReLU(inplace=True),
            nn.MaxPool2d(3, 2, 1),
        )
        widths = [w, w * 2, w * 4, w * 8]
        layers, cin = [], w
        for i, c in enumerate(widths):
            layers += [BasicBlock(cin, c, stride=1 if i == 0 else 2), BasicBlock(c, c)]
            cin = c
        self.layers = nn.Sequential(*layers)
        n = _out_size(_out_size(VELOCITY_SHAPE[1], 7, 2, 3), 3, 2, 1)
        for _ in range(3):
            n = _out_size(n, 3, 2, 1)
        self.head = _head(widths[-1], (n, n), cfg.embed_dim, cfg.head)

    @staticmethod
    def normalise(velocity: torch.Tensor) -> torch.Tensor:
        """m/s -> [-1, 1] over 1500-4500 m/s."""
        return (velocity.float() - V_MIN) * (2.0 / (V_MAX - V_MIN)) - 1.0

    def forward(self, velocity: torch.Tensor) -> torch.Tensor:
        x = self.layers(self.stem(self.normalise(velocity)))
        return F.normalize(self.head(x).float(), dim=-1)


class PhysicsEncoder(nn.Module):
    """Descriptors [batch, 8] (DESCRIPTOR_UNITS) -> embedding [batch, embed_dim], L2-normalised.

    Standardisation statistics are buffers, set from the training set with :meth:`set_stats`.
    """

    mean: torch.Tensor
    std: torch.Tensor

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.register_buffer("mean", torch.zeros(N_DESCRIPTORS))
        self.register_buffer("std", torch.ones(N_DESCRIPTORS))
        dims = [N_DESCRIPTORS] + [cfg.phys_hidden] * (cfg.phys_layers - 1)
        layers: list[nn.Module] = []
        for a, b in zip(dims[:-1], dims[1:]):
            layers += [nn.Linear(a, b), nn.LayerNorm(b), nn.GELU()]
        layers.append(nn.Linear(dims[-1], cfg.embed_dim))
        self.mlp = nn.Sequential(*layers)

    def set_stats(self, mean: np.ndarray | torch.Tensor, std: np.ndarray | torch.Tensor) -> None:
        """Set the standardisation statistics ([8] each, std > 0)."""
        std_t = torch.as_tensor(np.asarray(std, np.float64), dtype=torch.float32)
        if std_t.shape != (N_DESCRIPTORS,) or not bool((std_t > 0).all()):
            raise ValueError(f"descriptor std must be [{N_DESCRIPTORS}] and positive, got {std_t.tolist()}")
        self.mean.copy_(torch.as_tensor(np.asarray(mean, np.float64), dtype=torch.float32))
        self.std.copy_(std_t)

    def forward(self, descriptors: torch.Tensor) -> torch.Tensor:
        x = (descriptors.float() - self.mean) / self.std
        return F.normalize(self.mlp(x).float(), dim=-1)


class SeisBindModel(nn.Module):
    """The tri-modal model: ``seismic``, ``velocity`` and ``physics`` encoders and the learnable logit scale."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.seismic = SeismicEncoder(cfg)
        self.velocity = VelocityEncoder(cfg)
        self.physics = PhysicsEncoder(cfg)
        self.logit_scale = nn.Parameter(torch.tensor(math.log(1 / 0.07)))
        """log of the inverse temperature (CLIP): initial 1/0.07, clamped at 100 when used."""
        if cfg.vp_scale:
            self.logit_scale_vp = nn.Parameter(torch.tensor(math.log(1 / 0.07)))
            """The velocity-physics pair's own logit scale (ModelConfig.vp_scale)."""

    def scale(self, max_scale: float = 100.0) -> torch.Tensor:
        """exp(logit_scale), clamped at ``max_scale`` (the seismic-velocity scale)."""
        return self.logit_scale.exp().clamp(max=max_scale)

    def scale_vp(self, max_scale: float = 100.0) -> torch.Tensor:
        """The velocity-physics scale: its own if ModelConfig.vp_scale, else the shared one."""
        if self.cfg.vp_scale:
            return self.logit_scale_vp.exp().clamp(max=max_scale)
        return self.scale(max_scale)

    def forward(self, pre_gathers: torch.Tensor, velocity: torch.Tensor, descriptors: torch.Tensor | None
                ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None, torch.Tensor]:
        """Training forward on preprocessed gathers: (seismic, velocity, physics embeddings, logit scales [2]:
        seismic-velocity, velocity-physics). The physics encoder is skipped (None) when ``descriptors`` is None,
        e.g. when its loss weight is 0."""
        phys = None if descriptors is None else self.physics(descriptors)
        scales = torch.stack([self.scale(), self.scale_vp()])
        return self.seismic.forward_features(pre_gathers), self.velocity(velocity), phys, scales


def create_model(cfg: ModelConfig | None = None, seed: int | None = None) -> SeisBindModel:
    """Build the tri-modal model (optionally with a fixed initialisation seed)."""
    cfg = cfg or ModelConfig()
    if seed is not None:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            return SeisBindModel(cfg)
    return SeisBindModel(cfg)


def filter_response(cfg: ModelConfig) -> dict[str, float]:
    """Gain of the anti-alias filter at a few frequencies (for the manifest and checks)."""
    h = lowpass_filter(cfg.lowpass_taps, cfg.lowpass_hz)
    n = np.arange(len(h))
    out = {}
    for f in (PEAK_FREQUENCY, 30.0, 45.0, 0.5 / (DT * cfg.decimation)):
        out[f"{f:g}Hz"] = float(abs(np.sum(h * np.exp(-2j * np.pi * f * DT * n))))
    return out
