"""Training data: paired OpenFWI folders checked, preprocessed once and held in memory.

Every folder is opened with ``seisbind.openfwi.open_dataset(check_values=True)`` before anything else happens,
so a folder with mismatched counts, NaN/Inf or mis-shaped arrays is refused up front with the file named. The
gathers then go through the seismic encoder's fixed front end (low-pass, decimation, log-normalisation) in
chunks and are kept as float32 [N, 5, T', 70] (1.75 GB for 10,000 pairs at decimation 8); the velocity models
stay in m/s and the descriptors are computed from them.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from seisbind.descriptors import compute_descriptors
from seisbind.openfwi import OpenFWIError, PairedDataset, open_dataset

from model.encoders import SeismicEncoder


@dataclass
class TensorPairs:
    """Preprocessed training pairs in memory.

    pre: [N, 5, T', 70] float32, preprocessed gathers; velocity: [N, 1, 70, 70] float32 m/s;
    descriptors: [N, 8] float32 (DESCRIPTOR_UNITS); sources: (file, row) of every pair.
    """

    pre: torch.Tensor
    velocity: torch.Tensor
    descriptors: torch.Tensor
    sources: list[tuple[str, int]]

    def __len__(self) -> int:
        return len(self.velocity)

    def subset(self, idx: np.ndarray | torch.Tensor) -> "TensorPairs":
        idx_t = torch.as_tensor(np.asarray(idx), dtype=torch.long)
        return TensorPairs(self.pre[idx_t], self.velocity[idx_t], self.descriptors[idx_t],
                           [self.sources[int(i)] for i in idx_t])


def open_folders(folders: Sequence[str | os.PathLike[str]]) -> list[PairedDataset]:
    """Open and fully validate every paired folder (shapes, dtypes, counts, NaN/Inf, velocities > 0).

    Raises OpenFWIError naming the offending file (or folder) before any training work starts."""
    if not folders:
        raise OpenFWIError("no data folder given (--data DIR)")
    out = []
    for f in folders:
        ds = open_dataset(f, check_values=True)
        if len(ds) == 0:
            raise OpenFWIError(f"{f}: holds no samples")
        out.append(ds)
    return out


def load_pairs(datasets: Sequence[PairedDataset], encoder: SeismicEncoder, chunk: int = 100,
               progress_cb: object | None = None) -> TensorPairs:
    """Run the seismic front end over every gather (in chunks, no gradient) and collect everything in memory."""
    total = sum(len(d) for d in datasets)
    t_out = encoder.decimated_length
    pre = torch.empty((total, 5, t_out, 70), dtype=torch.float32)
    vel = torch.empty((total, 1, 70, 70), dtype=torch.float32)
    sources: list[tuple[str, int]] = []
    i = 0
    with torch.no_grad():
        for ds in datasets:
            for pf, d, m in zip(ds.files, ds.data, ds.models):
                for s in range(0, len(m), chunk):
                    g = torch.from_numpy(np.array(d[s:s + chunk], dtype=np.float32))
                    n = len(g)
                    pre[i:i + n] = encoder.preprocess(g)
                    vel[i:i + n] = torch.from_numpy(np.array(m[s:s + chunk], dtype=np.float32))
                    sources += [(str(pf.model), r) for r in range(s, s + n)]
                    i += n
                    if progress_cb is not None:
                        progress_cb(n)  # type: ignore[operator]
    desc = torch.from_numpy(compute_descriptors(vel.numpy()).astype(np.float32))
    return TensorPairs(pre, vel, desc, sources)


def mirror(pre: torch.Tensor, velocity: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Left-right mirror of preprocessed gathers [b, 5, T', 70] and models [b, 1, 70, 70]: reverses the shot order
    and the receiver axis, and flips the models laterally. Exact for the four outer shots (sources 0, 17, 52, 69
    map onto 69, 52, 17, 0); the middle source (cell 34) maps to cell 35, one cell off. Descriptors are unchanged."""
    return pre.flip(1).flip(3), velocity.flip(3)


def split_indices(n: int, val_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Deterministic (train, validation) index split; validation gets round(n * val_fraction) pairs."""
    if not 0 <= val_fraction < 1:
        raise ValueError(f"val_fraction={val_fraction}: expected 0 <= f < 1")
    perm = np.random.default_rng([seed, 7]).permutation(n)
    n_val = int(round(n * val_fraction))
    if n_val and n - n_val < 2:
        raise ValueError(f"{n} pairs are too few to hold out {n_val} for validation")
    return np.sort(perm[n_val:]), np.sort(perm[:n_val])


def folder_summary(folders: Sequence[str | os.PathLike[str]], datasets: Sequence[PairedDataset]) -> list[dict]:
    """Provenance of the training data: folder, pairs and files."""
    return [{"folder": str(Path(f).resolve()), "pairs": len(d), "files": len(d.files)} for f, d in zip(folders, datasets)]
