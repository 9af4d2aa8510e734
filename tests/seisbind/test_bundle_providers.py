"""The GPU code path without a GPU: ONNX Runtime's CUDA provider is chosen first whenever it is offered, a
session that cannot get it says so (never a silent CPU fallback, docs/architecture.md#dependencies), and on a GPU
machine the
encoders really run on CUDA. The GPU image's dependency set (onnxruntime-gpu, faiss-gpu-cu12) is resolved for
linux x86_64, and checked to be built for CUDA 12, by docker/resolve_gpu_deps.py: a network check, run only with
SEISBIND_NETWORK_TESTS=1."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
from packaging.requirements import Requirement

from seisbind.bundle import CPU, CUDA, OnnxEncoder, select_providers

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    torch = pytest.importorskip("torch")
    torch.set_num_threads(1)
    from model.export import export_untrained_bundle

    out = tmp_path_factory.mktemp("gpu") / "bundle"
    export_untrained_bundle(out, seed=3)
    return out


@pytest.mark.parametrize("available, chosen", [
    (["CUDAExecutionProvider", "CPUExecutionProvider"], [CUDA, CPU]),
    (["TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"], [CUDA, CPU]),
    (["CPUExecutionProvider"], [CPU]),
    (["AzureExecutionProvider", "CPUExecutionProvider"], [CPU]),
])
def test_select_providers_puts_cuda_first_when_offered(available: list[str], chosen: list[str],
                                                       caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.INFO, logger="seisbind.bundle"):
        assert select_providers(available) == chosen
    assert any("onnxruntime providers" in r.getMessage() and str(chosen) in r.getMessage() for r in caplog.records)


def test_default_selection_follows_what_onnxruntime_offers() -> None:
    expected = [CUDA, CPU] if CUDA in ort.get_available_providers() else [CPU]
    assert select_providers() == expected


def test_encoder_requests_cuda_when_offered_and_reports_what_runs(bundle: Path, monkeypatch: pytest.MonkeyPatch,
                                                                 caplog: pytest.LogCaptureFixture) -> None:
    """Pretend ONNX Runtime offers CUDA: the session is asked for CUDA first; on a GPU-less build it runs on the
    CPU, and the encoder reports that and logs a warning instead of falling back silently."""
    real = ort.get_available_providers()
    monkeypatch.setattr(ort, "get_available_providers", lambda: [CUDA, *real])
    with caplog.at_level(logging.INFO, logger="seisbind.bundle"):
        if CUDA in real:
            enc = OnnxEncoder(bundle, "velocity", intra_op_threads=1)
        else:  # ONNX Runtime itself warns too
            with pytest.warns(UserWarning, match="CUDAExecutionProvider"):
                enc = OnnxEncoder(bundle, "velocity", intra_op_threads=1)
    emb = enc.encode(np.full((2, 1, 70, 70), 2500.0, np.float32))
    assert emb.shape == (2, 256) and np.allclose(np.linalg.norm(emb, axis=1), 1, atol=1e-4)
    if CUDA in real:
        assert enc.providers[0] == CUDA
    else:
        assert enc.providers == [CPU]
        assert any(r.levelno == logging.WARNING and "CUDA was requested" in r.getMessage() for r in caplog.records)


@pytest.mark.skipif(CUDA not in ort.get_available_providers(), reason="needs onnxruntime-gpu and a GPU")
def test_encoders_run_on_cuda_with_a_gpu(bundle: Path) -> None:
    enc = OnnxEncoder(bundle, "seismic")
    assert enc.providers[0] == CUDA
    assert enc.encode(np.zeros((1, 5, 1000, 70), np.float32)).shape == (1, 256)


@pytest.mark.skipif(os.environ.get("SEISBIND_NETWORK_TESTS") != "1",
                    reason="resolves packages on the index (network); set SEISBIND_NETWORK_TESTS=1")
@pytest.mark.timeout(900)
def test_gpu_image_dependencies_resolve_for_linux_x86_64() -> None:
    proc = subprocess.run([sys.executable, str(REPO / "docker" / "resolve_gpu_deps.py"), "--no-write"],
                          capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert "onnxruntime-gpu==" in proc.stdout and "faiss-gpu-cu12==" in proc.stdout
    assert proc.stdout.count("(CUDA 12") == 2  # both built for the GPU image's CUDA 12 base


def test_gpu_requirements_come_from_the_gpu_extra() -> None:
    sys.path.insert(0, str(REPO / "docker"))
    try:
        from resolve_gpu_deps import gpu_requirements, manylinux_platforms
    finally:
        sys.path.remove(str(REPO / "docker"))
    reqs = gpu_requirements()
    assert any(r.startswith("faiss-gpu-cu12") for r in reqs)
    (ort_gpu,) = [Requirement(r) for r in reqs if r.startswith("onnxruntime-gpu")]
    # PyPI's onnxruntime-gpu 1.19-1.26 are CUDA 12 builds (like faiss-gpu-cu12 and the image's base); 1.27+ CUDA 13
    assert ort_gpu.specifier.contains("1.26.0") and not ort_gpu.specifier.contains("1.27.0")
    assert not any(r.startswith(("onnxruntime>", "faiss-cpu", "torch")) for r in reqs)
    assert manylinux_platforms("2.19") == ["manylinux_2_19_x86_64", "manylinux_2_18_x86_64",
                                           "manylinux_2_17_x86_64", "manylinux2014_x86_64"]
    with pytest.raises(ValueError, match="expected 2.17 or later"):
        manylinux_platforms("2.5")
