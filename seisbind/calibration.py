"""Calibrated confidence and the out-of-distribution flag of seismic queries, in one place (docs/api.md,
docs/formats.md): the features of a query's search hits, the logistic model that turns them into a probability,
its fit, the expected calibration error, and the calibration file an encoder bundle may carry. Numpy only.

``confidence`` is the probability of the event "the top-1 bank model lies within ``EVENT_MAE_MPS`` (150 m/s) mean
absolute error of the true model". It is a logistic regression on four features of the query's ``FEATURE_K`` (5) nearest
bank entries and its gather, plus log(1 + the query's out-of-distribution distance, below), fitted on held-out
gathers whose true models are known, searched against an index:

* ``top1_score``: cosine similarity of the best match;
* ``margin``: top-1 minus top-2 score;
* ``log_spread_mae``: log(1 + mean pairwise MAE, m/s) of the top-5 bank models (neighbours that disagree with
  each other cannot all be close to the truth);
* ``log_late_energy``: log10 of the gather's mean power after ``LATE_S`` (0.4 s) over its mean power: the share of
  reflected and diving energy after the direct wave (a gather without reflections, e.g. of a smooth gradient,
  carries little information about layers, whatever its neighbours look like);
* ``log1p_ood_distance`` (derived from the four): how unlike the in-distribution held-out queries the query is.
  Without it one logistic fitted on the training geology and other families together had to average them: queries
  of the training geology got too little confidence and those of other families (e.g. smooth gradients, which
  look like good matches and never are) too much. Calibration files written before it (format 1) still load.

``out_of_distribution`` is raised when the Mahalanobis distance of a query's features from those of held-out
in-distribution queries exceeds the ``OOD_QUANTILE`` quantile of theirs (so about 3 % of in-distribution queries
are flagged), when the gather is mostly white noise (``roughness``), and, by the service, when the gather earned
a plausibility warning (service.plausibility).
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from seisbind.acquisition import DT
from seisbind.files import PathLike, read_json, sha256_file

CALIBRATION_FILE = "calibration.json"
FORMAT = "seisbind-calibration/2"
FORMATS = ("seisbind-calibration/1", FORMAT)
"""Readable formats: 1 has no distance input to the logistic model."""
EVENT_MAE_MPS = 150.0
"""The event ``confidence`` is the probability of: top-1 model within this mean absolute error of the truth."""
FEATURE_K = 5
"""Neighbours the features are computed from (the service searches at least this many)."""
FEATURE_NAMES = ("top1_score", "margin", "log_spread_mae", "log_late_energy")
DISTANCE_INPUT = "log1p_ood_distance"
"""The logistic model's fifth input (format 2): log(1 + Calibration.ood_distance)."""
LATE_S = 0.4
"""Start of the late part of a gather, seconds (after the direct wave has crossed most of the spread)."""
OOD_QUANTILE = 0.97
"""Quantile of the held-out in-distribution distances used as the OOD threshold (leaves room under 5 %)."""
ECE_BINS = 10
L2_PENALTY = 1e-3
"""Ridge penalty of the logistic fit (on standardised features): keeps separable data finite."""


class CalibrationError(ValueError):
    """A calibration file that is missing, corrupt, or cannot be fitted from the data given."""


def spread_mae(models: np.ndarray) -> float:
    """Mean pairwise mean absolute error (m/s) among velocity models [k, ...]; 0 for fewer than two."""
    k = len(models)
    if k < 2:
        return 0.0
    flat = np.asarray(models, np.float32).reshape(k, -1)
    total = sum(float(np.abs(flat[i] - flat[j]).mean()) for i in range(k) for j in range(i + 1, k))
    return total / (k * (k - 1) / 2)


