"""Fit an encoder bundle's descriptor readout (seisbind.readout) on paired training folders and write the bundle
with it (``seisbind fit-readout``; ``seisbind export`` runs it on the run's training folders). The gathers are
encoded by the bundle's full-precision seismic graph, as ONNX Runtime runs it, each also with white noise added
(NOISE_SNR_DB), so that the readout's estimate holds up on noisy field data as the neighbours' does. Torch-free."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from seisbind.bundle import EncoderBundle
from seisbind.bundle_copy import write_fitted_file
from seisbind.descriptors import compute_descriptors
from seisbind.files import PathLike
from seisbind.noise import add_white_noise
from seisbind.openfwi import OpenFWIError, open_dataset
from seisbind.progress import progress
from seisbind.provenance import portable_path
from seisbind.readout import MIN_PAIRS, READOUT_FILE, DescriptorReadout, ReadoutError, fit_readout

MAX_PAIRS = 20_000
"""Training pairs a readout is fitted on at most (evenly spread over the folders' rows beyond that)."""
BATCH = 32
NOISE_SNR_DB = (0.0, 30.0)
"""SNR range (dB, uniform) of the noisy copy of each training gather the readout is also fitted on. Side by side on
one bundle (benchmarks/results/readout_noise.json, test gathers with white noise at 0 dB): the readout alone 3.65 %
against 4.09 % fitted on clean gathers only, the blend 3.21 % against 3.40 % (the neighbours alone 3.33 %); clean
gathers 2.25 % either way."""


def _rows(total: int, max_pairs: int) -> np.ndarray:
    """Which of ``total`` rows to read: all, or ``max_pairs`` evenly spaced ones."""
    if total <= max_pairs:
        return np.arange(total)
    return np.unique(np.linspace(0, total - 1, max_pairs).round().astype(np.int64))


def embed_training_pairs(bundle: EncoderBundle, folders: Sequence[PathLike], max_pairs: int = MAX_PAIRS,
                         show_progress: bool = True, noisy: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """Seismic embeddings [n, dim] and true descriptors [n, 8] of the pairs of ``folders`` (OpenFWI layout); with
    ``noisy`` also of a copy of each gather with white noise at an SNR drawn from NOISE_SNR_DB (seeded: the same
    folders give the same rows): then n is twice the pairs read, the clean rows first, their noisy copies after them
    in the same order."""
    if not folders:
        raise OpenFWIError("no training folder given (--data FOLDER)")
    sets = [open_dataset(f, check_values=True) for f in folders]
    total = sum(len(ds) for ds in sets)
    if total < MIN_PAIRS:  # before any encoding
        raise ReadoutError(f"{total} training pairs in {[str(f) for f in folders]}: a descriptor readout needs at "
                           f"least {MIN_PAIRS}")
    keep = _rows(total, max_pairs)
    bar = progress(len(keep), "embed training gathers", enabled=show_progress)
    rng = np.random.default_rng(0)
    emb, noisy_emb, desc, start = [], [], [], 0
    for ds in sets:
        for data, models in zip(ds.data, ds.models):
            rows = keep[(keep >= start) & (keep < start + len(models))] - start
            start += len(models)
            for s in range(0, len(rows), BATCH):
                r = rows[s:s + BATCH]
                gathers = np.asarray(data[r], np.float32)
                truth = compute_descriptors(np.asarray(models[r]))
                emb.append(bundle.seismic.run(gathers))
                desc.append(truth)
                if noisy:
                    noisy_emb.append(bundle.seismic.run(add_white_noise(gathers, rng.uniform(*NOISE_SNR_DB, len(r)),
                                                                        rng)))
                bar.update(len(r))
    bar.close()
    return np.concatenate(emb + noisy_emb), np.concatenate(desc * 2 if noisy else desc)


def fit_bundle_readout(bundle_dir: PathLike, folders: Sequence[PathLike], out: PathLike,
                       max_pairs: int = MAX_PAIRS, show_progress: bool = True) -> DescriptorReadout:
    """Fit the readout of the bundle in ``bundle_dir`` on the training pairs of ``folders`` and write the bundle
    with it to ``out`` (the same folder allowed; atomic)."""
    bundle = EncoderBundle(bundle_dir, variants={"seismic": "full"})
    emb, desc = embed_training_pairs(bundle, folders, max_pairs, show_progress)
    info = {"data": [portable_path(f) for f in folders], "graph": "seismic.onnx", "bundle_id": bundle.bundle_id,
            "pairs": len(emb) // 2, "rows": len(emb), "noisy_copies": {"snr_db": list(NOISE_SNR_DB), "noise": "white"}}
    readout = fit_readout(emb, desc, info=info)
    write_fitted_file(bundle_dir, out, "descriptor_readout", READOUT_FILE, readout.to_dict(), pairs=len(emb) // 2)
    return readout

