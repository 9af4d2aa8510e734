"""``seisbind quickstart`` end to end on the tiny preset (real simulator, training, ONNX export, FAISS index):
the artifacts, the printed instructions, a second run that skips every step without importing torch, per-step
invalidation, and the refusal of a work folder prepared with other settings."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from seisbind.bundle import read_manifest

from cli.quickstart import PRESETS, QuickstartConfig, preset

STEPS = ("train-data", "test-data", "calib-data", "bank", "train", "export", "index", "calibrate", "evaluate",
         "example")

# Runs the CLI and reports whether torch got imported (a cached run must go straight to serving).
DRIVER = """
import sys
from cli.main import app
try:
    app(sys.argv[1:], prog_name="seisbind")
    code = 0
except SystemExit as e:
    code = e.code
print("TORCH_IMPORTED=%s" % ("torch" in sys.modules), file=sys.stderr)
sys.exit(code)
"""


ENV = {**os.environ, "OMP_NUM_THREADS": "1", "SEISBIND_THREADS": "1"}


def command(workdir: Path, *args: str) -> list[str]:
    return [sys.executable, "-c", DRIVER, "quickstart", "--workdir", str(workdir), "--no-serve", *args]


def quickstart(workdir: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(command(workdir, *args), capture_output=True, text=True, env=ENV, timeout=600)


@pytest.fixture(scope="module")
def first_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, subprocess.CompletedProcess[str]]:
    workdir = tmp_path_factory.mktemp("quickstart") / "work"
    return workdir, quickstart(workdir, "--preset", "tiny")


def test_first_run_builds_every_artifact(first_run: tuple[Path, subprocess.CompletedProcess[str]]) -> None:
    workdir, proc = first_run
    assert proc.returncode == 0, proc.stderr[-3000:]
    for step in STEPS:
        stamp = json.loads((workdir / "stamps" / f"{step}.json").read_text())
        assert stamp["step"] == step and stamp["result"]
    manifest = read_manifest(workdir / "bundle", verify=True)

    from index.searcher import Searcher

    searcher = Searcher.load(workdir / "indexes", expected_bundle_id=manifest.bundle_id)
    cfg = PRESETS["tiny"]
    assert searcher.count == cfg.bank_per_family * len(cfg.families)
    report = json.loads((workdir / "report" / "report.json").read_text())
    assert report["p1"]["gallery_size"] == cfg.test_per_family * len(cfg.families)
    query = np.load(workdir / "example" / "query.npy")
    assert query.shape == (1, 5, 1000, 70) and query.dtype == np.float32 and np.abs(query).max() > 0
    # the tiny preset's 8 calibration queries are too few to fit: recorded, and the bundle served without one
    cal = json.loads((workdir / "stamps" / "calibrate.json").read_text())["result"]
    assert cal["calibrated"] is False and "at least 20" in cal["reason"], cal
    assert "calibration" not in manifest.raw


def test_the_default_preset_covers_every_family_and_calibrates() -> None:
    from model.families import FAMILY_NAMES

    cfg = PRESETS["default"]
    assert set(cfg.families) == set(FAMILY_NAMES) and cfg.calib_per_family * len(cfg.families) >= 40


def test_first_run_prints_quality_docs_and_requests(first_run: tuple[Path, subprocess.CompletedProcess[str]]) -> None:
    workdir, proc = first_run
    out = proc.stdout
    r1 = json.loads((workdir / "stamps" / "evaluate.json").read_text())["result"]["R@1"]
    assert f"R@1 {r1:.3f}" in out and "R@5" in out
    assert "API docs: http://127.0.0.1:8000/docs" in out
    assert "Content-Type: application/x-npy" in out and f"@{workdir.resolve() / 'example' / 'query.npy'}" in out
    assert "SeisBindClient('http://127.0.0.1:8000')" in out
    assert "TORCH_IMPORTED=True" in proc.stderr  # it trained


def test_second_run_skips_every_step_without_torch(first_run: tuple[Path, subprocess.CompletedProcess[str]]) -> None:
    workdir, first = first_run
    assert first.returncode == 0, first.stderr[-3000:]
    stamps = {s: (workdir / "stamps" / f"{s}.json").read_text() for s in STEPS}
    proc = quickstart(workdir, "--preset", "tiny")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stderr.count(": cached") == len(STEPS), proc.stderr
    assert "TORCH_IMPORTED=False" in proc.stderr
    assert stamps == {s: (workdir / "stamps" / f"{s}.json").read_text() for s in STEPS}
    assert "API docs:" in proc.stdout


def test_a_missing_output_reruns_only_its_step(first_run: tuple[Path, subprocess.CompletedProcess[str]]) -> None:
    workdir, first = first_run
    assert first.returncode == 0, first.stderr[-3000:]
    query = workdir / "example" / "query.npy"
    before = np.load(query)
    query.unlink()
    proc = quickstart(workdir, "--preset", "tiny")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stderr.count(": cached") == len(STEPS) - 1 and "write an example query: done" in proc.stderr
    np.testing.assert_array_equal(np.load(query), before)


def test_ctrl_c_keeps_finished_steps_and_the_next_run_resumes(tmp_path: Path) -> None:
    workdir = tmp_path / "work"
    # A runner started in the background may ignore SIGINT, and Python keeps an inherited SIG_IGN: reset it.
    proc = subprocess.Popen(command(workdir, "--preset", "tiny"), stderr=subprocess.PIPE, stdout=subprocess.DEVNULL,
                            text=True, env=ENV, preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    seen = []
    assert proc.stderr is not None
    for line in proc.stderr:  # interrupt while the test split is being simulated
        seen.append(line)
        if line.startswith(f"[2/{len(STEPS)}]"):
            proc.send_signal(signal.SIGINT)
            break
    rest = proc.stderr.read()
    assert proc.wait(timeout=120) == 130, "".join(seen) + rest
    assert "interrupted: finished steps are kept in" in rest and "run the same command again to resume" in rest
    assert (workdir / "stamps" / "train-data.json").is_file()
    assert not (workdir / "stamps" / "test-data.json").exists()
    again = quickstart(workdir, "--preset", "tiny")
    assert again.returncode == 0, again.stderr[-3000:]
    assert f"[1/{len(STEPS)}] simulate 16 training pairs (flatvel-a): cached" in again.stderr
    assert again.stderr.count(": cached") == 1 and "R@1" in again.stdout


def test_refuses_a_work_folder_prepared_with_other_settings(
        first_run: tuple[Path, subprocess.CompletedProcess[str]]) -> None:
    workdir, first = first_run
    assert first.returncode == 0, first.stderr[-3000:]
    proc = quickstart(workdir, "--preset", "small")
    assert proc.returncode == 2
    assert "was prepared with other settings" in proc.stderr and "--workdir" in proc.stderr


def test_unknown_preset_is_refused(tmp_path: Path) -> None:
    proc = quickstart(tmp_path / "w", "--preset", "huge")
    assert proc.returncode == 2 and "preset 'huge': unknown; choose one of default, small, tiny" in proc.stderr


def test_config_checks() -> None:
    assert preset("default", train_minutes=1.5).train_minutes == 1.5
    with pytest.raises(ValueError, match="families \\['marmousi'\\]"):
        QuickstartConfig(families=("marmousi",), train_per_family=8, test_per_family=2, calib_per_family=0,
                         bank_per_family=4,
                         train_minutes=1, epochs=1, batch_size=2)
    with pytest.raises(ValueError, match="too few for batches of 64"):
        QuickstartConfig(families=("flatvel-a",), train_per_family=8, test_per_family=2, calib_per_family=0,
                         bank_per_family=4,
                         train_minutes=1, epochs=1, batch_size=64)
    with pytest.raises(ValueError, match="train_minutes = 0: must be > 0"):
        preset("tiny", train_minutes=0)
