"""ONNX Runtime sessions of an encoder bundle (DESIGN section 4): execution-provider choice and batch encoding."""

from __future__ import annotations

import logging
import os
import threading
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort

from seisbind.bundle import INPUT_NAMES, MODALITIES, ONNX_FILES, OUTPUT_NAME, BundleError, read_manifest

log = logging.getLogger("seisbind.index")

CUDA = "CUDAExecutionProvider"
CPU = "CPUExecutionProvider"


def select_providers(available: list[str] | None = None) -> list[str]:
    """Execution providers to use: CUDA first when ONNX Runtime offers it, then CPU. Logs the choice."""
    if available is None:
        available = ort.get_available_providers()
    chosen = [CUDA, CPU] if CUDA in available else [CPU]
    log.info("onnxruntime providers: %s (available: %s)", chosen, list(available))
    return chosen


def default_threads() -> int:
    """Intra-op threads: the CPU cores this process may run on."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # pragma: no cover - not Linux
        return max(1, os.cpu_count() or 1)


class OnnxEncoder:
    """One modality's ONNX encoder: ``encode(x)`` maps a batch in physical units to L2-normalised embeddings.

    Args:
        bundle_dir: encoder bundle folder.
        modality: "seismic", "velocity" or "physics".
        providers: ONNX Runtime execution providers; default :func:`select_providers`.
        intra_op_threads: threads per session run; default the process's CPU cores.
        allow_spinning: let idle intra-op threads spin-wait (lowest latency on dedicated cores); False frees
            the cores between runs (a service sharing its cores with an event loop, a busy machine).
    """

    def __init__(self, bundle_dir: str | os.PathLike[str], modality: str, providers: list[str] | None = None,
                 intra_op_threads: int | None = None, allow_spinning: bool = True) -> None:
        if modality not in MODALITIES:
            raise ValueError(f"modality {modality!r}: expected one of {', '.join(MODALITIES)}")
        self.modality = modality
        self.path = Path(bundle_dir) / ONNX_FILES[modality]
        if not self.path.is_file():
            raise BundleError(f"{self.path}: missing")
        requested = providers if providers is not None else select_providers()
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = intra_op_threads or default_threads()
        opts.inter_op_num_threads = 1
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        if not allow_spinning:
            opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
            opts.add_session_config_entry("session.inter_op.allow_spinning", "0")
        self.allow_spinning = allow_spinning
        try:
            self.session = ort.InferenceSession(str(self.path), sess_options=opts, providers=requested)
        except Exception as e:  # onnxruntime raises its own exception types for unreadable models
            raise BundleError(f"{self.path}: ONNX Runtime cannot load it: {e}") from e
        self.providers: list[str] = list(self.session.get_providers())
        if CUDA in requested and CUDA not in self.providers:
            log.warning("%s: CUDA was requested but ONNX Runtime runs it on %s", self.path, self.providers)
        inputs = {i.name: i for i in self.session.get_inputs()}
        self.input_name = INPUT_NAMES[modality]
        if self.input_name not in inputs:
            raise BundleError(f"{self.path}: no input named {self.input_name!r} (has {sorted(inputs)})")
        if OUTPUT_NAME not in {o.name for o in self.session.get_outputs()}:
            raise BundleError(f"{self.path}: no output named {OUTPUT_NAME!r}")
        self.input_shape: tuple[Any, ...] = tuple(inputs[self.input_name].shape)
        log.info("%s encoder %s on %s, %d intra-op threads", modality, self.path, self.providers,
                 opts.intra_op_num_threads)

    def check_input(self, x: np.ndarray) -> np.ndarray:
        """Validate a batch against the model's input shape; returns it as contiguous float32.
        Raises TypeError for a non-float dtype, ValueError for a wrong shape or NaN/Inf."""
        x = np.asarray(x)
        if x.dtype not in (np.float32, np.float64):
            raise TypeError(f"{self.modality} input: dtype {x.dtype}, expected float32 (or float64)")
        tail = self.input_shape[1:]
        if x.ndim != len(self.input_shape) or any(isinstance(t, int) and s != t for s, t in zip(x.shape[1:], tail)):
            want = ", ".join(str(t) if isinstance(t, int) else "?" for t in tail)
            raise ValueError(f"{self.modality} input: shape {tuple(x.shape)}, expected (batch, {want})")
        x = np.ascontiguousarray(x, dtype=np.float32)
        if not np.isfinite(x).all():
            raise ValueError(f"{self.modality} input: holds NaN or Inf values")
        return x

    def encode(self, x: np.ndarray) -> np.ndarray:
        """Embed a batch: ``x`` in physical units with a leading batch axis -> [batch, dim] float32, L2-normalised."""
        return self.run(self.check_input(x))

    def run(self, x: np.ndarray) -> np.ndarray:
        """``encode`` without the checks, for a batch that has passed ``check_input`` (or an equivalent check):
        contiguous float32 of the model's input shape, finite."""
        if len(x) == 0:
            return np.zeros((0, self.dim), np.float32)
        (out,) = self.session.run([OUTPUT_NAME], {self.input_name: x})
        return np.asarray(out, dtype=np.float32)

    @property
    def dim(self) -> int:
        """Embedding size, from the model's output shape (256 in a valid bundle)."""
        shape = self.session.get_outputs()[0].shape
        return int(shape[-1]) if isinstance(shape[-1], int) else -1


class EncoderBundle:
    """A verified encoder bundle: ``.manifest``, ``.bundle_id``, and lazily created ``.seismic``, ``.velocity``,
    ``.physics`` :class:`OnnxEncoder` sessions (created once, thread-safely, with the given session options)."""

    def __init__(self, bundle_dir: str | os.PathLike[str], providers: list[str] | None = None,
                 intra_op_threads: int | None = None, allow_spinning: bool = True) -> None:
        self.dir = Path(bundle_dir)
        self.manifest: dict[str, Any] = read_manifest(self.dir, verify=True)
        self.bundle_id: str = self.manifest["bundle_id"]
        self.embedding_dim = int(self.manifest["embedding_dim"])
        self._providers = providers
        self._threads = intra_op_threads
        self._spinning = allow_spinning
        self._encoders: dict[str, OnnxEncoder] = {}
        self._lock = threading.Lock()

    def encoder(self, modality: str) -> OnnxEncoder:
        """The session of one modality, created on first use."""
        with self._lock:
            if modality not in self._encoders:
                self._encoders[modality] = OnnxEncoder(self.dir, modality, self._providers, self._threads,
                                                         self._spinning)
            return self._encoders[modality]

    @property
    def seismic(self) -> OnnxEncoder:
        return self.encoder("seismic")

    @property
    def velocity(self) -> OnnxEncoder:
        return self.encoder("velocity")

    @property
    def physics(self) -> OnnxEncoder:
        return self.encoder("physics")
