"""ROUGE-1, ROUGE-2 and ROUGE-L F1 per example, the quality of a generated summary.

Google's `rouge_score` (the implementation papers report, stemming on) is called rather than
rewritten; `evaluate.load("rouge")` would fetch a script from the hub and fails offline. One scorer
is built per call (no process-global state); a few thousand pairs score in about a second.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np

from ea_core.errors import ConfigError

#: The ROUGE variants reported, in table order; ROUGE-L F1 is the quality the router maximises.
ROUGE_KEYS = ("rouge1", "rouge2", "rougeL")


@dataclass
class RougeScores:
    """F1 in [0, 1] per example for each of `ROUGE_KEYS`."""

    rouge1: np.ndarray
    rouge2: np.ndarray
    rougeL: np.ndarray

    def means(self) -> dict[str, float]:
        """Mean F1 of each variant (nan for no examples)."""
        return {k: float(getattr(self, k).mean()) if len(self.rougeL) else float("nan") for k in ROUGE_KEYS}

    def subset(self, index: np.ndarray) -> "RougeScores":
        return RougeScores(self.rouge1[index], self.rouge2[index], self.rougeL[index])


def _scorer(keys: Sequence[str]) -> "object":
    try:
        from rouge_score import rouge_scorer
    except ImportError:  # pragma: no cover - a dependency
        raise ConfigError("Summaries are scored with rouge-score: pip install rouge-score") from None
    return rouge_scorer.RougeScorer(list(keys), use_stemmer=True)


def rouge(predictions: Sequence[str], references: Sequence[str]) -> RougeScores:
    """ROUGE-1/2/L F1 of each prediction against its reference (stemmed, as papers report)."""
    if len(predictions) != len(references):
        raise ConfigError(f"{len(predictions)} summaries for {len(references)} references; give one per reference.")
    scorer = _scorer(ROUGE_KEYS)
    out = np.zeros((len(ROUGE_KEYS), len(predictions)))
    for i, (p, r) in enumerate(zip(predictions, references)):
        s = scorer.score(str(r), str(p or ""))  # type: ignore[attr-defined]
        for k, key in enumerate(ROUGE_KEYS):
            out[k, i] = s[key].fmeasure
    return RougeScores(*out)


def rouge_l(predictions: Sequence[str], references: Sequence[str]) -> np.ndarray:
    """ROUGE-L F1 per example only (what mining and sentence labels need)."""
    scorer = _scorer(("rougeL",))
    return np.array([scorer.score(str(r), str(p or ""))["rougeL"].fmeasure  # type: ignore[attr-defined]
                     for p, r in zip(predictions, references)], dtype=np.float64)


__all__ = ["ROUGE_KEYS", "RougeScores", "rouge", "rouge_l"]
