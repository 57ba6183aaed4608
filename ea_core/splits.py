"""Plain data passed between stages: a task's label list and its train/validation/test splits."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional, Sequence

import numpy as np


@dataclass
class Split:
    """Inputs and integer labels of one split.

    `texts[i]` is the input (the premise for text pairs), `pairs[i]` the second text of a pair
    task (the hypothesis) or `pairs is None` for single-text tasks. `labels[i]` indexes
    `TaskData.labels`; it is -1 when unknown (unlabelled inputs for prediction).
    """

    texts: list[str]
    labels: np.ndarray
    pairs: Optional[list[str]] = None

    def __post_init__(self) -> None:
        self.labels = np.asarray(self.labels, dtype=np.int64)
        if len(self.texts) != len(self.labels):
            raise ValueError("texts and labels differ in length")
        if self.pairs is not None and len(self.pairs) != len(self.texts):
            raise ValueError("texts and pairs differ in length")

    def __len__(self) -> int:
        return len(self.texts)

    @classmethod
    def from_texts(cls, texts: Sequence[str], pairs: Optional[Sequence[str]] = None) -> "Split":
        """An unlabelled split for prediction."""
        return cls(list(texts), np.full(len(texts), -1, dtype=np.int64), None if pairs is None else list(pairs))

    def subset(self, index: Sequence[int] | np.ndarray) -> "Split":
        idx = np.asarray(index, dtype=np.int64)
        return Split(
            [self.texts[i] for i in idx],
            self.labels[idx],
            None if self.pairs is None else [self.pairs[i] for i in idx],
        )

    def input(self, i: int) -> tuple[str, Optional[str]]:
        return self.texts[i], None if self.pairs is None else self.pairs[i]


@dataclass
class TaskData:
    """A labelled classification task, split three ways, plus what loading had to say."""

    name: str
    labels: list[str]
    train: Split
    val: Split
    test: Split
    warnings: list[str] = field(default_factory=list)
    text_col: str = "text"
    pair_col: Optional[str] = None
    label_col: str = "label"

    @property
    def is_pair(self) -> bool:
        return self.train.pairs is not None

    @property
    def n_labels(self) -> int:
        return len(self.labels)

    def split(self, name: str) -> Split:
        return {"train": self.train, "val": self.val, "test": self.test}[name]
