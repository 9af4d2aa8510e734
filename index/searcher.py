"""Load an index version and search it: what the service uses (no torch)."""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import faiss
import numpy as np

from seisbind.acquisition import VELOCITY_SHAPE
from seisbind.descriptors import DESCRIPTOR_NAMES
from seisbind.files import checksum_mismatch, read_json
from seisbind.neighbours import exact_top_k

from index.ann import configure_blas_threshold, search_params
from index.gpu import GPU_MAX_K, GpuReplicas, want_gpu
from index.store import (
    DATA_FILES,
    DESCRIPTORS_FILE,
    EMBEDDINGS_FILE,
    ENTRIES_FILE,
    FORMAT,
    INDEX_FILE,
    MANIFEST,
    VELOCITY_FILE,
    BundleMismatchError,
    IndexStore,
    IndexStoreError,
)

log = logging.getLogger("seisbind.index")


@dataclass(frozen=True)
class IndexManifest:
    """The typed view of an index version's ``manifest.json``; ``raw`` keeps the whole document."""

    version: str
    count: int
    dim: int
    bundle_id: str
    index: dict[str, Any]
    files: dict[str, str]
    descriptor_names: tuple[str, ...]
    raw: dict[str, Any] = field(default_factory=dict, repr=False)

    @property
    def bank_path(self) -> str | None:
        """The bank the version was built from, as recorded at build time (a path on the building machine)."""
        bank = self.raw.get("bank")
        return str(bank["path"]) if isinstance(bank, dict) and "path" in bank else None

    @property
    def index_type(self) -> str:
        """The FAISS index type ("flat", "ivf", "hnsw")."""
        return str(self.index.get("type", ""))


def read_version_manifest(folder: Path) -> IndexManifest:
    """A version's manifest.json, checked for its format and required keys."""
    path = folder / MANIFEST
    doc = read_json(path, IndexStoreError, "an index version")
    if not isinstance(doc, dict) or doc.get("format") != FORMAT:
        raise IndexStoreError(f"{path}: not a {FORMAT} manifest")
    for key in ("version", "count", "dim", "index", "bundle_id", "files"):
        if key not in doc:
            raise IndexStoreError(f"{path}: missing key {key!r}")
    try:
        return IndexManifest(version=str(doc["version"]), count=int(doc["count"]), dim=int(doc["dim"]),
                             bundle_id=str(doc["bundle_id"]), index=dict(doc["index"]), files=dict(doc["files"]),
                             descriptor_names=tuple(doc.get("descriptor_names") or DESCRIPTOR_NAMES), raw=doc)
    except (TypeError, ValueError) as e:
        raise IndexStoreError(f"{path}: malformed manifest: {e}") from e


def verify_files(folder: Path, manifest: IndexManifest) -> None:
    """Check every data file exists and matches the sha256 the manifest records; raise naming the first bad one."""
    missing = [name for name in DATA_FILES if name not in manifest.files]
    if missing:
        raise IndexStoreError(f"{folder / MANIFEST}: no checksum for {missing[0]}")
    problem = checksum_mismatch(folder, {name: manifest.files[name] for name in DATA_FILES})
    if problem:
        raise IndexStoreError(f"{problem}; refusing this version")


def _load_npy(path: Path, shape_tail: tuple[int, ...], count: int, mmap: bool) -> np.ndarray:
    try:
        arr = np.load(path, mmap_mode="r" if mmap else None, allow_pickle=False)
    except (ValueError, OSError, EOFError) as e:
        raise IndexStoreError(f"{path}: not a readable .npy file: {e}") from e
    if arr.shape != (count, *shape_tail):
        raise IndexStoreError(f"{path}: shape {arr.shape}, expected {(count, *shape_tail)}")
    return arr


