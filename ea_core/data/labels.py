"""One label rule for every format: what a label is, how a label column is read, how labels sort.

Labels are stripped strings; a number is one class whatever its spelling (1, 1.0, " 1 " are "1");
non-integral numbers, lists and objects are refused: this is classification, and a fractional
label is almost always a score column picked by mistake.
"""

from __future__ import annotations

import re
from decimal import Decimal
from typing import Any, Optional

import numpy as np
import pyarrow as pa

from ea_core.data.columns import Part, as_text, column_of, dict_encode
from ea_core.data.formats import nested_columns
from ea_core.data.messages import MAX_SHOWN
from ea_core.errors import DataError

__all__ = ["normalize_label", "encode_labels", "label_sort_key", "case_variant_warnings"]


_NUMBER = re.compile(r"[-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?|[-+]?(?:nan|inf|infinity)", re.IGNORECASE)


def normalize_label(value: Any) -> Optional[str]:
    """The one label rule of every format (and of gold labels in `predict` inputs).

    A label is a string with its surrounding spaces stripped; a number is one class whatever its
    form: 1, 1.0, "1.0" and " 1 " are all "1"; booleans are "true" / "false" (JSON's spelling, and
    CSV cells are never turned into booleans). Missing values (None, NaN, blank) give None.
    Non-integral numbers (2.5, "2.5"), lists and objects are refused with ValueError: this is
    classification, and a fractional label is almost always a score column picked by mistake.
    Case is kept: "NEG" and "neg" are two classes (`load_dataset` warns about such pairs).
    """
    if value is None:
        return None
    if isinstance(value, (bool, np.bool_)):
        return "true" if value else "false"
    if isinstance(value, (int, np.integer)):
        return str(int(value))
    if isinstance(value, (float, np.floating, Decimal)):
        return _number_label(value if isinstance(value, Decimal) else Decimal(float(value)), value)
    if isinstance(value, str):
        text = value.strip()
        if not text:
            return None
        if _NUMBER.fullmatch(text):
            return _number_label(Decimal(text), text)
        return text
    if isinstance(value, (list, tuple, dict, bytes, bytearray)):
        raise ValueError(f"lists or objects (e.g. {_snippet(value)})")
    text = str(value).strip()  # dates, times: their usual spelling
    return text or None


def _number_label(number: Decimal, shown: Any) -> Optional[str]:
    if number.is_nan():
        return None
    try:
        whole = number.is_finite() and number.adjusted() < 40 and number == number.to_integral_value()
    except ArithmeticError:
        whole = False
    if not whole:
        raise ValueError(f"non-integer numbers (e.g. {shown})")
    return str(int(number))


def _snippet(value: Any, limit: int = 40) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _canonical_label(value: Any, col: str, origin: str, names: Optional[list[str]]) -> Optional[str]:
    if names is not None and isinstance(value, (int, np.integer)) and not isinstance(value, bool):
        # Hugging Face ClassLabel: -1 means "no label" (hidden test sets)
        return names[value] if 0 <= value < len(names) else None
    if isinstance(value, bytes):
        raise DataError(f"The label column {col!r} of {origin} is not valid UTF-8 text. Re-save the data as UTF-8.")
    try:
        return normalize_label(value)
    except ValueError as err:
        raise DataError(
            f"The label column {col!r} of {origin} holds {err}; this tool does classification, so labels must be "
            "class names or integer class ids (1, 1.0 and \" 1 \" are all the class \"1\"). Pass another column "
            "with --label-col."
        ) from None


def label_sort_key(labels: set[str]):
    """Numeric order when every label is an integer ("2" before "10"), else text order."""
    if labels and all(re.fullmatch(r"[-+]?\d+", v) for v in labels):
        return lambda v: (int(v), v)
    return lambda v: v


def case_variant_warnings(labels: list[str], column: str) -> list[str]:
    """Labels that differ only in case stay separate classes, but say so: it is usually a typo."""
    groups: dict[str, list[str]] = {}
    for label in labels:
        groups.setdefault(label.casefold(), []).append(label)
    variants = [group for group in groups.values() if len(group) > 1]
    if not variants:
        return []
    shown = "; ".join(" / ".join(repr(v) for v in group) for group in variants[:MAX_SHOWN])
    more = f" (and {len(variants) - MAX_SHOWN} more)" if len(variants) > MAX_SHOWN else ""
    return [
        f"Labels in column {column!r} that differ only in upper/lower case are kept as separate classes: "
        f"{shown}{more}. If they mean the same class, write them the same way in the data."
    ]


def encode_labels(part: Part, name: str) -> tuple[np.ndarray, list[Optional[str]]]:
    """Per row, an index into the returned labels (-1 when null); each label is canonical or None (missing)."""
    col = column_of(part, name)
    t = col.type
    if pa.types.is_binary(t) or pa.types.is_large_binary(t):
        col = as_text(col, part.origin, name)  # UTF-8 text, or the encoding error
    if pa.types.is_nested(t) or name in nested_columns(part.table):
        raise DataError(
            f"The label column {name!r} of {part.origin} holds lists or objects; labels must be class "
            "names or integer class ids. Pick another column with --label-col."
        )
    if pa.types.is_null(t):
        return np.full(part.table.num_rows, -1, dtype=np.int64), []
    idx, raw = dict_encode(col)
    n = part.table.num_rows
    if len(raw) > 100 and len(raw) > 0.5 * n:
        raise DataError(
            f"The label column {name!r} of {part.origin} has {len(raw)} distinct values in {n} rows: it looks "
            "like free text, IDs or continuous scores, not class labels. Pass the right column with --label-col."
        )
    names = (part.label_names or {}).get(name)
    values = [_canonical_label(v, name, part.origin, names) for v in raw]
    return idx, values
