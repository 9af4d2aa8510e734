"""Training data: paired OpenFWI folders checked, preprocessed once and held in memory.

Every folder is opened with ``seisbind.openfwi.open_dataset(check_values=True)`` before anything else happens,
so a folder with mismatched counts, NaN/Inf or mis-shaped arrays is refused up front with the file named. The
gathers then go through the seismic encoder's fixed front end (low-pass, decimation, log-normalisation) in
chunks and are kept as float32 [N, 5, T', 70] (1.75 GB for 10,000 pairs at decimation 8); the velocity models
stay in m/s and the descriptors are computed from them.

With a preprocessing cache folder, the preprocessed gathers of every data file are also saved there (float32,
exactly what the front end returns), keyed by the file's path, size and modification time and the front end's
settings; a later run (resume, another arm of an ablation) reads them instead of the 1.4 MB-per-pair raw data. A
folder whose files are all cached was fully checked when they were cached and is then opened with shape and
count checks only; any changed file invalidates its entry and the folder is checked in full again.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from seisbind.descriptors import compute_descriptors
from seisbind.files import save_npy_atomic
from seisbind.openfwi import OpenFWIError, PairedDataset, find_pairs, open_dataset
from seisbind.provenance import portable_path

from model.encoders import DATA_MAX, DATA_MIN, SeismicFrontEnd

CACHE_FORMAT = 2
"""Bump when the front end's computation changes, so that old cache entries are ignored."""


@dataclass
class TensorPairs:
    """Preprocessed training pairs in memory.

    pre: [N, 5, T', 70] float32, preprocessed gathers (log-normalised, or with ``linear`` only decimated, as
    training holds them to augment them); velocity: [N, 1, 70, 70] float32 m/s;
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


def cache_path(cache_dir: str | os.PathLike[str], data_file: Path, encoder: SeismicFrontEnd,
               linear: bool = False) -> Path:
    """Cache entry of one data file's preprocessed gathers (path, size, mtime, front-end settings and stage in the
    key)."""
    st = data_file.stat()
    c = encoder.cfg
    ident = [str(data_file.resolve()), st.st_size, st.st_mtime_ns, c.decimation, c.lowpass_hz, c.lowpass_taps,
             DATA_MIN, DATA_MAX, CACHE_FORMAT, linear]
    return Path(cache_dir) / (hashlib.sha256(json.dumps(ident).encode()).hexdigest()[:32] + ".npy")


def _cached(cache_dir: str | os.PathLike[str] | None, data_file: Path, encoder: SeismicFrontEnd | None,
            linear: bool) -> bool:
    return (cache_dir is not None and encoder is not None
            and cache_path(cache_dir, data_file, encoder, linear).is_file())


def open_folders(folders: Sequence[str | os.PathLike[str]], encoder: SeismicFrontEnd | None = None,
                 cache_dir: str | os.PathLike[str] | None = None, linear: bool = False) -> list[PairedDataset]:
    """Open and fully validate every paired folder (shapes, dtypes, counts, NaN/Inf, velocities > 0); folders
    whose data files all have a preprocessing-cache entry (checked when it was made) get shape and count checks.

    Raises OpenFWIError naming the offending file (or folder) before any training work starts."""
    if not folders:
        raise OpenFWIError("no data folder given (--data DIR)")
    out = []
    for f in folders:
        all_cached = all(_cached(cache_dir, pf.data, encoder, linear) for pf in find_pairs(f))
        ds = open_dataset(f, check_values=not all_cached)
        if len(ds) == 0:
            raise OpenFWIError(f"{f}: holds no samples")
        out.append(ds)
    return out


def _preprocess_file(d: np.ndarray, encoder: SeismicFrontEnd, chunk: int, linear: bool) -> np.ndarray:
    parts = []
    stage = encoder.decimate if linear else encoder.preprocess
    with torch.no_grad():
        for s in range(0, len(d), chunk):
            parts.append(stage(torch.from_numpy(np.array(d[s:s + chunk], dtype=np.float32))).numpy())
    return np.concatenate(parts)


def load_pairs(datasets: Sequence[PairedDataset], encoder: SeismicFrontEnd, chunk: int = 100,
               progress_cb: object | None = None, cache_dir: str | os.PathLike[str] | None = None,
               linear: bool = False) -> TensorPairs:
    """Run the seismic front end (with ``linear``, its decimation only) over every gather (in chunks, no
    gradient; or read the cached result) and collect everything in memory."""
    total = sum(len(d) for d in datasets)
    t_out = encoder.decimated_length
    pre = torch.empty((total, 5, t_out, 70), dtype=torch.float32)
    vel = torch.empty((total, 1, 70, 70), dtype=torch.float32)
    sources: list[tuple[str, int]] = []
    i = 0
    for ds in datasets:
        for pf, d, m in zip(ds.files, ds.data, ds.models):
            n = len(m)
            entry = cache_path(cache_dir, pf.data, encoder, linear) if cache_dir is not None else None
            got = None
            if entry is not None and entry.is_file():
                try:
                    got = np.load(entry, allow_pickle=False)
                except (ValueError, OSError, EOFError):
                    got = None
                if got is not None and got.shape != (n, 5, t_out, 70):
                    got = None
            if got is None:
                got = _preprocess_file(d, encoder, chunk, linear)
                if entry is not None:
                    save_npy_atomic(entry, got)
            pre[i:i + n] = torch.from_numpy(got)
            vel[i:i + n] = torch.from_numpy(np.array(m, dtype=np.float32))
            sources += [(str(pf.model), r) for r in range(n)]
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
    return [{"folder": portable_path(f), "pairs": len(d), "files": len(d.files)}
            for f, d in zip(folders, datasets)]
