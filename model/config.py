"""Model and training configuration, defined once and validated here (torch-free, so the command line takes its
defaults and choices from it without importing torch): ``ModelConfig`` (architecture) and ``TrainConfig`` (how to
train), both stored in every checkpoint."""

from __future__ import annotations

from dataclasses import MISSING, asdict, dataclass, field, fields
from typing import Any, Literal, get_args

from seisbind.acquisition import DT

Head = Literal["avg", "flatten"]

NARROW: dict[str, Any] = {"seis_trunk": (8, 16, 32), "seis_width": 64, "vel_width": 16, "phys_hidden": 128}
"""The narrow architecture (``ModelConfig.narrow()``): a third of the seismic channels and a quarter of the velocity
ResNet's width. Its seismic encoder costs 6.7 ms per gather on one core of this machine's AMD EPYC against 23.6 ms
for the default widths (benchmarks/results/encode.json), and a training step about a sixth."""
MEDIUM: dict[str, Any] = {"seis_trunk": (16, 32, 48), "seis_width": 96, "vel_width": 32, "phys_hidden": 256}
"""The medium architecture (``ModelConfig.named("medium")``): the default seismic trunk with half the shot-fusion
width and half the velocity ResNet's width: about 2.4x the narrow seismic encoder's multiply-adds (a third of the
default's), and a training step about twice the narrow's on this machine's cores (1.25 s against 0.61 s for a batch
of 128 in bf16, model alone). Trained 85 minutes it did not beat the narrow
(retrieval_openfwi_vel_medium_85min.json)."""
ARCHITECTURES: dict[str, dict[str, Any]] = {"default": {}, "medium": MEDIUM, "narrow": NARROW}
"""Named architectures: the fields each sets on top of ``ModelConfig()``'s defaults."""


@dataclass(frozen=True)
class ModelConfig:
    """Architecture of the tri-modal model. Defaults are the benchmark model; ``tiny()`` is for tests."""

    embed_dim: int = 256
    """Width of the shared embedding space."""
    decimation: int = 8
    """Time stride of the fixed low-pass front end (1 ms -> decimation ms; 8 keeps everything below 62.5 Hz)."""
    lowpass_hz: float = 60.0
    """Cut-off (-6 dB) of the anti-alias filter, Hz. With 97 taps the gain is 0.9998 at 30 Hz, 0.986 at 40 Hz and
    < 0.002 above 85 Hz; simulated gathers hold 1e-5 of their energy above 40 Hz and 1e-8 above 50 Hz."""
    lowpass_taps: int = 97
    """Length of the windowed-sinc (Blackman) anti-alias filter (odd)."""
    seis_trunk: tuple[int, int, int] = (16, 32, 48)
    """Channels of the per-shot trunk's three strided convolutions (shared by the five shots)."""
    seis_width: int = 192
    """Channels of the shot-fusion network."""
    vel_width: int = 64
    """Base width of the velocity ResNet-18 (64 is the standard ResNet-18)."""
    phys_hidden: int = 256
    """Hidden width of the physics MLP."""
    phys_layers: int = 3
    """Linear layers of the physics MLP (>= 2)."""
    head: Literal["avg", "flatten"] = "flatten"
    """How the last feature map becomes a vector: global average, or flatten (keeps where structures are)."""
    vp_scale: bool = True
    """Give the velocity-physics InfoNCE its own learnable logit scale (else both pairs share one). Configs saved
    before this option existed read as False."""

    def __post_init__(self) -> None:
        if self.embed_dim <= 0 or self.decimation < 1 or self.lowpass_taps % 2 == 0 or self.phys_layers < 2:
            raise ValueError(f"invalid ModelConfig: {self}")
        if self.decimation > 1 and not 0 < self.lowpass_hz < 0.5 / DT:
            raise ValueError(f"lowpass_hz={self.lowpass_hz} must lie in (0, {0.5 / DT}) Hz")
        if self.head not in ("avg", "flatten"):
            raise ValueError(f"head={self.head!r}: expected 'avg' or 'flatten'")

    @classmethod
    def narrow(cls, **kw: Any) -> "ModelConfig":
        """The narrow architecture (NARROW), other fields as given or default."""
        return cls.named("narrow", **kw)

    @classmethod
    def named(cls, arch: str, **kw: Any) -> "ModelConfig":
        """The architecture ``arch`` of ARCHITECTURES, other fields as given or default."""
        if arch not in ARCHITECTURES:
            raise ValueError(f"architecture {arch!r}: expected one of {', '.join(ARCHITECTURES)}")
        return cls(**{**ARCHITECTURES[arch], **kw})

    @classmethod
    def tiny(cls) -> "ModelConfig":
        """A small, fast model for tests and untrained bundles."""
        return cls(embed_dim=256, seis_trunk=(4, 8, 8), seis_width=16, vel_width=8, phys_hidden=32)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["seis_trunk"] = list(self.seis_trunk)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any], stored: bool = True) -> "ModelConfig":
        """A config from a dict; ``stored`` (a checkpoint's config) reads a missing ``vp_scale`` as the False of
        configs saved before the option existed, while a user's file (``stored=False``) gets today's default."""
        names = {f.name for f in fields(cls)}
        unknown = set(d) - names
        if unknown:
            raise ValueError(f"unknown ModelConfig keys {sorted(unknown)}")
        d = dict(d)
        if stored:
            d.setdefault("vp_scale", False)  # saved before the option existed: one shared scale
        if "seis_trunk" in d:
            d["seis_trunk"] = tuple(d["seis_trunk"])
        return cls(**d)


