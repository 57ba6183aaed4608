"""An adapted system: the real models in routing order, with thresholds, answering new inputs.

This is the cascade of `router.route` run on live inputs instead of cached arrays: a stage is
only computed for the inputs that reached it, so the LM is called only for what the small models
passed on. `route_one` explains one decision stage by stage, for the "try an input" view.
"""

from __future__ import annotations

import math
import numbers
import time
from dataclasses import asdict, dataclass, field, replace
from typing import Any, Optional, Sequence

import numpy as np

from ea_core.errors import ConfigError
from ea_core.events import CancelToken, ProgressCallback
from ea_core.llm.base import MISSING_CONFIDENCE, LMAnswer, LMProvider, routing_confidence
from ea_core.models.base import SmallModel
from ea_core.splits import ImageInput, Input, Split
from ea_core.calibration import apply_temperature


def lm_confidence(answer: LMAnswer, missing: float = MISSING_CONFIDENCE) -> float:
    """The LM's confidence for routing, by the rule the run tuned with (`routing_confidence`)."""
    return float(routing_confidence([answer.label], [answer.confidence], missing)[0])


@dataclass
class SystemStage:
    """One stage: a small model (with its calibration temperature) or the LM."""

    name: str
    threshold: float
    model: Optional[SmallModel] = None  # None for the LM stage
    temperature: float = 1.0

    @property
    def is_lm(self) -> bool:
        return self.model is None


@dataclass
class StageTrace:
    stage: str
    confidence: Optional[float]
    threshold: float
    answer: Optional[str]
    took: bool
    latency_s: float
    cost_usd: float = 0.0
    raw: Optional[str] = None  # the LM's reply text (LM stage only)


@dataclass
class RouteTrace:
    """Why an input got its answer: every stage reached, in order, and who answered."""

    prediction: Optional[str]
    answered_by: str
    stages: list[StageTrace] = field(default_factory=list)
    latency_s: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class Predictions:
    """Batch predictions: label index (-1/-2 when the LM gave no usable answer), who answered, confidence."""

    pred: np.ndarray
    answered_by: np.ndarray
    confidence: np.ndarray
    stage_names: list[str]


def check_stage(stage: SystemStage, labels: list[str]) -> None:
    """A stage answers in the system's labels, in the same order, with a usable temperature:
    a model trained on another label order would silently give wrong answers."""
    if stage.model is not None:
        own = list(getattr(stage.model, "labels_", []))
        if own != labels:
            raise ConfigError(f"Stage {stage.name!r} was trained on the labels {own} but the system's labels are "
                              f"{labels}: the label lists must be the same, in the same order.")
        t = stage.temperature
        if isinstance(t, bool) or not isinstance(t, numbers.Real) or not math.isfinite(t) or t <= 0:
            raise ConfigError(f"Stage {stage.name!r}: the temperature must be a positive number, not {t!r}.")


class AdaptedSystem:
    """SSMs -> ASSMs -> LM (or any order), each stage answering what it is confident about."""

    def __init__(self, labels: list[str], stages: list[SystemStage], provider: Optional[LMProvider] = None,
                 lm_missing_confidence: float = MISSING_CONFIDENCE) -> None:
        if not stages:
            raise ConfigError("An adapted system needs at least one stage.")
        if any(s.is_lm for s in stages) and provider is None:
            raise ConfigError("This system has an LM stage but no LM provider was given.")
        for stage in stages:
            check_stage(stage, list(labels))
        self.labels = list(labels)
        self.stages = stages
        self.provider = provider
        self.lm_missing_confidence = float(lm_missing_confidence)  # must match what the thresholds were tuned with

    def with_thresholds(self, thresholds: Sequence[float]) -> "AdaptedSystem":
        """The same models and LM at other thresholds, with stages of its own: a later change of this
        system's thresholds (a slider moved) does not reach it, nor it this one."""
        if len(thresholds) != len(self.stages):
            raise ConfigError(f"{len(self.stages)} threshold(s) needed, got {len(thresholds)}.")
        stages = [replace(stage, threshold=float(t)) for stage, t in zip(self.stages, thresholds)]
        return AdaptedSystem(self.labels, stages, self.provider, self.lm_missing_confidence)

    def _stage_proba(self, stage: SystemStage, split: Split) -> np.ndarray:
        assert stage.model is not None
        return apply_temperature(stage.model.predict_proba(split), stage.temperature)

    def predict(self, split: Split, *, callback: Optional[ProgressCallback] = None,
                cancel: Optional[CancelToken] = None) -> Predictions:
        """Route a batch; each stage runs only on the inputs still open when it is reached."""
        n = len(split)
        pred = np.full(n, -2, dtype=np.int64)
        conf = np.full(n, np.nan)
        answered_by = np.full(n, -1, dtype=np.int64)
        open_idx = np.arange(n)
        for k, stage in enumerate(self.stages):
            if len(open_idx) == 0:
                break
            last = k == len(self.stages) - 1
            part = split.subset(open_idx)
            if stage.is_lm:
                assert self.provider is not None
                answers, _ = self.provider.classify([part.input(i) for i in range(len(part))], self.labels,
                                                    stage="lm:predict", callback=callback, cancel=cancel)
                p = np.array([a.label for a in answers], dtype=np.int64)
                c = routing_confidence([a.label for a in answers], [a.confidence for a in answers],
                                       self.lm_missing_confidence)
            else:
                proba = self._stage_proba(stage, part)
                p, c = proba.argmax(1), proba.max(1)
            take = np.ones(len(open_idx), bool) if last else c >= stage.threshold
            pred[open_idx[take]] = p[take]
            conf[open_idx[take]] = c[take]
            answered_by[open_idx[take]] = k
            open_idx = open_idx[~take]
        return Predictions(pred, answered_by, conf, [s.name for s in self.stages])

    def route_one(self, item: Input, pair: Optional[str] = None) -> RouteTrace:
        """One input (a text, with `pair` for pair tasks, or an `ImageInput`) through the real
        models, with a trace of every stage it reached."""
        if isinstance(item, ImageInput):
            split = Split.from_images([item.data], [item.name or "image"])
        else:
            split = Split.from_texts([item], None if pair is None else [pair])
        trace = RouteTrace(prediction=None, answered_by="")
        t_all = time.perf_counter()
        for k, stage in enumerate(self.stages):
            last = k == len(self.stages) - 1
            t0 = time.perf_counter()
            cost, raw = 0.0, None
            if stage.is_lm:
                assert self.provider is not None
                answers, _ = self.provider.classify([split.input(0)], self.labels, stage="lm:route_one")
                a = answers[0]
                label_idx, c, cost, raw = a.label, lm_confidence(a, self.lm_missing_confidence), a.cost_usd, a.raw
                answer = self.labels[label_idx] if label_idx >= 0 else ("(unparseable)" if label_idx == -1 else None)
            else:
                proba = self._stage_proba(stage, split)[0]
                label_idx, c = int(proba.argmax()), float(proba.max())
                answer = self.labels[label_idx]
            took = last or c >= stage.threshold
            trace.stages.append(StageTrace(stage.name, c, stage.threshold, answer, took,
                                           time.perf_counter() - t0, cost, raw))
            if took:
                trace.prediction = answer if label_idx >= 0 else None
                trace.answered_by = stage.name
                break
        trace.latency_s = time.perf_counter() - t_all
        return trace
