"""Configuration of the learned refiner (docs/learned_refiner.md): ``RefinerConfig`` (the network) and
``RefinerTrainConfig`` (how it is trained), both stored in the refiner's checkpoint. Torch-free, so the command line
takes its defaults from here without importing torch."""

from __future__ import annotations

from dataclasses import MISSING, asdict, dataclass, field, fields
from typing import Any

from seisbind.acquisition import DT

from model.config import AugmentConfig


def refiner_augment() -> AugmentConfig:
    """The refiner's default perturbations: ``AugmentConfig``'s, every gather perturbed (``clean_p`` 0), as its
    results of record were trained."""
    return AugmentConfig(clean_p=0.0)


@dataclass(frozen=True)
class RefinerConfig:
    """The refiner network: a bounded residual on top of the similarity-weighted mean of the k neighbours, from a
    small U-Net over the neighbours, their mean, their scores and a gather feature map brought to the model grid."""

    k: int = 20
    """Retrieved neighbours per query (the graph's fixed k)."""
    decimation: int = 8
    """Time stride of the seismic front end (the encoder's, see model.encoders.SeismicFrontEnd)."""
    lowpass_hz: float = 60.0
    """Anti-alias cut-off of the front end, Hz."""
    lowpass_taps: int = 97
    """Length of the front end's low-pass filter (odd)."""
    gather_channels: int = 12
    """Channels of the gather branch (per-gather convolutions over time and receivers, then a learned
    time-to-depth map onto the 70 x 70 grid)."""
    migrated_channels: int = 4
    """Learned features per shot brought to depth through the neighbours' weighted mean (model.migration); 0 turns
    the migration branch off (refiners stored before it existed read as 0)."""
    width: int = 16
    """Base width of the U-Net (doubled at each of its two down-sampling levels)."""
    max_residual_mps: float = 1500.0
    """Bound of the residual added to the neighbours' mean, m/s (tanh-limited)."""

    def __post_init__(self) -> None:
        if self.k < 1 or self.decimation < 1 or self.lowpass_taps % 2 == 0 or self.gather_channels < 1 \
                or self.width < 1 or self.migrated_channels < 0 or not self.max_residual_mps > 0:
            raise ValueError(f"invalid RefinerConfig: {self}")
        if self.decimation > 1 and not 0 < self.lowpass_hz < 0.5 / DT:
            raise ValueError(f"lowpass_hz={self.lowpass_hz} must lie in (0, {0.5 / DT}) Hz")

    @classmethod
    def tiny(cls, k: int = 3) -> "RefinerConfig":
        """A small, fast network for tests."""
        return cls(k=k, gather_channels=4, migrated_channels=2, width=8)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "RefinerConfig":
        unknown = set(d) - {f.name for f in fields(cls)}
        if unknown:
            raise ValueError(f"unknown RefinerConfig keys {sorted(unknown)}")
        return cls(**{"migrated_channels": 0, **d})


@dataclass(frozen=True)
class RefinerTrainConfig:
    """How the refiner is trained (``seisbind train-refiner``)."""

    data: tuple[str, ...]
    """Paired OpenFWI folders (training pairs; a held-out share is split off for validation)."""
    encoders: str
    """Encoder bundle whose encoders retrieve the neighbours."""
    out: str
    """Run folder (config.json, checkpoint.pt, metrics.jsonl)."""
    model: RefinerConfig = field(default_factory=RefinerConfig)
    val_fraction: float = 0.1
    """Share of the pairs held out for validation (their models are in no bank)."""
    seed: int = 0
    epochs: int = 60
    """Maximum epochs (the time budget may stop it earlier)."""
    batch_size: int = 32
    lr: float = 2e-3
    weight_decay: float = 1e-4
    time_budget_min: float | None = None
    """Stop after this many minutes of training (the learning rate is annealed over the budget)."""
    threads: int | None = None
    """torch and ONNX Runtime intra-op threads (default: the usable cores)."""
    mirror_p: float = 0.5
    """Probability of the left-right mirror augmentation per pair."""
    augment: AugmentConfig | None = field(default_factory=refiner_augment)
    """Field-like perturbations of the training gathers, drawn afresh for every batch (``model.augment``, as the
    encoders are trained); None trains on the clean simulations (runs stored before it existed read as None)."""

    def __post_init__(self) -> None:
        if not self.data:
            raise ValueError("no data folder given (--data DIR)")
        if not 0 < self.val_fraction < 1:
            raise ValueError(f"val_fraction={self.val_fraction}: expected 0 < f < 1 (the refiner is validated)")
        if self.epochs < 1 or self.batch_size < 1 or not self.lr > 0 or not 0 <= self.mirror_p <= 1:
            raise ValueError(f"invalid RefinerTrainConfig: epochs={self.epochs}, batch_size={self.batch_size}, "
                             f"lr={self.lr}, mirror_p={self.mirror_p}")
        if self.time_budget_min is not None and not self.time_budget_min > 0:
            raise ValueError(f"time_budget_min={self.time_budget_min}: expected > 0")

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["data"] = list(self.data)
        d["augment"] = None if self.augment is None else self.augment.to_dict()
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "RefinerTrainConfig":
        unknown = set(d) - {f.name for f in fields(cls)}
        if unknown:
            raise ValueError(f"unknown RefinerTrainConfig keys {sorted(unknown)}")
        d = dict(d)
        d["data"] = tuple(d["data"])
        if isinstance(d.get("model"), dict):
            d["model"] = RefinerConfig.from_dict(d["model"])
        aug = d.get("augment")  # stored before augmentation existed: none
        d["augment"] = None if aug is None else AugmentConfig.from_dict(aug)
        return cls(**d)

    @classmethod
    def default(cls, name: str) -> Any:
        """The default of one field (for the command line)."""
        f = cls.__dataclass_fields__[name]
        if f.default is not MISSING:
            return f.default
        raise KeyError(f"refiner training setting {name!r} has no default")
