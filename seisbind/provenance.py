"""Where a result came from: the git commit of the code and paths written relative to the repository, so that
files made on one machine say nothing about its folders and still point somewhere on another."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
"""The repository (or installed tree) this code runs from."""


def git_commit(repo: Path = REPO) -> str | None:
    """The repository's HEAD commit (with "-dirty" when tracked files changed), or None outside git."""
    try:
        head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=repo, capture_output=True, text=True, timeout=10)
        if head.returncode:
            return None
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=repo,
                               capture_output=True, text=True, timeout=10).stdout.strip()
        return head.stdout.strip() + ("-dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        return None


def portable_path(path: str | os.PathLike[str], base: Path = REPO) -> str:
    """``path`` relative to the repository (``..`` allowed, e.g. ``../shared/data/openfwi``), for reports and
    result files."""
    return os.path.relpath(Path(path).resolve(), base)