def late_energy(gathers: np.ndarray) -> np.ndarray:
    """log10(mean power after LATE_S / mean power) of each gather [b, shots, time, receivers] (NaN if all zero)."""
    g = np.asarray(gathers)
    start = int(round(LATE_S / DT))
    late = np.einsum("bstr,bstr->b", g[:, :, start:], g[:, :, start:], dtype=np.float64) / max(g.shape[2] - start, 1)
    total = np.einsum("bstr,bstr->b", g, g, dtype=np.float64) / g.shape[2]
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(total > 0, np.log10(np.maximum(late, 1e-30 * total) / np.where(total > 0, total, 1.0)), np.nan)


def query_features(D: np.ndarray, I: np.ndarray,  # noqa: E741 - faiss naming
                   velocity_models: Callable[[np.ndarray], np.ndarray], gathers: np.ndarray) -> np.ndarray:
    """The ``FEATURE_NAMES`` of each query [b, 4] from its search hits and its gathers [b, 5, 1000, 70]: D [b, k]
    cosine scores (best first), I [b, k] bank rows (-1: unfilled, ignored), ``velocity_models(rows)`` -> the bank's
    models of those rows. Uses the first ``FEATURE_K`` hits; with one hit the margin and spread are 0."""
    out = np.zeros((len(D), len(FEATURE_NAMES)))
    out[:, 3] = late_energy(gathers)
    for q, (d_row, i_row) in enumerate(zip(np.asarray(D), np.asarray(I))):
        keep = i_row >= 0
        d_row, i_row = d_row[keep][:FEATURE_K], i_row[keep][:FEATURE_K]
        if not len(i_row):
            out[q] = np.nan
            continue
        margin = float(d_row[0] - d_row[1]) if len(d_row) > 1 else 0.0
        out[q, :3] = (float(d_row[0]), margin, np.log1p(spread_mae(velocity_models(i_row))))
    return out


def top1_mae(top1_models: np.ndarray, true_models: np.ndarray) -> np.ndarray:
    """Mean absolute error (m/s) of each retrieved top-1 model against its true model, both [b, ...]."""
    b = len(true_models)
    a = np.asarray(top1_models, np.float64).reshape(b, -1)
    return np.abs(a - np.asarray(true_models, np.float64).reshape(b, -1)).mean(1)


def expected_calibration_error(confidence: np.ndarray, outcome: np.ndarray, bins: int = ECE_BINS) -> float:
    """ECE with ``bins`` equal-width bins over [0, 1]: sum over bins of (share of queries) x |mean confidence -
    observed frequency of the event|. ``outcome`` is 0/1 (or bool)."""
    p = np.asarray(confidence, np.float64)
    y = np.asarray(outcome, np.float64)
    if p.shape != y.shape or p.ndim != 1 or not len(p):
        raise ValueError(f"confidence {p.shape} and outcome {y.shape}: expected two equal non-empty 1-D arrays")
    if ((p < 0) | (p > 1)).any() or not np.isfinite(p).all():
        raise ValueError("confidence: values outside [0, 1]")
    which = np.minimum((p * bins).astype(int), bins - 1)
    ece = 0.0
    for b in range(bins):
        sel = which == b
        if sel.any():
            ece += sel.mean() * abs(p[sel].mean() - y[sel].mean())
    return float(ece)


def reliability(confidence: np.ndarray, outcome: np.ndarray, bins: int = ECE_BINS) -> list[dict[str, float]]:
    """Per non-empty bin: its range, count, mean confidence and observed event frequency (a reliability table)."""
    p, y = np.asarray(confidence, np.float64), np.asarray(outcome, np.float64)
    which = np.minimum((p * bins).astype(int), bins - 1)
    return [{"lo": b / bins, "hi": (b + 1) / bins, "n": int((which == b).sum()),
             "mean_confidence": float(p[which == b].mean()), "frequency": float(y[which == b].mean())}
            for b in range(bins) if (which == b).any()]


def _sigmoid(z: np.ndarray) -> np.ndarray:
    return 0.5 * (1.0 + np.tanh(0.5 * z))  # overflow-free logistic function


