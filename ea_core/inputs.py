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
    from ea_core.data import check_data_path, read_table

    p = Path(path)
    check_data_path(str(path))  # missing, a folder, a FIFO (which would block forever), a device
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
    text_col, pair_col, label_col = input_columns(table.column_names, path, text_col=text_col, pair_col=pair_col,
                                                  pair_task=pair_task)
    texts = as_texts(table.column(text_col).to_pylist())
    pairs = as_texts(table.column(pair_col).to_pylist()) if pair_col else None
    split = Split.from_texts(texts, pairs)
    if label_col and labels:
        split.labels = gold_codes(table.column(label_col).to_pylist(), labels)
    return split, {"text_col": text_col, "pair_col": pair_col, "label_col": label_col}


def as_texts(values: list) -> list[str]:
    """Cells of a text column as model inputs: ``str`` of each, "" for a missing one."""
    return [str(t) if t is not None else "" for t in values]


def input_columns(cols: list[str], path: str, *, text_col: Optional[str] = None, pair_col: Optional[str] = None,
                  pair_task: Optional[bool] = None) -> tuple[str, Optional[str], Optional[str]]:
    """(text column, second text column or None, gold label column or None) of a file of inputs
    with columns `cols`: as named, else detected like `ea_core.data` does; a `DataError` naming
    the columns and the flag when a named one is missing or a pair task has no second text."""
    from ea_core.data import LABEL_COLUMNS, PAIR_COLUMNS, TEXT_COLUMNS
    from ea_core.data import find_column as _find

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
    return text_col, pair_col, pick(None, LABEL_COLUMNS, "")


def gold_codes(values: list, labels: list[str]) -> np.ndarray:
    """Gold label codes by the training data's label rule (`normalize_label`): 1.0 and " 1 " are "1".

    A value the rule refuses (2.5, a list) or a class the system does not know is -1 (not
    scored), not an error: the label column of an input file is optional.
    """
    from ea_core.data import normalize_label

    index = {lab: i for i, lab in enumerate(labels)}
    memo: dict = {}

    def code(value) -> int:
        try:
            key = normalize_label(value)
        except ValueError:
            return -1
        return index.get(key, -1) if key is not None else -1

    out = np.empty(len(values), dtype=np.int64)
    for i, value in enumerate(values):
        key = (type(value), value)  # True == 1, yet they are the labels "true" and "1"
        try:
            out[i] = memo[key] if key in memo else memo.setdefault(key, code(value))
        except TypeError:  # unhashable (a list or an object from JSON)
            out[i] = code(value)
    return out


#: Cell starts a spreadsheet reads as a formula (OWASP "CSV injection"): such cells get a leading '.
FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")


def spreadsheet_safe(cell: str) -> str:
    """`cell` as a spreadsheet shows it as text: a leading ' when it would start a formula.

    Inputs and even labels or stage names (from a bundle) are someone else's text, and
    ``=HYPERLINK(...)`` opened in a spreadsheet runs. Only CSV output is escaped; JSON lines keep
    every text exactly."""
    return "'" + cell if cell.startswith(FORMULA_STARTS) else cell


def write_predictions(path: str, split: Split, preds: Predictions, labels: list[str]) -> str:
    """Write one row per input: CSV made safe for spreadsheets (`spreadsheet_safe`), or exact JSON
    lines when `path` ends in ``.jsonl``; return a one-paragraph summary for the terminal."""
    import json

    names = preds.stage_names
    header = ["image" if split.is_image else "text"] + (["text_pair"] if split.pairs is not None else []) + ["prediction", "answered_by", "confidence"]
    try:
        f = open(path, "w", newline="", encoding="utf-8")
    except OSError as err:
        raise DataError(f"Cannot write predictions to {path}: {err.strerror}.") from None
    as_json = str(path).lower().endswith(".jsonl")
    with f:
        w = csv.writer(f)
        if not as_json:
            w.writerow(header)
        for i in range(len(split)):
            label = labels[preds.pred[i]] if preds.pred[i] >= 0 else ""
            by = names[preds.answered_by[i]] if preds.answered_by[i] >= 0 else ""
            conf = None if np.isnan(preds.confidence[i]) else float(preds.confidence[i])
            cells = [str(split.texts[i])] + ([str(split.pairs[i])] if split.pairs is not None else []) + [label, by]
            if as_json:
                f.write(json.dumps(dict(zip(header, cells + [conf])), ensure_ascii=False) + "\n")
            else:
                w.writerow([spreadsheet_safe(c) for c in cells] + ["" if conf is None else f"{conf:.4f}"])
    known = split.labels >= 0
    counts = [int(np.sum(preds.answered_by == k)) for k in range(len(names))]
    return prediction_summary(path, len(split), names, counts, int(known.sum()),
                              int(np.sum(preds.pred[known] == split.labels[known])))


def prediction_summary(path: str, n: int, names: list[str], answered: list[int], known: int, correct: int) -> str:
    """What `predict` prints: rows written, each stage's share of the answers, accuracy where the
    file had gold labels (`known` rows of which `correct` were answered right)."""
    shares = ", ".join(f"{name} {(answered[k] / n if n else float('nan')):.1%}" for k, name in enumerate(names))
    lines = [f"Predicted {n} inputs -> {path}", f"Answered by: {shares}"]
    if known:
        lines.append(f"Accuracy on the {known} inputs with a known label: {correct / known:.2%}")
    return "\n".join(lines)
