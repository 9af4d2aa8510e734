"""Bank of velocity models -> a new, verified index version, made current atomically (docs/formats.md,
docs/architecture.md#scale).

The version is written into a temporary folder under the root, fsynced, reloaded and verified (checksums; a
sample of entries each retrieves itself at rank 1; the stored models re-embed to the stored embeddings), then
renamed into place; only then does CURRENT switch to it. An interrupted build leaves the current version as it was.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import time
from collections.abc import Callable
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import faiss
import numpy as np

from seisbind.acquisition import VELOCITY_SHAPE
from seisbind.bundle import EncoderBundle, OnnxEncoder
from seisbind.descriptors import DESCRIPTOR_NAMES, DESCRIPTOR_UNITS, compute_descriptors
from seisbind.files import fsync_path, sha256_file, write_json_atomic
from seisbind.openfwi import ModelSet, OpenFWIError, check_velocity, read_models

from index.ann import build_ann, check_index_type, check_recall_target, resolve_type
from index.searcher import Searcher
from index.store import (
    DATA_FILES,
    DESCRIPTORS_FILE,
    EMBEDDINGS_FILE,
    ENTRIES_FILE,
    FORMAT,
    INDEX_FILE,
    MANIFEST,
    VELOCITY_FILE,
    IndexStore,
    IndexStoreError,
    new_version_id,
    storage_error,
)

log = logging.getLogger("seisbind.index")

BATCH_SIZE = 128
VERIFY_SAMPLE = 200
EMBED_SHARE = 0.85
"""Share of the progress bar given to embedding the bank (the rest: index, verification)."""


def _version_manifest(version: str, tmp: Path, embeddings: np.ndarray, params: dict[str, Any], bundle: EncoderBundle,
                      bundle_dir: str | os.PathLike[str], bank_path: str | os.PathLike[str], bank: dict[str, Any],
                      embed_seconds: float) -> dict[str, Any]:
    """The manifest.json of a version whose data files are written in ``tmp`` (docs/formats.md)."""
    n = len(embeddings)
    return {
        "format": FORMAT, "version": version, "count": n, "dim": int(embeddings.shape[1]),
        "index": params, "faiss_version": faiss.__version__, "bundle_id": bundle.bundle_id,
        "encoder": {"bundle_dir": str(Path(bundle_dir).resolve()), "modality": "velocity"},
        "bank": {"path": str(Path(bank_path).resolve()), **bank,
                 "checksum_of": "the float32 bytes of all models, in order"},
        "descriptor_names": list(DESCRIPTOR_NAMES), "descriptor_units": DESCRIPTOR_UNITS,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "build": {"embed_seconds": round(embed_seconds, 3), "models_per_second": round(n / embed_seconds, 2),
                  "providers": bundle.velocity.providers},
        "files": {name: sha256_file(tmp / name) for name in DATA_FILES},
    }


def _write_version(tmp: Path, version: str, bank: ModelSet, bank_path: str | os.PathLike[str], bundle: EncoderBundle,
                   bundle_dir: str | os.PathLike[str], index_type: str, recall_target: float, batch_size: int,
                   verify_sample: int, report: Callable[[float], None]) -> dict[str, Any]:
    """Embed the bank, build the FAISS index, write every file and the manifest into ``tmp``, fsync them, verify;
    returns the index parameters."""
    t0 = time.monotonic()
    embeddings, bank_sha = _embed_bank(bank, bank_path, bundle.velocity, tmp, batch_size, report)
    embed_seconds = time.monotonic() - t0
    index, params = build_ann(embeddings, index_type, recall_target)
    faiss.write_index(index, str(tmp / INDEX_FILE))
    del index
    report(EMBED_SHARE + 0.5 * (1 - EMBED_SHARE))
    manifest = _version_manifest(version, tmp, embeddings, params, bundle, bundle_dir, bank_path,
                                 {"sha256": bank_sha, "files": len(bank.parts)}, embed_seconds)
    write_json_atomic(tmp / MANIFEST, manifest)
    for name in (*DATA_FILES, MANIFEST):
        fsync_path(tmp / name)
    fsync_path(tmp)
    manifest["verification"] = verify_version(tmp, bundle, verify_sample)
    write_json_atomic(tmp / MANIFEST, manifest)
    return params


def build_index(bundle_dir: str | os.PathLike[str], bank_path: str | os.PathLike[str],
                root: str | os.PathLike[str], index_type: str = "auto", recall_target: float = 0.95, keep: int = 5,
                progress_cb: Callable[[float], None] | None = None, *, batch_size: int = BATCH_SIZE,
                providers: list[str] | None = None, intra_op_threads: int | None = None,
                verify_sample: int = VERIFY_SAMPLE) -> str:
    """Embed a bank of velocity models and write a new index version under ``root``; make it current once verified.

    Args:
        bundle_dir: encoder bundle (its velocity.onnx embeds the bank).
        bank_path: velocity models: OpenFWI folder, .npy file or .zip of .npy files.
        root: index root (created if needed).
        index_type: "auto" (exact up to 1M entries, IVF beyond), "flat", "ivf" or "hnsw".
        recall_target: recall@10 against exact search that IVF/HNSW search parameters are chosen to reach.
        keep: versions kept after the build (older ones are deleted; the current one never).
        progress_cb: called with the fraction done, 0.0 to 1.0.

    Returns:
        The new version id (now current). Raises OpenFWIError for a bad bank, BundleError for a bad bundle,
        IndexStoreError when verification fails.
    """
    check_index_type(index_type)
    check_recall_target(recall_target)
    if keep < 1:
        raise ValueError(f"keep={keep}: must be at least 1")
    report = progress_cb or (lambda fraction: None)
    bundle = EncoderBundle(bundle_dir, providers=providers, intra_op_threads=intra_op_threads)
    bank = read_models(bank_path)
    n = len(bank)
    if n == 0:
        raise OpenFWIError(f"{bank_path}: the bank holds no velocity models")
    store = IndexStore(root)
    version = new_version_id(salt=f"{bundle.bundle_id}|{Path(bank_path).resolve()}")
    tmp = store.begin(version)
    log.info("build-index %s: %d models from %s into %s", version, n, bank_path, tmp)
    try:
        params = _write_version(tmp, version, bank, bank_path, bundle, bundle_dir, resolve_type(index_type, n),
                                recall_target, batch_size, verify_sample, report)
        store.publish(tmp, version)
    except OSError as e:  # disk full, read-only, ...: say so, leave nothing behind
        store.abort(tmp)
        raise storage_error(tmp, e, f"writing version {version}") from e
    except BaseException:
        store.abort(tmp)
        raise
    store.set_current(version)
    try:
        store.prune(keep)
    except OSError as e:  # the new version is current; failing to delete old ones does not undo that
        log.warning("build-index %s: pruning old versions failed: %s", version, e)
    report(1.0)
    log.info("build-index %s: current (%d entries, %s)", version, n, params["type"])
    return version


def _id_prefix(label: str, bank_path: Path) -> str:
    """Stable id prefix of a bank file: its path relative to the bank folder (or zip member) without .npy."""
    if bank_path.suffix == ".zip" and ":" in label:
        name = label.split(":", 1)[1]
    else:
        path = Path(label)
        try:
            name = str(path.relative_to(bank_path)) if bank_path.is_dir() else path.name
        except ValueError:
            name = path.name
    return name[:-4] if name.endswith(".npy") else name


def _embed_bank(bank: ModelSet, bank_path: str | os.PathLike[str], encoder: OnnxEncoder, tmp: Path,
                batch_size: int, report: Callable[[float], None]) -> tuple[np.ndarray, str]:
    """Stream the bank through validation, descriptors and the velocity encoder, writing the velocity store,
    embeddings, descriptors and entries into ``tmp``. Returns (embeddings [N, dim], content sha256)."""
    n = len(bank)
    embeddings: np.ndarray | None = None
    descriptors = np.empty((n, len(DESCRIPTOR_NAMES)), np.float64)
    digest = hashlib.sha256()
    files: list[str] = []
    ids: list[str] = []
    file_index: list[int] = []
    rows: list[int] = []
    i = 0
    with _NpyWriter(tmp / VELOCITY_FILE, np.float32, (n, *VELOCITY_SHAPE)) as velocity:
        for f, (label, arr) in enumerate(bank.parts):
            files.append(label)
            prefix = _id_prefix(label, Path(bank_path))
            for start in range(0, len(arr), batch_size):
                stop = min(start + batch_size, len(arr))
                try:
                    chunk = check_velocity(np.asarray(arr[start:stop]), f"{label} rows {start}..{stop - 1}")
                except ValueError as e:
                    raise OpenFWIError(f"bank {bank_path}: {e}") from e
                b = len(chunk)
                emb = encoder.encode(chunk)
                if embeddings is None:
                    embeddings = np.empty((n, emb.shape[1]), np.float32)
                embeddings[i:i + b] = emb
                velocity.write(chunk)
                descriptors[i:i + b] = compute_descriptors(chunk)
                digest.update(chunk.tobytes())
                ids.extend(f"{prefix}:{r}" for r in range(start, stop))
                file_index.extend([f] * b)
                rows.extend(range(start, stop))
                i += b
                report(EMBED_SHARE * i / n)
        velocity.finish()
    assert embeddings is not None
    if not np.isfinite(embeddings).all():
        raise IndexStoreError(f"{encoder.path}: produced NaN or Inf embeddings")
    faiss.normalize_L2(embeddings)
    if len(set(ids)) != n:
        ids = [f"{k}" for k in range(n)]
    _save_npy(tmp / EMBEDDINGS_FILE, embeddings)
    _save_npy(tmp / DESCRIPTORS_FILE, descriptors)
    (tmp / ENTRIES_FILE).write_text(json.dumps({"files": files, "ids": ids, "file_index": file_index, "rows": rows}))
    return embeddings, digest.hexdigest()


class _NpyWriter:
    """Writes a .npy file front to back with ordinary writes, so that a full disk raises OSError (ENOSPC); filling
    a memory map of a sparse file instead kills the whole process with SIGBUS when the disk fills up. Use as a
    context manager (the file is closed on errors too) and call :meth:`finish` after the last chunk."""

    def __init__(self, path: Path, dtype: type, shape: tuple[int, ...]) -> None:
        self._f = open(path, "wb")
        self._dtype = np.dtype(dtype)
        self._left = int(np.prod(shape))
        header = {"descr": np.lib.format.dtype_to_descr(self._dtype), "fortran_order": False, "shape": shape}
        np.lib.format.write_array_header_1_0(self._f, header)

    def __enter__(self) -> "_NpyWriter":
        return self

    def __exit__(self, *exc: object) -> None:
        self._f.close()

    def write(self, chunk: np.ndarray) -> None:
        data = np.ascontiguousarray(chunk, dtype=self._dtype)
        self._left -= data.size
        if self._left < 0:
            raise ValueError(f"{self._f.name}: more data than its header declares")
        self._f.write(memoryview(data).cast("B"))  # type: ignore[arg-type]

    def finish(self) -> None:
        """Check every value was written, and fsync."""
        if self._left != 0:
            raise ValueError(f"{self._f.name}: {self._left} values short of its header's shape")
        self._f.flush()
        os.fsync(self._f.fileno())


def _save_npy(path: Path, arr: np.ndarray) -> None:
    with open(path, "wb") as f:
        np.save(f, arr)
        f.flush()
        os.fsync(f.fileno())


def verify_version(folder: Path, bundle: EncoderBundle, sample: int = VERIFY_SAMPLE, seed: int = 0) -> dict[str, Any]:
    """Reload a written version and check it: checksums and shapes (Searcher.open), the stored models of a sample
    re-embed to the stored embeddings, and each sampled entry retrieves itself at rank 1. A tie with a duplicate
    (identical model or embedding) counts as itself. Raises IndexStoreError naming what failed."""
    s = Searcher.open(folder, expected_bundle_id=bundle.bundle_id, use_gpu=False, verify=True)
    rng = np.random.default_rng(seed)
    idx = np.sort(rng.choice(s.count, size=min(sample, s.count), replace=False))
    stored = np.asarray(s.embeddings[idx])
    models = s.velocity_models(idx)
    fresh = bundle.velocity.encode(models)
    cos = np.sum(fresh * stored, axis=1) / np.linalg.norm(fresh, axis=1)
    if cos.min() < 0.999:
        j = int(np.argmin(cos))
        raise IndexStoreError(f"{folder / VELOCITY_FILE}: entry {idx[j]} re-embeds to cosine {cos[j]:.5f} with its "
                              f"stored embedding; the store and embeddings do not line up")
    _, I = s.search(stored, 1)
    top = I[:, 0]
    same = top == idx
    for miss in np.flatnonzero(~same):
        t = top[miss : miss + 1]
        if t[0] >= 0 and (float(s.embeddings[t[0]] @ stored[miss]) >= 1 - 1e-6
                          or np.array_equal(models[miss], s.velocity_models(t)[0])):
            same[miss] = True  # a duplicate of the query (same model or same embedding) tied with it
    misses = int((~same).sum())
    allowed = int(0.01 * len(idx)) if s.manifest.index_type == "hnsw" else 0
    if misses > allowed:
        j = int(np.flatnonzero(~same)[0])
        raise IndexStoreError(f"{folder / INDEX_FILE}: {misses} of {len(idx)} sampled entries do not retrieve "
                              f"themselves at rank 1 (entry {idx[j]} retrieved {top[j]})")
    log.info("verified %s: %d sampled entries retrieve themselves (%d misses allowed)", folder, len(idx), allowed)
    return {"sample": len(idx), "misses": misses, "min_reembed_cosine": float(cos.min())}
