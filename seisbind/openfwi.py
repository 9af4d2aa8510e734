"""OpenFWI on-disk layout: memory-mapped reading, validation and atomic chunk writing (docs/data.md).

A dataset folder holds ``data/dataN.npy`` (n, 5, 1000, 70) and ``model/modelN.npy`` (n, 1, 70, 70); the Fault
families' ``seisX_Y_Z.npy`` / ``velX_Y_Z.npy`` are read too. Velocity models alone may also come as one
``.npy`` file, a folder of ``.npy`` files, or a ``.zip`` of ``.npy`` files (OpenFWI's ``vmodel*.npy``).
Every problem is raised as :class:`OpenFWIError` naming the file and what is wrong.
"""

from __future__ import annotations

import io
import os
import re
import zipfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from seisbind.acquisition import GATHER_SHAPE, VELOCITY_SHAPE
from seisbind.files import save_npy_atomic

CHUNK_SIZE = 500
"""Samples per file, as OpenFWI stores them."""


class OpenFWIError(ValueError):
    """A file or folder that does not follow the OpenFWI layout."""


def _natural_key(path: Path) -> list[object]:
    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", path.name)]


def _check_array(arr: np.ndarray, tail: tuple[int, ...], name: str) -> np.ndarray:
    if arr.dtype != np.float32:
        raise OpenFWIError(f"{name}: dtype is {arr.dtype}, expected float32")
    if arr.ndim != len(tail) + 1 or tuple(arr.shape[1:]) != tail:
        raise OpenFWIError(f"{name}: shape is {tuple(arr.shape)}, expected (n, {', '.join(map(str, tail))})")
    return arr


def load_npy(path: str | os.PathLike[str], tail: tuple[int, ...], mmap: bool = True) -> np.ndarray:
    """Open one ``.npy`` file of shape (n, *tail) float32, memory-mapped; raise OpenFWIError naming it if it is
    truncated, unreadable, or of the wrong shape or dtype."""
    path = Path(path)
    try:
        arr = np.load(path, mmap_mode="r" if mmap else None, allow_pickle=False)
    except FileNotFoundError as e:
        raise OpenFWIError(f"{path}: no such file") from e
    except (ValueError, OSError, EOFError) as e:
        raise OpenFWIError(f"{path}: not a readable .npy file (truncated or corrupt?): {e}") from e
    return _check_array(arr, tail, str(path))


def check_velocity(v: np.ndarray, name: str = "velocity model") -> np.ndarray:
    """Validate velocity models [n, 1, 70, 70] (or one [1, 70, 70] / [70, 70]) in m/s; return them as a
    float32 array [n, 1, 70, 70]. Raises ValueError naming the problem (shape, NaN/Inf, non-positive)."""
    v = np.asarray(v)
    if v.dtype.kind not in "fiu":
        raise ValueError(f"{name}: dtype {v.dtype} is not numeric")
    if v.shape == VELOCITY_SHAPE[1:]:
        v = v[None, None]
    elif v.shape == VELOCITY_SHAPE:
        v = v[None]
    if v.ndim != 4 or tuple(v.shape[1:]) != VELOCITY_SHAPE:
        raise ValueError(f"{name}: shape is {tuple(v.shape)}, expected (n, 1, 70, 70), (1, 70, 70) or (70, 70)")
    v = np.ascontiguousarray(v, dtype=np.float32)
    bad = ~np.isfinite(v)
    if bad.any():
        i = int(np.argwhere(bad.reshape(len(v), -1).any(1))[0, 0])
        raise ValueError(f"{name}: model {i} holds NaN or Inf values")
    nonpos = (v <= 0).reshape(len(v), -1).any(1)
    if nonpos.any():
        i = int(np.argmax(nonpos))
        raise ValueError(f"{name}: model {i} holds non-positive velocities (min {v[i].min():g} m/s)")
    return v


