"""Summarization data: a source text, a reference summary and an optional instruction per example,
split into train / validation / test (`SummaryTask`).

A table file (CSV/TSV/JSON lines/Parquet, read by the same readers as classification data) or the
offline demo ``demo:aclsum``: ACLSum (MIT), whose jsonl files ship inside the `aclsum` package and
are read from its folder (its code is never imported). Sources longer than `max_source_words` are
truncated, counted and warned about, since every model here has an input limit.
"""

from __future__ import annotations

import importlib.util
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional, Sequence

import numpy as np

from ea_core.errors import DataError

#: The demo dataset key and its aspects (one example per paper and aspect).
ACLSUM_DEMO = "demo:aclsum"
ACLSUM_ASPECTS = ("challenge", "approach", "outcome")
#: Column names detected when none is given, most specific first.
SOURCE_NAMES = ("source", "document", "article", "text", "dialogue", "input", "content")
SUMMARY_NAMES = ("summary", "reference", "highlights", "target", "abstract", "output")
INSTRUCTION_NAMES = ("instruction", "aspect", "prompt", "question")
#: Default limit on a source's length, in words (longer ones are truncated and counted).
MAX_SOURCE_WORDS = 400


@dataclass
class SummarySplit:
    """One split: `sources[i]` summarised under `instructions[i]` ("" for none) should read like
    `references[i]`. `sentences[i]` is the source cut into sentences (what extractive models pick)."""

    sources: list[str]
    references: list[str]
    instructions: list[str]
    sentences: list[list[str]]

    def __len__(self) -> int:
        return len(self.sources)

    def subset(self, index: Sequence[int]) -> "SummarySplit":
        idx = [int(i) for i in index]
        return SummarySplit([self.sources[i] for i in idx], [self.references[i] for i in idx],
                            [self.instructions[i] for i in idx], [self.sentences[i] for i in idx])


@dataclass
class SummaryTask:
    """A summarization task's three splits, where they came from and what loading had to change."""

    train: SummarySplit
    val: SummarySplit
    test: SummarySplit
    origin: str
    kind: str = "summarization"
    truncated: int = 0
    warnings: list[str] = field(default_factory=list)


def split_sentences(text: str) -> list[str]:
    """Sentences of `text` (a simple rule: ., ! or ? followed by a space and a capital or digit)."""
    import re

    parts = [p.strip() for p in re.split(r"(?<=[.!?])\s+(?=[A-Z0-9\"'(])", str(text).strip())]
    return [p for p in parts if p] or ([str(text).strip()] if str(text).strip() else [])


def _truncate(sentences: list[str], max_words: int) -> tuple[list[str], bool]:
    out, used = [], 0
    for s in sentences:
        words = s.split()
        if used + len(words) > max_words:
            if max_words - used > 0:
                out.append(" ".join(words[: max_words - used]))
            return out, True
        out.append(s)
        used += len(words)
    return out, False


def _make_split(sources: list[list[str]], refs: list[str], instr: list[str], max_words: int) -> tuple[SummarySplit, int]:
    sents, cut = [], 0
    for s in sources:
        kept, was_cut = _truncate(s, max_words)
        sents.append(kept)
        cut += int(was_cut)
    return SummarySplit([" ".join(s) for s in sents], list(refs), list(instr), sents), cut


def aclsum_dir() -> Path:
    """The folder of ACLSum's jsonl files inside the installed `aclsum` package."""
    spec = importlib.util.find_spec("aclsum")
    if spec is None or spec.origin is None:
        raise DataError("demo:aclsum needs the aclsum package (MIT, ships the data): pip install --no-deps aclsum==0.1.2")
    folder = Path(spec.origin).parent / "dataset"
    if not (folder / "train.jsonl").is_file():
        raise DataError(f"The aclsum package at {folder.parent} has no dataset/train.jsonl; reinstall aclsum==0.1.2.")
    return folder


