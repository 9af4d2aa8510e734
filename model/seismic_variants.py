"""Cheaper graphs of the seismic encoder, stored in an encoder bundle beside the full-precision ``seismic.onnx``
(docs/formats.md#variants), each checked against the torch model before it is kept:

* ``fast``: the same computation with the anti-alias low-pass and decimation written as one convolution whose
  output channels are consecutive decimated samples (:class:`BlockedDecimationSeismic`), instead of a
  one-channel convolution at stride ``decimation``. Mathematically identical.
* ``int8``: the fast graph with static int8 quantisation (ONNX Runtime, QDQ format, signed 7-bit weights per
  output channel, unsigned 8-bit activations), calibrated on training gathers, of the shot-fusion network only
  (most of the arithmetic); the front end, the per-shot trunk and the projection stay float32.
"""

from __future__ import annotations

import math
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from seisbind.acquisition import N_RECEIVERS, N_SHOTS, NT
from seisbind.bundle import INPUT_NAMES
from seisbind.files import sha256_file

from model.encoders import DATA_MAX, DATA_MIN, SeismicEncoder, log_minmax

SEISMIC_VARIANTS = ("fast", "int8")
"""Variant names ``seisbind export --variant`` accepts, cheapest last."""
VARIANT_FILES = {name: f"seismic.{name}.onnx" for name in SEISMIC_VARIANTS}
INT8_PARITY_MIN_COSINE = 0.99
"""Every parity row of the int8 graph must have cosine >= this with the torch embedding (float32 graphs: the
bundle's 0.9999)."""
CALIBRATION_BATCH = 8
DECIMATION_BLOCK = 16
"""Consecutive decimated samples computed as the channels of one convolution (8 to 32 measured alike here)."""
QUANTIZED_OPS = ["Conv", "Gemm", "MatMul", "Add", "Relu"]


