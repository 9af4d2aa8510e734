"""Where a rebuild may read a bank: only inside the configured bank root (symlinks resolved first)."""

from __future__ import annotations

import os
from pathlib import Path

from service.inputs import InputError

BANK_SUFFIXES = (".npy", ".zip")
MAX_NAME_SHOWN = 200
"""Longer bank names are cut in error messages."""


class BankOutsideRootError(PermissionError):
    """A bank path that resolves outside the bank root (HTTP 403)."""


def resolve_bank(root: Path, bank: str) -> Path:
    """The real path of ``bank`` (a name or relative path under ``root``, or an absolute path inside it).

    Raises BankOutsideRootError when it resolves outside ``root`` (``..``, absolute paths elsewhere, symlinks out),
    InputError when it does not exist or is not a folder, .npy or .zip.
    """
    if "\x00" in bank:
        raise InputError("bank: contains a NUL byte")
    name = repr(bank) if len(bank) <= MAX_NAME_SHOWN else repr(bank[:MAX_NAME_SHOWN]) + "..."
    root_real = Path(os.path.realpath(root))
    given = Path(bank)
    real = Path(os.path.realpath(given if given.is_absolute() else root_real / given))
    if not real.is_relative_to(root_real):
        raise BankOutsideRootError(f"bank {name} is outside the bank root; give a name or a path inside it")
    try:
        # the kernel resolves the path as given: "file.npy/.." is an error there (realpath drops the ".." unchecked)
        os.stat(given if given.is_absolute() else root_real / given)
    except FileNotFoundError:
        pass  # reported just below
    except OSError as e:  # a file used as a folder, a name too long for the file system ...
        raise InputError(f"bank {name}: not a usable path ({e.strerror or e})") from e
    try:
        exists, usable = real.exists(), real.is_dir() or (real.is_file() and real.suffix in BANK_SUFFIXES)
    except OSError as e:  # e.g. a name too long for the file system
        raise InputError(f"bank {name}: not a usable path ({e.strerror or e})") from e
    if not exists:
        raise InputError(f"bank {name}: no such folder or file under the bank root")
    if not usable:
        raise InputError(f"bank {name}: not a folder, .npy or .zip of velocity models")
    return real


def relative_bank(bank: str, root: Path | None) -> str:
    """A resolved bank path as responses show it: relative to the bank root (its name when outside, e.g. after the
    root changed), never a path on the server."""
    if root is not None:
        try:
            return Path(bank).relative_to(os.path.realpath(root)).as_posix()
        except ValueError:
            pass
    return Path(bank).name
