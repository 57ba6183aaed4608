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