def fit_logistic(X: np.ndarray, y: np.ndarray, penalty: float = L2_PENALTY,
                 iterations: int = 100) -> tuple[np.ndarray, float]:
    """Logistic regression of y (0/1) on the rows of X (already standardised) by Newton's method with a small ridge
    penalty on the weights; returns (weights, bias). A dozen parameters at most: no optimiser library needed."""
    n, d = X.shape
    A = np.hstack([X, np.ones((n, 1))])
    theta = np.zeros(d + 1)
    reg = np.full(d + 1, penalty * n)
    reg[-1] = 0.0
    for _ in range(iterations):
        p = _sigmoid(A @ theta)
        grad = A.T @ (p - y) + reg * theta
        hess = (A * (p * (1 - p))[:, None]).T @ A + np.diag(reg) + 1e-9 * np.eye(d + 1)
        step = np.linalg.solve(hess, grad)
        theta -= step
        if np.abs(step).max() < 1e-10:
            break
    return theta[:d], float(theta[d])


@dataclass(frozen=True)
class Calibration:
    """A fitted calibration: the logistic model (on standardised features) and the OOD distance and threshold.
    ``fit`` records what it was fitted on (index, counts, data, the fit's own figures)."""

    mean: np.ndarray
    scale: np.ndarray
    weights: np.ndarray
    bias: float
    ood_center: np.ndarray
    ood_precision: np.ndarray
    ood_threshold: float
    fit: dict[str, Any] = field(default_factory=dict)

    @property
    def uses_distance(self) -> bool:
        """Whether the logistic model also takes the OOD distance (format 2)."""
        return len(self.weights) == len(FEATURE_NAMES) + 1

    def inputs(self, features: np.ndarray) -> np.ndarray:
        """The logistic model's inputs: the features [b, 4], and log(1 + OOD distance) where it uses it."""
        X = np.asarray(features, np.float64)
        return np.hstack([X, np.log1p(self.ood_distance(X))[:, None]]) if self.uses_distance else X

    def confidence(self, features: np.ndarray) -> np.ndarray:
        """P(top-1 within EVENT_MAE_MPS of the truth) for feature rows [b, 4] (NaN rows -> 0)."""
        with np.errstate(invalid="ignore"):
            z = ((self.inputs(features) - self.mean) / self.scale) @ self.weights + self.bias
        return np.nan_to_num(_sigmoid(z), nan=0.0)

    def ood_distance(self, features: np.ndarray) -> np.ndarray:
        """Mahalanobis distance of feature rows [b, 4] from the in-distribution held-out queries (NaN -> inf)."""
        diff = np.asarray(features, np.float64) - self.ood_center
        d2 = np.einsum("bi,ij,bj->b", diff, self.ood_precision, diff)
        return np.nan_to_num(np.sqrt(np.maximum(d2, 0.0)), nan=np.inf)

    def out_of_distribution(self, features: np.ndarray) -> np.ndarray:
        """True where a query's features lie beyond the threshold: unlike the in-distribution held-out queries."""
        return self.ood_distance(features) > self.ood_threshold

    def to_dict(self) -> dict[str, Any]:
        """The calibration file's document."""
        return {"format": FORMAT, "event": {"top1_mae_mps": EVENT_MAE_MPS}, "features": list(FEATURE_NAMES),
                "feature_k": FEATURE_K,
                "logistic": {"inputs": list(FEATURE_NAMES) + [DISTANCE_INPUT] * self.uses_distance,
                             "mean": self.mean.tolist(), "scale": self.scale.tolist(),
                             "weights": self.weights.tolist(), "bias": self.bias},
                "ood": {"center": self.ood_center.tolist(), "precision": self.ood_precision.tolist(),
                        "threshold": self.ood_threshold, "quantile": OOD_QUANTILE},
                "fit": self.fit}

    @classmethod
    def from_dict(cls, doc: Any, source: PathLike = CALIBRATION_FILE) -> "Calibration":
        """Validate a parsed calibration file; CalibrationError naming ``source`` and the problem."""
        if not isinstance(doc, dict) or doc.get("format") not in FORMATS:
            raise CalibrationError(f"{source}: not a {' or '.join(FORMATS)} document")
        if tuple(doc.get("features", ())) != FEATURE_NAMES or doc.get("feature_k") != FEATURE_K:
            raise CalibrationError(f"{source}: features {doc.get('features')} (k={doc.get('feature_k')}), this "
                                   f"version computes {list(FEATURE_NAMES)} (k={FEATURE_K}): recalibrate")
        try:
            lg, ood = doc["logistic"], doc["ood"]
            d = len(FEATURE_NAMES)
            d_in = d + (doc["format"] == FORMAT)
            mean, scale, weights = (np.asarray(lg[k], np.float64) for k in ("mean", "scale", "weights"))
            center, precision = np.asarray(ood["center"], np.float64), np.asarray(ood["precision"], np.float64)
            if (any(a.shape != (d_in,) for a in (mean, scale, weights)) or center.shape != (d,)
                    or precision.shape != (d, d)):
                raise ValueError("array of the wrong shape")
            cal = cls(mean, scale, weights, float(lg["bias"]), center, precision, float(ood["threshold"]),
                      dict(doc.get("fit", {})))
        except (KeyError, TypeError, ValueError) as e:
            raise CalibrationError(f"{source}: malformed calibration: {e!r}") from e
        values = np.concatenate([mean, scale, weights, center, precision.ravel(), [cal.bias, cal.ood_threshold]])
        if not np.isfinite(values).all() or (cal.scale <= 0).any():
            raise CalibrationError(f"{source}: malformed calibration: non-finite values or a non-positive scale")
        return cal


