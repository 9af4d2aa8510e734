"""FAISS layer of the index: exact search against numpy, IVF/HNSW recall targets, GPU selection (with fakes)."""

from __future__ import annotations

import threading
import time
from types import SimpleNamespace
from typing import Any

import faiss
import numpy as np
import pytest

from seisbind.neighbours import exact_top_k

from index.ann import (
    EXACT_MAX,
    build_ann,
    configure_blas_threshold,
    ivf_nlist,
    neighbour_recall,
    perturbed_queries,
    resolve_type,
    search_params,
)
from index.gpu import GPU_MAX_K, GpuReplicas, gpu_count, want_gpu
from index.synthetic import clustered_embeddings, random_unit_vectors


def numpy_topk(xq: np.ndarray, xb: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    scores = xq @ xb.T
    I = np.argsort(-scores, axis=1, kind="stable")[:, :k]
    return np.take_along_axis(scores, I, axis=1), I


def test_exact_search_equals_numpy_brute_force() -> None:
    xb = random_unit_vectors(3000, seed=1)
    xq = random_unit_vectors(40, seed=2)
    index, params = build_ann(xb, "auto")
    assert params == {"type": "flat", "metric": "inner_product", "faiss_class": "IndexFlatIP"}
    D, I = index.search(xq, 25, params=search_params(params, 25))
    D_np, I_np = numpy_topk(xq, xb, 25)
    np.testing.assert_array_equal(I, I_np)
    np.testing.assert_allclose(D, D_np, atol=1e-5)
    # One query at a time takes FAISS's sequential scan instead of BLAS: same answer.
    I_one = np.concatenate([index.search(xq[i:i + 1], 25)[1] for i in range(len(xq))])
    np.testing.assert_array_equal(I_one, I_np)


def test_blas_threshold_is_lowered_only_from_the_faiss_1_15_default(monkeypatch: pytest.MonkeyPatch) -> None:
    import index.ann as ann

    before = faiss.cvar.distance_compute_blas_threshold
    try:
        monkeypatch.setattr(ann, "_DEFAULT_BLAS_THRESHOLD", 128000)  # faiss 1.15: compared with nq * d
        assert configure_blas_threshold(2) == 1600 == faiss.cvar.distance_compute_blas_threshold
        assert configure_blas_threshold(1) == 800
        faiss.cvar.distance_compute_blas_threshold = 20
        monkeypatch.setattr(ann, "_DEFAULT_BLAS_THRESHOLD", 20)  # older faiss: a number of queries
        assert configure_blas_threshold(2) == 20
    finally:
        faiss.cvar.distance_compute_blas_threshold = before


def test_ivf_on_100k_vectors_meets_recall_target() -> None:
    xb = clustered_embeddings(100_000, seed=0)
    index, params = build_ann(xb, "ivf", recall_target=0.95)
    assert params["type"] == "ivf" and params["nlist"] == ivf_nlist(100_000) == 1265
    assert 1 <= params["nprobe"] < params["nlist"] // 4  # the search is far from exhaustive
    assert params["tuning"]["recall_at_10"] >= 0.95
    # Fresh queries (other seed), measured against exact search.
    xq = perturbed_queries(xb, 1000, seed=77)
    _, I_ref = exact_top_k(xq, xb, 10)
    _, I = index.search(xq, 10, params=search_params(params, 10))
    assert neighbour_recall(I, I_ref).mean() >= 0.95
    assert index.nprobe == 1  # tuning never left state on the index


def test_hnsw_meets_recall_target() -> None:
    xb = clustered_embeddings(5000, seed=4)
    index, params = build_ann(xb, "hnsw", recall_target=0.95)
    assert params["type"] == "hnsw" and params["M"] == 32 and params["efSearch"] >= 16
    xq = perturbed_queries(xb, 500, seed=78)
    _, I_ref = exact_top_k(xq, xb, 10)
    _, I = index.search(xq, 10, params=search_params(params, 10))
    assert neighbour_recall(I, I_ref).mean() >= 0.95


def test_neighbour_recall_and_type_choice() -> None:
    I_ref = np.array([[1, 2, 3, 4], [5, 6, 7, 8]])
    I = np.array([[4, 3, 9, 1], [-1, -1, -1, -1]])
    np.testing.assert_allclose(neighbour_recall(I, I_ref, 4), [0.75, 0.0])
    assert resolve_type("auto", EXACT_MAX) == "flat" and resolve_type("auto", EXACT_MAX + 1) == "ivf"
    assert resolve_type("hnsw", 10) == "hnsw"
    assert ivf_nlist(10) == 1 and ivf_nlist(1_000_000) == 4000
    with pytest.raises(ValueError, match="index type 'pq'"):
        resolve_type("pq", 10)
    with pytest.raises(ValueError, match="recall target 0"):
        build_ann(random_unit_vectors(10), "ivf", recall_target=0)


def test_tiny_bank_gets_full_recall() -> None:
    xb = random_unit_vectors(7, dim=16, seed=3)
    index, params = build_ann(xb, "ivf")
    assert params["nlist"] == 1 and params["tuning"]["recall_at_10"] == 1.0
    _, I = index.search(xb, 7, params=search_params(params, 7))
    assert sorted(I[0]) == list(range(7))


class FakeGpuIndex:
    """Stands in for a GPU index: records searches, detects concurrent use of one replica."""

    def __init__(self, cpu_index: Any, res: Any) -> None:
        self.cpu_index, self.res, self.busy, self.calls, self.clash = cpu_index, res, False, 0, False

    def search(self, xq: np.ndarray, k: int, params: Any = None) -> tuple[np.ndarray, np.ndarray]:
        if self.busy:
            self.clash = True
        self.busy = True
        time.sleep(0.002)
        self.calls += 1
        self.busy = False
        return self.cpu_index.search(xq, k, params=params)


def fake_faiss(num_gpus: int = 1) -> SimpleNamespace:
    made: list[Any] = []

    class StandardGpuResources:
        def __init__(self) -> None:
            made.append(self)

    def index_cpu_to_gpu(res: Any, device: int, index: Any) -> FakeGpuIndex:
        assert isinstance(res, StandardGpuResources) and device == 0
        return FakeGpuIndex(index, res)

    return SimpleNamespace(StandardGpuResources=StandardGpuResources, get_num_gpus=lambda: num_gpus,
                           index_cpu_to_gpu=index_cpu_to_gpu, resources=made)


def test_gpu_selection_logic_with_fakes() -> None:
    assert gpu_count(faiss) == 0  # this machine: faiss-cpu
    assert want_gpu("flat", None, faiss) is False
    with pytest.raises(ValueError, match="GPU search requested but FAISS has no GPU support"):
        want_gpu("flat", True, faiss)
    fake = fake_faiss()
    assert gpu_count(fake) == 1
    assert want_gpu("flat", None, fake) and want_gpu("ivf", None, fake)
    assert not want_gpu("hnsw", None, fake) and not want_gpu("ivf", False, fake)
    with pytest.raises(ValueError, match="no GPU version of a 'hnsw' index"):
        want_gpu("hnsw", True, fake)
    assert gpu_count(fake_faiss(num_gpus=0)) == 0


def test_gpu_replicas_one_resource_per_searching_thread_and_k_cap() -> None:
    xb = random_unit_vectors(3000, dim=32, seed=5)
    cpu = faiss.IndexFlatIP(32)
    cpu.add(xb)
    fake = fake_faiss()
    replicas = GpuReplicas(cpu, max_replicas=3, faiss_module=fake)
    xq = xb[:4]
    D, I = replicas.search(xq, 5)
    assert replicas.created == 1 and list(I[:, 0]) == [0, 1, 2, 3]
    _, I_big = replicas.search(xq, GPU_MAX_K + 1)  # beyond the GPU's k: the CPU index answers
    assert I_big.shape == (4, GPU_MAX_K + 1) and replicas.created == 1
    errors: list[BaseException] = []

    def worker() -> None:
        try:
            for _ in range(20):
                _, I = replicas.search(xq, 3)
                assert list(I[:, 0]) == [0, 1, 2, 3]
        except BaseException as e:  # pragma: no cover - reported below
            errors.append(e)

    threads = [threading.Thread(target=worker) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    assert 1 <= replicas.created == len(fake.resources) <= 3
    gpu_indexes = [r[1] for r in list(replicas._idle.queue)]
    assert sum(g.calls for g in gpu_indexes) == 1 + 8 * 20 and not any(g.clash for g in gpu_indexes)
    assert len({id(g.res) for g in gpu_indexes}) == replicas.created
