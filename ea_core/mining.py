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

    @property
    def fitted_count(self) -> int:
        """|X_F|: training examples the SSMs or the LM get right (failed calls excluded)."""
        return self.n_train - len(self.underfit) - len(self.failed)

    def summary(self) -> dict[str, Any]:
        return {
            "n_train": self.n_train,
            "sent_to_lm": int(len(self.candidates)),
            "underfit": int(len(self.underfit)),
            "fitted": int(self.fitted_count),
            "lm_right_on_candidates": int(len(self.candidates) - len(self.underfit) - len(self.failed)),
            "lm_unparseable": int(np.sum(self.lm_labels == UNPARSEABLE)),
            "lm_failed": int(len(self.failed)),
            **self.usage,
        }


def split_underfit(
    candidates: np.ndarray, lm_labels: np.ndarray, y: np.ndarray, n_train: int, usage: Optional[dict] = None
) -> MiningResult:
    """Split the LM-checked candidates into underfit (LM wrong) and fitted, keeping failures apart."""
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
    )


def lm_errors(lm_labels: np.ndarray, y: np.ndarray) -> np.ndarray:
    """EA(Full) training set: every training example the LM gets wrong (failed calls excluded)."""
    lm_labels = np.asarray(lm_labels)
    return np.flatnonzero((lm_labels != np.asarray(y)) & (lm_labels != FAILED))


def kfold_indices(y: np.ndarray, k: int, seed: int) -> list[np.ndarray]:
    """Stratified fold assignment for out-of-fold SSM predictions: list of held-out index arrays."""
    if k < 2:
        raise ConfigError("Out-of-fold mining needs at least 2 folds.")
    rng = np.random.default_rng(seed)
    folds: list[list[int]] = [[] for _ in range(k)]
    y = np.asarray(y)
    for label in np.unique(y):
        idx = rng.permutation(np.flatnonzero(y == label))
        for f in range(k):
            folds[f].extend(idx[f::k].tolist())
    return [np.sort(np.asarray(f, dtype=np.int64)) for f in folds]
