"""Export of the learned refiner into an encoder bundle (docs/formats.md): ``refiner.onnx`` (raw gathers, k
neighbour models and their scores -> velocity in m/s, dynamic batch axis) beside a copy of the bundle's encoders, a
parity check of ONNX Runtime against torch on held-out pairs, and the manifest's ``refiner`` section and sha256;
written into a temporary sibling folder and renamed into place (a reader never sees half a bundle)."""

from __future__ import annotations

import os
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch

from seisbind.bundle import (
    CPU,
    MANIFEST,
    REFINER_FILE,
    BundleManifest,
    finish_manifest,
    read_manifest,
)
from seisbind.bundle_copy import copy_bundle_files
from seisbind.files import staged_folder
from seisbind.openfwi import PairedDataset
from seisbind.provenance import git_commit, portable_path
from seisbind.refiner import REFINER_INPUTS, REFINER_OUTPUT, LearnedRefiner

from model.export import OPSET, ParityError
from model.refiner import RefinerNet
from model.refiner_config import RefinerTrainConfig
from model.refiner_data import RefinerData

PARITY_MAX_MPS = 1.0
"""Largest allowed difference (m/s) between the ONNX and the torch refiner on any cell of the parity set."""


def raw_gathers(datasets: list[PairedDataset], rows: np.ndarray) -> np.ndarray:
    """Raw gathers [n, 5, 1000, 70] float32 of the given rows of the concatenated datasets."""
    starts = np.cumsum([0] + [len(d) for d in datasets])
    out = []
    for r in np.asarray(rows):
        d = int(np.searchsorted(starts, r, side="right") - 1)
        out.append(np.asarray(datasets[d].get(int(r - starts[d]))[0], np.float32))
    return np.stack(out)


def export_refiner_onnx(net: RefinerNet, path: Path) -> None:
    """The refiner (eval mode, float32, CPU) as an ONNX graph with a dynamic batch axis and a fixed k."""
    net = net.to("cpu").float().eval()
    k = net.cfg.k
    example = (torch.zeros(2, 5, 1000, 70), torch.full((2, k, 70, 70), 2500.0), torch.full((2, k), 0.5))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(net, example, str(path), input_names=list(REFINER_INPUTS), output_names=[REFINER_OUTPUT],
                          dynamic_axes={n: {0: "batch"} for n in (*REFINER_INPUTS, REFINER_OUTPUT)},
                          opset_version=OPSET, do_constant_folding=True, dynamo=False)


def refiner_parity(net: RefinerNet, path: Path, gathers: np.ndarray, models: np.ndarray, scores: np.ndarray
                   ) -> float:
    """Run the ONNX file (through seisbind.refiner.LearnedRefiner) and the torch module on the same inputs;
    return the largest absolute difference in m/s. Raises ParityError above PARITY_MAX_MPS."""
    got = LearnedRefiner(path, providers=[CPU], intra_op_threads=1).refine(gathers, models, scores)
    with torch.no_grad():
        want = net.eval()(torch.from_numpy(gathers), torch.from_numpy(models), torch.from_numpy(scores)).numpy()
    worst = float(np.abs(got - want).max())
    if not worst <= PARITY_MAX_MPS:
        raise ParityError(f"{path.name}: ONNX and torch differ by {worst:.3f} m/s (> {PARITY_MAX_MPS}) on the "
                          "parity set")
    return worst


def export_refiner(net: RefinerNet, cfg: RefinerTrainConfig, data: RefinerData, out: str | os.PathLike[str],
                   metrics: dict[str, Any], parity_rows: int = 8) -> BundleManifest:
    """Write a new encoder bundle at ``out``: the bundle ``cfg.encoders`` (its encoders, variants and calibration
    copied unchanged, so its bundle_id and the indexes built with it stay valid) plus ``refiner.onnx``; returns its
    manifest.

    Raises:
        ParityError: the ONNX refiner does not reproduce torch on held-out pairs.
        BundleError: the source bundle is missing or corrupt.
        FileExistsError: ``out`` exists and is not an encoder bundle.
    """
    src = Path(cfg.encoders)
    manifest = read_manifest(src, verify=True)
    with staged_folder(out, MANIFEST, "an encoder bundle") as tmp:
        copy_bundle_files(src, tmp, manifest.raw, skip=(REFINER_FILE,))
        export_refiner_onnx(net, tmp / REFINER_FILE)
        rows = np.arange(min(parity_rows, len(data.val)))
        g = raw_gathers(data.datasets, data.val.pairs[rows])
        models = data.bank[data.val.rows[rows]].numpy()
        worst = refiner_parity(net, tmp / REFINER_FILE, g, models, data.val.scores[rows].numpy())
        section = {"file": REFINER_FILE, "k": net.cfg.k, "inputs": list(REFINER_INPUTS), "output": REFINER_OUTPUT,
                   "config": net.cfg.to_dict(), "opset": OPSET,
                   "parity": {"max_abs_mps": worst, "rows": len(rows), "threshold_mps": PARITY_MAX_MPS},
                   "training": {"data": [portable_path(d) for d in cfg.data], "config": cfg.to_dict() | {
                       "data": [portable_path(d) for d in cfg.data], "encoders": portable_path(cfg.encoders),
                       "out": portable_path(cfg.out)}, "git_commit": git_commit(),
                       "encoders_bundle_id": manifest.bundle_id},
                   "metrics": metrics}
        doc = {k: v for k, v in manifest.raw.items() if k not in ("sha256", "bundle_id")}
        new = finish_manifest(tmp, {**doc, "refiner": section})
    return new
