"""Export the tri-modal model as an encoder bundle (docs/formats.md): three ONNX graphs in physical units with a
dynamic batch axis, a parity check against torch, and a manifest, written atomically (a temporary folder renamed
into place, so a reader never sees half a bundle)."""

from __future__ import annotations

import logging
import os
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from seisbind.acquisition import GATHER_SHAPE, V_MAX, V_MIN, VELOCITY_SHAPE
from seisbind.bundle import (
    CPU,
    FULL,
    INPUT_NAMES,
    MANIFEST,
    MODALITIES,
    ONNX_FILES,
    OUTPUT_NAME,
    BundleManifest,
    create_session,
    finish_manifest,
    read_manifest,
)
from seisbind.cores import usable_cores
from seisbind.descriptors import DESCRIPTOR_NAMES, DESCRIPTOR_UNITS, compute_descriptors
from seisbind.files import staged_folder
from seisbind.provenance import git_commit, portable_path

from model.config import ModelConfig
from model.encoders import DATA_MAX, DATA_MIN, N_DESCRIPTORS, SeisBindModel, create_model
from model.seismic_variants import export_seismic_variants

log = logging.getLogger("seisbind.export")

OPSET = 17
INT8_PARITY_ROWS = 32
"""Training gathers, besides the calibration set, the int8 variant of a run's export is checked on."""
PARITY_MIN_COSINE = 0.9999
"""Every row of the parity set must have cosine >= this between the ONNX and the torch embedding."""

INPUT_SHAPES = {"seismic": list(GATHER_SHAPE), "velocity": list(VELOCITY_SHAPE), "physics": [N_DESCRIPTORS]}


class ParityError(RuntimeError):
    """An exported ONNX graph whose outputs differ from the torch model's."""


def synthetic_inputs(n: int = 8, seed: int = 0) -> dict[str, np.ndarray]:
    """Plausible inputs for parity checks when no real data is at hand: layered velocity models with some
    lateral variation (m/s), their descriptors, and decaying random gathers within OpenFWI's amplitude range."""
    rng = np.random.default_rng(seed)
    depth = np.sort(rng.uniform(V_MIN, V_MAX, size=(n, 1, VELOCITY_SHAPE[1], 1)), axis=2)
    tilt = rng.uniform(-3, 3, size=(n, 1, 1, 1)) * np.arange(VELOCITY_SHAPE[2])[None, None, None, :]
    vel = np.clip(depth + tilt, V_MIN, V_MAX).astype(np.float32)
    decay = np.exp(-np.arange(GATHER_SHAPE[1]) / 250.0)[None, None, :, None]
    gathers = (rng.standard_normal((n, *GATHER_SHAPE)) * 8 * decay).clip(DATA_MIN, DATA_MAX).astype(np.float32)
    return {"seismic": gathers, "velocity": vel, "physics": compute_descriptors(vel).astype(np.float32)}


def _encoders(model: SeisBindModel) -> dict[str, nn.Module]:
    return {"seismic": model.seismic, "velocity": model.velocity, "physics": model.physics}


def export_onnx(module: nn.Module, example: torch.Tensor, input_name: str, path: Path) -> None:
    """Export one encoder (eval mode, float32) to ONNX with a dynamic batch axis (TorchScript exporter)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            module, (example,), str(path), input_names=[input_name], output_names=[OUTPUT_NAME],
            dynamic_axes={input_name: {0: "batch"}, OUTPUT_NAME: {0: "batch"}}, opset_version=OPSET,
            do_constant_folding=True, dynamo=False,
        )


def parity_check(module: nn.Module, path: Path, x: np.ndarray, input_name: str,
                 threshold: float | None = None) -> float:
    """Run the ONNX file with ONNX Runtime and the torch module on ``x``; return the smallest per-row cosine.
    Raises ParityError if it is below ``threshold`` (default PARITY_MIN_COSINE)."""
    threshold = PARITY_MIN_COSINE if threshold is None else threshold
    sess = create_session(path, providers=[CPU], threads=min(2, usable_cores()))
    got = sess.run([OUTPUT_NAME], {input_name: x})[0]
    with torch.no_grad():
        want = module(torch.from_numpy(x)).numpy()
    if got.shape != want.shape:
        raise ParityError(f"{path.name}: ONNX output shape {got.shape} differs from torch {want.shape}")
    cos = (got * want).sum(1) / (np.linalg.norm(got, axis=1) * np.linalg.norm(want, axis=1) + 1e-12)
    worst = float(cos.min())
    if not worst >= threshold:
        raise ParityError(f"{path.name}: ONNX/torch cosine {worst:.6f} < {threshold} on the parity set")
    return worst


def _normalisation(cfg: ModelConfig) -> dict[str, Any]:
    return {
        "seismic": {"transform": "lowpass+decimate, then sign(x)*log1p(|x|), then min-max to [-1, 1]",
                    "data_min": DATA_MIN, "data_max": DATA_MAX, "decimation": cfg.decimation,
                    "lowpass_hz": cfg.lowpass_hz, "lowpass_taps": cfg.lowpass_taps},
        "velocity": {"transform": "min-max to [-1, 1]", "v_min": V_MIN, "v_max": V_MAX, "unit": "m/s"},
        "physics": {"transform": "(x - mean) / std", "stats": "descriptor_stats",
                    "units": [DESCRIPTOR_UNITS[n] for n in DESCRIPTOR_NAMES]},
    }


def _manifest_doc(model: SeisBindModel, parity: dict[str, Any], training: dict[str, Any],
                  metrics: dict[str, Any]) -> dict[str, Any]:
    """The manifest's keys of docs/formats.md, without the hashes (added by finish_manifest)."""
    return {
        "format": "seisbind-encoders/1",
        "embedding_dim": model.cfg.embed_dim,
        "input_names": dict(INPUT_NAMES),
        "output_name": OUTPUT_NAME,
        "input_shapes": INPUT_SHAPES,
        "normalisation": _normalisation(model.cfg),
        "descriptor_names": list(DESCRIPTOR_NAMES),
        "descriptor_units": [DESCRIPTOR_UNITS[n] for n in DESCRIPTOR_NAMES],
        "descriptor_stats": {"mean": model.physics.mean.tolist(), "std": model.physics.std.tolist()},
        "logit_scale": float(model.scale().detach()),
        "logit_scale_vp": float(model.scale_vp().detach()),
        "model_config": model.cfg.to_dict(),
        "opset": OPSET,
        "parity": parity,
        "training": training,
        "metrics": metrics,
    }


