"""Evaluation figures (matplotlib, Agg backend): retrieval examples, similarity histograms, descriptor scatter."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from seisbind.acquisition import DT, DX, V_MAX, V_MIN  # noqa: E402
from seisbind.descriptors import DESCRIPTOR_NAMES, DESCRIPTOR_UNITS  # noqa: E402
from seisbind.files import write_with_atomic  # noqa: E402
from seisbind.neighbours import exact_top_k  # noqa: E402


def _save(fig: plt.Figure, path: Path) -> None:
    try:
        write_with_atomic(path, lambda tmp: fig.savefig(tmp, dpi=110, bbox_inches="tight"))
    finally:
        plt.close(fig)


def retrieval_examples(path: Path, get_gather: Callable[[int], np.ndarray], test_models: np.ndarray,
                       S: np.ndarray, V: np.ndarray, n: int = 4) -> None:
    """For ``n`` evenly spaced queries: the middle shot's gather, the true model and the top-3 retrieved
    gallery models with their cosine scores (the letter's Figure 2)."""
    n = min(n, len(S))
    queries = np.linspace(0, len(S) - 1, n).astype(int)
    D, I = exact_top_k(S[queries], V, 3)
    fig, axes = plt.subplots(n, 5, figsize=(15, 3 * n), squeeze=False)
    ext_v = (0, test_models.shape[-1] * DX, test_models.shape[-2] * DX, 0)
    for row, q in enumerate(queries):
        g = get_gather(int(q))[2]
        lim = np.percentile(np.abs(g), 99) or 1.0
        ax = axes[row, 0]
        ax.imshow(g, aspect="auto", cmap="gray", vmin=-lim, vmax=lim, extent=(0, g.shape[1], g.shape[0] * DT, 0))
        ax.set_title(f"query {q}: gather (shot 3)")
        ax.set_ylabel("time (s)")
        ax = axes[row, 1]
        ax.imshow(test_models[q, 0], cmap="jet", vmin=V_MIN, vmax=V_MAX, extent=ext_v)
        ax.set_title("true model")
        for j in range(3):
            ax = axes[row, 2 + j]
            hit = " (true)" if I[row, j] == q else ""
            ax.imshow(test_models[I[row, j], 0], cmap="jet", vmin=V_MIN, vmax=V_MAX, extent=ext_v)
            ax.set_title(f"top-{j + 1}: #{I[row, j]} score {D[row, j]:.3f}{hit}")
    _save(fig, path)


def similarity_histograms(path: Path, pairs: dict[str, tuple[float, float, np.ndarray, np.ndarray]]) -> None:
    """Histograms of positive and negative cosine similarities, one panel per modality pair."""
    fig, axes = plt.subplots(1, len(pairs), figsize=(6 * len(pairs), 4), squeeze=False)
    for ax, (name, (mp, mn, pos, neg)) in zip(axes[0], pairs.items()):
        bins = np.linspace(-1, 1, 81)
        ax.hist(neg, bins=bins, density=True, alpha=0.6, label=f"negatives (mean {mn:.3f})")
        ax.hist(pos, bins=bins, density=True, alpha=0.6, label=f"positives (mean {mp:.3f})")
        ax.set_title(name)
        ax.set_xlabel("cosine similarity")
        ax.legend()
    _save(fig, path)


def descriptor_scatter(path: Path, pred: np.ndarray, true: np.ndarray) -> None:
    """Predicted (P2: what /infer-descriptors answers by default, the blend of the k nearest bank entries' mean and
    the readout, or the neighbours' mean alone for a bundle without readout) against true descriptors."""
    fig, axes = plt.subplots(2, 4, figsize=(16, 8))
    for i, (ax, name) in enumerate(zip(axes.ravel(), DESCRIPTOR_NAMES)):
        ax.scatter(true[:, i], pred[:, i], s=3, alpha=0.4)
        lo, hi = float(min(true[:, i].min(), pred[:, i].min())), float(max(true[:, i].max(), pred[:, i].max()))
        ax.plot([lo, hi], [lo, hi], "k--", lw=1)
        ax.set_title(f"{name} ({DESCRIPTOR_UNITS[name]})")
        ax.set_xlabel("true")
        ax.set_ylabel("predicted")
    _save(fig, path)