def load_aclsum(*, section: str = "abstract", max_source_words: int = MAX_SOURCE_WORDS,
                max_train: Optional[int] = None, max_val: Optional[int] = None,
                max_test: Optional[int] = None) -> SummaryTask:
    """ACLSum from the package's files: one example per (paper, aspect); the source is the paper's
    `section` sentences, the instruction the aspect, the target its summary. Its own splits."""
    if section not in ("abstract", "introduction", "conclusion"):
        raise DataError(f"ACLSum sections are abstract, introduction and conclusion, not {section!r}.")
    folder = aclsum_dir()
    splits, cut, caps = {}, 0, {"train": max_train, "val": max_val, "test": max_test}
    for name in ("train", "val", "test"):
        sources, refs, instr = [], [], []
        for line in (folder / f"{name}.jsonl").read_text(encoding="utf-8").splitlines():
            if not line.strip():
                continue
            rec = json.loads(line)
            for aspect in ACLSUM_ASPECTS:
                ref = str(rec["summary"].get(aspect) or "").strip()
                sents = [str(s).strip() for s in rec["sentences"].get(section) or [] if str(s).strip()]
                if ref and sents:
                    sources.append(sents)
                    refs.append(ref)
                    instr.append(aspect)
        cap = caps[name]
        if cap is not None:
            sources, refs, instr = sources[:cap], refs[:cap], instr[:cap]
        splits[name], c = _make_split(sources, refs, instr, max_source_words)
        cut += c
    return _finish(splits, ACLSUM_DEMO, cut, max_source_words)


def _finish(splits: dict[str, SummarySplit], origin: str, cut: int, max_words: int) -> SummaryTask:
    warnings = []
    if cut:
        warnings.append(f"{cut} source(s) were longer than {max_words} words and were truncated to that length.")
    for name in ("train", "val", "test"):
        if len(splits[name]) == 0:
            raise DataError(f"{origin}: the {name} split has no examples; give more rows or smaller val/test fractions.")
    return SummaryTask(splits["train"], splits["val"], splits["test"], origin, truncated=cut, warnings=warnings)


def _pick(names: list[str], wanted: Optional[str], candidates: Sequence[str], what: str, flag: str,
          source: str) -> Optional[str]:
    if wanted:
        if wanted not in names:
            raise DataError(f"{source} has no column {wanted!r} for the {what} (columns: {', '.join(names)}); "
                            f"fix {flag}.")
        return wanted
    lower = {n.lower(): n for n in names}
    return next((lower[c] for c in candidates if c in lower), None)


def _texts(values: list[Any], column: str, source: str, what: str) -> list[str]:
    out = []
    for i, v in enumerate(values):
        if v is None or (isinstance(v, float) and np.isnan(v)):
            out.append("")
        elif isinstance(v, (bytes, bytearray, list, dict)) or not isinstance(v, (str, int, float)):
            raise DataError(f"{source}: column {column!r} ({what}) row {i + 1} is not text "
                            f"({type(v).__name__}); the {what} must be plain text.")
        else:
            out.append(str(v))
    return out


def _hub_table(name: str) -> Any:
    """A Hugging Face dataset by name (online), its splits stacked (this loader splits by itself); the
    usual columns are detected (xsum: document/summary, cnn_dailymail: article/highlights, samsum:
    dialogue/summary, billsum: text/summary)."""
    try:
        import datasets
        import pyarrow as pa
    except ImportError:  # pragma: no cover - a dependency
        raise DataError("Hugging Face datasets need the datasets package: pip install datasets") from None
    args = [name, "3.0.0"] if name == "cnn_dailymail" else [name]
    try:
        ds = datasets.load_dataset(*args)
    except Exception as exc:  # noqa: BLE001 - offline, unknown name, gated: one message
        raise DataError(f"Could not load the Hugging Face dataset {name!r} ({type(exc).__name__}: "
                        f"{str(exc).splitlines()[0][:200]}). It needs the internet; offline, use a file or "
                        f"{ACLSUM_DEMO}.") from None
    parts = [ds[k].data.table for k in ds] if hasattr(ds, "keys") else [ds.data.table]
    return pa.concat_tables(parts)


def _read_table(source: str) -> Any:
    """The table of a file (CSV/TSV/JSON lines/Parquet) or a Hugging Face dataset name (online)."""
    from ea_core.data.formats import SUPPORTED_FORMATS, read_format

    path = Path(source)
    if not path.is_file() and path.suffix.lower() not in SUPPORTED_FORMATS and not path.is_dir():
        table = _hub_table(source)  # a Hugging Face dataset name, e.g. xsum, cnn_dailymail, samsum
    else:
        if not path.is_file():
            raise DataError(f"No file at {source}. Pass a CSV, TSV, JSON lines or Parquet file, {ACLSUM_DEMO}, "
                            "or a Hugging Face dataset name (online).")
        fmt = SUPPORTED_FORMATS.get(path.suffix.lower())
        if fmt is None:
            raise DataError(f"{source}: unknown file type {path.suffix!r}; use .csv, .tsv, .jsonl or .parquet.")
        with open(path, "rb") as fh:
            head = fh.read(65536)
        table = read_format(fmt, str(path), source, None, head)
    return table


