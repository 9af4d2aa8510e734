"""The learned refiner's runner: ``refiner.onnx`` of an encoder bundle, run with ONNX Runtime (torch-free; see
docs/learned_refiner.md and docs/formats.md).

The graph takes the raw gathers of a query (training-scale amplitudes, as ``/retrieve`` receives them), its k
retrieved bank models (m/s, best first) and their cosine similarities, and returns one velocity model per query
in m/s, inside 1500-4500:

* input ``gathers`` [N, 5, 1000, 70] float32, input ``models`` [N, k, 70, 70] float32, input ``scores`` [N, k]
  float32 (k fixed by the graph);
* output ``velocity`` [N, 70, 70] float32.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from seisbind.acquisition import GATHER_SHAPE, NX, NZ
from seisbind.bundle import REFINER_FILE, BundleError, create_session
from seisbind.cores import usable_cores
from seisbind.files import PathLike

if TYPE_CHECKING:
    import onnxruntime as ort

log = logging.getLogger("seisbind.refiner")

__all__ = ["REFINER_FILE", "REFINER_INPUTS", "REFINER_OUTPUT", "LearnedRefiner"]

REFINER_INPUTS = ("gathers", "models", "scores")
REFINER_OUTPUT = "velocity"


def _float_array(x: Any, name: str) -> np.ndarray:
    a = np.asarray(x)
    if a.dtype not in (np.float32, np.float64):
        raise TypeError(f"{name}: dtype {a.dtype}, expected float32 (or float64)")
    return a


def _finite(a: np.ndarray, name: str) -> np.ndarray:
    a = np.ascontiguousarray(a, dtype=np.float32)
    if not np.isfinite(a).all():
        raise ValueError(f"{name}: holds NaN or Inf values")
    return a


class LearnedRefiner:
    """The learned refiner of an encoder bundle: ``refine(gathers, models, scores)`` -> velocity models (m/s).

    Args:
        path: the ``refiner.onnx`` file.
        providers: ONNX Runtime execution providers; default :func:`seisbind.bundle.select_providers`.
        intra_op_threads: threads per run; default the process's usable cores.
        allow_spinning: let idle intra-op threads spin-wait (see :class:`seisbind.bundle.OnnxEncoder`).

    Attributes: ``k`` (neighbours per query the graph expects), ``path``, ``providers``.

    Raises:
        BundleError: the file is missing, ONNX Runtime cannot load it, or its inputs/outputs are not the
            refiner's (names, or a ``models`` input without a fixed k).
    """

    def __init__(self, path: PathLike, providers: list[str] | None = None, intra_op_threads: int | None = None,
                 allow_spinning: bool = True) -> None:
        self.path = Path(path)
        self.session: "ort.InferenceSession" = create_session(self.path, providers, intra_op_threads,
                                                              allow_spinning)
        self.providers: list[str] = list(self.session.get_providers())
        inputs = {i.name: i for i in self.session.get_inputs()}
        missing = [n for n in REFINER_INPUTS if n not in inputs]
        if missing:
            raise BundleError(f"{self.path}: no input named {missing[0]!r} (has {sorted(inputs)})")
        if REFINER_OUTPUT not in {o.name for o in self.session.get_outputs()}:
            raise BundleError(f"{self.path}: no output named {REFINER_OUTPUT!r}")
        out_shape = next(o.shape for o in self.session.get_outputs() if o.name == REFINER_OUTPUT)
        if len(out_shape) != 3 or tuple(out_shape[1:]) != (NZ, NX):
            raise BundleError(f"{self.path}: output {REFINER_OUTPUT!r} has shape {out_shape}, "
                              f"expected (batch, {NZ}, {NX})")
        shape = inputs["models"].shape
        if len(shape) != 4 or not isinstance(shape[1], int) or shape[1] < 1:
            raise BundleError(f"{self.path}: input 'models' has shape {shape}, expected (batch, k, {NZ}, {NX})")
        self.k: int = int(shape[1])
        log.info("learned refiner %s (k=%d) on %s, %d intra-op threads", self.path, self.k, self.providers,
                 intra_op_threads or usable_cores())

    def check_inputs(self, gathers: Any, models: Any, scores: Any) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Validate one batch; returns contiguous float32 (gathers [N,5,1000,70], models [N,k,70,70], scores [N,k]):
        of K >= k neighbours given (best first), the best k. ``models`` may also be [N,K,1,70,70]. Raises TypeError
        for a non-float dtype, ValueError naming the input for a wrong shape, a batch size that differs between
        inputs, fewer than k neighbours, or NaN/Inf."""
        g = _float_array(gathers, "gathers")
        m = _float_array(models, "models")
        s = _float_array(scores, "scores")
        if g.ndim != 4 or g.shape[1:] != GATHER_SHAPE:
            raise ValueError(f"gathers: shape {g.shape}, expected (batch, {', '.join(map(str, GATHER_SHAPE))})")
        if m.ndim == 5 and m.shape[2] == 1:
            m = m[:, :, 0]
        if m.ndim != 4 or m.shape[2:] != (NZ, NX):
            raise ValueError(f"models: shape {m.shape}, expected (batch, k, {NZ}, {NX}) m/s")
        if s.ndim != 2:
            raise ValueError(f"scores: shape {s.shape}, expected (batch, k)")
        n = len(g)
        if len(m) != n or len(s) != n:
            raise ValueError(f"batch sizes differ: gathers {n}, models {len(m)}, scores {len(s)}")
        if m.shape[1] != s.shape[1] or m.shape[1] < self.k:
            raise ValueError(f"models/scores: {m.shape[1]}/{s.shape[1]} neighbours per query, the refiner needs "
                             f"k={self.k} (retrieve at least {self.k}, best first)")
        m, s = m[:, :self.k], s[:, :self.k]  # the best k
        return _finite(g, "gathers"), _finite(m, "models"), _finite(s, "scores")

    def refine(self, gathers: np.ndarray, models: np.ndarray, scores: np.ndarray) -> np.ndarray:
        """Refined velocity models: gathers [N,5,1000,70] (raw training-scale amplitudes), models [N,K,70,70] m/s
        (the retrieved neighbours, best first, K >= k: the best k are used), scores [N,K] (their cosine
        similarities) -> [N,70,70] float32 m/s.
        Raises TypeError/ValueError as :meth:`check_inputs`."""
        g, m, s = self.check_inputs(gathers, models, scores)
        if len(g) == 0:
            return np.zeros((0, NZ, NX), np.float32)
        (out,) = self.session.run([REFINER_OUTPUT], {"gathers": g, "models": m, "scores": s})
        return np.asarray(out, dtype=np.float32)
