"""Small models that summarize: the lead baseline, an extractive sentence scorer (the head machinery
over frozen MiniLM, trained on greedy ROUGE-oracle sentence labels) and ``finetune:`` seq2seq.

Each returns, per input, a summary and a *raw* confidence, which the engine maps to expected ROUGE-L
(`ea_core.calibration`), so one threshold means the same for every stage. For the extractive scorer
the raw confidence is the margin of the chosen sentence's score over the runner-up's: on ACLSum
(abstracts, 150 validation / 300 test examples) its Spearman correlation with the summary's ROUGE-L
was 0.19 / 0.13, against 0.00 / 0.02 for the top sentence's probability, 0.15 / 0.08 for the
(negated) entropy of the sentence scores and 0.01 / -0.05 for agreement with the lead baseline
(ROUGE-L between the two summaries); a weak signal all the same, measured once, so routing by it
gains little unless the LM is much better where it is low. Generated text: the mean token probability.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional, Sequence

import numpy as np

from ea_core.data.summaries import SummarySplit
from ea_core.errors import ModelError
from ea_core.events import EventKind, ProgressCallback, ProgressEvent, tagged
from ea_core.models.memory import EmbeddingMemory
from ea_core.rouge import rouge_l
from ea_core.splits import Split

#: Labels of the sentence scorer's head: is a sentence in the ROUGE oracle summary.
SENTENCE_LABELS = ["other", "summary"]
#: The file naming a saved summarizer's kind and settings.
SUMMARIZER_JSON = "summarizer.json"


@dataclass
class Summaries:
    """A small model's output on a split: one summary and raw confidence in [0, 1] per input."""

    texts: list[str]
    raw_conf: np.ndarray


def oracle_sentences(sentences: Sequence[str], reference: str, max_sentences: int = 2) -> list[int]:
    """Greedy ROUGE oracle: add the sentence that raises ROUGE-L with the reference most, while it rises."""
    chosen: list[int] = []
    best = 0.0
    for _ in range(min(max_sentences, len(sentences))):
        rest = [i for i in range(len(sentences)) if i not in chosen]
        cands = [" ".join(sentences[j] for j in sorted(chosen + [i])) for i in rest]
        scores = rouge_l(cands, [reference] * len(cands))
        k = int(np.argmax(scores))
        if scores[k] <= best + 1e-9:
            break
        best = float(scores[k])
        chosen.append(rest[k])
    return sorted(chosen)


def report_step(callback: Optional[ProgressCallback], name: str, step: int, total: int, loss: float) -> None:
    """A generator's training step as a TRAIN event (its loss): what the Summaries tab draws as a
    curve, and where a cancelled run stops (the run's callback checks Cancel on every event)."""
    if callback is not None:
        callback(ProgressEvent(f"train:{name}", step, max(total, step), kind=EventKind.TRAIN, model=name,
                               loss=float(loss)))


class LeadSummarizer:
    """The first sentence(s) of the source: the classic baseline, free and instant."""

    name = "lead"

    def __init__(self, n_sentences: int = 1) -> None:
        self.n_sentences = int(n_sentences)

    def fit(self, train: SummarySplit, val: Optional[SummarySplit] = None, *, warm_start: bool = False,
            callback: Optional[ProgressCallback] = None) -> "LeadSummarizer":
        return self

    def save(self, folder: Path) -> None:
        """Its settings (it has no weights)."""
        folder.mkdir(parents=True, exist_ok=True)
        (folder / SUMMARIZER_JSON).write_text(json.dumps({"kind": "lead", "n_sentences": self.n_sentences}))

    def summarize(self, split: SummarySplit) -> Summaries:
        texts = [" ".join(s[: self.n_sentences]) for s in split.sentences]
        # Raw confidence: the share of the source the lead covers (a short source is mostly its lead).
        raw = np.array([min(1.0, len(t.split()) / max(len(src.split()), 1)) for t, src in zip(texts, split.sources)])
        return Summaries(texts, raw)


