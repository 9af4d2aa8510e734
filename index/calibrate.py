"""Fit an encoder bundle's calibration against an index and store it (``seisbind calibrate``, benchmarks/ood.py):
encode held-out gathers whose true models are known, search the index as the service does, collect each query's
features (``seisbind.calibration_features.query_features``) and outcome (top-1 within 150 m/s MAE of the truth),
fit, and write the bundle with its calibration file. Besides the held-out gathers as given, the fit sees a noisy
copy of every one (``NoisyCopies``): the encoders are trained to withstand field noise, and a confidence fitted on
clean gathers alone would not know what noise does to its inputs. Torch-free (ONNX Runtime and FAISS)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from seisbind.bundle import EncoderBundle, OnnxEncoder
from seisbind.bundle_copy import write_fitted_file
from seisbind.calibration import (
    CALIBRATION_FILE,
    EVENT_MAE_MPS,
    MIN_QUERIES,
    Calibration,
    CalibrationError,
    fit_calibration,
    join_features,
    top1_mae,
)
from seisbind.calibration_features import FEATURE_K, query_features
from seisbind.files import PathLike
from seisbind.noise import add_white_noise
from seisbind.openfwi import OpenFWIError, open_dataset
from seisbind.provenance import portable_path

from index.searcher import Searcher

BATCH = 16
"""Gathers encoded per ONNX run."""


@dataclass(frozen=True)
class QuerySet:
    """Held-out queries of one dataset: features [n, 7], top-1 MAE [n] (m/s) and whether they count as in
    distribution (their features set the OOD threshold)."""

    name: str
    features: np.ndarray
    mae: np.ndarray
    in_distribution: bool

    @property
    def outcome(self) -> np.ndarray:
        """The event per query: top-1 within EVENT_MAE_MPS of the truth."""
        return self.mae <= EVENT_MAE_MPS

    def subset(self, rows: np.ndarray, name: str | None = None) -> "QuerySet":
        return QuerySet(name or self.name, self.features[rows], self.mae[rows], self.in_distribution)


@dataclass(frozen=True)
class NoisyCopies:
    """Noisy copies of held-out gathers for the fit: white Gaussian noise at an SNR drawn per gather uniformly from
    ``snr_db`` (dB over the gather's mean power, as training's augmentation defines it), seeded. With
    ``in_distribution`` the copies also set the out-of-distribution threshold (noise the encoders were trained on
    then raises no flag); otherwise they shape the confidence only."""

    snr_db: tuple[float, float] = (0.0, 30.0)
    seed: int = 0
    in_distribution: bool = True

    def __post_init__(self) -> None:
        if not self.snr_db[0] <= self.snr_db[1]:
            raise ValueError(f"noisy copies: need SNR low <= high (got {self.snr_db})")

    def perturb(self) -> Callable[[np.ndarray], np.ndarray]:
        """A function adding this noise to a batch of gathers; one random stream per call of ``perturb``."""
        rng = np.random.default_rng(self.seed)
        return lambda g: add_white_noise(g, rng.uniform(*self.snr_db, len(g)), rng)


def search_features(searcher: Searcher, embeddings: np.ndarray,
                    gathers: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Search the embeddings [b, dim] of gathers [b, 5, 1000, 70] for the FEATURE_K nearest entries: (features
    [b, 7], D, I)."""
    D, I = searcher.search(embeddings, min(FEATURE_K, searcher.count))  # noqa: E741 - faiss naming
    return query_features(D, I, searcher.velocity_models, gathers), D, I


