"""Calibrated confidences: temperature scaling (Guo et al., 2017) fitted on validation, so that
one threshold means the same for every small model, and the reliability figures that show it."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Optional

import numpy as np
from scipy import optimize
from scipy.special import logsumexp

from ea_core.errors import ConfigError, DataError
from ea_core.metrics import check_labels

def _check_proba(proba: np.ndarray, y: Optional[np.ndarray] = None) -> tuple[np.ndarray, Optional[np.ndarray]]:
    p = np.asarray(proba, dtype=np.float64)
    if p.ndim != 2 or p.shape[1] == 0:
        raise ConfigError(f"Probabilities must have shape (n_examples, n_labels), got {p.shape}.")
    if p.size and (not np.all(np.isfinite(p)) or p.min() < 0):
        raise ConfigError("Probabilities must be finite and non-negative.")
    if y is None:
        return p, None
    return p, check_labels(y, p.shape[0], p.shape[1])


def _log_proba(p: np.ndarray) -> np.ndarray:
    return np.log(np.clip(p, 1e-12, None))


def apply_temperature(proba: np.ndarray, temperature: float) -> np.ndarray:
    """``softmax(log(proba) / T)``: T > 1 softens over-confident probabilities, T < 1 sharpens."""
    p, _ = _check_proba(proba)
    if not np.isfinite(temperature) or temperature <= 0:
        raise ConfigError(f"Temperature must be a positive number, got {temperature}.")
    if temperature == 1.0:  # the identity: return the probabilities bit for bit
        return p
    z = _log_proba(p) / float(temperature)
    z -= z.max(axis=1, keepdims=True) if len(z) else 0.0
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def fit_temperature(proba: np.ndarray, y: np.ndarray, bounds: tuple[float, float] = (0.05, 20.0)) -> float:
    """The temperature T minimising the NLL of ``softmax(log(proba) / T)`` on labels `y`."""
    p, yy = _check_proba(proba, y)
    assert yy is not None
    if len(yy) == 0:
        raise DataError("Temperature scaling needs labelled validation examples; there are none.")
    z = _log_proba(p)
    z_true = z[np.arange(len(yy)), yy]

    def nll(t: float) -> float:
        return float(np.mean(logsumexp(z / t, axis=1) - z_true / t))

    res = optimize.minimize_scalar(nll, bounds=bounds, method="bounded", options={"xatol": 1e-4})
    return float(res.x)


def _bin_stats(conf: np.ndarray, correct: np.ndarray, n_bins: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    if n_bins < 1:
        raise ConfigError("n_bins must be at least 1.")
    # Bins are (lo, hi] as in Guo et al.; confidence 0 falls in the first bin.
    idx = np.clip(np.ceil(conf * n_bins).astype(np.int64) - 1, 0, n_bins - 1)
    count = np.bincount(idx, minlength=n_bins)
    conf_sum = np.bincount(idx, weights=conf, minlength=n_bins)
    right = np.bincount(idx, weights=correct.astype(np.float64), minlength=n_bins)
    return count, conf_sum, right


def reliability_bins(proba: np.ndarray, y: np.ndarray, n_bins: int = 15) -> dict[str, np.ndarray]:
    """Per-bin data for a reliability plot of top-label confidence.

    Keys: ``edges`` (n_bins + 1), ``count``, ``confidence`` (mean confidence), ``accuracy`` and
    ``gap`` (accuracy - confidence); nan in empty bins.
    """
    p, yy = _check_proba(proba, y)
    conf = p.max(axis=1) if len(p) else np.zeros(0)
    correct = p.argmax(axis=1) == yy if len(p) else np.zeros(0, bool)
    count, conf_sum, right = _bin_stats(conf, correct, n_bins)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean_conf = np.where(count > 0, conf_sum / np.maximum(count, 1), np.nan)
        acc = np.where(count > 0, right / np.maximum(count, 1), np.nan)
    return {
        "edges": np.linspace(0.0, 1.0, n_bins + 1),
        "count": count,
        "confidence": mean_conf,
        "accuracy": acc,
        "gap": acc - mean_conf,
    }


def expected_calibration_error(proba: np.ndarray, y: np.ndarray, n_bins: int = 15) -> float:
    """ECE: sum over equal-width confidence bins of ``share * |accuracy - mean confidence|``."""
    p, yy = _check_proba(proba, y)
    if len(p) == 0:
        return float("nan")
    correct = p.argmax(axis=1) == yy
    count, conf_sum, right = _bin_stats(p.max(axis=1), correct, n_bins)
    return float(np.abs(right - conf_sum).sum() / len(p))


@dataclass
class Calibration:
    """A fitted temperature and the validation ECE before and after applying it."""

    temperature: float
    ece_before: float
    ece_after: float

    @classmethod
    def fit(cls, proba: np.ndarray, y: np.ndarray, n_bins: int = 15) -> "Calibration":
        t = fit_temperature(proba, y)
        return cls(
            temperature=t,
            ece_before=expected_calibration_error(proba, y, n_bins),
            ece_after=expected_calibration_error(apply_temperature(proba, t), y, n_bins),
        )

    def apply(self, proba: np.ndarray) -> np.ndarray:
        return apply_temperature(proba, self.temperature)

    def to_dict(self) -> dict[str, float]:
        return asdict(self)




def quality_calibration(raw_val: np.ndarray, quality_val: np.ndarray, raw_other: np.ndarray, *,
                        folds: int = 5, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """A generated output's raw confidence (mean token log-prob as a probability, a scorer's top
    score) mapped to its expected quality (e.g. ROUGE-L) by isotonic regression: validation's
    confidences out of fold (each fold mapped by a fit on the others, so tuning sees no leak), the
    other split's by a fit on all of validation. Why: a threshold then means the same quality for
    every stage, as temperature scaling does for class probabilities."""
    from sklearn.isotonic import IsotonicRegression
    from sklearn.model_selection import KFold

    rv = np.asarray(raw_val, dtype=np.float64)
    qv = np.asarray(quality_val, dtype=np.float64)
    ro = np.asarray(raw_other, dtype=np.float64)
    if rv.shape != qv.shape:
        raise ConfigError(f"{rv.size} confidences for {qv.size} qualities; give one of each per example.")
    if rv.size < 4:  # too few to fit: keep the raw confidences
        return np.clip(rv, 0, 1), np.clip(ro, 0, 1)

    def fit(x: np.ndarray, q: np.ndarray) -> IsotonicRegression:
        return IsotonicRegression(y_min=0.0, y_max=1.0, out_of_bounds="clip").fit(x, q)

    oof = np.zeros_like(rv)
    for train, held in KFold(min(folds, rv.size), shuffle=True, random_state=seed).split(rv):
        oof[held] = fit(rv[train], qv[train]).predict(rv[held])
    return _break_ties(oof, rv), _break_ties(fit(rv, qv).predict(ro) if ro.size else ro, ro)


#: Weight of the raw confidence added to an isotonic map's output: the map is a step function, and
#: its ties would leave a threshold only a few places to cut (a 30% LM budget might send 2%).
TIE_BREAK = 1e-6


def _break_ties(mapped: np.ndarray, raw: np.ndarray) -> np.ndarray:
    """`mapped` made strictly increasing in `raw` within its flat steps, still in [0, 1]."""
    return np.clip(mapped, 0, 1) * (1 - TIE_BREAK) + TIE_BREAK * np.clip(raw, 0, 1)


def fit_quality_map(raw: np.ndarray, quality: np.ndarray) -> tuple[list[float], list[float]]:
    """The isotonic map raw confidence -> expected quality fitted on all of `raw` (validation), as
    its breakpoints (x, y): saved in a bundle and applied to new inputs by `apply_quality_map`."""
    from sklearn.isotonic import IsotonicRegression

    r, q = np.asarray(raw, dtype=np.float64), np.asarray(quality, dtype=np.float64)
    if r.size < 2:
        return [0.0, 1.0], [0.0, 1.0]
    iso = IsotonicRegression(y_min=0.0, y_max=1.0, out_of_bounds="clip").fit(r, q)
    return [float(v) for v in iso.X_thresholds_], [float(v) for v in iso.y_thresholds_]


def apply_quality_map(x: list[float], y: list[float], raw: np.ndarray) -> np.ndarray:
    """Expected quality of raw confidences under a saved map (linear between breakpoints, clipped)."""
    r = np.asarray(raw, dtype=np.float64)
    return _break_ties(np.interp(r, np.asarray(x), np.asarray(y)), r)
