"""A training run's folder: ``config.json`` (the TrainConfig), ``checkpoint.pt`` (the latest state, written
atomically) and ``metrics.jsonl`` (one line per epoch), and the typed progress state a checkpoint carries."""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import torch

from seisbind.files import atomic_write, write_text_atomic

from model.config import RunError, TrainConfig
from model.encoders import SeisBindModel, create_model

CHECKPOINT = "checkpoint.pt"
METRICS = "metrics.jsonl"


@dataclass
class TrainState:
    """Where a run is: epochs and steps done, training time summed over sessions, the per-epoch metrics, and the
    running loss of the current epoch. Stored at the top level of the checkpoint."""

    epoch: int = 0
    step_in_epoch: int = 0
    global_step: int = 0
    elapsed_s: float = 0.0
    history: list[dict[str, Any]] = field(default_factory=list)
    finished: bool = False
    loss_sum: float = 0.0
    loss_count: int = 0

    @classmethod
    def from_checkpoint(cls, ckpt: dict[str, Any] | None) -> "TrainState":
        """The state stored in ``ckpt`` (fields it lacks keep their defaults); a fresh state for None."""
        if ckpt is None:
            return cls()
        return cls(**{f.name: ckpt[f.name] for f in fields(cls) if f.name in ckpt})

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def save_checkpoint(path: Path, doc: dict[str, Any]) -> None:
    """torch.save of a checkpoint document, written atomically."""
    with atomic_write(path, "wb") as f:
        torch.save(doc, f)


def load_checkpoint(run: str | os.PathLike[str]) -> dict[str, Any]:
    """The latest checkpoint of a run folder (CPU tensors). Raises RunError naming the file."""
    path = Path(run) / CHECKPOINT
    if not path.is_file():
        raise RunError(f"{path}: no checkpoint (is {run} a training run folder?)")
    try:
        return torch.load(path, map_location="cpu", weights_only=False)
    except Exception as e:  # noqa: BLE001 - any unpickling failure means a corrupt file
        raise RunError(f"{path}: unreadable checkpoint: {e}") from e


def model_from_checkpoint(ckpt: dict[str, Any]) -> SeisBindModel:
    """Rebuild the trained model (eval mode, CPU) from a checkpoint."""
    cfg = TrainConfig.from_dict(ckpt["config"])
    model = create_model(cfg.model)
    model.load_state_dict(ckpt["model"])
    return model.eval()


def write_metrics(out: Path, history: list[dict[str, Any]]) -> None:
    """Rewrite ``metrics.jsonl`` from the run's history, atomically."""
    write_text_atomic(out / METRICS, "".join(json.dumps(row) + "\n" for row in history))
