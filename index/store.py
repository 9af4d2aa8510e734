"""On-disk layout of an index root: one folder per version, a ``CURRENT`` pointer file, atomic switches.

An index root holds ``<version>/`` folders (each a complete, verified index bundle, docs/formats.md), the
``CURRENT`` file naming the version in use, and ``.building-<version>-<pid>`` folders of builds in progress, each
with a ``.buildlock-<version>-<pid>`` file that its builder holds an exclusive ``flock`` on while it runs: the
kernel drops the lock when the builder dies (even by kill -9), so a leftover folder is recognised as dead by any
process sharing the volume, whatever its pid namespace (several containers).
Version ids sort chronologically: ``20260102T030405.123456Z-1a2b3c4d`` (UTC time, then a short hash).
A rollback is :meth:`IndexStore.set_current` with an older version.
"""

from __future__ import annotations

import errno
import fcntl
import hashlib
import logging
import os
import re
import shutil
import time
from datetime import datetime, timezone
from pathlib import Path

from seisbind.files import fsync_path, write_text_atomic

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
LOCK_PREFIX = ".buildlock-"
DELETING_PREFIX = ".deleting-"
ORPHAN_LOCK_AGE_S = 60.0
"""A build lock file without its folder is removed (when its lock is free) only once this old."""
_VERSION_RE = re.compile(r"^\d{8}T\d{6}\.\d{6}Z-[0-9a-f]{8}$")
_BUILDING_RE = re.compile(r"^\.building-(?P<version>.+)-(?P<pid>\d+)$")


class IndexStoreError(ValueError):
    """An index root or version that is missing, incomplete or corrupt; the message names the file."""


class BundleMismatchError(IndexStoreError):
    """An index version built with another encoder bundle than the one it would be used with."""


def storage_error(path: str | os.PathLike[str], e: OSError, doing: str) -> IndexStoreError:
    """An IndexStoreError for an OSError while writing under an index root, saying in plain words what went wrong
    (read-only, no permission, disk full)."""
    hint = {errno.EROFS: "the index root is on a read-only file system",
            errno.EACCES: "no permission to write to the index root",
            errno.EPERM: "no permission to write to the index root",
            errno.ENOSPC: "no space left on the device of the index root",
            errno.EDQUOT: "the disk quota of the index root is exceeded",
            errno.EFBIG: "a file grew over the size limit of this process or file system"}.get(e.errno or 0)
    what = f"{hint} ({e.strerror})" if hint else (e.strerror or str(e))
    return IndexStoreError(f"{path}: {doing} failed: {what}; the current version is unchanged")


def new_version_id(salt: str = "", now: datetime | None = None) -> str:
    """A fresh version id: UTC timestamp with microseconds, then 8 hex digits of a hash of the time, salt and pid."""
    now = now or datetime.now(timezone.utc)
    stamp = now.strftime("%Y%m%dT%H%M%S.%fZ")
    digest = hashlib.sha256(f"{stamp}|{salt}|{os.getpid()}".encode()).hexdigest()[:8]
    return f"{stamp}-{digest}"


def is_version_id(name: str) -> bool:
    """Whether ``name`` has the form of a version id."""
    return bool(_VERSION_RE.match(name))


