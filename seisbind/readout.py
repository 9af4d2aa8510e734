"""The descriptor readout an encoder bundle may carry (docs/formats.md#descriptor-readout): a linear map from a
gather's seismic embedding to its eight descriptors, fitted by ridge regression on the training pairs, and the
blend the service returns by default: the mean of the readout's estimate and the k nearest bank entries'.

Why a blend: the neighbours' mean is bounded by the bank (it can only average models that exist, and averages away
what makes the query unlike them), the readout is bounded by a straight line through the embedding space; their
errors differ most on the deepest velocities (``v_max``, ``v_bottom``), where the neighbours are weakest, so their
plain mean is better than either (docs/benchmarks.md#descriptor-readout). Numpy only."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np

from seisbind.acquisition import V_MAX, V_MIN
from seisbind.descriptors import DESCRIPTOR_NAMES, VELOCITY_DESCRIPTORS
from seisbind.files import PathLike, manifest_file, read_json

READOUT_FILE = "descriptor_readout.json"
FORMAT = "seisbind-descriptor-readout/1"
RIDGE_PENALTIES = tuple(float(10.0 ** e) for e in np.arange(-4.0, 2.01, 0.5))
"""Candidate ridge penalties (on centred embeddings, standardised descriptors); the fit keeps the one with the
lowest leave-one-out error."""
MIN_PAIRS = 64
"""Fewest training pairs a readout is fitted on."""
Method = Literal["blend", "neighbours"]
METHODS: tuple[Method, ...] = ("blend", "neighbours")
"""How /infer-descriptors estimates: the mean of the neighbours' and the readout's estimates, or the neighbours'."""


class ReadoutError(ValueError):
    """A readout file that is missing, corrupt or invalid, or data a readout cannot be fitted on."""


@dataclass(frozen=True)
class DescriptorReadout:
    """``predict(E) = E @ weight + bias`` for seismic embeddings E [n, dim], velocity-valued descriptors clipped
    to the model's velocity range and ``v_std`` at 0. ``fit`` records what it was fitted on."""

    weight: np.ndarray
    bias: np.ndarray
    names: tuple[str, ...] = DESCRIPTOR_NAMES
    penalty: float = 0.0
    fit: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        w, b = np.asarray(self.weight, np.float64), np.asarray(self.bias, np.float64)
        if w.ndim != 2 or w.shape[1] != len(self.names) or b.shape != (len(self.names),):
            raise ReadoutError(f"readout weight {w.shape} and bias {b.shape}: expected [dim, {len(self.names)}] and "
                               f"[{len(self.names)}]")
        if not (np.isfinite(w).all() and np.isfinite(b).all()):
            raise ReadoutError("readout weight or bias: not finite")
        object.__setattr__(self, "weight", w)
        object.__setattr__(self, "bias", b)

    @property
    def dim(self) -> int:
        """Embedding dimension the readout reads."""
        return int(self.weight.shape[0])

    def predict(self, embeddings: np.ndarray) -> np.ndarray:
        """Descriptors [n, len(names)] float64 of seismic embeddings [n, dim]."""
        e = np.asarray(embeddings, np.float64)
        if e.ndim != 2 or e.shape[1] != self.dim:
            raise ReadoutError(f"embeddings {e.shape}: the readout reads [n, {self.dim}]")
        out = e @ self.weight + self.bias
        for i, name in enumerate(self.names):
            if name in VELOCITY_DESCRIPTORS:
                out[:, i] = np.clip(out[:, i], V_MIN, V_MAX)
            elif name == "v_std":
                out[:, i] = np.maximum(out[:, i], 0.0)
        return out

    def to_dict(self) -> dict[str, Any]:
        return {"format": FORMAT, "names": list(self.names), "penalty": self.penalty,
                "weight": self.weight.tolist(), "bias": self.bias.tolist(), "fit": self.fit}

    @classmethod
    def from_dict(cls, doc: Any, source: PathLike = READOUT_FILE) -> "DescriptorReadout":
        if not isinstance(doc, dict) or doc.get("format") != FORMAT:
            got = doc.get("format") if isinstance(doc, dict) else type(doc).__name__
            raise ReadoutError(f"{source}: not a descriptor readout (format {got!r}, expected {FORMAT!r})")
        try:
            return cls(np.asarray(doc["weight"], np.float64), np.asarray(doc["bias"], np.float64),
                       tuple(doc["names"]), float(doc["penalty"]), dict(doc.get("fit") or {}))
        except (KeyError, TypeError, ValueError) as e:
            raise ReadoutError(f"{source}: malformed descriptor readout: {e}") from e