def summary_columns(source: str) -> dict[str, Any]:
    """The columns of a file and the ones a run would pick when none is named (what the app's
    pickers offer before a run): ``{"columns", "source", "summary", "instruction"}``."""
    if source.strip().lower() == ACLSUM_DEMO:
        return {"columns": [], "source": None, "summary": None, "instruction": None}
    names = list(_read_table(source).column_names)
    summary = _pick(names, None, SUMMARY_NAMES, "reference summary", "", source)
    src = _pick([n for n in names if n != summary], None, SOURCE_NAMES, "source text", "", source)
    return {"columns": names, "source": src, "summary": summary,
            "instruction": _pick(names, None, INSTRUCTION_NAMES, "instruction", "", source)}


def load_summaries(source: str, *, source_column: Optional[str] = None, summary_column: Optional[str] = None,
                   instruction_column: Optional[str] = None, val_frac: float = 0.15, test_frac: float = 0.15,
                   max_train: Optional[int] = None, max_val: Optional[int] = None, max_test: Optional[int] = None,
                   max_source_words: int = MAX_SOURCE_WORDS, seed: int = 0) -> SummaryTask:
    """A summarization task from a table file or ``demo:aclsum``; DataError with a fix for bad input
    (no summary column, empty summaries, non-text cells, too few rows)."""
    if source.strip().lower() == ACLSUM_DEMO:
        return load_aclsum(max_source_words=max_source_words, max_train=max_train, max_val=max_val,
                           max_test=max_test)
    if source.lower().startswith("demo:"):
        raise DataError(f"Unknown summarization demo {source!r}; the offline one is {ACLSUM_DEMO}.")
    table = _read_table(source)
    names = table.column_names
    src_col = _pick(names, source_column, SOURCE_NAMES, "source text", "--source-column", source)
    sum_col = _pick(names, summary_column, SUMMARY_NAMES, "reference summary", "--summary-column", source)
    if sum_col is None:
        raise DataError(f"{source} has no reference-summary column (columns: {', '.join(names)}); name one with "
                        "--summary-column (e.g. a column 'summary').")
    if src_col is None or src_col == sum_col:
        raise DataError(f"{source} has no source-text column (columns: {', '.join(names)}); name one with "
                        "--source-column (e.g. a column 'document').")
    ins_col = _pick(names, instruction_column, INSTRUCTION_NAMES, "instruction", "--instruction-column", source)
    sources = _texts(table.column(src_col).to_pylist(), src_col, source, "source text")
    refs = _texts(table.column(sum_col).to_pylist(), sum_col, source, "reference summary")
    instr = (_texts(table.column(ins_col).to_pylist(), ins_col, source, "instruction") if ins_col
             else [""] * len(sources))
    empty_ref = [i for i, r in enumerate(refs) if not r.strip()]
    if len(empty_ref) == len(refs):
        raise DataError(f"{source}: the summary column {sum_col!r} is empty in every row; give reference summaries.")
    if empty_ref:
        raise DataError(f"{source}: {len(empty_ref)} row(s) have an empty reference summary (first: row "
                        f"{empty_ref[0] + 1}); fill them in or drop those rows.")
    empty_src = [i for i, s in enumerate(sources) if not s.strip()]
    if empty_src:
        raise DataError(f"{source}: {len(empty_src)} row(s) have an empty source text (first: row "
                        f"{empty_src[0] + 1}); fill them in or drop those rows.")
    n = len(sources)
    if n < 6:
        raise DataError(f"{source} has {n} row(s); summarization needs at least 6 (train, validation and test).")
    rng = np.random.default_rng(seed)
    order = rng.permutation(n)
    n_test = max(1, int(round(test_frac * n)))
    n_val = max(1, int(round(val_frac * n)))
    parts = {"test": order[:n_test], "val": order[n_test:n_test + n_val], "train": order[n_test + n_val:]}
    caps = {"train": max_train, "val": max_val, "test": max_test}
    splits, cut = {}, 0
    for name, idx in parts.items():
        idx = idx[: caps[name]] if caps[name] is not None else idx
        splits[name], c = _make_split([split_sentences(sources[i]) for i in idx], [refs[i] for i in idx],
                                      [instr[i] for i in idx], max_source_words)
        cut += c
    return _finish(splits, source, cut, max_source_words)


__all__ = ["ACLSUM_DEMO", "SummarySplit", "SummaryTask", "load_aclsum", "load_summaries", "split_sentences",
           "summary_columns"]