def export_bundle(model: SeisBindModel, out_dir: str | os.PathLike[str], *, training: dict[str, Any],
                  metrics: dict[str, Any], parity_inputs: dict[str, np.ndarray] | None = None,
                  seismic_variants: Sequence[str] = (), calibration: np.ndarray | None = None,
                  int8_parity: np.ndarray | None = None, default_variant: str | None = None) -> BundleManifest:
    """Write ``model`` as an encoder bundle into ``out_dir`` and return its manifest.

    Args:
        model: the tri-modal model (any device/mode; exported on CPU in eval mode, float32).
        out_dir: bundle folder; written via a temporary sibling folder and renamed (an existing bundle is replaced).
        training: provenance stored under the manifest's ``training`` key (data, config, git commit, ...).
        metrics: figures stored under ``metrics``.
        parity_inputs: {modality: array in physical units} for the parity check; synthetic inputs if None.
        seismic_variants: cheaper seismic graphs to add (``model.seismic_variants.SEISMIC_VARIANTS``), each
            checked against torch on the parity gathers.
        calibration: gathers [n, 5, 1000, 70] the int8 variant is calibrated on (training gathers).
        int8_parity: gathers the int8 variant's parity is checked on (default: the parity set's); training gathers
            outside the calibration set, since int8 ranges only fit data like those it was calibrated on.
        default_variant: the seismic graph sessions use by default ("full" or one of ``seismic_variants``;
            default: the last of ``seismic_variants``, else the full-precision graph).

    Raises:
        ParityError: an ONNX graph does not reproduce torch (cosine < 0.9999 on some row; int8: 0.99).
        ValueError: an unknown variant, a default that is not exported, int8 without calibration gathers.
    """
    if default_variant not in (None, FULL, *seismic_variants):
        raise ValueError(f"default variant {default_variant!r} is neither 'full' nor among the exported variants "
                         f"{list(seismic_variants)}")
    model = model.to("cpu").float().eval()
    inputs = parity_inputs if parity_inputs is not None else synthetic_inputs()
    with staged_folder(out_dir, MANIFEST, "an encoder bundle") as tmp:
        parity = {}
        for m, enc in _encoders(model).items():
            x = np.ascontiguousarray(inputs[m], np.float32)
            path = tmp / ONNX_FILES[m]
            export_onnx(enc, torch.from_numpy(x[:2]), INPUT_NAMES[m], path)
            parity[m] = parity_check(enc, path, x, INPUT_NAMES[m])
        variants = export_seismic_variants(model.seismic, tmp, tuple(seismic_variants), inputs["seismic"], calibration,
                                           int8_parity)
        doc = _manifest_doc(model, {"min_cosine": parity, "rows": int(len(inputs["velocity"])),
                                    "threshold": PARITY_MIN_COSINE}, training, metrics)
        if variants:
            doc["variants"] = {"seismic": variants}
            doc["default_variants"] = {"seismic": default_variant or list(variants)[-1]}
        manifest = finish_manifest(tmp, doc)
    return manifest