class ExtractiveSummarizer:
    """Scores each sentence (with the instruction in front) by a head over frozen encoder
    embeddings, trained on greedy-oracle labels; the summary is the top `n_sentences` sentences."""

    def __init__(self, encoder: str = "minilm", *, n_sentences: int = 1, seed: int = 0, epochs: int = 40,
                 memory: Optional[EmbeddingMemory] = None, name: str = "extractive", **head_settings: Any) -> None:
        self.encoder = encoder
        self.n_sentences = int(n_sentences)
        self.seed = int(seed)
        self.epochs = int(epochs)
        self.memory = memory if memory is not None else EmbeddingMemory()
        self.name = name
        self.head_settings = head_settings
        self.head_: Any = None

    @staticmethod
    def _rows(split: SummarySplit) -> tuple[list[str], np.ndarray]:
        texts, doc = [], []
        for i, (sents, ins) in enumerate(zip(split.sentences, split.instructions)):
            for s in sents:
                texts.append(f"{ins}: {s}" if ins else s)
                doc.append(i)
        return texts, np.asarray(doc, dtype=np.int64)

    def _labelled(self, split: SummarySplit) -> Split:
        texts, _ = self._rows(split)
        labels = []
        for sents, ref in zip(split.sentences, split.references):
            keep = set(oracle_sentences(sents, ref, max(self.n_sentences, 1)))
            labels += [1 if j in keep else 0 for j in range(len(sents))]
        return Split(texts, np.asarray(labels, dtype=np.int64))

    def fit(self, train: SummarySplit, val: Optional[SummarySplit] = None, *,
            warm_start: bool = False, callback: Optional[ProgressCallback] = None) -> "ExtractiveSummarizer":
        """Train the sentence scorer (`warm_start`: go on from the current head, e.g. on mined examples);
        `callback` gets the head's epochs (loss, validation accuracy of the sentence labels)."""
        from ea_core.models import make_model

        if len(train) == 0:
            raise ModelError(f"{self.name}: no training examples.")
        tr = self._labelled(train)
        if len(set(tr.labels.tolist())) < 2:
            raise ModelError(f"{self.name}: the oracle labels of the training sources are all one class.")
        va = self._labelled(val) if val is not None and len(val) else None
        if va is not None and len(set(va.labels.tolist())) < 2:
            va = None
        if self.head_ is None or not warm_start:
            self.head_ = make_model(f"head:{self.encoder}", SENTENCE_LABELS, memory=self.memory, seed=self.seed,
                                    epochs=self.epochs, **self.head_settings)
            warm_start = False
        self.head_.fit(tr, va, SENTENCE_LABELS, warm_start=warm_start, callback=tagged(callback, model=self.name))
        return self

    def save(self, folder: Path) -> None:
        """Its settings and its head (the encoder is named, not copied: the packaged MiniLM or a hub id)."""
        if self.head_ is None:
            raise ModelError(f"{self.name} is not trained yet.")
        folder.mkdir(parents=True, exist_ok=True)
        self.head_.save(folder / "head")
        (folder / SUMMARIZER_JSON).write_text(json.dumps(
            {"kind": "extractive", "encoder": self.encoder, "n_sentences": self.n_sentences, "name": self.name}))

    def summarize(self, split: SummarySplit) -> Summaries:
        if self.head_ is None:
            raise ModelError(f"{self.name} is not trained yet.")
        texts, doc = self._rows(split)
        p = self.head_.predict_proba(Split(texts, np.full(len(texts), -1))) if texts else np.zeros((0, 2))
        score = p[:, 1] if len(p) else np.zeros(0)
        out, raw = [], np.zeros(len(split))
        start = 0
        for i, sents in enumerate(split.sentences):
            s = score[start:start + len(sents)]
            start += len(sents)
            if not len(sents):
                out.append("")
                continue
            order = np.argsort(-s, kind="stable")
            top = sorted(order[: self.n_sentences].tolist())
            out.append(" ".join(sents[j] for j in top))
            # The margin of the chosen sentence over the runner-up (see the module docstring).
            raw[i] = float(s[order[0]] - (s[order[1]] if len(s) > 1 else 0.0))
        return Summaries(out, raw)


__all__ = ["ExtractiveSummarizer", "LeadSummarizer", "SENTENCE_LABELS", "Summaries", "oracle_sentences"]
