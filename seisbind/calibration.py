"""Calibrated confidence and the out-of-distribution flag of seismic queries, in one place (docs/api.md,
docs/formats.md): the logistic model that turns a query's features (``seisbind.calibration_features``: of its
search hits, their bank models and its gather) into a probability, its fit, the expected calibration error, and the
calibration file an encoder bundle may carry. Numpy only.

``confidence`` is the probability of the event "the top-1 bank model lies within ``EVENT_MAE_MPS`` (150 m/s) mean
absolute error of the true model". It is a logistic regression fitted on held-out gathers whose true models are
known, searched against an index. Its inputs (format 3): the seven ``FEATURE_NAMES``, ``log1p_ood_distance`` (log(1
+ the query's out-of-distribution distance, below): how unlike the in-distribution held-out queries it is) and
``log_excess_ood_distance`` (log of that distance over the OOD threshold where it exceeds it, else 0). The excess
lets queries beyond the threshold lose confidence faster than the mild trend within it: within the training
geology a smooth, agreed-upon answer is a likely hit, on smooth-gradient geology (far out) never.

``out_of_distribution`` is raised when the Mahalanobis distance of a query's features from those of held-out
in-distribution queries exceeds the ``OOD_QUANTILE`` quantile of theirs, when the gather is mostly white noise
(``roughness``), and, by the service, when the gather earned a plausibility warning (service.plausibility). The
threshold and the distances the logistic model is fitted on are cross-fitted (``OOD_FOLDS``): each in-distribution
row's distance comes from a center and covariance fitted without it, as a new query's would (in-sample distances
are biased low, most for the outlying rows that stretch the covariance).

Calibration files of format 1 (four features, no distance input) and 2 (four features and the distance) still load.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from seisbind.calibration_features import (
    FEATURE_K,
    FEATURE_NAMES,
    NOISE_ROUGHNESS,
    gather_energies,
    query_features,
    roughness,
)
from seisbind.files import PathLike, manifest_file, read_json

CALIBRATION_FILE = "calibration.json"
FORMAT = "seisbind-calibration/3"
FORMATS = ("seisbind-calibration/1", "seisbind-calibration/2", FORMAT)
"""Readable formats: 1 and 2 read the first four features, 1 without the distance input."""
EVENT_MAE_MPS = 150.0
"""The event ``confidence`` is the probability of: top-1 model within this mean absolute error of the truth."""
V2_FEATURES = FEATURE_NAMES[:4]
"""The features of formats 1 and 2."""
DISTANCE_INPUT = "log1p_ood_distance"
"""log(1 + Calibration.ood_distance): an input of the logistic model since format 2."""
EXCESS_INPUT = "log_excess_ood_distance"
"""log(distance / threshold) where positive, else 0: an input of the logistic model since format 3."""
OOD_QUANTILE = 0.97
"""Quantile of the held-out in-distribution distances used as the OOD threshold (leaves room under 5 %)."""
OOD_FOLDS = 5
"""Folds of the cross-fitted in-distribution distances (threshold and logistic inputs of the fit)."""
ECE_BINS = 10
L2_PENALTY = 1e-3
"""Ridge penalty of the logistic fit (on standardised features): keeps separable data finite."""


class CalibrationError(ValueError):
    """A calibration file that is missing, corrupt, or cannot be fitted from the data given."""


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


def _inputs_of(format_: str, features: tuple[str, ...]) -> tuple[str, ...]:
    """The logistic model's inputs a format 1 or 2 file implies (they are not stored in format 1)."""
    return features + ((DISTANCE_INPUT,) if format_ == "seisbind-calibration/2" else ())


