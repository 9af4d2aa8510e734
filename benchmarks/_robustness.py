"""Noise and muted-trace curves of benchmarks/ood.py: the in-distribution test gathers perturbed with
``model.augment`` (Gaussian noise at an exact SNR per gather; a random set of traces of every shot zeroed), then
P1 R@1 against the gallery of every in-distribution test model, P2 descriptor error from the 5 nearest bank
entries, and the confidence, ECE and OOD flag rate under a calibration fitted on clean data."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import torch

from seisbind.calibration import EVENT_MAE_MPS, Calibration, summarise, top1_mae
from seisbind.descriptors import compute_descriptors, mean_relative_error
from seisbind.neighbours import infer_descriptors
from seisbind.openfwi import open_dataset
from seisbind.readout import blend
from seisbind.retrieval_metrics import true_ranks

from benchmarks._ood_data import Setup, log
from index.calibrate import search_features
from model.augment import add_noise, mute_traces

BATCH = 16
SEED = 7


def _conditions(snrs: list[float], muted: list[int]) -> dict[str, Callable[[torch.Tensor, torch.Generator],
                                                                           torch.Tensor]]:
    out: dict[str, Callable[[torch.Tensor, torch.Generator], torch.Tensor]] = {"clean": lambda x, g: x}
    for snr in snrs:
        out[f"noise:{snr:g}"] = lambda x, g, snr=snr: add_noise(x, torch.full((len(x),), float(snr)), g)
    for n in muted:
        out[f"muted:{n}"] = lambda x, g, n=n: mute_traces(x, torch.full((len(x),), n), g)
    return out


def _embed_gallery(setup: Setup) -> np.ndarray:
    enc = setup.bundle.velocity
    m = setup.gallery_models
    return np.concatenate([enc.encode(np.asarray(m[s:s + 64], np.float32)) for s in range(0, len(m), 64)])


def robustness(setup: Setup, cal: Calibration, snrs: list[float], muted: list[int],
               variants: dict[str, Calibration] | None = None) -> dict[str, Any]:
    """``noise.<snr>`` and ``muted.<n>`` (and ``clean``): R@1, descriptor_mre (and ``blend_descriptor_mre`` with
    the bundle's readout, when it has one), confidence figures of ``cal`` and, under ``calibration_variants``, of
    each of ``variants``."""
    conds = _conditions(snrs, muted)
    gens = {name: torch.Generator().manual_seed(SEED + i) for i, name in enumerate(conds)}
    emb: dict[str, list[np.ndarray]] = {c: [] for c in conds}
    feats: dict[str, list[np.ndarray]] = {c: [] for c in conds}
    mae: dict[str, list[np.ndarray]] = {c: [] for c in conds}
    desc: dict[str, list[np.ndarray]] = {c: [] for c in conds}
    truth = []
    enc, searcher = setup.bundle.seismic, setup.searcher
    for folder in setup.id_folders.values():
        ds = open_dataset(folder)
        for data, models in zip(ds.data, ds.models):
            for s in range(0, len(data), BATCH):
                x, m = torch.from_numpy(np.array(data[s:s + BATCH], np.float32)), np.asarray(models[s:s + BATCH])
                truth.append(m)
                for name, perturb in conds.items():
                    g = perturb(x, gens[name]).numpy()
                    e = enc.encode(g)
                    f, D, I = search_features(searcher, e, g)
                    emb[name].append(e)
                    feats[name].append(f)
                    mae[name].append(top1_mae(searcher.velocity_models(I[:, 0]), m))
                    desc[name].append(infer_descriptors(searcher.descriptors, D, I)[0])
        log(f"robustness: {folder.name} done")
    true_models = np.concatenate(truth)
    true_desc = compute_descriptors(true_models)
    G = _embed_gallery(setup)
    readout = setup.bundle.readout
    out: dict[str, Any] = {"noise": {}, "muted": {}, "gallery_size": int(len(G)), "queries": int(len(true_models))}
    for name in conds:
        S, X = np.concatenate(emb[name]), np.concatenate(feats[name])
        err = np.concatenate(mae[name])
        ranks = true_ranks(S, G)
        row = {"R@1": float(np.mean(ranks < 1)), "R@5": float(np.mean(ranks < 5)),
               "descriptor_mre": mean_relative_error(np.concatenate(desc[name]), true_desc),
               "top1_mae_mps": float(err.mean())}
        if readout is not None:
            mixed = blend(np.concatenate(desc[name]), readout.predict(S))
            row["blend_descriptor_mre"] = mean_relative_error(mixed, true_desc)
        cs = summarise(cal.confidence(X), err <= EVENT_MAE_MPS, cal.out_of_distribution(X))
        row.update({f"calibration_{k}": v for k, v in cs.items() if k not in ("reliability", "n")})
        row["calibration_variants"] = {
            v: {k: x for k, x in summarise(c.confidence(X), err <= EVENT_MAE_MPS, c.out_of_distribution(X)).items()
                if k in ("ece", "mean_confidence", "ood_flag_rate")} for v, c in (variants or {}).items()}
        kind, _, level = name.partition(":")
        if kind == "clean":
            out["clean"] = row
        else:
            out[kind][level] = row
    return out
