"""A learned deferral router: a small classifier that scores each input for "the best small model is
wrong and the LM would be right", trained on what the run already holds (the small models'
out-of-fold outputs on the training split and the LM answers mining and the probe paid for).

The paper's router reads each small model's own top probability, which cannot tell where the LM is
right; this one sees every small model's probabilities, margin, entropy, their agreement and the
input's length. Its score becomes one routing stage (the best small model's answer, with confidence
1 - score), so thresholds, auto-tune, the operating-point rule and the intervals work on it unchanged.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Optional, Sequence

import numpy as np

from ea_core.llm.base import FAILED
from ea_core.splits import Split

#: Fewest examples of each class ("defer helps" / "it does not") the router is trained on.
MIN_PER_CLASS = 10


def features(probs: Sequence[np.ndarray], split: Optional[Split] = None) -> np.ndarray:
    """Per input: each small model's probabilities, top probability, margin and normalised entropy,
    the share of small models agreeing with the first, and log(1 + characters) for texts."""
    cols: list[np.ndarray] = []
    top = probs[0].argmax(axis=1)
    for p in probs:
        p = np.clip(np.asarray(p, dtype=np.float64), 1e-12, 1.0)
        s = np.sort(p, axis=1)
        ent = -(p * np.log(p)).sum(axis=1) / np.log(max(p.shape[1], 2))
        cols += [p, s[:, -1:], (s[:, -1] - s[:, -2])[:, None], ent[:, None]]
    cols.append(np.mean([p.argmax(axis=1) == top for p in probs], axis=0)[:, None])
    if split is not None and split.images is None:
        chars = np.array([len(t) + (len(split.pairs[i]) if split.pairs is not None else 0)
                          for i, t in enumerate(split.texts)], dtype=np.float64)
        cols.append(np.log1p(chars)[:, None])
    return np.hstack(cols)


@dataclass
class DeferralLabels:
    """Training rows of the router and their target (1: the best small model wrong, the LM right)."""

    rows: np.ndarray
    target: np.ndarray
    counts: dict[str, int] = field(default_factory=dict)


def deferral_labels(y: np.ndarray, best_pred: np.ndarray, lm_known: dict[int, int]) -> DeferralLabels:
    """Rows where the best small model (out of fold) is right are 0 whatever the LM says; rows where
    it is wrong count only when the LM's answer is known (mined or probed), 1 if the LM was right.
    The rest (wrong, the LM never asked) are left out: guessing them would invent labels."""
    y = np.asarray(y)
    right = best_pred == y
    rows, target = list(np.flatnonzero(right)), [0] * int(right.sum())
    unknown = 0
    for i in np.flatnonzero(~right):
        code = lm_known.get(int(i))
        if code is None or code == FAILED:
            unknown += 1
            continue
        rows.append(int(i))
        target.append(int(code == y[i]))
    order = np.argsort(rows, kind="stable")
    t = np.asarray(target, dtype=np.int64)[order]
    return DeferralLabels(np.asarray(rows, dtype=np.int64)[order], t,
                          {"ssm_right": int(right.sum()), "lm_fixes": int(t.sum()),
                           "both_wrong": int(len(t) - right.sum() - t.sum()), "left_out": unknown})


@dataclass
class LearnedRouter:
    """A fitted deferral scorer (scikit-learn's standardised logistic regression) and its 5-fold AUC."""

    model: Any
    labels: DeferralLabels
    cv_auc: float

    def score(self, probs: Sequence[np.ndarray], split: Optional[Split] = None) -> np.ndarray:
        """P(defer helps) per input."""
        return self.model.predict_proba(features(probs, split))[:, 1]

    def info(self) -> dict[str, Any]:
        return {"training_rows": int(len(self.labels.rows)), **self.labels.counts, "cv_auc": self.cv_auc}


def fit_learned_router(train_probs: Sequence[np.ndarray], train: Split, lm_known: dict[int, int],
                       seed: int = 0) -> Optional[LearnedRouter]:
    """Fit the router on the training split's out-of-fold small-model outputs (a standardised
    logistic regression: shallow gradient boosting overfit these few hundred rows, 1-3 points worse
    at equal LM share in bench_learned_router's settings). None when the LM answers known leave fewer
    than `MIN_PER_CLASS` rows of either kind (nothing to learn from)."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import StratifiedKFold, cross_val_score
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    labels = deferral_labels(train.labels, train_probs[0].argmax(axis=1), lm_known)
    pos = int(labels.target.sum())
    if pos < MIN_PER_CLASS or len(labels.target) - pos < MIN_PER_CLASS:
        return None
    X = features([p[labels.rows] for p in train_probs], train.subset(labels.rows))
    model = make_pipeline(StandardScaler(), LogisticRegression(C=1.0, class_weight="balanced", max_iter=2000))
    folds = StratifiedKFold(5, shuffle=True, random_state=seed)
    auc = float(np.mean(cross_val_score(model, X, labels.target, cv=folds, scoring="roc_auc")))
    return LearnedRouter(model.fit(X, labels.target), labels, auc)