@dataclass(frozen=True)
class Calibration:
    """A fitted calibration: the logistic model (on standardised inputs) and the OOD distance and threshold.
    ``features`` names the ``FEATURE_NAMES`` it reads, ``inputs`` the logistic model's inputs (features, then
    ``DISTANCE_INPUT`` and ``EXCESS_INPUT`` where used). ``fit`` records what it was fitted on."""

    mean: np.ndarray
    scale: np.ndarray
    weights: np.ndarray
    bias: float
    ood_center: np.ndarray
    ood_precision: np.ndarray
    ood_threshold: float
    fit: dict[str, Any] = field(default_factory=dict)
    features: tuple[str, ...] = FEATURE_NAMES
    inputs: tuple[str, ...] = (*FEATURE_NAMES, DISTANCE_INPUT, EXCESS_INPUT)

    @property
    def uses_distance(self) -> bool:
        """Whether the logistic model also takes the OOD distance (formats 2 and 3)."""
        return DISTANCE_INPUT in self.inputs

    def selected(self, features: np.ndarray) -> np.ndarray:
        """The columns of ``query_features`` rows [b, 7] this calibration reads [b, len(features)]."""
        return np.asarray(features, np.float64)[:, [FEATURE_NAMES.index(f) for f in self.features]]

    def design(self, features: np.ndarray, distance: np.ndarray | None = None) -> np.ndarray:
        """The logistic model's inputs [b, len(inputs)] of feature rows [b, 7]; ``distance`` [b] replaces the OOD
        distance (the fit's cross-fitted ones)."""
        X = self.selected(features)
        d = self.ood_distance(features) if distance is None else np.asarray(distance, np.float64)
        with np.errstate(divide="ignore", invalid="ignore"):
            derived = {DISTANCE_INPUT: np.log1p(d), EXCESS_INPUT: np.maximum(np.log(d / self.ood_threshold), 0.0)}
        return np.column_stack([X[:, self.features.index(n)] if n in self.features else derived[n]
                                for n in self.inputs])

    def confidence(self, features: np.ndarray) -> np.ndarray:
        """P(top-1 within EVENT_MAE_MPS of the truth) for ``query_features`` rows [b, 7] (NaN rows -> 0)."""
        with np.errstate(invalid="ignore"):
            z = ((self.design(features) - self.mean) / self.scale) @ self.weights + self.bias
        return np.nan_to_num(_sigmoid(z), nan=0.0)

    def ood_distance(self, features: np.ndarray) -> np.ndarray:
        """Mahalanobis distance of ``query_features`` rows [b, 7] from the in-distribution held-out queries
        (NaN -> inf)."""
        return _mahalanobis(self.selected(features), self.ood_center, self.ood_precision)

    def out_of_distribution(self, features: np.ndarray) -> np.ndarray:
        """True where a query's features lie beyond the threshold: unlike the in-distribution held-out queries."""
        return self.ood_distance(features) > self.ood_threshold

    def to_dict(self) -> dict[str, Any]:
        """The calibration file's document (format 3)."""
        return {"format": FORMAT, "event": {"top1_mae_mps": EVENT_MAE_MPS}, "features": list(self.features),
                "feature_k": FEATURE_K,
                "logistic": {"inputs": list(self.inputs), "mean": self.mean.tolist(), "scale": self.scale.tolist(),
                             "weights": self.weights.tolist(), "bias": self.bias},
                "ood": {"center": self.ood_center.tolist(), "precision": self.ood_precision.tolist(),
                        "threshold": self.ood_threshold, "quantile": OOD_QUANTILE},
                "fit": self.fit}

    @classmethod
    def from_dict(cls, doc: Any, source: PathLike = CALIBRATION_FILE) -> "Calibration":
        """Validate a parsed calibration file (formats 1 to 3); CalibrationError naming ``source`` and the problem."""
        if not isinstance(doc, dict) or doc.get("format") not in FORMATS:
            raise CalibrationError(f"{source}: not a {' or '.join(FORMATS)} document")
        features = tuple(doc.get("features") or ())
        known = V2_FEATURES if doc["format"] != FORMAT else FEATURE_NAMES
        if (doc["format"] != FORMAT and features != V2_FEATURES) or not set(features) <= set(known) \
                or not features or doc.get("feature_k") != FEATURE_K:
            raise CalibrationError(f"{source}: features {doc.get('features')} (k={doc.get('feature_k')}), this "
                                   f"version computes {list(FEATURE_NAMES)} (k={FEATURE_K}): recalibrate")
        try:
            cal = _parse(doc, features)
        except (KeyError, TypeError, ValueError) as e:
            raise CalibrationError(f"{source}: malformed calibration: {e!r}") from e
        values = np.concatenate([cal.mean, cal.scale, cal.weights, cal.ood_center, cal.ood_precision.ravel(),
                                 [cal.bias, cal.ood_threshold]])
        if not np.isfinite(values).all() or (cal.scale <= 0).any() or cal.ood_threshold <= 0:
            raise CalibrationError(f"{source}: malformed calibration: non-finite values or a non-positive scale")
        return cal