class RunError(ValueError):
    """A run folder that cannot be used (different settings, unreadable checkpoint)."""


Device = Literal["cpu", "cuda"]
Switch = Literal["auto", "on", "off"]
DEVICES: tuple[str, ...] = get_args(Device)
SWITCHES: tuple[str, ...] = get_args(Switch)

RESUME_KEYS = ("data", "seed", "batch_size", "lr", "weight_decay", "warmup_fraction", "lambda1", "lambda2",
               "soft_tau_mps", "scale_lr_mult", "val_fraction", "mirror_p", "neighbour_group", "augment", "model")
"""Settings a resumed run must share with the checkpoint (the others, e.g. epochs or device, may change)."""


@dataclass(frozen=True)
class TrainConfig:
    """How to train the tri-modal model (``seisbind train``)."""

    data: tuple[str, ...]
    """Paired OpenFWI folders (absolute paths)."""
    out: str
    """Run folder: checkpoint.pt, metrics.jsonl, config.json."""
    epochs: int = 40
    """Upper bound on epochs; with a time budget, training may stop earlier."""
    batch_size: int = 128
    """Global batch (split evenly across torchrun ranks); every other pair of the batch is a negative."""
    seed: int = 0
    device: Device = "cpu"
    time_budget_min: float | None = None
    """Wall-clock budget of the whole training (data loading included, summed over resumed sessions); the
    learning-rate schedule follows whichever of steps or time runs out first."""
    lr: float = 1e-3
    weight_decay: float = 0.05
    """AdamW weight decay on weights (not on biases, norms or the logit scale)."""
    warmup_fraction: float = 0.03
    """Linear warm-up over this fraction of the schedule, then cosine decay to zero."""
    lambda1: float = 1.0
    """Weight of InfoNCE(seismic, velocity)."""
    lambda2: float = 0.1
    """Weight of InfoNCE(velocity, physics)."""
    soft_tau_mps: float = 50.0
    """> 0: soft seismic-velocity positives, softmax(-MAE/tau) over the batch's models (m/s); 0: one-hot (runs
    stored before this setting existed). At 12 minutes of the openfwi-vel benchmark, 50 against one-hot: seismic->
    velocity R@1 0.80 vs 0.63, velocity->physics R@1 0.59 vs 0.27, P2 error 2.87 vs 3.97 %, top-1 MAE 222 vs 253
    m/s (about 210 m/s separates a model from the nearest other one in a batch of 128)."""
    scale_lr_mult: float = 1.0
    """Learning-rate multiplier of the logit scale(s) (under Adam the log-scale moves at most ~lr per step). 10 made
    the temperature fall fast and validation R@1 lag far behind after 4 epochs of the openfwi-vel run, so 1."""
    val_fraction: float = 0.02
    """Pairs held out for the per-epoch validation R@1."""
    mirror_p: float = 0.5
    """Probability of mirroring a pair (gathers and model together)."""
    neighbour_group: int = 4
    """> 1: lay out each epoch in groups of this many pairs whose models are near neighbours, so every batch holds
    hard negatives (``model.neighbour_batches``); 1: batches drawn at random. With 4 (and channels_last) the 40-minute
    openfwi-vel run reached P1 R@1 0.942 (P1-large 0.804) against 0.910 (0.754) with random batches."""
    augment: AugmentConfig | None = field(default_factory=lambda: AugmentConfig())
    """Field-like perturbations of the training gathers, drawn afresh for every batch (``model.augment``); None
    trains on the clean simulations (runs stored before augmentation existed read as None)."""
    bn_batches: int = 8
    """Before every validation, recompute the BatchNorm statistics from this many training batches with the
    current weights ("precise BN"; 0: keep the running averages). The running averages mix ~10 steps of fast-moving
    weights; with them validation R@1 swung between 0.08 and 0.9 from epoch to epoch while the loss fell smoothly."""
    amp: Switch = "auto"
    """bf16 autocast (CPU with AVX512-BF16/AMX, CUDA); auto = on where the hardware supports it."""
    channels_last: Switch = "auto"
    """channels_last memory format (auto: on for the CPU, where it makes a step of the narrow model 1.35x faster
    in fp32 on this 2-core AMD EPYC, 3.1 -> 2.3 s per batch of 128, and more with bf16)."""
    threads: int | None = None
    """torch intra-op threads (default: torch's choice)."""
    checkpoint_every_min: float = 10.0
    """Also checkpoint mid-epoch this often."""
    max_steps: int | None = None
    """Stop (and checkpoint) after this many optimiser steps in this session, as if interrupted (tests)."""
    progress: bool = True
    preprocess_cache: str | None = None
    """Folder caching the preprocessed gathers of every data file (reused by resumed runs and other arms)."""
    model: ModelConfig = field(default_factory=ModelConfig)
    init_from: str | None = None
    """Run folder whose latest weights start a new run (fine-tuning; same architecture); unused when resuming."""

    def __post_init__(self) -> None:
        checks = [
            (len(self.data) > 0, "at least one --data folder"),
            (self.epochs >= 1, f"epochs >= 1 (got {self.epochs})"),
            (self.batch_size >= 2, f"batch size >= 2 (got {self.batch_size})"),
            (self.time_budget_min is None or self.time_budget_min > 0, f"time budget > 0 (got {self.time_budget_min})"),
            (self.lr > 0, f"lr > 0 (got {self.lr})"),
            (self.soft_tau_mps >= 0, f"soft tau >= 0 m/s (got {self.soft_tau_mps})"),
            (self.lambda1 >= 0 and self.lambda2 >= 0 and self.lambda1 + self.lambda2 > 0,
             f"lambda1, lambda2 >= 0 and not both 0 (got {self.lambda1}, {self.lambda2})"),
            (0 <= self.val_fraction < 1, f"0 <= val fraction < 1 (got {self.val_fraction})"),
            (0 <= self.mirror_p <= 1, f"0 <= mirror p <= 1 (got {self.mirror_p})"),
            (self.bn_batches >= 0, f"bn batches >= 0 (got {self.bn_batches})"),
            (self.neighbour_group >= 1, f"neighbour group >= 1 (got {self.neighbour_group})"),
            (self.device in DEVICES, f"device one of {', '.join(DEVICES)} (got {self.device!r})"),
            (self.amp in SWITCHES, f"amp one of {', '.join(SWITCHES)} (got {self.amp!r})"),
            (self.channels_last in SWITCHES,
             f"channels_last one of {', '.join(SWITCHES)} (got {self.channels_last!r})"),
        ]
        for ok, want in checks:
            if not ok:
                raise ValueError(f"invalid training setting: need {want}")

    @staticmethod
    def default(name: str) -> Any:
        """The default of setting ``name`` (the command line takes its defaults from here)."""
        f = TrainConfig.__dataclass_fields__[name]
        if f.default is not MISSING:
            return f.default
        raise KeyError(f"training setting {name!r} has no default")

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["data"] = list(self.data)
        d["model"] = self.model.to_dict()
        d["augment"] = None if self.augment is None else self.augment.to_dict()
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "TrainConfig":
        names = {f.name for f in fields(cls)}
        d = {k: v for k, v in d.items() if k in names}
        d.setdefault("soft_tau_mps", 0.0)  # stored before soft targets existed: one-hot
        d.setdefault("bn_batches", 0)
        d.setdefault("neighbour_group", 1)  # stored before grouped batches existed: random batches
        aug = d.get("augment")  # stored before augmentation existed: none
        d["augment"] = None if aug is None else AugmentConfig.from_dict(aug)
        d["data"] = tuple(d["data"])
        d["model"] = ModelConfig.from_dict(d["model"])
        return cls(**d)

    def resume_mismatch(self, other: dict[str, Any]) -> list[str]:
        """Names of RESUME_KEYS whose values differ from the stored config ``other``."""
        mine, theirs = self.to_dict(), TrainConfig.from_dict(other).to_dict()  # settings added since: defaults
        return [k for k in RESUME_KEYS if mine.get(k) != theirs.get(k)]