def fit_readout(embeddings: np.ndarray, descriptors: np.ndarray, penalties: tuple[float, ...] = RIDGE_PENALTIES,
                info: dict[str, Any] | None = None) -> DescriptorReadout:
    """Ridge regression of descriptors [n, 8] on seismic embeddings [n, dim] (both centred, descriptors
    standardised), the penalty chosen by exact leave-one-out error (one SVD serves every penalty)."""
    X, Y = np.asarray(embeddings, np.float64), np.asarray(descriptors, np.float64)
    if X.ndim != 2 or Y.shape != (len(X), len(DESCRIPTOR_NAMES)):
        raise ReadoutError(f"embeddings {X.shape} and descriptors {Y.shape}: expected [n, dim] and "
                           f"[n, {len(DESCRIPTOR_NAMES)}]")
    if len(X) < MIN_PAIRS:
        raise ReadoutError(f"{len(X)} training pairs: a descriptor readout needs at least {MIN_PAIRS}")
    if not (np.isfinite(X).all() and np.isfinite(Y).all()):
        raise ReadoutError("embeddings or descriptors: not finite")
    x_mean, y_mean, y_scale = X.mean(0), Y.mean(0), np.maximum(Y.std(0), 1e-12)
    U, s, Vt = np.linalg.svd(X - x_mean, full_matrices=False)
    UtY = U.T @ ((Y - y_mean) / y_scale)
    loo = {}
    for lam in penalties:
        shrink = s ** 2 / (s ** 2 + lam)
        residual = (Y - y_mean) / y_scale - U @ (shrink[:, None] * UtY)
        leverage = (U ** 2) @ shrink + 1.0 / len(X)
        loo[lam] = float(np.mean((residual / (1.0 - leverage)[:, None]) ** 2))
    best = min(loo, key=loo.__getitem__)
    W = Vt.T @ ((s / (s ** 2 + best))[:, None] * UtY) * y_scale
    fit = {"pairs": int(len(X)), "loo_mse_standardised": loo[best],
           "loo_by_penalty": {f"{k:g}": v for k, v in loo.items()},
           "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"), **(info or {})}
    return DescriptorReadout(W, y_mean - x_mean @ W, DESCRIPTOR_NAMES, best, fit)


def blend(neighbour_values: np.ndarray, readout_values: np.ndarray) -> np.ndarray:
    """The blended estimate: the plain mean of the neighbours' and the readout's descriptors (both [n, 8]); rows
    the neighbours could not estimate (NaN) stay NaN."""
    return 0.5 * (np.asarray(neighbour_values, np.float64) + np.asarray(readout_values, np.float64))


def load_readout(bundle_dir: PathLike, manifest: dict[str, Any]) -> DescriptorReadout | None:
    """The readout an encoder bundle carries (its manifest's ``descriptor_readout`` section names the file and its
    sha256), or None. ReadoutError when the named file is missing, corrupt or does not fit the embeddings."""
    path = manifest_file(bundle_dir, manifest, "descriptor_readout", ReadoutError)
    if path is None:
        return None
    readout = DescriptorReadout.from_dict(read_json(path, ReadoutError, "a descriptor readout"), path)
    if readout.dim != manifest.get("embedding_dim"):
        raise ReadoutError(f"{path}: reads {readout.dim}-dim embeddings, the bundle's are "
                           f"{manifest.get('embedding_dim')}")
    if readout.names != tuple(manifest.get("descriptor_names") or ()):
        raise ReadoutError(f"{path}: descriptors {list(readout.names)} are not the bundle's")
    return readout