def _parse(doc: dict[str, Any], features: tuple[str, ...]) -> Calibration:
    """The Calibration of a document whose format and features are checked; ValueError/KeyError when malformed."""
    lg, ood = doc["logistic"], doc["ood"]
    inputs = tuple(lg["inputs"]) if doc["format"] == FORMAT else _inputs_of(doc["format"], features)
    if any(n not in (*features, DISTANCE_INPUT, EXCESS_INPUT) for n in inputs) or len(set(inputs)) != len(inputs):
        raise ValueError(f"unknown or repeated logistic inputs {list(inputs)}")
    mean, scale, weights = (np.asarray(lg[k], np.float64) for k in ("mean", "scale", "weights"))
    center, precision = np.asarray(ood["center"], np.float64), np.asarray(ood["precision"], np.float64)
    d, d_in = len(features), len(inputs)
    if any(a.shape != (d_in,) for a in (mean, scale, weights)) or center.shape != (d,) or precision.shape != (d, d):
        raise ValueError("array of the wrong shape")
    return Calibration(mean, scale, weights, float(lg["bias"]), center, precision, float(ood["threshold"]),
                       dict(doc.get("fit", {})), features, inputs)


def _mahalanobis(X: np.ndarray, center: np.ndarray, precision: np.ndarray) -> np.ndarray:
    """Mahalanobis distances of rows [b, d] (NaN -> inf)."""
    diff = X - center
    d2 = np.einsum("bi,ij,bj->b", diff, precision, diff)
    return np.nan_to_num(np.sqrt(np.maximum(d2, 0.0)), nan=np.inf)