def collect(encoder: OnnxEncoder, searcher: Searcher, gathers: np.ndarray, models: np.ndarray,
            batch: int = BATCH, perturb: Callable[[np.ndarray], np.ndarray] | None = None
            ) -> tuple[np.ndarray, np.ndarray]:
    """Features [n, 7] and top-1 MAE [n] of gathers [n, 5, 1000, 70] whose true models [n, 1, 70, 70] are known
    (each batch passed through ``perturb`` first, when given)."""
    feats, maes = [], []
    for s in range(0, len(gathers), batch):
        g = np.asarray(gathers[s:s + batch], np.float32)
        g = g if perturb is None else perturb(g)
        f, _, I = search_features(searcher, encoder.encode(g), g)
        feats.append(f)
        maes.append(top1_mae(searcher.velocity_models(I[:, 0]), np.asarray(models[s:s + batch])))
    return join_features(feats), np.concatenate(maes) if maes else np.zeros(0)


def collect_folder(encoder: OnnxEncoder, searcher: Searcher, folder: PathLike, in_distribution: bool,
                   name: str | None = None, noise: NoisyCopies | None = None) -> QuerySet:
    """The QuerySet of a paired OpenFWI-layout folder (gathers and their true models), or with ``noise`` of noisy
    copies of its gathers."""
    ds = open_dataset(folder, check_values=True)
    perturb = None if noise is None else noise.perturb()
    feats, maes = [], []
    for data, models in zip(ds.data, ds.models):
        f, m = collect(encoder, searcher, data, models, perturb=perturb)
        feats.append(f)
        maes.append(m)
    return QuerySet(name or Path(folder).name, join_features(feats), np.concatenate(maes), in_distribution)


def fit_sets(sets: Sequence[QuerySet], info: dict[str, Any] | None = None) -> Calibration:
    """Fit a calibration on query sets (every set for the confidence, the in-distribution ones for the OOD flag)."""
    return fit_calibration(join_features([s.features for s in sets]), np.concatenate([s.outcome for s in sets]),
                           np.concatenate([np.full(len(s.mae), s.in_distribution) for s in sets]), info)


def calibrate(bundle_dir: PathLike, index_root: PathLike, data: Sequence[PathLike], other_data: Sequence[PathLike],
              out: PathLike, noise: NoisyCopies | None = NoisyCopies()) -> tuple[Calibration, list[QuerySet]]:
    """``seisbind calibrate``: fit on the held-out folders ``data`` (in distribution: the geology the encoders were
    trained on, not their training pairs) and ``other_data`` (other geology; confidence only), with ``noise`` on a
    noisy copy of each too, searched against the current version of ``index_root``; write the calibrated bundle to
    ``out``."""
    if not data:
        raise OpenFWIError("no in-distribution held-out data given (--data FOLDER)")
    bundle = EncoderBundle(bundle_dir)
    searcher = Searcher.load(index_root, expected_bundle_id=bundle.bundle_id)
    enc = bundle.seismic
    sources: list[tuple[PathLike, QuerySet, dict[str, Any]]] = [(f, collect_folder(enc, searcher, f, True), {})
                                                                for f in data]
    held_out = sum(len(s.mae) for _, s, _ in sources)
    if held_out < MIN_QUERIES:  # noisy copies of the same gathers do not make up for too few of them
        raise CalibrationError(f"{held_out} held-out in-distribution queries (--data): at least {MIN_QUERIES} needed")
    sources += [(f, collect_folder(enc, searcher, f, False), {}) for f in other_data]
    if noise is not None:  # a noisy copy of every set: noise is taught alike on every geology
        held = [(f, True) for f in data] + [(f, False) for f in other_data]
        sources += [(f, collect_folder(enc, searcher, f, noise.in_distribution and ind, f"{Path(f).name} + noise",
                                       noise), {"noise_snr_db": list(noise.snr_db)}) for f, ind in held]
    info = {"index_version": searcher.version, "bank_count": searcher.count,
            "data": [{"folder": portable_path(f), "n": len(s.mae), "in_distribution": s.in_distribution, **extra}
                     for f, s, extra in sources]}
    sets = [s for _, s, _ in sources]
    cal = fit_sets(sets, info)
    write_fitted_file(bundle_dir, out, "calibration", CALIBRATION_FILE, cal.to_dict(),
                      event_top1_mae_mps=EVENT_MAE_MPS)
    return cal, sets
