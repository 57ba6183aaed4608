"""Text tables (one, or one per split) as a text-classification task.

Rows are kept as masks and index arrays over the Arrow tables until the final, capped splits,
so a large file costs a small multiple of its size; rows without a text or a label are dropped
with a warning, and a train/test overlap is reported, not hidden.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from ea_core.data.columns import Columns, Part, as_text, check_columns_present, column_of, find_column, resolve_columns
from ea_core.data.formats import nested_columns
from ea_core.data.labels import case_variant_warnings, encode_labels, label_sort_key
from ea_core.data.splitting import (
    PART_NAMES,
    PARTS,
    cap_warnings,
    carve_fractions,
    check_train_covers_labels,
    encode_split,
    stratified_sample,
    stratified_split,
)
from ea_core.errors import DataError
from ea_core.splits import Split, TaskData

__all__ = ["build_text_task"]


def build_text_task(
    parts: dict[str, Part],
    name: str,
    *,
    text_col: Optional[str],
    pair_col: Optional[str],
    label_col: Optional[str],
    split_col: Optional[str],
    given: set[str],
    val_frac: float,
    test_frac: float,
    seed: int,
    caps: dict[str, Optional[int]],
) -> TaskData:
    """`parts` (``{"all": part}``, or one per split) as a `TaskData`: columns resolved, rows without a
    text or a label dropped, labels encoded, missing splits carved from training, `caps` applied.
    `given` names the splits read from files of their own."""
    warnings: list[str] = []
    main_key = "all" if "all" in parts else "train"
    main = parts[main_key]
    cols = resolve_columns(
        main, text_col, pair_col, label_col, split_col, allow_split=main_key == "all"
    )
    for key, part in parts.items():
        if key != main_key:
            check_columns_present(part, cols)

    # Per-part validity masks and label codes (global label list is the union, sorted).
    prepared = {key: _prepare(part, cols, warnings) for key, part in parts.items()}
    labels = _label_list(prepared, cols, warnings)
    for prep in prepared.values():
        prep.encode(labels)

    # Pools of row indices per split.
    pools: dict[str, tuple[str, np.ndarray]] = {}
    if main_key == "all" and cols.split is not None:
        prep = prepared["all"]
        for part in PARTS:
            idx = np.flatnonzero(prep.valid & (prep.split_codes == PARTS.index(part)))
            if len(idx):
                pools[part] = ("all", idx)
        if "train" not in pools:
            raise DataError(
                f"The split column {cols.split!r} of {main.origin} has no usable 'train' rows. "
                "Mark training rows with split=train, or drop the split column to let the data be split automatically."
            )
    elif main_key == "all":
        pools["train"] = ("all", np.flatnonzero(prepared["all"].valid))
    else:
        for key, prep in prepared.items():
            idx = np.flatnonzero(prep.valid)
            if len(idx) == 0:
                if key == "train" or key in given:
                    raise DataError(
                        f"{parts[key].origin} has no usable rows (every row lacks a text or a label); "
                        f"see the columns {cols.describe()}."
                    )
                warnings.append(
                    f"The {PART_NAMES[key]} split of {parts[key].origin} has no labelled rows; "
                    f"a {PART_NAMES[key]} split was made from the training data instead."
                )
                continue
            pools[key] = (key, idx)
    if "train" not in pools or len(pools["train"][1]) == 0:
        raise DataError(f"{main.origin} has no usable rows: every row lacks a text or a label ({cols.describe()}).")

    train_key, train_idx = pools["train"]
    train_codes = prepared[train_key].codes[train_idx]
    if len(labels) < 2:
        only = labels[0]
        raise DataError(
            f"Only one class ({only!r}) found in the label column {cols.label!r} of {main.origin}; "
            "a classifier needs at least 2 classes. Check that --label-col names the right column."
        )

    # Carve the missing splits out of the training pool, stratified by label.
    rng_split, *rng_caps = np.random.default_rng(seed).spawn(4)
    fracs = carve_fractions(pools, val_frac, test_frac)
    if fracs:
        carved = stratified_split(train_idx, train_codes, fracs, rng_split, labels, cols.label, main.origin)
        pools["train"] = (train_key, carved.pop("train"))
        for part, idx in carved.items():
            pools[part] = (train_key, idx)
    for part in PARTS:
        if part not in pools:
            pools[part] = (train_key, np.zeros(0, dtype=np.int64))
            warnings.append(f"The {PART_NAMES[part]} split is empty ({part}_frac is 0).")

    check_train_covers_labels(
        {part: prepared[key].codes[idx] for part, (key, idx) in pools.items()},
        {part: parts[key].origin for part, (key, _) in pools.items()},
        labels,
    )

    # Caps (stratified, seeded, independent per split) and a seeded shuffle.
    final: dict[str, tuple[str, np.ndarray]] = {}
    for part, rng in zip(PARTS, rng_caps):
        key, idx = pools[part]
        kept = stratified_sample(idx, prepared[key].codes[idx], caps[part], rng)
        final[part] = (key, kept)
        if len(kept) < len(idx):
            warnings.extend(cap_warnings(part, caps[part], prepared[key].codes, idx, kept, labels))

    splits = {part: prepared[key].materialize(idx) for part, (key, idx) in final.items()}
    if len(np.unique(splits["train"].labels)) < 2:
        raise DataError(
            f"The training split has a single class after sampling (max_train={caps['train']}). "
            "Raise --max-train so every class is represented."
        )
    warnings.extend(_overlap_warnings(splits))
    return TaskData(
        name=name,
        labels=labels,
        train=splits["train"],
        val=splits["val"],
        test=splits["test"],
        warnings=warnings,
        text_col=cols.text,
        pair_col=cols.pair,
        label_col=cols.label,
    )


@dataclass
class _Prepared:
    """Row masks and label codes of one part; rows are only materialized at the end."""

    part: Part
    cols: Columns
    valid: np.ndarray
    label_index: np.ndarray  # per row: index into label_values, -1 for null
    label_values: list[Optional[str]]  # canonical label per dictionary entry (None = missing)
    split_codes: Optional[np.ndarray] = None
    codes: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))

    def encode(self, labels: list[str]) -> None:
        pos = {lab: i for i, lab in enumerate(labels)}
        lut = np.array([pos[v] if v is not None else -1 for v in self.label_values] + [-1], dtype=np.int64)
        self.codes = lut[self.label_index]  # -1 (missing) indexes the trailing -1
        self.valid &= self.codes >= 0
        self.label_index = np.zeros(0, dtype=np.int64)  # no longer needed; free it

    def materialize(self, idx: np.ndarray) -> Split:
        def take(name: Optional[str]) -> Optional[list[str]]:
            if name is None:
                return None
            return _take_texts(as_text(column_of(self.part, name), self.part.origin, name), idx)

        return Split(take(self.cols.text), self.codes[idx], take(self.cols.pair))


def _take_texts(col: pa.ChunkedArray, idx: np.ndarray) -> list[str]:
    """`col[idx]` as a Python list, chunk by chunk (ChunkedArray.take would first copy the whole column)."""
    order = np.argsort(idx, kind="stable")
    sorted_idx = idx[order]
    out: list = []
    start = 0
    for chunk in col.chunks:
        lo, hi = np.searchsorted(sorted_idx, [start, start + len(chunk)])
        if hi > lo:
            out.extend(chunk.take(pa.array(sorted_idx[lo:hi] - start, type=pa.int64())).to_pylist())
        start += len(chunk)
    result: list = [None] * len(idx)
    for pos, value in zip(order.tolist(), out):
        result[pos] = value
    return result


def _text_ok(col: pa.ChunkedArray) -> tuple[np.ndarray, int, int]:
    """Mask of non-empty texts, the number of nulls, and the number of blank strings."""
    nulls = col.null_count
    blank = pc.or_(pc.equal(pc.utf8_length(col), 0), pc.utf8_is_space(col))
    ok = pc.invert(pc.fill_null(blank, True))
    chunks = ok.chunks if isinstance(ok, pa.ChunkedArray) else [ok]
    mask = np.concatenate([np.zeros(0, dtype=bool)] + [c.to_numpy(zero_copy_only=False) for c in chunks]).astype(bool)
    return mask, nulls, int(len(mask) - mask.sum() - nulls)


def _prepare(part: Part, cols: Columns, warnings: list[str]) -> _Prepared:
    n = part.table.num_rows
    valid = np.ones(n, dtype=bool)
    nested = nested_columns(part.table)
    for name in (cols.text, cols.pair):
        if not name:
            continue
        if name in nested:
            raise DataError(
                f"Column {name!r} of {part.origin} holds lists or objects, not text. "
                "Pick a text column with --text-col."
            )
        col = as_text(column_of(part, name), part.origin, name)
        ok, nulls, blank = _text_ok(col)
        if nulls or blank:
            warnings.append(
                f"Dropped {nulls + blank} of {n} rows of {part.origin} with an empty or missing text in column "
                f"{name!r} ({nulls} missing, {blank} blank)."
            )
        valid &= ok

    label_index, values = encode_labels(part, cols.label)
    label_ok = label_index >= 0
    none_idx = [i for i, v in enumerate(values) if v is None]
    if none_idx:
        label_ok &= ~np.isin(label_index, none_idx)
    missing = int(np.sum(valid & ~label_ok))
    if missing:
        warnings.append(
            f"Dropped {missing} of {n} rows of {part.origin} with a missing label in column {cols.label!r}."
        )
    valid &= label_ok

    split_codes = None
    if cols.split and find_column(part.table.column_names, cols.split):
        split_codes = encode_split(part, cols.split)
        no_split = int(np.sum(valid & (split_codes < 0)))
        if no_split:
            warnings.append(f"Dropped {no_split} rows of {part.origin} with an empty value in the split column {cols.split!r}.")
        valid &= split_codes >= 0
    return _Prepared(part, cols, valid, label_index, values, split_codes)


def _label_list(prepared: dict[str, _Prepared], cols: Columns, warnings: list[str]) -> list[str]:
    seen: set[str] = set()
    for prep in prepared.values():
        used = np.flatnonzero(np.bincount(prep.label_index[prep.valid] + 1, minlength=len(prep.label_values) + 1)) - 1
        seen.update(prep.label_values[i] for i in used if i >= 0 and prep.label_values[i] is not None)
    if not seen:
        origins = ", ".join(prep.part.origin for prep in prepared.values())
        why = " ".join(warnings)
        raise DataError(
            f"No usable rows in {origins}: no row has both a non-empty text and a label ({cols.describe()}). "
            f"{why + ' ' if why else ''}Check the data, or pick other columns with --text-col / --label-col."
        )
    labels = sorted(seen, key=label_sort_key(seen))
    warnings.extend(case_variant_warnings(labels, cols.label))
    return labels


def _overlap_warnings(splits: dict[str, Split]) -> list[str]:
    def keys(split: Split) -> list:
        return split.texts if split.pairs is None else list(zip(split.texts, split.pairs))

    train = set(keys(splits["train"]))
    out = []
    for part in ("test", "val"):
        items = keys(splits[part])
        if not items:
            continue
        shared = sum(1 for item in items if item in train)
        if shared:
            out.append(
                f"{shared} of {len(items)} {PART_NAMES[part]} examples ({shared / len(items):.1%}) have the same text as "
                f"a training example, so {PART_NAMES[part]} accuracy may be optimistic. Remove duplicates from the "
                "data to avoid this."
            )
    return out
