"""FAISS on the GPU, behind a capability check: per-thread GPU replicas of a CPU index and the k-dependent choice
between GPU and CPU. ``faiss_module`` is a parameter so that the logic can be tested without a GPU."""

from __future__ import annotations

import logging
import queue
import threading
from types import ModuleType
from typing import Any

import faiss

log = logging.getLogger("seisbind.index")

GPU_MAX_K = 2048
"""Largest k (and nprobe) FAISS GPU indexes support; larger searches run on the CPU index."""
GPU_INDEX_TYPES = ("flat", "ivf")
"""Index types FAISS can copy to the GPU (HNSW stays on the CPU)."""


def gpu_count(faiss_module: ModuleType = faiss) -> int:
    """Number of GPUs FAISS can use: 0 for a CPU-only FAISS build or a machine without a GPU."""
    if not hasattr(faiss_module, "StandardGpuResources") or not hasattr(faiss_module, "get_num_gpus"):
        return 0
    try:
        return int(faiss_module.get_num_gpus())
    except RuntimeError:
        return 0


def want_gpu(index_type: str, use_gpu: bool | None, faiss_module: ModuleType = faiss) -> bool:
    """Whether to search on the GPU: ``use_gpu`` None means "when FAISS has GPU support and a GPU is present";
    True insists (ValueError when impossible); False never."""
    available = gpu_count(faiss_module) > 0
    supported = index_type in GPU_INDEX_TYPES
    if use_gpu is None:
        return available and supported
    if use_gpu and not available:
        raise ValueError("GPU search requested but FAISS has no GPU support or no GPU is present "
                         "(install the gpu extra: faiss-gpu)")
    if use_gpu and not supported:
        raise ValueError(f"GPU search requested but FAISS has no GPU version of a {index_type!r} index")
    return bool(use_gpu)


class GpuReplicas:
    """GPU copies of one CPU index, each with its own StandardGpuResources (FAISS requires one per searching
    thread). A search borrows a replica for its duration; at most ``max_replicas`` are created, lazily.

    Args:
        cpu_index: the loaded CPU index (kept for k > GPU_MAX_K).
        device: GPU number.
        max_replicas: upper bound on concurrent GPU searches (and on GPU memory: one index copy each).
    """

    def __init__(self, cpu_index: Any, device: int = 0, max_replicas: int = 4,
                 faiss_module: ModuleType = faiss) -> None:
        self.cpu_index = cpu_index
        self.device = device
        self.max_replicas = max_replicas
        self._faiss = faiss_module
        self._idle: queue.LifoQueue[tuple[Any, Any]] = queue.LifoQueue()
        self._created = 0
        self._lock = threading.Lock()

    @property
    def created(self) -> int:
        """Replicas created so far."""
        return self._created

    def _new_replica(self) -> tuple[Any, Any]:
        res = self._faiss.StandardGpuResources()
        index = self._faiss.index_cpu_to_gpu(res, self.device, self.cpu_index)
        log.info("faiss: GPU replica %d of the index on device %d", self._created, self.device)
        return res, index

    def _borrow(self) -> tuple[Any, Any]:
        try:
            return self._idle.get_nowait()
        except queue.Empty:
            pass
        with self._lock:
            create = self._created < self.max_replicas
            if create:
                self._created += 1
        if create:
            try:
                return self._new_replica()
            except BaseException:
                with self._lock:
                    self._created -= 1
                raise
        return self._idle.get()

    def search(self, xq: Any, k: int, params: Any = None) -> tuple[Any, Any]:
        """Search on a GPU replica when ``k <= GPU_MAX_K``, else on the CPU index."""
        if k > GPU_MAX_K:
            return self.cpu_index.search(xq, k, params=params)
        replica = self._borrow()
        try:
            return replica[1].search(xq, k, params=params)
        finally:
            self._idle.put(replica)
