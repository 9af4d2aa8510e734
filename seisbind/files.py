"""Safe file writes and checksums, the one place for both.

Every file the project writes goes through :func:`atomic_write`: a temporary file in the same folder, fsync,
rename over the target, fsync of the folder, and the temporary file removed on any failure. A reader therefore
sees either the old file or the complete new one, never half of it.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any

import numpy as np

PathLike = str | os.PathLike[str]


def fsync_path(path: PathLike) -> None:
    """fsync a file or a folder (a folder's fsync makes a rename inside it durable)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@contextmanager
def _temporary_sibling(path: PathLike, suffix: str) -> Iterator[Path]:
    """A temporary file next to ``path``; on a clean exit it is fsynced and renamed onto ``path`` (then the folder
    is fsynced), on any exception removed."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=suffix, dir=target.parent)
    os.close(fd)
    tmp = Path(name)
    try:
        yield tmp
        fsync_path(tmp)
        os.chmod(tmp, 0o644)
        os.replace(tmp, target)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    fsync_path(target.parent)


@contextmanager
def atomic_write(path: PathLike, mode: str = "wb") -> Iterator[IO[Any]]:
    """Open a temporary sibling of ``path`` for writing; on a clean exit it is flushed, fsynced and renamed onto
    ``path`` (then the folder is fsynced); on any exception it is removed and ``path`` is left as it was."""
    if mode not in ("w", "wb"):
        raise ValueError(f"atomic_write mode {mode!r}: expected 'w' or 'wb'")
    with _temporary_sibling(path, ".partial") as tmp, open(tmp, mode) as f:
        yield f


def write_text_atomic(path: PathLike, text: str) -> None:
    """Write text atomically (see :func:`atomic_write`)."""
    with atomic_write(path, "w") as f:
        f.write(text)


def write_json_atomic(path: PathLike, doc: Any, indent: int | None = 1) -> None:
    """Write a JSON document atomically (see :func:`atomic_write`)."""
    with atomic_write(path, "w") as f:
        json.dump(doc, f, indent=indent)


def save_npy_atomic(path: PathLike, arr: np.ndarray) -> None:
    """Write an array as ``.npy`` atomically (see :func:`atomic_write`)."""
    with atomic_write(path, "wb") as f:
        np.save(f, arr)


def write_with_atomic(path: PathLike, writer: Callable[[Path], None]) -> None:
    """Atomic write for libraries that insist on writing to a path themselves (matplotlib, torch): ``writer``
    writes a temporary sibling whose name ends in ``path``'s suffix, which then replaces ``path``."""
    with _temporary_sibling(path, ".partial" + Path(path).suffix) as tmp:
        writer(tmp)


def read_json(path: PathLike, error: type[Exception], what: str) -> Any:
    """Parse a JSON file; a missing or malformed file raises ``error`` naming the file and saying it is not
    ``what`` (e.g. "an encoder bundle")."""
    path = Path(path)
    if not path.is_file():
        raise error(f"{path}: missing (not {what})")
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise error(f"{path}: not valid JSON: {e}") from e


def replace_folder(tmp: PathLike, out: PathLike, marker: str, kind: str) -> None:
    """Move the finished folder ``tmp`` onto ``out`` (its sibling). An existing ``out`` is replaced only if it
    holds ``marker`` (it is ``kind``, e.g. "an encoder bundle") or is empty; anything else raises FileExistsError."""
    tmp, out = Path(tmp), Path(out)
    if out.exists():
        if not (out / marker).is_file() and any(out.iterdir()):
            raise FileExistsError(f"{out}: exists and is not {kind} (no {marker}); choose another output folder")
        old = out.with_name(f".{out.name}.old-{os.getpid()}")
        os.replace(out, old)
        os.replace(tmp, out)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(tmp, out)
    fsync_path(out.parent)


def sha256_file(path: PathLike, block: int = 1 << 20) -> str:
    """Hex sha256 of a file's bytes."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(block):
            h.update(chunk)
    return h.hexdigest()


def checksum_mismatch(folder: PathLike, expected: Mapping[str, str]) -> str | None:
    """Check that every file named in ``expected`` ({name: sha256}) exists in ``folder`` with that hash.

    Returns None when all match, else a message naming the first bad file and what is wrong."""
    for name, want in expected.items():
        path = Path(folder) / name
        if not path.is_file():
            return f"{path}: missing"
        got = sha256_file(path)
        if got != want:
            return f"{path}: sha256 {got[:12]}… does not match the manifest's {str(want)[:12]}… (corrupt or replaced)"
    return None


@contextmanager
def staged_folder(out: PathLike, marker: str, kind: str) -> Iterator[Path]:
    """A temporary sibling folder of ``out`` to write ``kind`` (e.g. an encoder bundle, whose ``marker`` file it
    holds) into. On a clean exit it replaces ``out`` (:func:`replace_folder`: an interruption leaves the old one
    whole); on an error it is removed."""
    out = Path(out).resolve()
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.partial-", dir=out.parent))
    try:
        yield tmp
        os.chmod(tmp, 0o755)
        replace_folder(tmp, out, marker=marker, kind=kind)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def manifest_file(folder: PathLike, manifest: Mapping[str, Any], section: str,
                  error: type[Exception]) -> Path | None:
    """The file a manifest's ``section`` ({"file": name, "sha256": hex}) names inside ``folder``, checked against
    its hash, or None when the manifest has no such section. ``error`` names the problem otherwise: a malformed
    section, a missing file, a hash that does not match."""
    entry = manifest.get(section)
    if entry is None:
        return None
    if not isinstance(entry, dict) or not isinstance(entry.get("file"), str) or "/" in entry["file"]:
        raise error(f"{Path(folder) / 'manifest.json'}: malformed {section} section {entry!r}")
    path = Path(folder) / entry["file"]
    if not path.is_file():
        raise error(f"{path}: missing (named by the bundle's manifest)")
    if sha256_file(path) != entry.get("sha256"):
        raise error(f"{path}: sha256 does not match the manifest's (corrupt or replaced)")
    return path