def export_untrained_bundle(out: str | os.PathLike[str], seed: int = 0, seismic_variants: Sequence[str] = (),
                            cfg: ModelConfig | None = None) -> BundleManifest:
    """A randomly-initialised model (default the tiny architecture) exported as a valid bundle (for tests of the
    index and service, and speed measurements), with ``seismic_variants`` calibrated on synthetic gathers.

    Descriptor statistics are those of uniformly random layered models in 1500-4500 m/s."""
    model = create_model(cfg or ModelConfig.tiny(), seed=seed)
    desc = synthetic_inputs(64, seed=seed)["physics"].astype(np.float64)
    model.physics.set_stats(desc.mean(0), desc.std(0) + 1e-6)
    calibration = synthetic_inputs(16, seed=seed + 1)["seismic"] if seismic_variants else None
    return export_bundle(model, out, training={"untrained": True, "seed": seed, "config": model.cfg.to_dict()},
                         metrics={}, parity_inputs=synthetic_inputs(4, seed=seed), seismic_variants=seismic_variants,
                         calibration=calibration)


def calibration_gathers(data_folders: Sequence[str], n: int, seed: int = 0) -> np.ndarray:
    """``n`` training gathers drawn at random (fixed ``seed``) evenly from the readable folders, for int8
    calibration. Raises ValueError when no folder is readable."""
    from seisbind.openfwi import OpenFWIError, open_dataset

    sets = []
    for folder in data_folders:
        try:
            sets.append(open_dataset(folder))
        except OpenFWIError:
            continue
    if not sets or n < 1:
        raise ValueError(f"int8 calibration needs training gathers: none readable in {list(data_folders)}")
    rng = np.random.default_rng(seed)
    out = []
    for i, ds in enumerate(sets):
        files = [(f, r) for f, arr in enumerate(ds.data) for r in range(len(arr))]
        take = n // len(sets) + (1 if i < n % len(sets) else 0)
        for j in sorted(rng.choice(len(files), size=min(take, len(files)), replace=False)):
            f, r = files[j]
            out.append(np.asarray(ds.data[f][r], np.float32))
    return np.stack(out)


def run_parity_inputs(data_folders: list[str], n: int = 8) -> dict[str, np.ndarray] | None:
    """Up to ``n`` real pairs from the first readable training folder (parity on realistic inputs), else None."""
    from seisbind.openfwi import OpenFWIError, open_dataset

    for folder in data_folders:
        try:
            ds = open_dataset(folder)
        except OpenFWIError:
            continue
        g, m = np.asarray(ds.data[0][:n]), np.asarray(ds.models[0][:n])
        return {"seismic": g, "velocity": m, "physics": compute_descriptors(m).astype(np.float32)}
    return None


def export_run(run: str | os.PathLike[str], out: str | os.PathLike[str], seismic_variants: Sequence[str] = (),
               calibration: int = 256, default_variant: str | None = None, readout: bool = True) -> BundleManifest:
    """``seisbind export``: the latest checkpoint of a training run as an encoder bundle; returns the manifest.
    ``seismic_variants``, ``default_variant``: see :func:`export_bundle`; an int8 variant is calibrated on
    ``calibration`` gathers drawn from the run's training folders and checked on INT8_PARITY_ROWS others. With
    ``readout``, the bundle's descriptor readout is fitted on the run's training pairs (seisbind.readout_fit);
    when they cannot be read any more, or are too few, the bundle has none and a warning says why."""
    from model.checkpoint import load_checkpoint, model_from_checkpoint

    ckpt = load_checkpoint(run)
    model = model_from_checkpoint(ckpt)
    history = ckpt.get("history") or []
    training = {
        "run": portable_path(run), "data": ckpt.get("data"), "config": ckpt["config"],
        "git_commit": git_commit(), "train_minutes": ckpt["elapsed_s"] / 60, "epochs": ckpt["epoch"],
        "steps": ckpt["global_step"], "finished": ckpt.get("finished", False), "precision": ckpt.get("precision"),
        "world_size": ckpt.get("world_size", 1),
    }
    parity = run_parity_inputs(list(ckpt["config"]["data"]))
    if parity is not None:
        synth = synthetic_inputs(4)
        parity = {m: np.concatenate([parity[m], synth[m]]) for m in MODALITIES}
    gathers = (calibration_gathers(list(ckpt["config"]["data"]), calibration + INT8_PARITY_ROWS)
               if "int8" in seismic_variants else None)
    held_out = None
    if gathers is not None:  # both sets from every folder; a quarter at most held out when the folders are small
        gathers = gathers[np.random.default_rng(0).permutation(len(gathers))]
        n = min(INT8_PARITY_ROWS, len(gathers) // 4)
        gathers, held_out = gathers[:len(gathers) - n][:calibration], (gathers[len(gathers) - n:] if n else None)
    manifest = export_bundle(model, out, training=training, metrics=history[-1] if history else {},
                             parity_inputs=parity, seismic_variants=seismic_variants, default_variant=default_variant,
                             calibration=gathers, int8_parity=held_out)
    if readout:
        from seisbind.openfwi import OpenFWIError
        from seisbind.readout import ReadoutError
        from seisbind.readout_fit import fit_bundle_readout

        try:
            fit_bundle_readout(out, list(ckpt["config"]["data"]), out)
            manifest = read_manifest(out)
        except (OpenFWIError, ReadoutError) as e:
            log.warning("%s: no descriptor readout: %s", out, e)
    return manifest