def _lock_path(build_folder: Path) -> Path:
    """The lock file of a build folder: ``.building-X`` -> ``.buildlock-X``."""
    return build_folder.with_name(LOCK_PREFIX + build_folder.name[len(BUILDING_PREFIX):])


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
        self._locks: dict[Path, int] = {}  # build folder -> fd of its held lock file

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
        try:
            write_text_atomic(self.root / CURRENT, version + "\n")
        except OSError as e:
            raise storage_error(self.root / CURRENT, e, f"pointing CURRENT at {version}") from e
        log.info("index %s: CURRENT -> %s", self.root, version)

    def begin(self, version: str) -> Path:
        """Create the temporary folder a build of ``version`` writes into, and take its build lock (held until
        :meth:`publish` or :meth:`abort`). Raises IndexStoreError when the root is not writable."""
        self.version_dir(version)
        tmp = self.root / f"{BUILDING_PREFIX}{version}-{os.getpid()}"
        lock = _lock_path(tmp)
        try:
            self.root.mkdir(parents=True, exist_ok=True)
            fd = os.open(lock, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o644)
        except OSError as e:
            raise storage_error(self.root, e, f"starting the build of {version}") from e
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            tmp.mkdir()
        except OSError as e:
            os.close(fd)
            lock.unlink(missing_ok=True)
            raise storage_error(self.root, e, f"starting the build of {version}") from e
        self._locks[tmp] = fd
        return tmp

    def publish(self, tmp: Path, version: str) -> Path:
        """Rename a finished, verified temporary folder into place as ``version`` (not yet current), then release
        its build lock."""
        final = self.version_dir(version)
        for name in os.listdir(tmp):
            fsync_path(tmp / name)
        fsync_path(tmp)
        os.rename(tmp, final)
        fsync_path(self.root)
        self._release(tmp)
        return final

    def abort(self, tmp: Path) -> None:
        """Delete the temporary folder of a failed build and release its build lock (never raises)."""
        shutil.rmtree(tmp, ignore_errors=True)
        self._release(tmp)

    def _release(self, tmp: Path) -> None:
        fd = self._locks.pop(tmp, None)
        try:
            _lock_path(tmp).unlink(missing_ok=True)
        except OSError:
            pass
        if fd is not None:
            os.close(fd)

    def prune(self, keep: int) -> list[str]:
        """Delete all but the ``keep`` newest versions (never the current one), and what dead builds left behind
        (:meth:`clean_stale_builds`). Returns the names removed."""
        if keep < 1:
            raise ValueError(f"keep={keep}: must be at least 1")
        removed: list[str] = []
        if not self.root.is_dir():
            return removed
        current = self.current()
        versions = self.versions()
        for v in versions[: max(0, len(versions) - keep)]:
            if v != current and self._remove(self.root / v):
                removed.append(v)
        return removed + self.clean_stale_builds()

    def clean_stale_builds(self) -> list[str]:
        """Delete the temporary folders (and lock files) of builds whose process is gone, e.g. killed midway, and
        half-deleted folders. A build whose lock is held by a live process, in any container, is left alone.
        Returns the names removed."""
        removed: list[str] = []
        if not self.root.is_dir():
            return removed
        for p in sorted(self.root.iterdir()):
            if p.name.startswith(DELETING_PREFIX) and p.is_dir():
                shutil.rmtree(p, ignore_errors=True)  # a removal that was interrupted: finish it
                removed.append(p.name)
            elif _BUILDING_RE.match(p.name) and p.is_dir():
                removed.extend(self._remove_if_dead(p))
            elif p.name.startswith(LOCK_PREFIX) and p.is_file():
                folder = p.with_name(BUILDING_PREFIX + p.name[len(LOCK_PREFIX):])
                # a lock without its folder: a builder that died while finishing, or one just starting (young)
                if not folder.exists() and time.time() - p.stat().st_mtime > ORPHAN_LOCK_AGE_S:
                    removed.extend(self._remove_if_dead(folder))
        return removed

    def _remove_if_dead(self, folder: Path) -> list[str]:
        """Remove a build folder and its lock file when no live process holds the lock."""
        lock = _lock_path(folder)
        try:
            fd = os.open(lock, os.O_RDWR)
        except FileNotFoundError:  # no lock file: a build by an older version of this code; ask by pid
            m = _BUILDING_RE.match(folder.name)
            if m and not _pid_alive(int(m["pid"])) and self._remove(folder):
                return [folder.name]
            return []
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                return []  # its builder is alive
            out = [folder.name] if self._remove(folder) else []
            lock.unlink(missing_ok=True)
            return out + [lock.name]
        finally:
            os.close(fd)

    def _remove(self, folder: Path) -> bool:
        """Delete a folder, renaming it first so that a half-deleted folder never looks like a version. False when
        it was already gone (e.g. a build published it meanwhile)."""
        trash = self.root / f"{DELETING_PREFIX}{folder.name}-{os.getpid()}"
        try:
            os.rename(folder, trash)
        except FileNotFoundError:
            return False
        shutil.rmtree(trash, ignore_errors=True)
        log.info("index %s: removed %s", self.root, folder.name)
        return True
