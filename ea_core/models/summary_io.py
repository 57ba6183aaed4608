"""Saved summarizers loaded back by kind (lead, extractive, seq2seq, causal): what a summarization bundle
holds. Runs no pickled code: settings are JSON, weights safetensors."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Optional

from ea_core.errors import ModelError
from ea_core.models.base import load_model, read_json_file
from ea_core.models.memory import EmbeddingMemory
from ea_core.models.seq2seq import Seq2SeqSummarizer
from ea_core.models.summarizers import SUMMARIZER_JSON, ExtractiveSummarizer, LeadSummarizer


def load_summarizer(folder: Path, *, root: Optional[Path] = None, memory: Optional[EmbeddingMemory] = None) -> Any:
    """The summarizer saved in `folder` (a ModelError naming the file when it is missing or damaged)."""
    path = folder / SUMMARIZER_JSON
    meta = read_json_file(path)  # strict JSON, or a ModelError naming the file
    kind = meta.get("kind") if isinstance(meta, dict) else None
    if kind in ("lead", "extractive"):
        n = meta.get("n_sentences", 1)
        if not isinstance(n, int) or isinstance(n, bool) or n < 1:
            raise ModelError(f"{path}: n_sentences must be a whole number >= 1; export the bundle again.")
    if kind == "lead":
        return LeadSummarizer(n)
    if kind == "extractive":
        m = ExtractiveSummarizer(str(meta.get("encoder", "minilm")), n_sentences=n,
                                 memory=memory, name=str(meta.get("name", "extractive")))
        m.head_ = load_model(folder / "head", root=root, memory=m.memory)
        return m
    if kind == "seq2seq":
        return Seq2SeqSummarizer.load(folder, meta)
    if kind == "causal":
        from ea_core.models.causal_summarizer import CausalSummarizer

        return CausalSummarizer.load(folder, meta)
    raise ModelError(f"{path}: unknown summarizer kind {kind!r} (lead, extractive, seq2seq or causal).")


__all__ = ["load_summarizer"]
