"""Small learnable paired datasets for the model tests (no simulator: gathers are a cheap function of the model)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from seisbind.acquisition import GATHER_SHAPE, N_RECEIVERS, NT
from seisbind.openfwi import write_chunk


def layered_models(n: int, seed: int) -> np.ndarray:
    """[n, 1, 70, 70] float32 m/s: random increasing layered profiles with a random lateral tilt."""
    rng = np.random.default_rng(seed)
    depth = np.sort(rng.uniform(1500, 4500, (n, 1, 70, 1)), axis=2)
    tilt = rng.uniform(-4, 4, (n, 1, 1, 1)) * (np.arange(70) - 35)[None, None, None, :]
    return np.clip(depth + tilt, 1500, 4500).astype(np.float32)


def fake_gathers(models: np.ndarray) -> np.ndarray:
    """[n, 5, 1000, 70] float32 within OpenFWI's amplitude range, determined by the models (each shot sees the
    model's columns around its source, stretched over time)."""
    n = len(models)
    t = np.arange(NT)[:, None] * 70 / NT
    out = np.empty((n, *GATHER_SHAPE), np.float32)
    for i in range(n):
        for s, sx in enumerate((0, 17, 34, 52, 69)):
            cols = models[i, 0][:, np.clip(np.arange(N_RECEIVERS) // 2 + sx // 2, 0, 69)]  # [70 depth, 70 rec]
            img = np.stack([np.interp(t[:, 0], np.arange(70), cols[:, r]) for r in range(N_RECEIVERS)], 1)
            out[i, s] = (img - 3000) / 60 * np.exp(-np.arange(NT) / 500)[:, None]
    return out


def write_dataset(folder: Path, n: int, seed: int, chunk: int = 24) -> Path:
    """An OpenFWI-layout paired folder of n fake pairs."""
    return write_models_dataset(folder, layered_models(n, seed), chunk)


def inverted_models(n: int, seed: int) -> np.ndarray:
    """[n, 1, 70, 70] float32 m/s: geology the layered models never show, velocity decreasing with depth and a
    low-velocity band (for out-of-distribution checks)."""
    m = layered_models(n, seed)[:, :, ::-1].copy()
    rng = np.random.default_rng(seed + 1000)
    for i in range(n):
        top = rng.integers(15, 50)
        m[i, 0, top:top + 8] = 1500.0
    return m


def write_models_dataset(folder: Path, models: np.ndarray, chunk: int = 24) -> Path:
    """An OpenFWI-layout paired folder of given models and their fake gathers."""
    g = fake_gathers(models)
    for c, s in enumerate(range(0, len(models), chunk), start=1):
        write_chunk(folder, c, g[s:s + chunk], models[s:s + chunk])
    return folder


def tiny_trained_bundle(root: Path, n: int = 48, epochs: int = 6) -> Path:
    """A real encoder bundle of a tiny model trained for a few seconds on ``n`` layered fake pairs (torch)."""
    import torch

    from model.config import ModelConfig, TrainConfig
    from model.export import export_run
    from model.train import train

    torch.set_num_threads(2)
    data = write_dataset(root / "train_pairs", n, seed=0)
    train(TrainConfig(data=(str(data),), out=str(root / "run"), epochs=epochs, batch_size=8, seed=0, lr=2e-3,
                      amp="off", val_fraction=0.0, threads=2, progress=False, model=ModelConfig.tiny(),
                      augment=None, bn_batches=0, neighbour_group=1))  # clean pairs, random batches: learnt in seconds
    export_run(root / "run", root / "bundle")
    return root / "bundle"
