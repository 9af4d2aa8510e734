"""Field-like noise on raw shot gathers without torch, for the torch-free side (``index.calibrate`` fits the
confidence on noisy copies of held-out gathers). Training perturbs gathers on the fly with ``model.augment`` (torch);
both define SNR alike: 10 log10(mean(x^2) / mean(n^2)) over the whole gather, in dB, as OpenFWI's noise test does."""

from __future__ import annotations

import numpy as np


def snr_db(gathers: np.ndarray, noisy: np.ndarray) -> np.ndarray:
    """SNR (dB) per gather [b] of ``noisy`` against the clean ``gathers`` [b, ...]."""
    axes = tuple(range(1, gathers.ndim))
    signal = np.mean(np.square(gathers, dtype=np.float64), axis=axes)
    noise = np.mean(np.square(noisy.astype(np.float64) - gathers), axis=axes)
    return 10 * np.log10(signal / noise)


def add_white_noise(gathers: np.ndarray, snr: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Gathers [b, ...] plus white Gaussian noise at exactly ``snr`` [b] dB per gather (float32). A gather of zeros
    stays zeros (its SNR is undefined)."""
    x = np.asarray(gathers, np.float32)
    snr = np.asarray(snr, np.float64).reshape(-1)
    if snr.shape != (len(x),):
        raise ValueError(f"one SNR per gather: got {snr.shape[0]} for {len(x)} gathers")
    noise = rng.standard_normal(x.shape, dtype=np.float32)
    axes = tuple(range(1, x.ndim))
    power = np.mean(np.square(x, dtype=np.float64), axis=axes)
    scale = np.sqrt(power / 10 ** (snr / 10) / np.mean(np.square(noise, dtype=np.float64), axis=axes))
    return x + noise * scale.reshape((-1,) + (1,) * (x.ndim - 1)).astype(np.float32)
