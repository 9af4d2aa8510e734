"""Every benchmark script still runs: its ``--smoke`` mode (tiny sizes, seconds to a minute) is started as a user
would start the benchmark (``python -m benchmarks.<name>`` from the repository root, in a subprocess), must exit 0
and write its result file, with the benchmark's figures and the provenance of docs/benchmarks.md, marked as a smoke
run, into the folder given with ``--out`` — never into benchmarks/results — and without absolute paths."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parents[2]
PROVENANCE = {"command", "git_commit", "machine", "date", "smoke"}
TIMEOUT_S = 900


def run_smoke(module: str, out: Path, *extra: str) -> dict[str, Any]:
    """Run ``python -m benchmarks.<module> --smoke --out OUT ...`` and return the result file it wrote."""
    cmd = [sys.executable, "-m", f"benchmarks.{module}", "--smoke", "--out", str(out), *extra]
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=TIMEOUT_S,
                          env={k: v for k, v in os.environ.items() if not k.startswith("SEISBIND_")})
    assert proc.returncode == 0, f"{' '.join(cmd[1:])} exited {proc.returncode}:\n{(proc.stdout + proc.stderr)[-4000:]}"
    written = sorted(out.glob("*.json"))
    assert len(written) == 1, f"expected one result file in --out, found {[p.name for p in written]}"
    doc = json.loads(written[0].read_text())
    assert doc["smoke"] is True and doc["command"].startswith(f"python -m benchmarks.{module} --smoke")
    assert doc["machine"]["cores"] >= 1 and doc["date"]
    assert absolute_paths(doc) == [], "result files record paths relative to the repository"
    return doc


def strings(doc: Any, where: str = "") -> Iterator[tuple[str, str]]:
    if isinstance(doc, dict):
        for k, v in doc.items():
            yield from strings(v, f"{where}.{k}")
    elif isinstance(doc, list):
        for i, v in enumerate(doc):
            yield from strings(v, f"{where}[{i}]")
    elif isinstance(doc, str):
        yield where, doc


def absolute_paths(doc: Any) -> list[str]:
    """Places in a result document whose text is, or contains a word that is, an absolute path of this machine
    (a word starting with "/" and a top-level folder that exists here: "/retrieve" is an endpoint, not a path)."""
    def absolute(word: str) -> bool:
        word = word.split("=", 1)[-1].strip("'\"`()[],;")
        top = word[1:].split("/", 1)[0]
        return word.startswith("/") and bool(top) and Path("/", top).is_dir()

    return [f"{where}: {s[:200]}" for where, s in strings(doc) if any(absolute(w) for w in s.split())]


def test_simulator_speed_smoke(tmp_path: Path) -> None:
    doc = run_smoke("simulator_speed", tmp_path, "--runs", "3")
    assert {"seconds_per_model", "reference_seconds_per_model", "speedup_vs_reference",
            "reference_agreement_correlation", "omp_wait_policy"} <= set(doc)
    assert doc["runs"] == 3 and doc["batch"] == 1 and doc["seconds_per_model"] > 0


def test_index_smoke(tmp_path: Path) -> None:
    doc = run_smoke("index", tmp_path)
    assert {"build_models_per_second", "build", "2000", "uniform_random_2000", "faiss", "k"} <= set(doc)
    assert doc["build"]["models"] == 64 and doc["build"]["bank"] == "synthetic, 64 models"
    assert doc["2000"]["exact_equals_numpy_top10"] == 1.0 and 0 <= doc["2000"]["ivf_recall_at_10"] <= 1


@pytest.mark.slow
def test_service_smoke(tmp_path: Path) -> None:
    doc = run_smoke("service", tmp_path)
    assert {"npy", "json", "in_process", "throughput_rps", "server", "profiles", "targets"} <= set(doc)
    assert set(doc["throughput_rps"]) == {"1", "4", "16"} and set(doc["profiles"]) == {"latency"}
    assert doc["server"]["count"] == 40 and doc["npy"]["n"] > 0


def test_soak_smoke(tmp_path: Path) -> None:
    doc = run_smoke("soak", tmp_path)
    assert {"requests", "failed", "p50_ms", "p99_ms", "rebuilds", "rss_mb", "index_versions_seen"} <= set(doc)
    assert doc["requests"] > 0 and doc["failed"] == 0, doc["failures_sample"]
    assert doc["rebuilds"] == doc["rebuilds_attempted"] == 1


def test_simulator_fidelity_smoke(tmp_path: Path, openfwi_dir: Path) -> None:
    doc = run_smoke("simulator_fidelity", tmp_path, "--openfwi-dir", str(openfwi_dir))
    assert {"flatvel-a", "curvevel-a", "tolerance", "pass"} <= set(doc)
    assert doc["flatvel-a"]["models"] == doc["curvevel-a"]["models"] == 4


def test_ingest_smoke(tmp_path: Path, openfwi_dir: Path) -> None:
    doc = run_smoke("ingest", tmp_path, "--openfwi-dir", str(openfwi_dir))
    assert {"native_R@1", "native_descriptor_mre", "bundle", "fine_simulation", "geometries", "targets"} <= set(doc)
    assert doc["models"] == 4 and doc["bank_size"] == 16 and doc["k"] == 5
    assert set(doc["geometries"]) == {"fine_dt1_dx10", "dt2_dx12.5"} == set(doc["targets"]["geometries"])
    coarse = doc["geometries"]["dt2_dx12.5"]
    assert coarse["files"] == 4 and coarse["warnings_per_file"].get("coarse_receiver_spacing") == 1.0
    assert 0 <= coarse["R@1"] <= 1 and coarse["ms_per_file"] > 0 and doc["bundle"]["bundle_id"]


@pytest.mark.slow
def test_ood_smoke(tmp_path: Path, openfwi_dir: Path) -> None:
    doc = run_smoke("ood", tmp_path, "--openfwi-dir", str(openfwi_dir))
    cal = doc["calibration"]
    assert {"ece_openfwi_vel", "ece_heldout", "ood_flag_rate_in_distribution"} <= set(cal)
    assert 0 <= cal["ece_openfwi_vel"] <= 1 and 0 <= cal["ood_flag_rate_in_distribution"] <= 1
    assert set(doc["noise"]) == {"10"} and set(doc["muted"]) == {"10"} and 0 <= doc["noise"]["10"]["R@1"] <= 1
    assert doc["setup"]["in_distribution"] == {"flatvel_a": 24, "curvevel_a": 24}


@pytest.mark.slow
def test_openfwi_vel_smoke(tmp_path: Path, openfwi_dir: Path) -> None:
    doc = run_smoke("openfwi_vel", tmp_path, "--openfwi-dir", str(openfwi_dir))
    assert {"p1", "p1_large", "p2", "training", "bundle", "ablation_lambda2_0", "omp"} <= set(doc)
    assert doc["p1"]["gallery_size"] == 16 and doc["training"]["epochs"] >= 1
    assert "matched_lambda2_0.1" in doc["ablation_lambda2_0"]


def test_smoke_results_never_go_to_benchmarks_results() -> None:
    code = ("from benchmarks._common import RESULTS_DIR, write_result\n"
            "write_result('index', {}, RESULTS_DIR, smoke=True)")
    proc = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 1 and "--smoke results may not go to benchmarks/results" in proc.stderr, proc.stderr


def test_recorded_results_hold_no_absolute_paths() -> None:
    results = REPO / "benchmarks" / "results"
    recorded = sorted([*results.rglob("*.json"), *results.rglob("*.md")])
    assert recorded, "no result files recorded"
    for path in recorded:
        text = path.read_text()
        assert absolute_paths(json.loads(text) if path.suffix == ".json" else text) == [], path.name