@dataclass
class ModelSet:
    """Velocity models from one or more files, each kept memory-mapped where possible.

    ``parts`` is a list of (file label, array [n, 1, 70, 70] float32 m/s).
    """

    parts: list[tuple[str, np.ndarray]] = field(default_factory=list)

    def __len__(self) -> int:
        return sum(len(a) for _, a in self.parts)

    def sources(self) -> list[tuple[str, int]]:
        """(file, row) of every model, in order."""
        return [(name, row) for name, a in self.parts for row in range(len(a))]

    def batches(self, batch_size: int) -> Iterator[np.ndarray]:
        """Yield consecutive models as float32 arrays [b, 1, 70, 70], never crossing more memory than one batch."""
        buf: list[np.ndarray] = []
        have = 0
        for _, a in self.parts:
            start = 0
            while start < len(a):
                take = min(batch_size - have, len(a) - start)
                buf.append(np.asarray(a[start:start + take]))
                have += take
                start += take
                if have == batch_size:
                    yield np.concatenate(buf)
                    buf, have = [], 0
        if buf:
            yield np.concatenate(buf)

    def validate(self, block: int = 1000) -> "ModelSet":
        """Check every model for NaN/Inf and non-positive velocities; raise OpenFWIError naming the file and row."""
        for name, arr in self.parts:
            for start in range(0, len(arr), block):
                try:
                    check_velocity(np.asarray(arr[start:start + block]), name)
                except ValueError as e:
                    raise OpenFWIError(f"{e} (row offset {start})" if start else str(e)) from e
        return self

    def array(self) -> np.ndarray:
        """All models in memory, [N, 1, 70, 70] float32."""
        if not self.parts:
            return np.zeros((0,) + VELOCITY_SHAPE, np.float32)
        return np.concatenate([np.asarray(a) for _, a in self.parts])


def _read_zip(path: Path) -> ModelSet:
    try:
        zf = zipfile.ZipFile(path)
    except (zipfile.BadZipFile, OSError) as e:
        raise OpenFWIError(f"{path}: not a readable zip file: {e}") from e
    parts = []
    with zf:
        names = sorted((n for n in zf.namelist() if n.endswith(".npy")), key=lambda n: _natural_key(Path(n)))
        if not names:
            raise OpenFWIError(f"{path}: the zip holds no .npy file")
        for n in names:
            label = f"{path.name}:{n}"
            try:
                arr = np.load(io.BytesIO(zf.read(n)), allow_pickle=False)
            except (ValueError, OSError, EOFError, zipfile.BadZipFile) as e:
                raise OpenFWIError(f"{label}: not a readable .npy file: {e}") from e
            parts.append((label, _check_array(arr, VELOCITY_SHAPE, label)))
    return ModelSet(parts)


def _model_files(folder: Path) -> list[Path]:
    """Velocity-model files of a folder: model/*.npy, vel*.npy, or else every .npy of the folder."""
    for cand in (folder / "model", folder):
        if cand.is_dir():
            files = sorted(cand.glob("model*.npy"), key=_natural_key) + sorted(cand.glob("vel*.npy"), key=_natural_key)
            if files:
                return files
    files = sorted(folder.glob("*.npy"), key=_natural_key)
    if not files:
        raise OpenFWIError(f"{folder}: no velocity-model .npy files (expected model/modelN.npy, velX_Y_Z.npy or *.npy)")
    return files


def read_models(path: str | os.PathLike[str]) -> ModelSet:
    """Velocity models from a ``.npy`` file, an OpenFWI folder, a folder of ``.npy`` files, or a ``.zip`` of them.

    Returns a :class:`ModelSet` whose parts are memory-mapped (except zip members, which are read into memory).
    Raises OpenFWIError naming the file if anything is missing, truncated or mis-shaped.
    """
    p = Path(path)
    if not p.exists():
        raise OpenFWIError(f"{p}: no such file or folder")
    if p.is_dir():
        return ModelSet([(str(f), load_npy(f, VELOCITY_SHAPE)) for f in _model_files(p)])
    if p.suffix == ".zip":
        return _read_zip(p)
    if p.suffix == ".npy":
        arr = np.load(p, mmap_mode="r", allow_pickle=False) if p.stat().st_size else None
        if arr is not None and arr.shape == VELOCITY_SHAPE[1:]:
            arr = np.asarray(arr, np.float32)[None, None]
            return ModelSet([(str(p), arr)])
        return ModelSet([(str(p), load_npy(p, VELOCITY_SHAPE))])
    raise OpenFWIError(f"{p}: unsupported file type {p.suffix!r} (expected .npy, .zip or a folder)")


@dataclass(frozen=True)
class PairedFile:
    """One data file and the velocity-model file it pairs with."""

    data: Path
    model: Path


_FAULT = re.compile(r"^(seis|vel)(.*)\.npy$")
_FLAT = re.compile(r"^(data|model)(\d+)\.npy$")


