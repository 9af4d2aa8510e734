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
    assert {"seconds_per_model", "old_seconds_per_model", "speedup_vs_old", "forward_backward_seconds_per_model",
            "reference_seconds_per_model", "speedup_vs_reference", "reference_agreement_correlation",
            "omp_wait_policy"} <= set(doc)
    assert set(doc["variants"]) == {"old", "shot_parallel", "pml10", "new", "old_grad", "shot_parallel_grad",
                                    "pml10_grad", "new_grad", "reference"}
    assert doc["runs"] == 3 and doc["batch"] == 1 and doc["seconds_per_model"] > 0
    assert doc["shot_parallel_max_abs_difference_vs_old"] == 0.0, "the worker threads change no number"
    assert doc["relative_l2_vs_old"] < 0.005 and doc["gradient_cosine_vs_old"] > 0.999


def test_index_smoke(tmp_path: Path) -> None:
    doc = run_smoke("index", tmp_path)
    assert {"build_models_per_second", "build", "2000", "uniform_random_2000", "faiss", "k"} <= set(doc)
    assert doc["build"]["models"] == 64 and doc["build"]["bank"] == "synthetic, 64 models"
    assert doc["2000"]["exact_equals_numpy_top10"] == 1.0 and 0 <= doc["2000"]["ivf_recall_at_10"] <= 1


def test_refiner_smoke(tmp_path: Path) -> None:
    doc = run_smoke("refiner", tmp_path, "--baseline-migrated-channels", "0")
    assert {"val_top1_mae_mps", "val_topk_mean_mae_mps", "val_refiner_mae_mps", "ms_per_gather_batch1_1thread",
            "parity_max_abs_mps", "train_minutes"} <= set(doc)
    assert doc["val_pairs"] == 4 and doc["k"] == 3 and doc["ms_per_gather_batch1_1thread"]["median"] > 0
    assert doc["model_config"]["migrated_channels"] == 4 and doc["baseline"]["migrated_channels"] == 0
    assert doc["baseline"]["val_topk_mean_mae_mps"] == doc["val_topk_mean_mae_mps"]  # the same neighbours


@pytest.mark.slow
def test_service_smoke(tmp_path: Path) -> None:
    doc = run_smoke("service", tmp_path)
    assert {"npy", "json", "in_process", "throughput_rps", "server", "profiles", "targets"} <= set(doc)
    assert set(doc["throughput_rps"]) == {"1", "4", "16"} and set(doc["profiles"]) == {"full_precision"}
    assert doc["server"]["variants"]["seismic"] == "int8" and doc["previous_graph"]["variant"] == "full"
    assert doc["capacity_rps"] > 0 and doc["share_of_capacity_16"] > 0 and doc["previous_graph"]["capacity_rps"] > 0
    assert doc["server"]["count"] == 40 and doc["npy"]["n"] > 0
    replicas = doc["replicas"]
    assert replicas["servers"] == 2 and replicas["one"]["rps_16"] > 0 and replicas["split"]["rps_16"] > 0
    assert doc["http_floor"]["n"] == doc["npy"]["n"] and 0 < doc["http_floor"]["p50_ms"]
    assert doc["npy_p50_over_in_process_floor"] > 1 and "http_floor" not in doc["profiles"]["full_precision"]


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


def test_encode_smoke(tmp_path: Path, openfwi_dir: Path) -> None:
    ref = tmp_path / "reference" / "retrieval_openfwi_vel.json"
    ref.parent.mkdir()
    ref.write_text(json.dumps({"p1": {"seismic_to_velocity": {"R@1": 0.5}, "queries": 16},
                               "p2": {"descriptor_mre": 0.2}, "git_commit": "abc"}))
    doc = run_smoke("encode", tmp_path, "--openfwi-dir", str(openfwi_dir), "--reference", str(ref))
    assert doc["default"] == "int8" and doc["queries"] == 16 and doc["bank_size"] == 128
    small = doc["smaller_encoder"]
    assert small["graph"] == "int8" and small["reference"]["R@1"] == 0.5 and small["speedup_vs_today_batch1"] > 0
    assert small["R@1_drop"] == pytest.approx(0.5 - doc["int8"]["R@1"])
    assert doc["default_architecture"]["full"]["speedup_vs_full_batch1"] == 1.0
    for graphs in (doc, doc["default_architecture"]):
        for name in ("full", "fast", "int8"):
            assert graphs[name]["ms_per_gather_batch1"] > 0 and graphs[name]["ms_per_gather_batch8"] > 0
    for name in ("full", "fast", "int8"):
        assert 0 <= doc[name]["R@1"] <= 1 and doc[name]["descriptor_mre"] > 0
    assert doc["fast"]["top1_agreement_with_full"] == 1.0 and doc["fast"]["min_cosine_to_full"] > 0.9999
    assert set(doc["targets"]["met"]) == {"speedup >= 3", "R@1 within 0.005", "descriptor error within 0.1 points"}