@dataclass(frozen=True)
class AugmentConfig:
    """Field-like perturbations of raw shot gathers, applied on the fly by ``model.augment.apply`` (not used by
    training unless asked for). Each perturbation hits a gather with its probability ``*_p``; its strength is drawn
    per gather (per shot for time shifts and muting) uniformly from its range."""

    wavelet_p: float = 0.5
    peak_hz: tuple[float, float] = (10.0, 20.0)
    """Source peak frequency the gather is converted to (from the simulator's 15 Hz Ricker)."""
    shift_p: float = 0.3
    max_shift_ms: int = 4
    """Each shot of a hit gather moves by a whole number of samples (1 ms) in -max..max, zero-padded."""
    scale_p: float = 0.5
    scale: tuple[float, float] = (0.5, 2.0)
    """Amplitude factor, log-uniform in this range."""
    polarity_p: float = 0.1
    """Probability of flipping the sign of a gather."""
    noise_p: float = 0.5
    snr_db: tuple[float, float] = (-5.0, 30.0)
    """Additive noise: SNR = 10 log10(mean(x^2) / mean(n^2)) over the gather (all its shots), in dB. Reaches 5 dB
    past the noisiest level the benchmarks test (0 dB): with (0, 30) and muting up to 20 traces, the same 80-minute
    recipe lost 0.136 of R@1 at 0 dB and 0.028 with 20 muted traces; with these ranges 0.083 and 0.017
    (retrieval_ood.json, docs/evaluation.md)."""
    band_p: float = 0.5
    """Of the noisy gathers, the fraction whose noise is band-limited to ``band_hz`` (the others: white)."""
    band_hz: tuple[float, float] = (5.0, 30.0)
    mute_p: float = 0.3
    mute_traces: tuple[int, int] = (1, 25)
    """Dead or muted traces per shot of a hit gather (zeroed; the count is drawn per gather, the traces per shot)."""
    clean_p: float = 0.3
    """Probability that a gather is left as simulated (every perturbation above off). With the probabilities above
    alone about 11 % are, apart from their amplitude scale (5.5 % with it), and the clean queries of the openfwi-vel
    benchmark are rare in training: the 85-minute recipe went from P1-large 0.9865 to 0.991 with 0.3 (and 19 % more
    steps in the same minutes: the perturbations cost time), docs/geology.md. A stored setting without it predates
    it and reads as 0."""

    def __post_init__(self) -> None:
        probs = {k: getattr(self, k) for k in ("wavelet_p", "shift_p", "scale_p", "polarity_p", "noise_p", "band_p",
                                              "mute_p", "clean_p")}
        checks = [(0 <= p <= 1, f"0 <= {k} <= 1 (got {p})") for k, p in probs.items()] + [
            (0 < self.peak_hz[0] <= self.peak_hz[1], f"0 < peak_hz low <= high (got {self.peak_hz})"),
            (self.max_shift_ms >= 0, f"max_shift_ms >= 0 (got {self.max_shift_ms})"),
            (0 < self.scale[0] <= self.scale[1], f"0 < scale low <= high (got {self.scale})"),
            (self.snr_db[0] <= self.snr_db[1], f"snr_db low <= high (got {self.snr_db})"),
            (0 <= self.band_hz[0] < self.band_hz[1], f"0 <= band_hz low < high (got {self.band_hz})"),
            (0 <= self.mute_traces[0] <= self.mute_traces[1], f"0 <= mute_traces low <= high (got {self.mute_traces})"),
        ]
        for ok, want in checks:
            if not ok:
                raise ValueError(f"invalid augmentation setting: need {want}")

    def to_dict(self) -> dict[str, Any]:
        return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "AugmentConfig":
        names = {f.name for f in fields(cls)}
        unknown = set(d) - names
        if unknown:
            raise ValueError(f"unknown augmentation settings {sorted(unknown)}")
        values: dict[str, Any] = {"clean_p": 0.0, **{k: tuple(v) if isinstance(v, list) else v for k, v in d.items()}}
        return cls(**values)
