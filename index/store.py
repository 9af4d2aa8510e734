"""On-disk layout of an index root: one folder per version, a ``CURRENT`` pointer file, atomic switches.

An index root holds ``<version>/`` folders (each a complete, verified index bundle, DESIGN section 4), the
``CURRENT`` file naming the version in use, and ``.building-<version>-<pid>`` folders of builds in progress.
Version ids sort chronologically: ``20260102T030405.123456Z-1a2b3c4d`` (UTC time, then a short hash).
A rollback is :meth:`IndexStore.set_current` with an older version.
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
import shutil
import threading
from datetime import datetime, timezone
from pathlib import Path

log = logging.getLogger("seisbind.index")

FORMAT = "seisbind-index/1"
MANIFEST = "manifest.json"
CURRENT = "CURRENT"
INDEX_FILE = "index.faiss"
VELOCITY_FILE = "velocity.npy"
EMBEDDINGS_FILE = "embeddings.npy"
DESCRIPTORS_FILE = "descriptors.npy"
ENTRIES_FILE = "entries.json"
DATA_FILES = (INDEX_FILE, VELOCITY_FILE, EMBEDDINGS_FILE, DESCRIPTORS_FILE, ENTRIES_FILE)
"""Files of a version, each listed with its sha256 in the version's manifest."""

BUILDING_PREFIX = ".building-"
_VERSION_RE = re.compile(r"^\d{8}T\d{6}\.\d{6}Z-[0-9a-f]{8}$")
_BUILDING_RE = re.compile(r"^\.building-(?P<version>.+)-(?P<pid>\d+)$")


class IndexStoreError(ValueError):
    """An index root or version that is missing, incomplete or corrupt; the message names the file."""


class BundleMismatchError(IndexStoreError):
    """An index version built with another encoder bundle than the one it would be used with."""


def new_version_id(salt: str = "", now: datetime | None = None) -> str:
    """A fresh version id: UTC timestamp with microseconds, then 8 hex digits of a hash of the time, salt and pid."""
    now = now or datetime.now(timezone.utc)
    stamp = now.strftime("%Y%m%dT%H%M%S.%fZ")
    digest = hashlib.sha256(f"{stamp}|{salt}|{os.getpid()}".encode()).hexdigest()[:8]
    return f"{stamp}-{digest}"


def is_version_id(name: str) -> bool:
    """Whether ``name`` has the form of a version id."""
    return bool(_VERSION_RE.match(name))


def fsync_path(path: str | os.PathLike[str]) -> None:
    """fsync a file or a folder (so that a rename inside it is durable)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class IndexStore:
    """Versions of an index under ``root``: listing, the CURRENT pointer, publishing and pruning."""

    def __init__(self, root: str | os.PathLike[str]) -> None:
        self.root = Path(root)

    def versions(self) -> list[str]:
        """Complete versions (folders with a manifest), oldest first."""
        if not self.root.is_dir():
            return []
        return sorted(p.name for p in self.root.iterdir()
                      if p.is_dir() and is_version_id(p.name) and (p / MANIFEST).is_file())

    def current(self) -> str | None:
        """The version named by CURRENT, or None when there is no CURRENT file yet."""
        path = self.root / CURRENT
        try:
            name = path.read_text().strip()
        except FileNotFoundError:
            return None
        if not is_version_id(name):
            raise IndexStoreError(f"{path}: does not name a version (holds {name[:60]!r})")
        return name

    def version_dir(self, version: str) -> Path:
        """Folder of ``version``; raises ValueError for a malformed id (never a path outside the root)."""
        if not is_version_id(version):
            raise ValueError(f"{version!r} is not a version id (expected e.g. 20260102T030405.123456Z-1a2b3c4d)")
        return self.root / version

    def set_current(self, version: str) -> None:
        """Point CURRENT at ``version`` atomically (temporary file, fsync, rename, fsync of the root)."""
        folder = self.version_dir(version)
        if not (folder / MANIFEST).is_file():
            raise IndexStoreError(f"{folder}: no such complete version (no {MANIFEST})")
        tmp = self.root / f".{CURRENT}.{os.getpid()}.{threading.get_ident()}.partial"
        with open(tmp, "w") as f:
            f.write(version + "\n")
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, self.root / CURRENT)
        fsync_path(self.root)
        log.info("index %s: CURRENT -> %s", self.root, version)

    def begin(self, version: str) -> Path:
        """Create the temporary folder a build of ``version`` writes into."""
        self.version_dir(version)
        self.root.mkdir(parents=True, exist_ok=True)
        tmp = self.root / f"{BUILDING_PREFIX}{version}-{os.getpid()}"
        tmp.mkdir()
        return tmp

    def publish(self, tmp: Path, version: str) -> Path:
        """Rename a finished, verified temporary folder into place as ``version`` (not yet current)."""
        final = self.version_dir(version)
        for name in os.listdir(tmp):
            fsync_path(tmp / name)
        fsync_path(tmp)
        os.rename(tmp, final)
        fsync_path(self.root)
        return final

    def prune(self, keep: int) -> list[str]:
        """Delete all but the ``keep`` newest versions (never the current one), and the temporary folders of
        builds whose process is gone. Returns the names removed."""
        if keep < 1:
            raise ValueError(f"keep={keep}: must be at least 1")
        removed: list[str] = []
        if not self.root.is_dir():
            return removed
        current = self.current()
        versions = self.versions()
        for v in versions[: max(0, len(versions) - keep)]:
            if v != current:
                self._remove(self.root / v)
                removed.append(v)
        for p in self.root.iterdir():
            m = _BUILDING_RE.match(p.name)
            if p.is_dir() and m and not _pid_alive(int(m["pid"])):
                self._remove(p)
                removed.append(p.name)
        return removed

    def _remove(self, folder: Path) -> None:
        # Rename first, so that a half-deleted folder never looks like a version.
        trash = self.root / f".deleting-{folder.name}-{os.getpid()}"
        os.rename(folder, trash)
        shutil.rmtree(trash, ignore_errors=True)
        log.info("index %s: removed %s", self.root, folder.name)