class BlockedDecimationSeismic(nn.Module):
    """A :class:`SeismicEncoder` whose low-pass and decimation compute ``DECIMATION_BLOCK`` consecutive output
    samples as the output channels of one convolution (kernel shifted by ``decimation`` samples per channel,
    stride ``DECIMATION_BLOCK * decimation``), then interleave them back into time order. Same sums as the
    one-channel strided convolution; ONNX Runtime runs it several times faster (its blocked-channel
    convolution fills all output lanes instead of one)."""

    weight: torch.Tensor

    def __init__(self, enc: SeismicEncoder, block: int = DECIMATION_BLOCK) -> None:
        super().__init__()
        self.enc, self.block = enc, block
        d, h = enc.cfg.decimation, enc.lowpass.view(-1)
        k = len(h)
        self.steps = enc.decimated_length
        self.rows = math.ceil(self.steps / block)  # output positions of the blocked convolution
        length = d * (block - 1) + k
        right = d * block * (self.rows - 1) + length - k // 2 - NT  # zeros needed after the trace
        self.pad = max(k // 2, right)  # symmetric, inside the convolution; kernels shifted by the excess
        shift = self.pad - k // 2
        w = torch.zeros(block, 1, shift + length, 1, dtype=h.dtype)
        for c in range(block):  # channel c: output sample block * m + c
            w[c, 0, shift + d * c:shift + d * c + k, 0] = h
        self.register_buffer("weight", w)

    def preprocess(self, gathers: torch.Tensor) -> torch.Tensor:
        """[batch, 5, 1000, 70] raw -> [batch, 5, T', 70], as :meth:`SeismicEncoder.preprocess`."""
        b, d = gathers.shape[0], self.enc.cfg.decimation
        if d == 1:
            return self.enc.preprocess(gathers)
        x = gathers.reshape(b * N_SHOTS, 1, NT, N_RECEIVERS).float()
        x = F.conv2d(x, self.weight, stride=(d * self.block, 1), padding=(self.pad, 0))
        x = x.transpose(1, 2).reshape(b * N_SHOTS, self.rows * self.block, N_RECEIVERS)[:, :self.steps]
        return log_minmax(x, DATA_MIN, DATA_MAX).reshape(b, N_SHOTS, self.steps, N_RECEIVERS)

    def forward(self, gathers: torch.Tensor) -> torch.Tensor:
        return self.enc.forward_features(self.preprocess(gathers))


def _calibration_reader(gathers: np.ndarray) -> Any:
    from onnxruntime.quantization import CalibrationDataReader

    class Reader(CalibrationDataReader):  # type: ignore[misc]  # untyped base class
        def __init__(self) -> None:
            self.batches: Iterator[np.ndarray] = iter(
                np.ascontiguousarray(gathers[s:s + CALIBRATION_BATCH], np.float32)
                for s in range(0, len(gathers), CALIBRATION_BATCH))

        def get_next(self) -> dict[str, np.ndarray] | None:
            x = next(self.batches, None)
            return None if x is None else {INPUT_NAMES["seismic"]: x}

    return Reader()


def fusion_nodes(path: Path) -> list[str]:
    """Names of the nodes the int8 graph quantises: those of the shot-fusion network (``SeismicEncoder.fuse``,
    where most of the arithmetic is). The front end, the per-shot trunk and the projection stay float32: measured
    on a trained bundle, quantising the trunk too cost most of the accuracy (mean cosine to torch 0.9992 against
    0.9998) for a small share of the time."""
    import onnx

    names = [n.name for n in onnx.load(str(path)).graph.node if "/fuse/" in n.name]
    if not names:
        raise ValueError(f"{path}: no shot-fusion nodes found: not a seismic encoder graph")
    return names


def quantize_int8(fp32: Path, out: Path, calibration: np.ndarray) -> None:
    """Static int8 quantisation (QDQ, per-channel signed 7-bit weights, unsigned 8-bit activations, min-max
    calibration on ``calibration`` gathers [n, 5, 1000, 70] in physical units) of the float32 seismic graph ``fp32``
    into ``out``. 7-bit weights (``reduce_range``) keep AVX2's 8-bit multiply-add (no VNNI) from saturating."""
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    with tempfile.TemporaryDirectory(prefix="seisbind-quant-") as tmp:
        pre = Path(tmp) / "pre.onnx"
        quant_pre_process(str(fp32), str(pre), skip_optimization=False)
        quantize_static(str(pre), str(out), _calibration_reader(calibration), quant_format=QuantFormat.QDQ,
                        op_types_to_quantize=QUANTIZED_OPS, per_channel=True,
                        activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                        nodes_to_quantize=fusion_nodes(pre), calibrate_method=CalibrationMethod.MinMax,
                        reduce_range=True,
                        extra_options={"CalibTensorRangeSymmetric": False})


def export_seismic_variants(enc: SeismicEncoder, folder: Path, names: tuple[str, ...], parity: np.ndarray,
                            calibration: np.ndarray | None,
                            int8_parity: np.ndarray | None = None) -> dict[str, dict[str, Any]]:
    """Write the seismic variants ``names`` into the bundle folder ``folder``, each checked against ``enc`` on the
    ``parity`` gathers (the int8 graph on ``int8_parity`` when given: gathers like its calibration set, e.g.
    training gathers it was not calibrated on); returns their manifest entries {name: {"file", "sha256", ...}}.

    Raises ParityError when a variant's outputs differ from torch; ValueError for an unknown name or an int8
    variant without calibration gathers."""
    from model.export import PARITY_MIN_COSINE, export_onnx, parity_check

    if not names:
        return {}
    unknown = [n for n in names if n not in SEISMIC_VARIANTS]
    if unknown:
        raise ValueError(f"unknown seismic variant(s) {unknown}: expected some of {', '.join(SEISMIC_VARIANTS)}")
    poly = BlockedDecimationSeismic(enc).eval()
    x = np.ascontiguousarray(parity, np.float32)
    fp32 = folder / VARIANT_FILES["fast"]
    export_onnx(poly, torch.from_numpy(x[:2]), INPUT_NAMES["seismic"], fp32)
    out: dict[str, dict[str, Any]] = {}
    if "fast" in names:
        cos = parity_check(enc, fp32, x, INPUT_NAMES["seismic"])
        out["fast"] = {"file": fp32.name, "precision": "float32", "parity_min_cosine": cos,
                       "parity_threshold": PARITY_MIN_COSINE,
                       "method": f"low-pass and decimation as one {DECIMATION_BLOCK}-channel strided "
                                 "convolution (same sums)"}
    if "int8" in names:
        if calibration is None or not len(calibration):
            raise ValueError("the int8 variant needs calibration gathers (training gathers)")
        q = folder / VARIANT_FILES["int8"]
        quantize_int8(fp32, q, calibration)
        xq = x if int8_parity is None else np.ascontiguousarray(int8_parity, np.float32)
        cos = parity_check(enc, q, xq, INPUT_NAMES["seismic"], INT8_PARITY_MIN_COSINE)
        out["int8"] = {"file": q.name, "precision": "int8", "parity_min_cosine": cos,
                       "parity_threshold": INT8_PARITY_MIN_COSINE,
                       "method": "static int8 QDQ (ONNX Runtime) of the shot-fusion network, per-channel 7-bit weights",
                       "calibration": {"gathers": int(len(calibration)), "method": "minmax"},
                       "parity_rows": int(len(xq))}
    if "fast" not in names:
        fp32.unlink()
    for v in out.values():
        v["sha256"] = sha256_file(folder / v["file"])
    return out
