"""The one interface of every large-model (LM) provider: classify a batch of inputs into labels.

A provider turns inputs into `LMAnswer`s. An answer's `label` indexes the task's label list, or
is `UNPARSEABLE` (the LM answered but named no label, or several) or `FAILED` (no usable
response after retries; it can be retried later). Neither is ever mapped to a label.

An answer's confidence, for routing, follows one rule (`routing_confidence`, used by the run's
cached-output routing and by the live system alike): the LM's own confidence when it gave one;
`MISSING_CONFIDENCE` (0.5) when it gave none, so an unknown confidence never passes as a sure one:
in the LM-first order answers the LM was sure of (> 0.5) can be taken while the unknown ones are
passed on, and threshold tuning on validation decides whether the unknown ones, as a group, are
trusted (a threshold <= 0.5); 0 when there is no usable answer (the input is passed on).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import asdict, dataclass
from typing import Any, Optional, Sequence

import numpy as np

from ea_core.errors import ConfigError
from ea_core.events import CancelToken, ProgressCallback
from ea_core.splits import ImageInput, Input

UNPARSEABLE = -1
FAILED = -2

#: (text, second text of a pair or None), or (ImageInput, None) for an image task.
LMInput = tuple[Input, Optional[str]]

#: The routing confidence of an LM answer that carries none (see the module docstring).
MISSING_CONFIDENCE = 0.5


def routing_confidence(labels: Any, confidences: Any, missing: float = MISSING_CONFIDENCE) -> np.ndarray:
    """Per answer: its confidence; `missing` when it has none (None or NaN); 0 when it has no label."""
    conf = np.array([np.nan if c is None else c for c in np.ravel(confidences)], dtype=np.float64)
    conf = np.where(np.isnan(conf), float(missing), np.clip(conf, 0.0, 1.0))
    conf[np.ravel(np.asarray(labels)) < 0] = 0.0
    return conf


@dataclass
class LMAnswer:
    label: int
    confidence: Optional[float] = None  # from token log-probs or label scores; None if unknown
    raw: str = ""
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cost_usd: float = 0.0
    latency_s: float = 0.0
    cached: bool = False
    error: Optional[str] = None

    @property
    def ok(self) -> bool:
        return self.label >= 0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class LMUsage:
    """Running totals of one `classify` call (also streamed in progress events)."""

    calls: int = 0  # paid requests actually sent and answered
    cache_hits: int = 0
    failures: int = 0  # FAILED: the request got no answer (error, budget, cancel); never cached
    unparseable: int = 0  # UNPARSEABLE: the LM answered but named no label; paid, cached
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cost_usd: float = 0.0
    budget_exhausted: bool = False
    price_unknown: bool = False  # the model has no price in the price table: cost_usd stays 0
    with_confidence: int = 0  # answers (naming a label) that carried the LM's own confidence

    @property
    def tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens


class LMProvider(ABC):
    """A large model behind some transport (HTTP API, in-process model)."""

    #: True when answers carry a confidence usable for routing.
    gives_confidence: bool = False
    #: True when the provider can be asked about images (`ImageInput` inputs).
    accepts_images: bool = False

    @abstractmethod
    def describe(self) -> dict[str, Any]:
        """Settings that identify this LM, safe to save (never the API key)."""

    @abstractmethod
    def classify(
        self,
        inputs: Sequence[LMInput],
        labels: Sequence[str],
        *,
        stage: str = "lm",
        callback: Optional[ProgressCallback] = None,
        cancel: Optional[CancelToken] = None,
    ) -> tuple[list[LMAnswer], LMUsage]:
        """Classify every input; one answer per input, in order."""


def normalize_request(inputs: Sequence[LMInput], labels: Sequence[str]) -> tuple[list[LMInput], list[str]]:
    """Inputs and labels as plain strings (what every provider prompts with), images kept as
    `ImageInput` (with no pair); no labels is an error."""
    labels = [str(lab) for lab in labels]
    if not labels:
        raise ConfigError("The task has no labels to classify into.")
    out: list[LMInput] = []
    for t, p in inputs:
        if isinstance(t, ImageInput):
            out.append((t, None))
        else:
            out.append((str(t), None if p is None else str(p)))
    return out, labels


def has_images(inputs: Sequence[LMInput]) -> bool:
    """Whether any input is an image."""
    return any(isinstance(t, ImageInput) for t, _ in inputs)


#: What to say to someone who asked a text model about images.
VISION_HINT = (
    "use a vision LM through an OpenAI-compatible API (e.g. --lm openai --lm-model gpt-4o-mini, "
    "--lm qwen --lm-model qwen-vl-plus, --lm glm --lm-model glm-4v-flash, or LLaVA / Qwen2-VL behind "
    "--lm ollama / --lm vllm), or --lm local:image-knn, an offline stand-in that is not a language model"
)


def refuse_images(inputs: Sequence[LMInput], who: str) -> None:
    """ConfigError when `inputs` hold an image: `who` (e.g. "The local LM 'x'") is a text model."""
    if has_images(inputs):
        raise ConfigError(f"{who} is a text model; image tasks need a vision LM: {VISION_HINT}.")
