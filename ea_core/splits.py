"""Plain data passed between stages: a task's label list and its train/validation/test splits.

A split holds text inputs (`texts`, and `pairs` for text-pair tasks) or image inputs (`images`:
each image's encoded PNG/JPEG bytes, with `texts` holding each image's display name). Image bytes
stay encoded so a split is compact, hashable and saves as it is; `ea_core.imaging` decodes them.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import Optional, Sequence, Union

import numpy as np


@dataclass(frozen=True)
class ImageInput:
    """One image as a large-model input: its encoded bytes (what the LM sees and what the answer
    cache keys on, via `sha256`) and a display name (a file name, for people only: never a key)."""

    data: bytes
    name: str = ""

    @property
    def sha256(self) -> str:
        return hashlib.sha256(self.data).hexdigest()

    def __str__(self) -> str:
        return f"<image {self.name or self.sha256[:12]}>"


#: What a model is asked about: a text or an image.
Input = Union[str, ImageInput]


@dataclass
class Split:
    """Inputs and integer labels of one split.

    `texts[i]` is the input (the premise for text pairs), `pairs[i]` the second text of a pair
    task (the hypothesis) or `pairs is None` for single-text tasks. `labels[i]` indexes
    `TaskData.labels`; it is -1 when unknown (unlabelled inputs for prediction). For an image
    task `images[i]` is the encoded image and `texts[i]` its display name; `pairs` is None.
    """

    texts: list[str]
    labels: np.ndarray
    pairs: Optional[list[str]] = None
    images: Optional[list[bytes]] = None

    def __post_init__(self) -> None:
        self.labels = np.asarray(self.labels, dtype=np.int64)
        if len(self.texts) != len(self.labels):
            raise ValueError("texts and labels differ in length")
        if self.pairs is not None and len(self.pairs) != len(self.texts):
            raise ValueError("texts and pairs differ in length")
        if self.images is not None and len(self.images) != len(self.texts):
            raise ValueError("texts (image names) and images differ in length")

    @property
    def is_image(self) -> bool:
        return self.images is not None

    def __len__(self) -> int:
        return len(self.texts)

    @classmethod
    def from_texts(cls, texts: Sequence[str], pairs: Optional[Sequence[str]] = None) -> "Split":
        """An unlabelled split for prediction."""
        return cls(list(texts), np.full(len(texts), -1, dtype=np.int64), None if pairs is None else list(pairs))

    @classmethod
    def from_images(cls, images: Sequence[bytes], names: Optional[Sequence[str]] = None) -> "Split":
        """An unlabelled image split for prediction (`names` default to ``image-<i>``)."""
        names = [f"image-{i}" for i in range(len(images))] if names is None else [str(n) for n in names]
        return cls(names, np.full(len(images), -1, dtype=np.int64), None, [bytes(b) for b in images])

    def subset(self, index: Sequence[int] | np.ndarray) -> "Split":
        idx = np.asarray(index, dtype=np.int64)
        return Split(
            [self.texts[i] for i in idx],
            self.labels[idx],
            None if self.pairs is None else [self.pairs[i] for i in idx],
            None if self.images is None else [self.images[i] for i in idx],
        )

    def input(self, i: int) -> tuple[Input, Optional[str]]:
        """Input `i` as a large model is asked about it: (text, pair) or (ImageInput, None)."""
        if self.images is not None:
            return ImageInput(self.images[i], self.texts[i]), None
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
    def is_image(self) -> bool:
        return self.train.images is not None

    @property
    def modality(self) -> str:
        """``image``, ``pair`` (two texts) or ``text``: which small models and LMs apply."""
        return "image" if self.is_image else "pair" if self.is_pair else "text"

    @property
    def n_labels(self) -> int:
        return len(self.labels)

    def split(self, name: str) -> Split:
        return {"train": self.train, "val": self.val, "test": self.test}[name]
