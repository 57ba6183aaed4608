"""Classification metrics computed with numpy alone (no scikit-learn at run time).

The router recomputes these every time a UI slider moves, so they are vectorised with
`np.bincount` and never loop over examples. Predictions below 0 (the LM's ``UNPARSEABLE`` = -1
and ``FAILED`` = -2) are always wrong: they count as a miss of the true class, never as a class
of their own. The tests check `macro_f1` against `sklearn.metrics.f1_score`.
"""

from __future__ import annotations

from typing import Optional

import numpy as np

from ea_core.errors import DataError

#: What early stopping, the SSM ranking and threshold tuning maximise (the ``selection_metric`` setting).
SELECTION_METRICS = ("auto", "accuracy", "macro_f1")


def check_labels(y: np.ndarray, n: Optional[int] = None, n_labels: Optional[int] = None) -> np.ndarray:
    """`y` as a 1-D int64 array of known labels (raises `DataError` otherwise)."""
    arr = np.asarray(y)
    if arr.ndim != 1:
        raise DataError(f"Labels must be a 1-D array, got shape {arr.shape}.")
    if arr.size and not np.issubdtype(arr.dtype, np.integer):
        if not np.all(np.isfinite(arr)) or not np.all(arr == np.round(arr)):
            raise DataError("Labels must be integer label indices.")
    arr = arr.astype(np.int64, copy=False)
    if n is not None and arr.shape[0] != n:
        raise DataError(f"There are {arr.shape[0]} labels for {n} examples; give one label per example.")
    if arr.size and arr.min() < 0:
        raise DataError(
            f"{int((arr < 0).sum())} example(s) have no known label (-1); metrics and tuning need a labelled split."
        )
    if n_labels is not None and arr.size and arr.max() >= n_labels:
        raise DataError(f"Label index {int(arr.max())} is out of range for {n_labels} labels.")
    return arr


def accuracy(y: np.ndarray, pred: np.ndarray) -> float:
    """Share of `pred == y` (nan for no examples)."""
    y = np.asarray(y)
    return float(np.mean(np.asarray(pred) == y)) if y.size else float("nan")


def per_class_f1(y: np.ndarray, pred: np.ndarray, n_labels: int) -> tuple[np.ndarray, np.ndarray]:
    """F1 of each label in ``range(n_labels)`` and a mask of the labels present in `y` or `pred`.

    F1 = 2 tp / (2 tp + fp + fn), 0 when a label is neither true nor predicted anywhere.
    """
    y = np.asarray(y, dtype=np.int64)
    pred = np.asarray(pred, dtype=np.int64)
    hit = pred == y
    tp = np.bincount(y[hit], minlength=n_labels)[:n_labels].astype(np.float64)
    support = np.bincount(y, minlength=n_labels)[:n_labels]
    ok = (pred >= 0) & (pred < n_labels)
    predicted = np.bincount(pred[ok], minlength=n_labels)[:n_labels]
    denom = (support + predicted).astype(np.float64)  # = 2tp + fp + fn
    f1 = np.divide(2.0 * tp, denom, out=np.zeros(n_labels), where=denom > 0)
    return f1, denom > 0


def macro_f1(y: np.ndarray, pred: np.ndarray, n_labels: Optional[int] = None) -> float:
    """Unweighted mean F1 over the labels that occur in `y` or (as a valid label) in `pred`.

    Equals ``sklearn.metrics.f1_score(y, pred, labels=present, average="macro")`` where `present`
    is that label set; negative predictions only count as misses. nan for no examples.
    """
    y = np.asarray(y, dtype=np.int64)
    pred = np.asarray(pred, dtype=np.int64)
    if y.size == 0:
        return float("nan")
    if n_labels is None:
        n_labels = int(max(y.max(), pred.max(initial=-1))) + 1
    f1, present = per_class_f1(y, pred, n_labels)
    return float(f1[present].mean()) if present.any() else float("nan")


def bootstrap_means(values: np.ndarray, *, n_boot: int = 1000, seed: int = 0) -> np.ndarray:
    """`n_boot` bootstrap resamples of mean(values), drawn exactly but in O(distinct values x n_boot):
    a resample with replacement only changes how often each distinct value occurs, which is one
    multinomial draw (for 0/1 correctness, a binomial). Fast enough for every row of a report."""
    v = np.asarray(values, dtype=np.float64).ravel()
    if v.size == 0:
        return np.full(n_boot, np.nan)
    uniq, counts = np.unique(v, return_counts=True)
    rng = np.random.default_rng(seed)
    draws = rng.multinomial(v.size, counts / v.size, size=n_boot)
    return draws @ uniq / v.size


def bootstrap_ci(correct: np.ndarray, *, level: float = 0.95, n_boot: int = 1000, seed: int = 0) -> list[float]:
    """Percentile bootstrap interval [lo, hi] of the mean of `correct` (accuracy from per-example
    hits); [nan, nan] for no examples. Seeded, so a report is reproducible."""
    means = bootstrap_means(correct, n_boot=n_boot, seed=seed)
    if np.isnan(means).all():
        return [float("nan"), float("nan")]
    a = (1.0 - level) / 2.0
    lo, hi = np.quantile(means, [a, 1.0 - a])
    return [float(lo), float(hi)]
