"""A table's columns: which one holds the text, the second text, the label and the split.

The obvious columns are found without flags (``text``/``label``, ``premise``/``hypothesis`` ...),
every explicit flag wins over detection, and an ambiguous or missing column is a `DataError` that
lists the columns there are.
"""

from __future__ import annotations

import difflib
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from ea_core.data.formats import SUPPORTED_FORMATS, encoding_message
from ea_core.data.summaries import SUMMARY_NAMES
from ea_core.errors import DataError

__all__ = [
    "TEXT_COLUMNS", "PAIR_COLUMNS", "LABEL_COLUMNS", "SPLIT_COLUMNS", "Part", "Columns", "SourceInfo",
    "find_column", "explicit_column", "resolve_columns", "check_columns_present", "column_of", "as_text",
    "dict_encode",
]

TEXT_COLUMNS = (
    "text", "sentence", "content", "review", "tweet", "premise", "sentence1", "question",
    "question1", "text_a", "text1", "document", "body", "comment", "message", "utterance", "query",
)
#: (first text, second text) couples that make a text-pair task when both exist.
PAIR_COLUMNS = (
    ("premise", "hypothesis"),
    ("sentence1", "sentence2"),
    ("question1", "question2"),
    ("text_a", "text_b"),
    ("text1", "text2"),
    ("question", "sentence"),
    ("question", "passage"),
)
LABEL_COLUMNS = ("label", "labels", "gold_label", "class", "sentiment", "category", "target", "y")
SPLIT_COLUMNS = ("split",)


@dataclass
class Part:
    """One table read from one source, before splitting."""

    table: pa.Table
    origin: str
    label_names: Optional[dict[str, list[str]]] = None  # Hugging Face ClassLabel names per column


@dataclass
class SourceInfo:
    """A data source's columns and first rows, with the columns `load_dataset` would pick.

    For the UI's column pickers: a detected column is None when detection is ambiguous or finds
    nothing (`detect_error` then says why), so the user chooses instead of getting an error.
    """

    columns: list[str]
    n_rows: int
    preview: list[dict[str, Any]]
    text_col: Optional[str] = None
    pair_col: Optional[str] = None
    label_col: Optional[str] = None
    split_col: Optional[str] = None
    detect_error: Optional[str] = None
    #: "text" here; an image source gives an `ea_core.data.image_task.ImageSourceInfo` ("image", with
    #: class counts and sample names; thumbnails from `ea_core.data.images.image_preview`).
    modality: str = "text"


@dataclass
class Columns:
    """The columns a text task is read from (`resolve_columns`)."""

    text: str
    pair: Optional[str]
    label: str
    split: Optional[str]

    def describe(self) -> str:
        out = f"text column {self.text!r}"
        if self.pair:
            out += f", second text column {self.pair!r}"
        return out + f", label column {self.label!r}"


def _cols(table: pa.Table) -> str:
    return ", ".join(table.column_names)


def find_column(names: list[str], wanted: str) -> Optional[str]:
    """`wanted` as spelled in `names`: exactly, or the one name equal to it but for case."""
    if wanted in names:
        return wanted
    low = [n for n in names if n.lower() == wanted.lower()]
    return low[0] if len(low) == 1 else None


def explicit_column(part: Part, wanted: str, flag: str) -> str:
    """The column a flag names, or a `DataError` listing the columns (and the closest name)."""
    names = part.table.column_names
    found = find_column(names, wanted)
    if found is None:
        close = difflib.get_close_matches(wanted, names, n=1)
        hint = f" Did you mean {close[0]!r}?" if close else ""
        raise DataError(
            f"Column {wanted!r} ({flag}) not found in {part.origin}. Columns: {', '.join(names)}.{hint}"
        )
    return found


