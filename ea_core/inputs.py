"""Unlabelled inputs for batch prediction: read a file of texts, write a file of predictions."""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Optional

import numpy as np

from ea_core.errors import DataError
from ea_core.splits import Split
from ea_core.system import Predictions

def read_inputs(path: str, *, text_col: Optional[str] = None, pair_col: Optional[str] = None,
                labels: Optional[list[str]] = None, pair_task: Optional[bool] = None) -> tuple[Split, dict]:
    """A Split of the file's inputs. Gold labels, when a label column is present, are kept for scoring.

    Columns: as named, else as in training (the caller passes the bundle's), else detected like
    `ea_core.data` does. `pair_task` (from the bundle) makes a missing second text an error.
    """
    from ea_core.data import LABEL_COLUMNS, PAIR_COLUMNS, TEXT_COLUMNS, _find, read_table

    p = Path(path)
    if not p.is_file():
        raise DataError(f"Input file not found: {path}")
    if p.suffix.lower() == ".txt":
        if pair_task:
            raise DataError("This system classifies text pairs: give a CSV/JSONL/Parquet file with both columns.")
        try:
            texts = [line for line in p.read_text(encoding="utf-8").splitlines() if line.strip()]
        except (OSError, UnicodeDecodeError) as err:
            raise DataError(f"Cannot read {path} as UTF-8 text ({err}). Re-save it as UTF-8.") from None
        if not texts:
            raise DataError(f"{path} has no non-empty lines.")
        return Split.from_texts(texts), {"text_col": None}
    table = read_table(str(p))
    cols = table.column_names

    def pick(wanted: Optional[str], guesses: tuple[str, ...], flag: str) -> Optional[str]:
        if wanted:
            found = _find(cols, wanted)
            if found is None:
                raise DataError(f"{path} has no column {wanted!r}; columns are: {', '.join(cols)}. "
                                f"Name the right one with {flag}.")
            return found
        return next((c for c in (_find(cols, g) for g in guesses) if c), None)

    text_col = pick(text_col, TEXT_COLUMNS, "--text-col")
    if text_col is None:
        raise DataError(f"No text column found in {path}; columns are: {', '.join(cols)}. Name it with --text-col.")
    pair_col = pick(pair_col, tuple(b for a, b in PAIR_COLUMNS if a == text_col), "--text-pair-col") \
        if pair_task is not False else None
    if pair_task and pair_col is None:
        raise DataError(f"This system classifies text pairs but {path} has no second text column next to "
                        f"{text_col!r} (columns: {', '.join(cols)}). Name it with --text-pair-col.")
    texts = [str(t) if t is not None else "" for t in table.column(text_col).to_pylist()]
    pairs = [str(t) if t is not None else "" for t in table.column(pair_col).to_pylist()] if pair_col else None
    split = Split.from_texts(texts, pairs)
    label_col = pick(None, LABEL_COLUMNS, "")
    if label_col and labels:
        index = {lab: i for i, lab in enumerate(labels)}
        gold = [index.get(str(v), -1) for v in table.column(label_col).to_pylist()]
        split.labels = np.asarray(gold, dtype=np.int64)
    return split, {"text_col": text_col, "pair_col": pair_col, "label_col": label_col}


def write_predictions(path: str, split: Split, preds: Predictions, labels: list[str]) -> str:
    """Write one CSV row per input; return a one-paragraph summary for the terminal."""
    names = preds.stage_names
    try:
        f = open(path, "w", newline="", encoding="utf-8")
    except OSError as err:
        raise DataError(f"Cannot write predictions to {path}: {err.strerror}.") from None
    with f:
        w = csv.writer(f)
        w.writerow(["text"] + (["text_pair"] if split.pairs is not None else []) +
                   ["prediction", "answered_by", "confidence"])
        for i in range(len(split)):
            label = labels[preds.pred[i]] if preds.pred[i] >= 0 else ""
            by = names[preds.answered_by[i]] if preds.answered_by[i] >= 0 else ""
            w.writerow([split.texts[i]] + ([split.pairs[i]] if split.pairs is not None else []) +
                       [label, by, "" if np.isnan(preds.confidence[i]) else f"{preds.confidence[i]:.4f}"])
    n = len(split)
    shares = ", ".join(f"{name} {np.mean(preds.answered_by == k):.1%}" for k, name in enumerate(names))
    lines = [f"Predicted {n} inputs -> {path}", f"Answered by: {shares}"]
    known = split.labels >= 0
    if known.any():
        acc = float(np.mean(preds.pred[known] == split.labels[known]))
        lines.append(f"Accuracy on the {int(known.sum())} inputs with a known label: {acc:.2%}")
    return "\n".join(lines)
