"""The one entry point: a source string (a file, ``demo:...``, a folder or ZIP of images, a Hugging
Face name) to a `TaskData`, its preview (`inspect_source`) or its summary (`describe`).

It decides what the source is and hands it on: tables to `text_task`, images to `image_task`.
Every problem with the data raises `DataError` with what is wrong and how to fix it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Optional

import numpy as np

from ea_core.data.columns import LABEL_COLUMNS, TEXT_COLUMNS, Part, SourceInfo, find_column, resolve_columns
from ea_core.data.image_task import (
    describe_images,
    inspect_image_source,
    inspect_image_table,
    load_image_dataset,
    load_image_parts,
)
from ea_core.data.images import image_column, is_image_source
from ea_core.data.sources import DEMO_TWEETS_DEFAULT_SIZE, is_hf_name, load_demo, load_hf, read_table
from ea_core.data.splitting import PARTS, check_split_options
from ea_core.data.text_task import build_text_task
from ea_core.errors import DataError
from ea_core.splits import TaskData

__all__ = ["load_dataset", "inspect_source", "describe"]


def load_dataset(
    source: str,
    *,
    text_col: Optional[str] = None,
    text_pair_col: Optional[str] = None,
    label_col: Optional[str] = None,
    split_col: Optional[str] = None,
    val_source: Optional[str] = None,
    test_source: Optional[str] = None,
    val_frac: float = 0.15,
    test_frac: float = 0.15,
    seed: int = 0,
    max_train: Optional[int] = None,
    max_val: Optional[int] = None,
    max_test: Optional[int] = None,
    hf_config: Optional[str] = None,
    encoding: Optional[str] = None,
) -> TaskData:
    """Load a classification dataset and split it into train/val/test.

    ``source`` is a file path (.csv, .tsv, .jsonl/.ndjson, .json, .parquet), ``demo:tweets``
    (bundled tweet sentiment, sampled to 2000/500/500 by default), or a Hugging Face dataset
    (``hf:NAME``, ``hf:NAME:CONFIG`` or a bare ``owner/name`` that is not a local path).

    Columns are detected when obvious and set by ``text_col``/``text_pair_col``/``label_col``.
    Splits come from, in order: ``val_source``/``test_source`` files; the file's split column
    (``split_col`` or a column named ``split`` with values train/validation/val/dev/test); the
    dataset's own Hugging Face splits. Whatever is missing is carved from the training rows with
    a seeded split stratified by label (``val_frac``/``test_frac``). ``max_*`` cap each split by a
    seeded stratified subsample that keeps every class when the cap allows (and warns about the
    classes it drops when not). ``encoding`` (default UTF-8) is the text files' encoding.
    Labels follow `normalize_label` in every format.

    Image datasets go to `ea_core.data.image_task` with the same split/cap/seed rules: ``demo:digits``,
    a folder or ``.zip`` of class folders, a table whose image column (paths or bytes) is detected
    or named by ``text_col``, or a Hugging Face dataset with an ``Image`` feature.

    Raises `DataError` with an actionable message for any problem with the data.
    """
    check_split_options(val_frac, test_frac, max_train, max_val, max_test)
    caps = {"train": max_train, "val": max_val, "test": max_test}

    if split_col is not None and (val_source or test_source):
        raise DataError(
            f"Both a split column ({split_col!r}) and separate validation/test files were given. "
            "Use one or the other: drop --split-col, or drop --val-file/--test-file."
        )

    source = str(source).strip()
    if is_image_source(source):  # images: demo:digits, a folder or ZIP of class folders
        if val_source or test_source or split_col:
            raise DataError(
                f"{source} is an image dataset: give its splits as train/, val/ and test/ folders inside it, "
                "not as --val-data/--test-data/--split-col."
            )
        return load_image_dataset(
            source, val_frac=val_frac, test_frac=test_frac, seed=seed,
            max_train=max_train, max_val=max_val, max_test=max_test,
        )
    parts: dict[str, Part]
    if source.lower().startswith("demo:"):
        parts, name = load_demo(source), source.split(":", 1)[1].lower()
        for part, default in zip(PARTS, DEMO_TWEETS_DEFAULT_SIZE):
            if caps[part] is None:
                caps[part] = default
    elif is_hf_name(source):
        parts, name = load_hf(source, hf_config)
    else:
        table = read_table(source, encoding=encoding)
        parts, name = {"all": Part(table, source)}, Path(source).stem

    given_sources = {"val": val_source, "test": test_source}
    for part, path in given_sources.items():
        if path:
            parts[part] = Part(read_table(str(path), encoding=encoding), str(path))
    if "all" in parts and (val_source or test_source):
        parts["train"] = parts.pop("all")

    main_key = "all" if "all" in parts else "train"
    main = parts[main_key]
    image_col = None if text_pair_col else image_column(main.table, text_col)
    if image_col is not None:  # a table of image paths or bytes, or a Hugging Face image dataset
        return load_image_parts(
            parts, name, image_col=image_col, label_col=label_col, split_col=split_col,
            val_frac=val_frac, test_frac=test_frac, seed=seed, max_train=max_train, max_val=max_val,
            max_test=max_test, allow_outside=main.origin.startswith("hf:"),
        )
    return build_text_task(
        parts, name, text_col=text_col, pair_col=text_pair_col, label_col=label_col, split_col=split_col,
        given={part for part, path in given_sources.items() if path}, val_frac=val_frac, test_frac=test_frac,
        seed=seed, caps=caps,
    )


def describe(task: TaskData) -> dict[str, Any]:
    """Sizes, label counts per split and warnings of a loaded task, as plain JSON-able data."""
    splits = {}
    for part in PARTS:
        split = task.split(part)
        counts = np.bincount(split.labels[split.labels >= 0], minlength=task.n_labels)
        splits[part] = {
            "size": len(split),
            "label_counts": {label: int(counts[i]) for i, label in enumerate(task.labels)},
        }
    out = {
        "name": task.name,
        "labels": list(task.labels),
        "n_labels": task.n_labels,
        "is_pair": task.is_pair,
        "modality": task.modality,
        "columns": {"text": task.text_col, "pair": task.pair_col, "label": task.label_col},
        "sizes": {part: splits[part]["size"] for part in PARTS},
        "splits": splits,
        "warnings": list(task.warnings),
    }
    if task.is_image:  # n_images, image_sizes (most common first), image_formats
        out.update(describe_images(task))
    return out


def inspect_source(source: str, *, n_preview: int = 10, encoding: Optional[str] = None) -> SourceInfo:
    """Columns, row count, first rows and detected columns of a file or ``demo:`` dataset.

    Raises `DataError` when the source cannot be read (the same messages as `load_dataset`).
    Hugging Face names are not inspected here (that would download); load them instead.
    An image source (``demo:digits``, a folder or ZIP of class folders, a table with an image
    column) gives an `ImageSourceInfo`: `modality` "image", images per class
    (`class_counts`) and sample names per class (`samples`), read from file names only.
    """
    source = str(source).strip()
    if is_image_source(source):
        return inspect_image_source(source, n_preview=n_preview)
    if source.lower().startswith("demo:"):
        part = load_demo(source)["all"]
    elif is_hf_name(source):
        raise DataError(f"{source!r} is a Hugging Face dataset name: load it to see its columns.")
    else:
        part = Part(read_table(source, encoding=encoding), source)
    image_col = image_column(part.table)
    if image_col is not None:
        return inspect_image_table(part, image_col, n_preview=n_preview)
    table = part.table
    head = table.slice(0, n_preview).to_pylist()
    info = SourceInfo(columns=list(table.column_names), n_rows=table.num_rows, preview=head)
    try:
        cols = resolve_columns(part, None, None, None, None, allow_split=True)
        info.text_col, info.pair_col, info.label_col, info.split_col = cols.text, cols.pair, cols.label, cols.split
    except DataError as err:
        info.detect_error = str(err)
        names = table.column_names
        labels = [c for c in (find_column(names, n) for n in LABEL_COLUMNS) if c]
        texts = [c for c in (find_column(names, n) for n in TEXT_COLUMNS) if c and c not in labels]
        info.label_col = labels[0] if len(labels) == 1 else None
        info.text_col = texts[0] if len(texts) == 1 else None
    return info
