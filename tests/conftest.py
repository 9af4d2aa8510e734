"""Shared test fixtures."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def _openfwi_dir() -> Path:
    env = os.environ.get("SEISBIND_OPENFWI_DIR")
    return Path(env) if env else REPO.parent / "shared" / "data" / "openfwi"


@pytest.fixture(scope="session")
def openfwi_dir() -> Path:
    """Folder of the real OpenFWI velocity models; fails under CI=true when missing, skips otherwise."""
    d = _openfwi_dir()
    if not (d / "flatvel_a" / "train_vmodel.zip").is_file():
        msg = f"real OpenFWI models not found in {d} (set SEISBIND_OPENFWI_DIR)"
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(msg)
        pytest.skip(msg)
    return d