def fit_calibration(features: np.ndarray, outcome: np.ndarray, in_distribution: np.ndarray,
                    info: dict[str, Any] | None = None) -> Calibration:
    """Fit the confidence (logistic regression of ``outcome`` on every query's features) and the OOD threshold
    (on the queries marked ``in_distribution``). features [n, 4], outcome [n] 0/1, in_distribution [n] bool.
    Raises CalibrationError when the data cannot support a fit (too few queries, a single outcome)."""
    X, y, ind = np.asarray(features, np.float64), np.asarray(outcome, np.float64), np.asarray(in_distribution, bool)
    ok = np.isfinite(X).all(1)
    X, y, ind = X[ok], y[ok], ind[ok]
    if len(X) < 20 or ind.sum() < 20:
        raise CalibrationError(f"{len(X)} queries ({int(ind.sum())} in distribution): at least 20 of each needed")
    if y.min() == y.max():
        raise CalibrationError(f"every query has the same outcome (top-1 {'within' if y[0] else 'beyond'} "
                               f"{EVENT_MAE_MPS:g} m/s): a probability cannot be fitted; use more varied data")
    Xi = X[ind]
    center = Xi.mean(0)
    cov = np.cov(Xi, rowvar=False) + 1e-9 * np.diag(np.maximum(X.std(0), 1e-6) ** 2)
    precision = np.linalg.inv(cov)
    diff = X - center
    dist = np.sqrt(np.maximum(np.einsum("bi,ij,bj->b", diff, precision, diff), 0.0))
    A = np.hstack([X, np.log1p(dist)[:, None]])  # the logistic's inputs (Calibration.inputs)
    mean, scale = A.mean(0), A.std(0)
    scale = np.where(scale > 1e-12, scale, 1.0)
    weights, bias = fit_logistic((A - mean) / scale, y)
    fit = dict(info or {})
    cal = Calibration(mean, scale, weights, bias, center, precision, float(np.quantile(dist[ind], OOD_QUANTILE)),
                      fit)
    fit.update(n=int(len(X)), n_in_distribution=int(ind.sum()), event_rate=float(y.mean()),
               ece_on_fit=expected_calibration_error(cal.confidence(X), y),
               created=dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"))
    return cal


def load_calibration(bundle_dir: PathLike, manifest: dict[str, Any]) -> Calibration | None:
    """The calibration an encoder bundle carries (its manifest's ``calibration`` section names the file and its
    sha256), or None when it carries none. CalibrationError when the named file is missing, corrupt or invalid."""
    entry = manifest.get("calibration")
    if entry is None:
        return None
    if not isinstance(entry, dict) or not isinstance(entry.get("file"), str) or "/" in entry["file"]:
        raise CalibrationError(f"{Path(bundle_dir) / 'manifest.json'}: malformed calibration section {entry!r}")
    path = Path(bundle_dir) / entry["file"]
    if not path.is_file():
        raise CalibrationError(f"{path}: missing (named by the bundle's manifest)")
    if sha256_file(path) != entry.get("sha256"):
        raise CalibrationError(f"{path}: sha256 does not match the manifest's (corrupt or replaced)")
    return Calibration.from_dict(read_json(path, CalibrationError, "a calibration file"), path)


def summarise(confidence: np.ndarray, outcome: np.ndarray, ood: np.ndarray) -> dict[str, Any]:
    """Figures of one evaluation set: n, ECE, mean confidence, event frequency, OOD flag rate, reliability table."""
    return {"n": int(len(confidence)), "ece": expected_calibration_error(confidence, outcome),
            "mean_confidence": float(np.mean(confidence)), "event_rate": float(np.mean(outcome)),
            "ood_flag_rate": float(np.mean(ood)), "reliability": reliability(confidence, outcome)}


def join_features(parts: Sequence[np.ndarray]) -> np.ndarray:
    """Feature blocks [n_i, 4] stacked into one [n, 4] (an empty list gives [0, 4])."""
    return np.concatenate(list(parts)) if parts else np.zeros((0, len(FEATURE_NAMES)))


NOISE_ROUGHNESS = 1.05
"""Share of a gather's energy in its sample-to-sample differences above which it is taken for mostly white noise:
about 0.009 for OpenFWI gathers (a 15 Hz source sampled at 1 ms), 1.0 with white noise as strong as the signal
(SNR 0 dB, the noisiest level training augmentations reach), 2 for pure white noise."""


def roughness(gathers: np.ndarray) -> np.ndarray:
    """Energy of the time differences over the energy of each gather [b, shots, time, receivers] -> [b] (inf for
    an all-zero gather)."""
    g = np.asarray(gathers)
    d = np.diff(g, axis=2)
    num = np.einsum("bstr,bstr->b", d, d, dtype=np.float64)
    den = np.einsum("bstr,bstr->b", g, g, dtype=np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(den > 0, num / np.where(den > 0, den, 1.0), np.inf)


def assess(calibration: Calibration | None, D: np.ndarray, I: np.ndarray,  # noqa: E741 - faiss naming
           velocity_models: Callable[[np.ndarray], np.ndarray],
           gathers: np.ndarray) -> tuple[list[float | None], list[bool]]:
    """What the service reports per query, from its hits (at least FEATURE_K of them where the index has as many)
    and its gathers: ``confidence`` (None without a calibration) and ``out_of_distribution``: the calibration's
    test, or a gather that is mostly white noise (``NOISE_ROUGHNESS``) or all zeros. (The service also raises the
    flag for gathers with a plausibility warning.)"""
    flags = roughness(gathers) > NOISE_ROUGHNESS
    if calibration is None:
        return [None] * len(D), flags.tolist()
    features = query_features(D, I, velocity_models, gathers)
    flags |= calibration.out_of_distribution(features)
    return [round(float(c), 6) for c in calibration.confidence(features)], flags.tolist()


def calibration_info(calibration: Calibration | None) -> dict[str, Any] | None:
    """What /v1/info says about a bundle's calibration (None: the bundle carries none, confidence is null)."""
    if calibration is None:
        return None
    keys = ("index_version", "bank_count", "n", "n_in_distribution", "event_rate", "created")
    return {"event_top1_mae_mps": EVENT_MAE_MPS, **{k: calibration.fit[k] for k in keys if k in calibration.fit}}
