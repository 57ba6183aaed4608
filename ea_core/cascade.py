"""The cascade over a batch of live inputs, stage by stage, with each row's route.

What `AdaptedSystem.predict` does (a stage computes only the rows still open when it is reached,
temperature-scaled probabilities, the LM's confidence as tuned), kept in pieces that both batch
engines share: `route_split` runs a whole chunk in this process (`ea_core.batch_predict`), while
`ea_core.ray_predict` runs `stage_answers` for one stage per actor and records it with `Routed.take`.
Each row also keeps the confidence of every stage it reached (its route).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import numpy as np

from ea_core.calibration import apply_temperature
from ea_core.events import CancelToken, ProgressCallback
from ea_core.llm.base import routing_confidence
from ea_core.models.memory import EmbeddingMemory
from ea_core.splits import Split
from ea_core.system import AdaptedSystem


@dataclass(frozen=True)
class LMBatch:
    """The LM stage asked through the endpoint's Batch API (`OpenAIProvider.classify_batch`) for one
    chunk: the batch id is saved at `state_path`, so a restarted job polls it instead of paying again.
    `max_wait_s` 0 submits (or polls once) and returns; None waits for the batch to end."""

    state_path: Path
    poll_s: float = 30.0
    max_wait_s: Optional[float] = None


@dataclass
class Routed:
    """A chunk's answers: label index (-1/-2: the LM gave no usable answer), the stage that
    answered, its confidence, and the confidence of every stage the row reached (NaN: not reached)."""

    pred: np.ndarray
    answered_by: np.ndarray
    confidence: np.ndarray
    stage_confidence: np.ndarray  # (rows, stages)

    @classmethod
    def empty(cls, n: int, stages: int) -> "Routed":
        return cls(np.full(n, -2, dtype=np.int64), np.full(n, -1, dtype=np.int64), np.full(n, np.nan),
                   np.full((n, stages), np.nan))

    def take(self, k: int, open_idx: np.ndarray, pred: np.ndarray, conf: np.ndarray, threshold: float,
             last: bool) -> np.ndarray:
        """Record stage `k`'s answers for the open rows `open_idx`; return the rows left open."""
        self.stage_confidence[open_idx, k] = conf
        took = np.ones(len(open_idx), bool) if last else conf >= threshold
        self.pred[open_idx[took]] = pred[took]
        self.confidence[open_idx[took]] = conf[took]
        self.answered_by[open_idx[took]] = k
        return open_idx[~took]


def stage_answers(system: AdaptedSystem, k: int, split: Split, *, callback: Optional[ProgressCallback] = None,
                  cancel: Optional[CancelToken] = None,
                  lm_batch: Optional[LMBatch] = None) -> tuple[np.ndarray, np.ndarray]:
    """(label index, routing confidence) of stage `k` for every input of `split`, by the rules of
    `AdaptedSystem.predict` (temperature-scaled probabilities; the LM's confidence as tuned). With
    `lm_batch`, the LM stage goes through the Batch API (answers it did not give are FAILED)."""
    stage = system.stages[k]
    if stage.is_lm:
        assert system.provider is not None
        inputs = [split.input(i) for i in range(len(split))]
        if lm_batch is not None and len(inputs):
            answers, _ = system.provider.classify_batch(  # type: ignore[attr-defined]
                inputs, system.labels, state_path=lm_batch.state_path, stage="lm:predict", callback=callback,
                cancel=cancel, poll_s=lm_batch.poll_s, max_wait_s=lm_batch.max_wait_s)
        else:
            answers, _ = system.provider.classify(inputs, system.labels, stage="lm:predict", callback=callback,
                                                  cancel=cancel)
        labels = [a.label for a in answers]
        conf = routing_confidence(labels, [a.confidence for a in answers], system.lm_missing_confidence)
        return np.array(labels, dtype=np.int64), np.asarray(conf, dtype=np.float64)
    assert stage.model is not None
    proba = apply_temperature(stage.model.predict_proba(split), stage.temperature)
    return proba.argmax(1).astype(np.int64), proba.max(1).astype(np.float64)


def route_split(system: AdaptedSystem, split: Split, *, callback: Optional[ProgressCallback] = None,
                cancel: Optional[CancelToken] = None, lm_batch: Optional[LMBatch] = None) -> Routed:
    """The cascade over `split`: each stage runs only on the rows still open when it is reached."""
    out = Routed.empty(len(split), len(system.stages))
    open_idx = np.arange(len(split))
    for k, stage in enumerate(system.stages):
        if not len(open_idx):
            break
        pred, conf = stage_answers(system, k, split.subset(open_idx), callback=callback, cancel=cancel,
                                   lm_batch=lm_batch)
        open_idx = out.take(k, open_idx, pred, conf, stage.threshold, k == len(system.stages) - 1)
    return out


def for_streaming(system: AdaptedSystem, chunk_rows: int) -> AdaptedSystem:
    """The system's head models set for a stream: their in-memory vectors bounded to a few chunks
    (one memory for all stages, so a later stage reuses an earlier one's vectors) and no on-disk
    embedding cache (one file per chunk would grow with the input)."""
    memory = EmbeddingMemory(max_vectors=2 * int(chunk_rows))
    for stage in system.stages:
        if stage.model is not None and hasattr(stage.model, "memory"):
            stage.model.memory = memory
        if stage.model is not None and hasattr(stage.model, "use_cache"):
            stage.model.use_cache = False
    return system


@dataclass
class Chunk:
    """One chunk's rows as read and as routed."""

    split: Split
    gold: Optional[np.ndarray]
    routed: Routed


__all__ = ["Chunk", "LMBatch", "Routed", "for_streaming", "route_split", "stage_answers"]