def resolve_columns(
    part: Part,
    text_col: Optional[str],
    pair_col: Optional[str],
    label_col: Optional[str],
    split_col: Optional[str],
    allow_split: bool,
) -> Columns:
    """The text, second text, label and split columns: as flagged, else detected, else a `DataError`."""
    names = part.table.column_names
    listing = f"Columns in {part.origin}: {', '.join(names)}."

    split = explicit_column(part, split_col, "--split-col") if split_col else None
    if split is None and allow_split:
        split = next((c for c in (find_column(names, s) for s in SPLIT_COLUMNS) if c), None)

    if label_col:
        label = explicit_column(part, label_col, "--label-col")
    else:
        found = [c for c in (find_column(names, n) for n in LABEL_COLUMNS) if c]
        if len(found) > 1:
            raise DataError(
                f"Several columns could be the label: {', '.join(found)}. Pass --label-col (label_col=...). {listing}"
            )
        if not found:
            summary = next((c for c in (find_column(names, n) for n in SUMMARY_NAMES) if c), None)
            hint = (f" Its column {summary!r} looks like reference summaries: for summarization, use the app's "
                    "tab 8 · Summaries or `python -m ea_core summarize --data FILE`." if summary else "")
            raise DataError(f"Could not find the label column. Pass --label-col (label_col=...). {listing}{hint}")
        label = found[0]

    pair = explicit_column(part, pair_col, "--text-pair-col") if pair_col else None
    if text_col:
        text = explicit_column(part, text_col, "--text-col")
        if pair is None and pair_col is None:
            for first, second in PAIR_COLUMNS:
                if text.lower() == first and find_column(names, second):
                    pair = find_column(names, second)
                    break
    else:
        text = None
        if pair is None:
            for first, second in PAIR_COLUMNS:
                a, b = find_column(names, first), find_column(names, second)
                if a and b and label not in (a, b):
                    text, pair = a, b
                    break
        if text is None:
            found = [c for c in (find_column(names, n) for n in TEXT_COLUMNS) if c and c not in (label, pair, split)]
            if len(found) > 1:
                raise DataError(
                    f"Several columns could be the text: {', '.join(found)}. Pass --text-col (text_col=...). {listing}"
                )
            if not found:
                # Fall back to the only string column left, if there is exactly one.
                found = [
                    f.name for f in part.table.schema
                    if f.name not in (label, pair, split)
                    and (pa.types.is_string(f.type) or pa.types.is_large_string(f.type))
                ]
                if len(found) != 1:
                    raise DataError(f"Could not find the text column. Pass --text-col (text_col=...). {listing}")
            text = found[0]
    used = [c for c in (text, pair, label) if c]
    if len(set(used)) != len(used):
        raise DataError(
            f"The same column is used twice (text {text!r}, second text {pair!r}, label {label!r}). "
            f"Pass distinct --text-col / --text-pair-col / --label-col. {listing}"
        )
    if split in used:
        split = None
    return Columns(text, pair, label, split)


def check_columns_present(part: Part, cols: Columns) -> None:
    for name, flag in ((cols.text, "--text-col"), (cols.pair, "--text-pair-col"), (cols.label, "--label-col")):
        if name and find_column(part.table.column_names, name) is None:
            raise DataError(
                f"{part.origin} has no column {name!r} ({flag}), which the training data uses. "
                f"Columns: {_cols(part.table)}. Use the same column names in every file."
            )


def column_of(part: Part, name: str) -> pa.ChunkedArray:
    """The column `name` of `part` (matched as `find_column` does)."""
    return part.table.column(find_column(part.table.column_names, name) or name)


def as_text(col: pa.ChunkedArray, origin: str, name: Optional[str]) -> pa.ChunkedArray:
    """`col` as strings; bytes that are not UTF-8 and nested values are a `DataError`."""
    t = col.type
    if pa.types.is_string(t) or pa.types.is_large_string(t):
        return col
    if pa.types.is_dictionary(t):
        return as_text(col.cast(t.value_type), origin, name)
    if pa.types.is_binary(t) or pa.types.is_large_binary(t):
        try:
            return col.cast(pa.string())  # bytes that are UTF-8 text after all (Parquet written without a type)
        except pa.ArrowInvalid:
            pass
        path = os.path.expanduser(origin)
        if os.path.isfile(path) and SUPPORTED_FORMATS.get(Path(path).suffix.lower()) != "parquet":
            raise DataError(encoding_message(path, origin, None))
        raise DataError(f"Column {name!r} of {origin} holds bytes that are not valid UTF-8 text. Re-save the data as UTF-8.")
    if pa.types.is_nested(t):
        raise DataError(
            f"Column {name!r} of {origin} holds {t} values, not text. Pick a text column with --text-col."
        )
    return col.cast(pa.string())


def dict_encode(col: pa.ChunkedArray) -> tuple[np.ndarray, list]:
    """Per-row dictionary indices (-1 for null) and the dictionary values as Python objects."""
    if not pa.types.is_dictionary(col.type):
        col = pc.dictionary_encode(col)
    arr = col.combine_chunks() if isinstance(col, pa.ChunkedArray) else col
    if isinstance(arr, pa.ChunkedArray):  # pragma: no cover - old pyarrow
        arr = pa.concat_arrays(arr.chunks)
    idx = pc.fill_null(arr.indices.cast(pa.int64()), -1).to_numpy(zero_copy_only=False)
    return np.asarray(idx, dtype=np.int64), arr.dictionary.to_pylist()