def _gaussian(X: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Center and precision (inverse covariance, lightly regularised: a constant column stays invertible) of rows
    [n, d]."""
    cov = np.cov(X, rowvar=False) + np.diag(1e-9 * X.var(0) + 1e-10)
    return X.mean(0), np.linalg.inv(cov)


def held_out_distances(X: np.ndarray, in_distribution: np.ndarray,
                       folds: int = OOD_FOLDS) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(center, precision, distances [n]) of rows X [n, d]: the Gaussian of the in-distribution rows, and every
    row's Mahalanobis distance from it, cross-fitted for the in-distribution rows (each fold's from a Gaussian fitted
    on the other folds), so that they are distributed as a new in-distribution query's would be."""
    center, precision = _gaussian(X[in_distribution])
    dist = _mahalanobis(X, center, precision)
    rows = np.flatnonzero(in_distribution)
    for k in range(folds):
        held = rows[k::folds]
        c, p = _gaussian(X[np.setdiff1d(rows, held)])
        dist[held] = _mahalanobis(X[held], c, p)
    return center, precision, dist


MIN_QUERIES = 20
"""Fewest queries, and fewest in-distribution ones, a calibration is fitted on."""


def fit_calibration(features: np.ndarray, outcome: np.ndarray, in_distribution: np.ndarray,
                    info: dict[str, Any] | None = None) -> Calibration:
    """Fit the confidence (logistic regression of ``outcome`` on every query's inputs) and the OOD threshold (on
    the queries marked ``in_distribution``, cross-fitted). features [n, 7] (``query_features``), outcome [n] 0/1,
    in_distribution [n] bool. Raises CalibrationError when the data cannot support a fit (too few queries, a
    single outcome)."""
    X, y, ind = np.asarray(features, np.float64), np.asarray(outcome, np.float64), np.asarray(in_distribution, bool)
    if X.ndim != 2 or X.shape[1] != len(FEATURE_NAMES):
        raise CalibrationError(f"features of shape {X.shape}: expected [n, {len(FEATURE_NAMES)}] ({FEATURE_NAMES})")
    ok = np.isfinite(X).all(1)
    X, y, ind = X[ok], y[ok], ind[ok]
    if len(X) < MIN_QUERIES or ind.sum() < MIN_QUERIES:
        raise CalibrationError(f"{len(X)} queries ({int(ind.sum())} in distribution): at least {MIN_QUERIES} of each "
                               "needed")
    if y.min() == y.max():
        raise CalibrationError(f"every query has the same outcome (top-1 {'within' if y[0] else 'beyond'} "
                               f"{EVENT_MAE_MPS:g} m/s): a probability cannot be fitted; use more varied data")
    center, precision, dist = held_out_distances(X, ind, min(OOD_FOLDS, int(ind.sum()) // 10))
    d_in = len(FEATURE_NAMES) + 2
    shell = Calibration(np.zeros(d_in), np.ones(d_in), np.zeros(d_in), 0.0, center, precision,
                        float(np.quantile(dist[ind], OOD_QUANTILE)))
    A = shell.design(X, dist)
    mean, scale = A.mean(0), A.std(0)
    scale = np.where(scale > 1e-12, scale, 1.0)
    weights, bias = fit_logistic((A - mean) / scale, y)
    fit = dict(info or {})
    cal = Calibration(mean, scale, weights, bias, center, precision, shell.ood_threshold, fit)
    fit.update(n=int(len(X)), n_in_distribution=int(ind.sum()), event_rate=float(y.mean()),
               ece_on_fit=expected_calibration_error(cal.confidence(X), y),
               created=dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"))
    return cal


def load_calibration(bundle_dir: PathLike, manifest: dict[str, Any]) -> Calibration | None:
    """The calibration an encoder bundle carries (its manifest's ``calibration`` section names the file and its
    sha256), or None when it carries none. CalibrationError when the named file is missing, corrupt or invalid."""
    path = manifest_file(bundle_dir, manifest, "calibration", CalibrationError)
    if path is None:
        return None
    return Calibration.from_dict(read_json(path, CalibrationError, "a calibration file"), path)


def summarise(confidence: np.ndarray, outcome: np.ndarray, ood: np.ndarray) -> dict[str, Any]:
    """Figures of one evaluation set: n, ECE, mean confidence, event frequency, OOD flag rate, reliability table."""
    return {"n": int(len(confidence)), "ece": expected_calibration_error(confidence, outcome),
            "mean_confidence": float(np.mean(confidence)), "event_rate": float(np.mean(outcome)),
            "ood_flag_rate": float(np.mean(ood)), "reliability": reliability(confidence, outcome)}


def join_features(parts: Sequence[np.ndarray]) -> np.ndarray:
    """Feature blocks [n_i, 7] stacked into one [n, 7] (an empty list gives [0, 7])."""
    return np.concatenate(list(parts)) if parts else np.zeros((0, len(FEATURE_NAMES)))


def assess(calibration: Calibration | None, D: np.ndarray, I: np.ndarray,  # noqa: E741 - faiss naming
           velocity_models: Callable[[np.ndarray], np.ndarray],
           gathers: np.ndarray) -> tuple[list[float | None], list[bool]]:
    """What the service reports per query, from its hits (at least FEATURE_K of them where the index has as many)
    and its gathers: ``confidence`` (None without a calibration) and ``out_of_distribution``: the calibration's
    test, or a gather that is mostly white noise (``NOISE_ROUGHNESS``) or all zeros. (The service also raises the
    flag for gathers with a plausibility warning.)"""
    energies = gather_energies(gathers)  # one pass over the gathers for the flag and the features
    flags = roughness(gathers, energies) > NOISE_ROUGHNESS
    if calibration is None:
        return [None] * len(D), flags.tolist()
    features = query_features(D, I, velocity_models, gathers, energies)
    flags |= calibration.out_of_distribution(features)
    return [round(float(c), 6) for c in calibration.confidence(features)], flags.tolist()


def calibration_info(calibration: Calibration | None) -> dict[str, Any] | None:
    """What /v1/info says about a bundle's calibration (None: the bundle carries none, confidence is null)."""
    if calibration is None:
        return None
    keys = ("index_version", "bank_count", "n", "n_in_distribution", "event_rate", "created")
    return {"event_top1_mae_mps": EVENT_MAE_MPS, **{k: calibration.fit[k] for k in keys if k in calibration.fit}}