def find_pairs(folder: str | os.PathLike[str]) -> list[PairedFile]:
    """Pair every data file of an OpenFWI dataset folder with its velocity-model file.

    Understands ``data/dataN.npy`` + ``model/modelN.npy`` and ``seisX_Y_Z.npy`` + ``velX_Y_Z.npy`` (in the folder
    itself or in data/ and model/). Raises OpenFWIError naming any file without its partner.
    """
    root = Path(folder)
    if not root.is_dir():
        raise OpenFWIError(f"{root}: not a folder")
    data: dict[str, Path] = {}
    model: dict[str, Path] = {}
    for d in (root, root / "data", root / "model"):
        if not d.is_dir():
            continue
        for f in d.glob("*.npy"):
            m = _FLAT.match(f.name) or _FAULT.match(f.name)
            if not m:
                continue
            (data if m.group(1) in ("data", "seis") else model)[m.group(2)] = f
    if not data and not model:
        raise OpenFWIError(f"{root}: no OpenFWI files (expected data/dataN.npy + model/modelN.npy, or seis*/vel*.npy)")
    for key, f in data.items():
        if key not in model:
            raise OpenFWIError(f"{f}: data file has no matching velocity-model file")
    for key, f in model.items():
        if key not in data:
            raise OpenFWIError(f"{f}: velocity-model file has no matching data file")
    keys = sorted(data, key=lambda k: _natural_key(Path(k)))
    return [PairedFile(data[k], model[k]) for k in keys]


@dataclass
class PairedDataset:
    """Shot gathers and velocity models of an OpenFWI folder, memory-mapped, validated on open."""

    files: list[PairedFile]
    data: list[np.ndarray]
    models: list[np.ndarray]

    def __len__(self) -> int:
        return sum(len(m) for m in self.models)

    def model_set(self) -> ModelSet:
        return ModelSet([(str(f.model), m) for f, m in zip(self.files, self.models)])

    def offsets(self) -> np.ndarray:
        return np.concatenate([[0], np.cumsum([len(m) for m in self.models])])

    def get(self, i: int) -> tuple[np.ndarray, np.ndarray]:
        """(gather [5, 1000, 70], model [1, 70, 70]) of sample i."""
        off = self.offsets()
        f = int(np.searchsorted(off, i, side="right") - 1)
        return self.data[f][i - off[f]], self.models[f][i - off[f]]


def open_dataset(folder: str | os.PathLike[str], check_values: bool = False) -> PairedDataset:
    """Open a paired OpenFWI dataset folder (memory-mapped); shapes, dtypes and counts are checked for every file.

    With ``check_values`` every array is also scanned for NaN/Inf (and velocities for non-positive values).
    """
    files = find_pairs(folder)
    data, models = [], []
    for pf in files:
        d = load_npy(pf.data, GATHER_SHAPE)
        m = load_npy(pf.model, VELOCITY_SHAPE)
        if len(d) != len(m):
            raise OpenFWIError(f"{pf.data}: holds {len(d)} gathers but {pf.model.name} holds {len(m)} models")
        if check_values:
            for start in range(0, len(d), 100):
                if not np.isfinite(d[start:start + 100]).all():
                    raise OpenFWIError(f"{pf.data}: holds NaN or Inf values")
            try:
                check_velocity(np.asarray(m), str(pf.model))
            except ValueError as e:
                raise OpenFWIError(str(e)) from e
        data.append(d)
        models.append(m)
    return PairedDataset(files, data, models)


def chunk_paths(out_dir: str | os.PathLike[str], n: int) -> PairedFile:
    """Paths of the n-th (1-based) chunk of a dataset folder: data/data{n}.npy and model/model{n}.npy."""
    out = Path(out_dir)
    return PairedFile(out / "data" / f"data{n}.npy", out / "model" / f"model{n}.npy")


def write_chunk(out_dir: str | os.PathLike[str], n: int, data: np.ndarray, models: np.ndarray) -> PairedFile:
    """Write chunk n (1-based) atomically: the model file first, then the data file, each through a temporary
    file. A chunk counts as complete only when both files exist, so an interruption never leaves one that looks
    complete."""
    pf = chunk_paths(out_dir, n)
    if len(data) != len(models):
        raise ValueError(f"chunk {n}: {len(data)} gathers but {len(models)} models")
    pf.data.unlink(missing_ok=True)
    save_npy_atomic(pf.model, np.ascontiguousarray(models, np.float32))
    save_npy_atomic(pf.data, np.ascontiguousarray(data, np.float32))
    return pf


def chunk_is_complete(out_dir: str | os.PathLike[str], n: int, expected: int) -> bool:
    """Whether chunk n exists with both files readable and holding ``expected`` samples."""
    pf = chunk_paths(out_dir, n)
    try:
        return len(load_npy(pf.data, GATHER_SHAPE)) == expected and len(load_npy(pf.model, VELOCITY_SHAPE)) == expected
    except OpenFWIError:
        return False


def chunk_counts(total: int, chunk_size: int = CHUNK_SIZE) -> Sequence[int]:
    """Samples per chunk when ``total`` samples are stored ``chunk_size`` per file."""
    return [min(chunk_size, total - s) for s in range(0, total, chunk_size)]
