"""``seisbind train-refiner``'s command line: bad input exits 2 with a message naming the problem, before any
training work and without leaving a run folder. (The training itself: tests/model/test_refiner.py.)"""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from cli.main import app


@pytest.mark.parametrize("extra, message", [
    (["--val-fraction", "0"], "val_fraction=0.0"),
    (["--k", "0"], "invalid RefinerConfig"),
    ([], "manifest.json"),  # the encoder bundle does not exist
])
def test_bad_input_is_refused_with_a_message(tmp_path: Path, extra: list[str], message: str) -> None:
    out = tmp_path / "run"
    args = ["train-refiner", "--data", str(tmp_path / "data"), "--encoders", str(tmp_path / "no_bundle"),
            "--out", str(out), *extra]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 2, result.output
    assert "error:" in result.output and message in result.output, result.output
    assert not out.exists()