@pytest.mark.slow
def test_readout_noise_smoke(tmp_path: Path) -> None:
    doc = run_smoke("readout_noise", tmp_path)
    assert set(doc["levels"]) == {"clean", "10", "0"} and doc["train_pairs"] == 72 and doc["queries"] == 16
    for row in doc["levels"].values():
        assert row["neighbours_descriptor_mre"] > 0
        for fit in ("clean_fit", "noisy_fit"):
            assert 0 < row[fit]["readout_descriptor_mre"] and 0 < row[fit]["blend_descriptor_mre"]
    assert doc["noisy_fit_snr_db"] == [0.0, 30.0] and set(doc["penalties"]) == {"clean_fit", "noisy_fit"}


def test_amplitude_law_smoke(tmp_path: Path, openfwi_dir: Path) -> None:
    doc = run_smoke("amplitude_law", tmp_path, "--openfwi-dir", str(openfwi_dir))
    assert doc["train_models"] == 4 and doc["test_models"] == 4
    assert doc["fit"]["C"] > 0 and 0 < doc["fit"]["exponent"] < 1
    assert doc["test_log_error"]["law_in_code"]["n"] == 4


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


def test_refine_smoke(tmp_path: Path, openfwi_dir: Path) -> None:
    doc = run_smoke("refine", tmp_path, "--openfwi-dir", str(openfwi_dir))
    for dataset in ("openfwi_vel", "flatfault_a", "curvefault_a"):
        res = doc[dataset]
        assert res["n"] >= 1 and res["retrieved_top1_mae_mps"] > 0 and res["fwi_never_worse_than_start"] is True
        assert res["fwi_given_start"] == "topk_mean"  # the untrained smoke bundle has no learned refiner
        assert res["misfit_fwi_from_topk"] <= res["misfit_topk_mean"] * (1 + 1e-6)
        assert res["best_refinement"]["method"] == "fwi_from_topk"  # the only refinement without a refiner
        assert res["best_refinement"]["mae_mps"] == res["fwi_from_topk_mae_mps"]
    assert doc["noise_db"] == 10 and doc["fwi_seconds_per_gather"] > 0
    assert doc["targets"]["learned_ms_per_gather"]["met"] is False  # no learned refiner to time


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


def test_ood_heldout_smoke(tmp_path: Path) -> None:
    doc = run_smoke("ood_heldout", tmp_path)
    fam = doc["heldout"]["inversion-a"]
    assert 0 <= fam["p1"]["seismic_to_velocity"]["R@1"] <= 1 and fam["test_models"] == 24
    assert fam["oracle_top1_mae_mps"] <= fam["p2"]["top1_mae_mps"], "no retriever beats the pixel-L2 nearest model"
    assert fam["oracle_descriptor_mre"] > 0 and fam["mean_predictor_mre"] > 0
    assert "inversion-a" not in " ".join(fam["training"]["folders"]), "the family is held out of training"
    assert fam["training"]["includes_family"] is False and fam["training"]["left_out"] == []
    assert fam["consensus_mae_over_oracle"] >= 1.0, "the consensus pick is a bank model: no better than the oracle"


def test_ood_heldout_leave_out_smoke(tmp_path: Path) -> None:
    doc = run_smoke("ood_heldout", tmp_path, "--leave-out", "lowzone-a", "--section", "heldout_without_lowzone")
    fam = doc["heldout_without_lowzone"]["inversion-a"]
    folders = " ".join(fam["training"]["folders"])
    assert "lowzone-a" not in folders and "inversion-a" not in folders and "salt-a" in folders
    assert fam["training"]["left_out"] == ["lowzone-a"]
    proc = subprocess.run([sys.executable, "-m", "benchmarks.ood_heldout", "--smoke", "--leave-out", "marmousi"],
                          cwd=REPO, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2 and "--leave-out marmousi: unknown" in proc.stderr, proc.stderr


def test_ood_heldout_include_family_smoke(tmp_path: Path) -> None:
    doc = run_smoke("ood_heldout", tmp_path, "--include-family", "--section", "seen_family")
    assert "heldout" not in doc, "the seen-family reference goes under its own section"
    fam = doc["seen_family"]["inversion-a"]
    assert fam["training"]["includes_family"] is True
    assert any(f.startswith("inversion-a_") for f in fam["training"]["folders"]), "F's training models are in the mix"
    assert fam["p2"]["bank_size"] == 32 + 16 * (len(fam["training"]["folders"]) - 1), "the bank holds F's models"


def test_rerank_smoke(tmp_path: Path) -> None:
    doc = run_smoke("rerank", tmp_path)
    sec = doc["heldout_rerank"]
    assert sec["stored_gathers_check"]["max_misfit"] < 1e-6, "stored gathers are what the simulator returns"
    p1, p2 = sec["p1"], sec["p2"]
    assert p1["R@1"] <= p1["R@3"] and p1["R@1_reranked"] <= p1["R@3"], "re-ranking picks among the top k"
    assert p1["true_model_fits_best_when_in_top_k"] == 1.0, "the true model explains its own data best"
    assert p2["best_of_k_mae_mps"] <= min(p2["top1_mae_mps"], p2["top1_mae_reranked_mps"])
    assert sec["setup"]["forward_model_of_queries"].startswith("deepwave on a 5 m grid")
    assert abs(sec["setup"]["measured_snr_db_median"] - 10.0) < 0.5, "the queries have the noise asked for"