class Searcher:
    """A loaded, verified index version. Build with :meth:`load` (by root and version) or :meth:`open` (a folder).

    Attributes: ``version``, ``count``, ``dim``, ``manifest``, ``bundle_id``, ``descriptors`` [N, 8] float64
    (units of docs/data.md#descriptors), ``ids`` list[str], ``sources`` list[(file, row)], ``embeddings``
    [N, dim] float32
    (memory-mapped), ``device`` ("cpu" or "gpu"). :meth:`search` is thread-safe: search parameters are passed per
    call and the shared index is never modified.
    """

    def __init__(self, folder: Path, manifest: IndexManifest, index: faiss.Index, velocity: np.ndarray,
                 embeddings: np.ndarray, descriptors: np.ndarray, ids: list[str], sources: list[tuple[str, int]],
                 gpu: GpuReplicas | None = None) -> None:
        self.folder = folder
        self.manifest = manifest
        self.version = manifest.version
        self.count = manifest.count
        self.dim = manifest.dim
        self.bundle_id = manifest.bundle_id
        self.index = index
        self.embeddings = embeddings
        self.descriptors = descriptors
        self.ids = ids
        self.sources = sources
        self._velocity = velocity
        self._gpu = gpu
        self.device = "gpu" if gpu is not None else "cpu"

    @classmethod
    def load(cls, root: str | os.PathLike[str], version: str | None = None, expected_bundle_id: str | None = None,
             use_gpu: bool | None = None, verify: bool = True) -> "Searcher":
        """Load ``version`` (default: the current one) of the index under ``root``.

        Raises IndexStoreError naming the file when something is missing or corrupt, and BundleMismatchError when
        ``expected_bundle_id`` is given and differs from the encoder bundle the index was built with.
        """
        store = IndexStore(root)
        if version is None:
            version = store.current()
            if version is None:
                raise IndexStoreError(f"{store.root}: no current index version (no CURRENT file); "
                                      "build one with `seisbind build-index`")
        searcher = cls.open(store.version_dir(version), expected_bundle_id, use_gpu, verify)
        if searcher.version != version:  # e.g. a version folder copied under another name
            raise IndexStoreError(f"{searcher.folder / MANIFEST}: names version {searcher.version!r}, not its "
                                  f"folder's name {version!r}")
        return searcher

    @classmethod
    def open(cls, folder: str | os.PathLike[str], expected_bundle_id: str | None = None,
             use_gpu: bool | None = None, verify: bool = True) -> "Searcher":
        """Load the index version in ``folder`` (see :meth:`load`); ``verify`` checks every file's sha256."""
        folder = Path(folder)
        if not folder.is_dir():
            raise IndexStoreError(f"{folder}: no such index version")
        manifest = read_version_manifest(folder)
        if expected_bundle_id is not None and manifest.bundle_id != expected_bundle_id:
            raise BundleMismatchError(
                f"{folder}: index built with encoder bundle {manifest.bundle_id}, but the encoders in use are "
                f"{expected_bundle_id}; rebuild the index with these encoders (seisbind build-index)")
        if verify:
            verify_files(folder, manifest)
        count, dim = manifest.count, manifest.dim
        try:
            index = faiss.read_index(str(folder / INDEX_FILE))
        except RuntimeError as e:
            raise IndexStoreError(f"{folder / INDEX_FILE}: FAISS cannot read it: {e}") from e
        if index.ntotal != count or index.d != dim:
            raise IndexStoreError(f"{folder / INDEX_FILE}: holds {index.ntotal} vectors of dim {index.d}, "
                                  f"the manifest says {count} of dim {dim}")
        velocity = _load_npy(folder / VELOCITY_FILE, VELOCITY_SHAPE, count, mmap=True)
        embeddings = _load_npy(folder / EMBEDDINGS_FILE, (dim,), count, mmap=True)
        descriptors = _load_npy(folder / DESCRIPTORS_FILE, (len(manifest.descriptor_names),),
                                count, mmap=False)
        ids, sources = _read_entries(folder / ENTRIES_FILE, count)
        params = manifest.index
        configure_blas_threshold()
        gpu = None
        if want_gpu(params["type"], use_gpu) and int(params.get("nprobe", 1)) <= GPU_MAX_K:
            gpu = GpuReplicas(index)
        log.info("index %s: %d entries, %s, on %s", folder, count, params["type"], "gpu" if gpu else "cpu")
        return cls(folder, manifest, index, velocity, embeddings, descriptors, ids, sources, gpu)

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Top-k bank entries of each query.

        Args:
            queries: [nq, dim] float32 L2-normalised embeddings (float64 is cast).
            k: neighbours per query, 1 <= k <= count.

        Returns:
            D [nq, k] float32 cosine similarities (descending), I [nq, k] int64 entry numbers. Always k valid
            entries: rows where an approximate index found fewer than k are answered by exact search instead.
        """
        xq = np.asarray(queries)
        if xq.ndim != 2 or xq.shape[1] != self.dim:
            raise ValueError(f"queries: shape {xq.shape}, expected (nq, {self.dim})")
        if xq.dtype not in (np.float32, np.float64):
            raise TypeError(f"queries: dtype {xq.dtype}, expected float32")
        if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or not 1 <= k <= self.count:
            raise ValueError(f"k={k!r}: must be an integer in 1..{self.count}")
        xq = np.ascontiguousarray(xq, dtype=np.float32)
        if not np.isfinite(xq).all():
            raise ValueError("queries: hold NaN or Inf values")
        params = search_params(self.manifest.index, int(k))
        if self._gpu is not None:
            D, I = self._gpu.search(xq, int(k), params=params)
        else:
            D, I = self.index.search(xq, int(k), params=params)
        short = np.flatnonzero((I < 0).any(axis=1))
        if len(short):
            log.debug("index %s: %d queries found fewer than k=%d entries; exact search for them", self.version,
                      len(short), k)
            D[short], I[short] = exact_top_k(xq[short], self.embeddings, int(k))
        return D.astype(np.float32, copy=False), I.astype(np.int64, copy=False)

    def _check_ids(self, I: np.ndarray) -> np.ndarray:
        I = np.asarray(I)
        if I.dtype.kind not in "iu":
            raise TypeError(f"entry numbers: dtype {I.dtype}, expected integers")
        if I.size and (I.min() < 0 or I.max() >= self.count):
            raise ValueError(f"entry numbers must be in 0..{self.count - 1} (got {I.min()}..{I.max()}); "
                             "-1 marks a missing neighbour")
        return I

    def velocity_models(self, I: np.ndarray) -> np.ndarray:
        """Velocity models of entries ``I`` (any shape) -> float32 [*I.shape, 1, 70, 70], m/s."""
        I = self._check_ids(I)
        flat = np.asarray(self._velocity[I.ravel()], dtype=np.float32)
        return flat.reshape(*I.shape, *VELOCITY_SHAPE)

    def entry_descriptors(self, I: np.ndarray) -> np.ndarray:
        """Descriptors of entries ``I`` (any shape) -> [*I.shape, 8]."""
        I = self._check_ids(I)
        return self.descriptors[I]


def _read_entries(path: Path, count: int) -> tuple[list[str], list[tuple[str, int]]]:
    try:
        doc = json.loads(path.read_text())
        files, ids, file_index, rows = doc["files"], doc["ids"], doc["file_index"], doc["rows"]
    except FileNotFoundError as e:
        raise IndexStoreError(f"{path}: missing") from e
    except (ValueError, KeyError, TypeError) as e:
        raise IndexStoreError(f"{path}: not a valid entries file: {e}") from e
    if not len(ids) == len(file_index) == len(rows) == count:
        raise IndexStoreError(f"{path}: lists {len(ids)} entries, the manifest says {count}")
    return list(ids), [(files[f], int(r)) for f, r in zip(file_index, rows)]
