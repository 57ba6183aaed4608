"""Underfit mining (EA_METHOD.md, Eq. 5): which training examples go to the Augmented Layer.

The Specific Layer's small models are run over the training split. Only the examples they get
wrong are sent to the large model (LM): by default those that *every* SSM gets wrong (rule
``all``), optionally those that the top-ranked SSM gets wrong (rule ``top``). Among them, the
ones the LM gets wrong too form the underfit set X_U on which augmented SSMs are trained; the
rest of the training split is the fitted set X_F. An LM call that failed outright (no answer
after retries, or the budget ran out) is neither: it is reported and retried by the next run.

Everything here is array maths over cached outputs; the LM calls themselves happen in the
pipeline, which hands this module the answers.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Optional, Sequence

import numpy as np

from ea_core.errors import ConfigError
from ea_core.llm.base import FAILED, UNPARSEABLE

MINING_RULES = ("all", "top")
#: Folds of out-of-fold mining by default (`run`, `demo` and the app alike): in-sample, TF-IDF
#: fits its own training data almost perfectly and the underfit set nearly vanishes. 0 turns it off.
DEFAULT_OOF_FOLDS = 3


def ssm_wrong(train_probs: Sequence[np.ndarray], y: np.ndarray, rule: str = "all") -> np.ndarray:
    """Indices of training examples the Specific Layer gets wrong.

    `train_probs` are the SSMs' probabilities on the training split, **in rank order** (best
    validation accuracy first). Rule ``all``: every SSM is wrong; ``top``: the first one is.
    """
    if rule not in MINING_RULES:
        raise ConfigError(f"Unknown mining rule {rule!r}; use one of {', '.join(MINING_RULES)}.")
    if not train_probs:
        raise ConfigError("Mining needs at least one trained small model.")
    y = np.asarray(y)
    wrong = np.stack([np.asarray(p).argmax(axis=1) != y for p in train_probs])
    mask = wrong[0] if rule == "top" else wrong.all(axis=0)
    return np.flatnonzero(mask)


@dataclass
class MiningResult:
    """The outcome of one mining pass over the training split (indices into train)."""

    candidates: np.ndarray  # SSM-wrong examples sent to the LM
    lm_labels: np.ndarray  # the LM's label per candidate (UNPARSEABLE / FAILED allowed)
    underfit: np.ndarray  # SSMs wrong and LM wrong (incl. unparseable): X_U
    failed: np.ndarray  # candidates whose LM call failed: unknown, retried next run
    n_train: int
    usage: dict[str, Any] = field(default_factory=dict)
    # Training examples shown to the LM as few-shot examples: it has seen their labels, so they
    # are never candidates (an LM "right" on them would be a label leak), neither fitted nor underfit.
    shown: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))

    @property
    def fitted_count(self) -> int:
        """|X_F|: training examples the SSMs or the LM get right (failed calls and shown examples excluded)."""
        return self.n_train - len(self.underfit) - len(self.failed) - len(self.shown)

    def summary(self) -> dict[str, Any]:
        return {
            "n_train": self.n_train,
            "sent_to_lm": int(len(self.candidates)),
            "underfit": int(len(self.underfit)),
            "fitted": int(self.fitted_count),
            "lm_right_on_candidates": int(len(self.candidates) - len(self.underfit) - len(self.failed)),
            "lm_unparseable": int(np.sum(self.lm_labels == UNPARSEABLE)),
            "lm_failed": int(len(self.failed)),
            "shown_as_examples": int(len(self.shown)),
            **self.usage,
        }


def without_shown(index: np.ndarray, shown: Sequence[int]) -> np.ndarray:
    """`index` (sorted training rows) less the rows shown to the LM as few-shot examples."""
    index = np.asarray(index, dtype=np.int64)
    return index[~np.isin(index, np.asarray(list(shown), dtype=np.int64))]


def probe_sample(confidence: np.ndarray, *, share: float, n: int, seed: int,
                 shown: Sequence[int] = ()) -> np.ndarray:
    """Up to `n` training rows drawn at random (seeded) among the `share` of rows the best small
    model is least sure of (its out-of-fold confidence): a sample of the region an operating point
    sends to the LM, unbiased, unlike the mined rows (only those the small models got wrong).
    Few-shot rows are never drawn. Sorted row indices."""
    conf = np.asarray(confidence, dtype=np.float64)
    k = int(np.floor(share * len(conf) + 1e-9))
    region = without_shown(np.argsort(conf, kind="stable")[:k], shown)
    rng = np.random.default_rng(seed)
    return np.sort(rng.choice(region, size=min(int(n), len(region)), replace=False)).astype(np.int64)


def split_underfit(
    candidates: np.ndarray, lm_labels: np.ndarray, y: np.ndarray, n_train: int, usage: Optional[dict] = None,
    shown: Sequence[int] = (),
) -> MiningResult:
    """Split the LM-checked candidates into underfit (LM wrong) and fitted, keeping failures apart
    (`shown`: few-shot rows, already left out of `candidates`, counted apart)."""
    candidates = np.asarray(candidates, dtype=np.int64)
    lm_labels = np.asarray(lm_labels, dtype=np.int64)
    if len(candidates) != len(lm_labels):
        raise ValueError("one LM label per candidate expected")
    failed_mask = lm_labels == FAILED
    wrong_mask = (lm_labels != np.asarray(y)[candidates]) & ~failed_mask
    return MiningResult(
        candidates=candidates,
        lm_labels=lm_labels,
        underfit=candidates[wrong_mask],
        failed=candidates[failed_mask],
        n_train=int(n_train),
        usage=dict(usage or {}),
        shown=np.asarray(list(shown), dtype=np.int64),
    )


def lm_errors(lm_labels: np.ndarray, y: np.ndarray) -> np.ndarray:
    """EA(Full) training set: every training example the LM gets wrong (failed calls excluded)."""
    lm_labels = np.asarray(lm_labels)
    return np.flatnonzero((lm_labels != np.asarray(y)) & (lm_labels != FAILED))


def kfold_indices(y: np.ndarray, k: int, seed: int) -> list[np.ndarray]:
    """Stratified fold assignment for out-of-fold SSM predictions (scikit-learn's `StratifiedKFold`,
    shuffled with `seed`): the held-out index arrays, sorted."""
    import warnings

    from sklearn.model_selection import StratifiedKFold

    y = np.asarray(y)
    if k < 2:
        raise ConfigError("Out-of-fold mining needs at least 2 folds.")
    if len(y) < k:
        raise ConfigError(f"Out-of-fold mining with {k} folds needs at least {k} training examples, not {len(y)}.")
    splitter = StratifiedKFold(n_splits=k, shuffle=True, random_state=seed)
    with warnings.catch_warnings():  # a label rarer than k: its examples sit in fewer folds, which is fine
        warnings.simplefilter("ignore", UserWarning)
        if np.all(np.bincount(np.unique(y, return_inverse=True)[1]) < k):  # every label rarer than k
            return [np.sort(f) for f in np.array_split(np.random.default_rng(seed).permutation(len(y)), k)]
        return [np.sort(held).astype(np.int64) for _, held in splitter.split(np.zeros(len(y)), y)]
