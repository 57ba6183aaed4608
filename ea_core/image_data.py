"""Load a labelled image-classification dataset into train/validation/test splits.

`ea_core.data.load_dataset` sends image sources here, so the same ``--data SOURCE`` works for
text and images. An image source is one of:

* ``demo:digits``: scikit-learn's bundled handwritten digits (1,797 8x8 images, classes "0".."9"),
  offline, with its own seeded stratified 60/20/20 split;
* a ZIP of class folders (``cat/001.png``, ``dog/002.jpg``; the ImageFolder layout), optionally
  under one top folder, optionally split by folder (``train/cat/...``, ``val/...``, ``test/...``);
* a folder with the same layout;
* a CSV/Parquet/JSON-lines table with an image column (image paths relative to the table's folder,
  or image bytes, or a Hugging Face image struct ``{bytes, path}``) and a label column;
* a Hugging Face dataset whose features include an ``Image`` (loaded by `ea_core.data`).

What it guarantees, as the text loader does: splits are seeded and stratified and capped with the
text loader's own functions; folder names are labels under `ea_core.data.normalize_label` (a folder
``01`` is the class ``"1"``); bad input never ends in a traceback but in a `DataError` saying what is
wrong. In particular:

* ZIPs are read member by member in memory and never extracted, and are refused outright when a
  member's path escapes the archive (``../x.png``, ``/etc/x.png``, ``C:\\x.png``), is a symbolic
  link, or when the archive exceeds the member-count, total-size or compression-ratio limits below
  (a "ZIP bomb");
* unreadable or corrupt image files are skipped and listed (first few names) in
  `TaskData.warnings`; files that are not images by extension are ignored and listed too;
* every kept image is fully decoded once on load. PNG and JPEG bytes are stored unchanged (exact,
  compact, and what the LM answer cache hashes); any other format (BMP, GIF, TIFF, WebP ...), an
  unusual mode (16-bit, CMYK ...), an EXIF-rotated photo, or an image whose longer side exceeds
  `MAX_IMAGE_SIDE` is converted (downscaled) and re-encoded as PNG (JPEG stays JPEG);
* an empty class folder (or one with no readable image) is left out with a warning, not an error:
  the other classes are still usable. Fewer than two classes is an error.

Labels and splits are decided from file names before any image is read, so caps (``max_train``
...) also bound the reading work; an image found unreadable is then dropped from its split.
"""

from __future__ import annotations

import hashlib
import io
import os
import re
import stat
import warnings as _warnings
import zipfile
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from types import SimpleNamespace
from typing import Any, Callable, Optional

import numpy as np
import pyarrow as pa

from ea_core import data as _data
from ea_core.errors import DataError
from ea_core.imaging import MAX_PIXELS
from ea_core.splits import Split, TaskData

__all__ = [
    "IMAGE_DEMO_DATASETS",
    "IMAGE_EXTENSIONS",
    "IMAGE_COLUMNS",
    "MAX_IMAGE_SIDE",
    "ImageSourceInfo",
    "is_image_source",
    "image_column",
    "load_image_dataset",
    "load_image_parts",
    "inspect_image_source",
    "inspect_image_table",
    "image_preview",
    "describe_images",
    "convert_image",
]

# --------------------------------------------------------------------------------------------
# Settings (one place; tests and users may change them)
# --------------------------------------------------------------------------------------------

#: Longer side, in pixels, above which an image is downscaled on load (and re-encoded). The
#: largest small-model input is 224-384 px and vision LMs get a further downscaled copy, so this
#: only bounds memory (5,000 photos at 1024 px are about 1 GB as JPEG).
MAX_IMAGE_SIDE = 1024
#: Largest image file read at all (bytes); bigger files are skipped with a warning.
MAX_IMAGE_FILE_BYTES = 64 << 20
#: ZIP limits: members, total uncompressed size, and compression ratio (per member of at least
#: `ZIP_RATIO_MIN_BYTES`, and for the whole archive). Beyond any of them the ZIP is refused.
MAX_ZIP_MEMBERS = 200_000
MAX_ZIP_TOTAL_BYTES = 4 << 30
MAX_ZIP_RATIO = 100
ZIP_RATIO_MIN_BYTES = 1 << 20
#: Image files (by extension) that are read; anything else is ignored (and listed in a warning).
IMAGE_EXTENSIONS = frozenset(
    ".png .jpg .jpeg .jpe .jfif .bmp .dib .gif .tif .tiff .webp .ppm .pgm .pbm .pnm .tga .ico".split()
)
#: Column names that hold images (paths or bytes) in a table, in order of preference.
IMAGE_COLUMNS = (
    "image", "img", "image_path", "image_file", "image_bytes", "filepath", "file_path", "path",
    "file", "filename", "file_name", "picture",
)
#: Built-in image datasets usable as ``source`` offline.
IMAGE_DEMO_DATASETS: dict[str, str] = {k: v for k, v in _data.DEMO_DATASETS.items() if k in ("demo:digits",)}
#: The digits demo's own split fractions (validation, test).
DEMO_DIGITS_FRACTIONS = (0.2, 0.2)

_MAX_SHOWN = _data._MAX_SHOWN
_PARTS = ("train", "val", "test")
#: Files a ZIP or folder may hold that are never data (macOS/Windows clutter): skipped silently.
_JUNK_NAMES = frozenset({".ds_store", "thumbs.db", "desktop.ini"})
#: Modes stored as they are (others are converted to RGB or 8-bit grayscale on load).
_KEPT_MODES = frozenset({"1", "L", "LA", "P", "RGB", "RGBA"})


class _Unreadable(Exception):
    """One file is not a usable image (the message says why); it is skipped, not fatal."""


# --------------------------------------------------------------------------------------------
# Dispatch helpers used by ea_core.data
# --------------------------------------------------------------------------------------------


def is_image_source(source: str) -> bool:
    """True when `source` can only be an image dataset: an image demo, a folder, or a .zip file.

    (Tables and Hugging Face datasets are recognised after reading, by `image_column`.)"""
    source = str(source).strip()
    if source.lower() in IMAGE_DEMO_DATASETS:
        return True
    if source.lower().startswith(("demo:", "hf:")):
        return False
    path = os.path.expanduser(source)
    if Path(path).suffix.lower() == ".zip":
        return True
    try:
        return stat.S_ISDIR(os.stat(path).st_mode)
    except (OSError, ValueError):
        return False


def image_column(table: pa.Table, text_col: Optional[str] = None) -> Optional[str]:
    """The column of `table` that holds images (bytes, ``{bytes, path}`` structs or image file
    paths), or None when the table is a text table.

    An explicit `text_col` is the input column: it is the image column when it holds bytes or
    image file names. Otherwise a bytes/struct column, or a column named like `IMAGE_COLUMNS`
    whose values are image file names, is the image column.
    """
    names = table.column_names
    if text_col:
        found = _data._find(names, text_col)
        return found if found and _holds_images(table.column(found)) else None
    for field_ in table.schema:
        if _bytes_kind(field_.type):
            return field_.name
    for wanted in IMAGE_COLUMNS:
        found = _data._find(names, wanted)
        if found and _holds_images(table.column(found)):
            return found
    return None


def _bytes_kind(t: pa.DataType) -> Optional[str]:
    """'bytes' for a binary column, 'struct' for a Hugging Face Image struct {bytes, path}."""
    if pa.types.is_binary(t) or pa.types.is_large_binary(t):
        return "bytes"
    if pa.types.is_struct(t) and t.get_field_index("bytes") >= 0:
        return "struct"
    return None


def _holds_images(col: pa.ChunkedArray) -> bool:
    if _bytes_kind(col.type):
        return True
    if not (pa.types.is_string(col.type) or pa.types.is_large_string(col.type)):
        return False
    sample = [v for v in col.slice(0, 200).to_pylist() if v and v.strip()][:50]
    if not sample:
        return False
    hits = sum(1 for v in sample if PurePosixPath(v.strip().replace("\\", "/")).suffix.lower() in IMAGE_EXTENSIONS)
    return hits >= 0.8 * len(sample)


# --------------------------------------------------------------------------------------------
# Items: what a source holds, before any image is read
# --------------------------------------------------------------------------------------------


@dataclass
class _Items:
    """The examples of one source: display names, raw labels, split folders, and a reader."""

    origin: str
    names: list[str]
    labels: list[Optional[str]]  # normalised label, or None when missing
    splits: np.ndarray  # -1 unknown, else index into _PARTS
    read: Callable[[int], bytes]  # item i's encoded bytes, or _Unreadable
    warnings: list[str] = field(default_factory=list)
    label_col: str = "label"
    image_col: str = "image"
    empty_classes: list[str] = field(default_factory=list)
    fixed_split: bool = False  # the source's own split (the demo): fractions do not apply
    trusted: bool = False  # images made here (the demo): stored as they are, not decoded again
    layout: str = ""


# --------------------------------------------------------------------------------------------
# Public API
# --------------------------------------------------------------------------------------------


def load_image_dataset(
    source: str,
    *,
    val_frac: float = 0.15,
    test_frac: float = 0.15,
    seed: int = 0,
    max_train: Optional[int] = None,
    max_val: Optional[int] = None,
    max_test: Optional[int] = None,
    max_side: Optional[int] = None,
) -> TaskData:
    """Load ``demo:digits``, a ZIP of class folders or a folder of class folders (see the module
    docstring) as a `TaskData` whose splits hold encoded images (`Split.images`, names in
    `Split.texts`). Splits, caps and seeds behave exactly as in `ea_core.data.load_dataset`;
    `max_side` (default `MAX_IMAGE_SIDE`) bounds each image's longer side. Raises `DataError`."""
    _data._check_options(val_frac, test_frac, max_train, max_val, max_test)
    items, name = _items_of(str(source).strip())
    return _build_task(items, name, val_frac, test_frac, seed, (max_train, max_val, max_test), max_side)


def load_image_parts(
    parts: dict[str, Any],
    name: str,
    *,
    image_col: str,
    label_col: Optional[str] = None,
    split_col: Optional[str] = None,
    val_frac: float = 0.15,
    test_frac: float = 0.15,
    seed: int = 0,
    max_train: Optional[int] = None,
    max_val: Optional[int] = None,
    max_test: Optional[int] = None,
    max_side: Optional[int] = None,
    allow_outside: bool = False,
) -> TaskData:
    """Tables already read by `ea_core.data` (``parts``: ``{"all": part}`` or ``{"train": ..,
    "val": .., "test": ..}`` of `ea_core.data._Part`) whose `image_col` holds images.

    Image paths are read relative to the table's folder and must stay inside it (a table naming
    ``/etc/...`` or ``../..`` is refused), unless `allow_outside` (Hugging Face cache files)."""
    _data._check_options(val_frac, test_frac, max_train, max_val, max_test)
    items = _items_of_parts(parts, image_col, label_col, split_col, allow_outside)
    return _build_task(items, name, val_frac, test_frac, seed, (max_train, max_val, max_test), max_side)


@dataclass
class ImageSourceInfo(_data.SourceInfo):
    """`ea_core.data.SourceInfo` for an image source, for the app's Data tab.

    `class_counts`: images per class (from file names: nothing is decoded); `samples`: the first
    few image names per class; `layout`: how the source was read (e.g. "class folders under
    'pets/', split folders train, test"). `columns`/`preview` list (image, label) rows so a
    table view works unchanged. Thumbnails of the samples: `image_preview`.
    """

    modality: str = "image"
    class_counts: dict[str, int] = field(default_factory=dict)
    samples: dict[str, list[str]] = field(default_factory=dict)
    layout: str = ""
    warnings: list[str] = field(default_factory=list)


def inspect_image_source(source: str, *, n_preview: int = 10, per_class: int = 4) -> ImageSourceInfo:
    """Class counts and sample names of an image source (demo, ZIP, folder), without decoding."""
    items, _ = _items_of(str(source).strip())
    return _info_of(items, n_preview, per_class)


def inspect_image_table(part: Any, image_col: str, *, n_preview: int = 10, per_class: int = 4) -> ImageSourceInfo:
    """`inspect_image_source` for a table (an `ea_core.data._Part`) with an image column."""
    items = _items_of_parts({"all": part}, image_col, None, None, False)
    return _info_of(items, n_preview, per_class)


def image_preview(source: str, per_class: int = 4, max_side: int = 256) -> dict[str, list[tuple[str, bytes]]]:
    """For the app's preview grid: up to `per_class` images of each class, as
    ``{label: [(name, png_bytes), ...]}``, each a PNG thumbnail with its longer side at most
    `max_side`. Works for every image source (demo, ZIP, folder, image table); unreadable files
    are left out. Raises `DataError` when the source cannot be read at all."""
    items = _items_for_preview(str(source).strip())
    by_class: dict[str, list[int]] = {}
    for i, label in enumerate(items.labels):
        if label is not None:
            by_class.setdefault(label, []).append(i)
    out: dict[str, list[tuple[str, bytes]]] = {}
    for label in sorted(by_class, key=_data._label_sort_key(set(by_class))):
        shown: list[tuple[str, bytes]] = []
        for i in by_class[label]:
            if len(shown) >= per_class:
                break
            try:
                shown.append((items.names[i], _thumbnail(items.read(i), max_side)))
            except _Unreadable:
                continue
        out[label] = shown
    return out


def describe_images(task: TaskData, sample: int = 2000) -> dict[str, Any]:
    """What `ea_core.data.describe` adds for an image task: the number of images, the image sizes
    seen (width x height, most common first, from the headers of up to `sample` images) and the
    formats."""
    from PIL import Image

    all_images = [img for part in _PARTS for img in (task.split(part).images or [])]
    step = max(1, len(all_images) // sample) if sample else 1
    sizes: Counter = Counter()
    formats: Counter = Counter()
    for data in all_images[::step]:
        try:
            with Image.open(io.BytesIO(data)) as img:
                sizes[f"{img.width}x{img.height}"] += 1
                formats[img.format or "?"] += 1
        except Exception:  # stored images were decoded on load; this is defensive only
            formats["unreadable"] += 1
    return {
        "modality": "image",
        "n_images": len(all_images),
        "image_sizes": dict(sizes.most_common(10)),
        "n_image_sizes": len(sizes),
        "image_formats": dict(formats.most_common()),
        "sizes_sampled": step > 1,
    }


# --------------------------------------------------------------------------------------------
# Sources
# --------------------------------------------------------------------------------------------


def _items_of(source: str) -> tuple[_Items, str]:
    key = source.lower()
    if key.startswith("demo:"):
        if key not in IMAGE_DEMO_DATASETS:
            raise DataError(f"Unknown demo dataset {source!r}. Available: {', '.join(_data.DEMO_DATASETS)}.")
        return _digits_items(), "digits"
    path = os.path.expanduser(source)
    if Path(path).suffix.lower() == ".zip":
        _data.check_data_path(source)  # missing, FIFO, device: the text loader's messages
        return _zip_items(source, path), Path(path).stem
    try:
        is_dir = stat.S_ISDIR(os.stat(path).st_mode)
    except (OSError, ValueError):
        is_dir = False
    if not is_dir:
        _data.check_data_path(source)
        raise DataError(f"{source} is not an image dataset: pass a folder of class folders, a .zip of them, or demo:digits.")
    return _folder_items(source, path), Path(os.path.abspath(path)).name or "images"


def _items_for_preview(source: str) -> _Items:
    if is_image_source(source):
        return _items_of(source)[0]
    table = _data.read_table(source)
    col = image_column(table)
    if col is None:
        raise DataError(f"{source} has no image column ({', '.join(IMAGE_COLUMNS[:6])} ...): it is not an image dataset.")
    return _items_of_parts({"all": _data._Part(table, source)}, col, None, None, False)


def _digits_items() -> _Items:
    """scikit-learn's digits, read from the package's data file (importing scikit-learn costs
    seconds), each image encoded as an 8x8 grayscale PNG with pixels 0-16 scaled to 0-255."""
    import importlib.util

    spec = importlib.util.find_spec("sklearn")
    if spec is None or not spec.submodule_search_locations:
        raise DataError("demo:digits needs scikit-learn, which ships the digits images: pip install scikit-learn")
    path = Path(list(spec.submodule_search_locations)[0]) / "datasets" / "data" / "digits.csv.gz"
    try:
        table = np.loadtxt(path, delimiter=",")
        pixels, target = table[:, :64].reshape(-1, 8, 8), table[:, 64]
    except (OSError, ValueError, IndexError):
        try:
            from sklearn.datasets import load_digits

            digits = load_digits()
            pixels, target = digits.images, digits.target
        except Exception as exc:
            raise DataError(f"Cannot read scikit-learn's digits data ({_data._short_reason(exc)}). "
                            "Reinstall it: pip install --force-reinstall scikit-learn") from None
    gray = np.clip(np.rint(pixels * (255.0 / 16.0)), 0, 255).astype(np.uint8)
    encoded = [_png_gray(img) for img in gray]
    names = [f"digits/{i:04d}.png" for i in range(len(encoded))]
    labels = [str(int(t)) for t in target]
    return _Items(
        origin="demo:digits", names=names, labels=labels, splits=np.full(len(names), -1, dtype=np.int64),
        read=encoded.__getitem__, fixed_split=True, trusted=True, layout="scikit-learn digits, 8x8 grayscale PNG",
    )


def _png_gray(img: np.ndarray) -> bytes:
    """A uint8 (h, w) array as a grayscale PNG, written directly (Pillow costs ~0.3 ms per image)."""
    import struct
    import zlib

    h, w = img.shape

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body) & 0xFFFFFFFF)

    raw = np.concatenate([np.zeros((h, 1), dtype=np.uint8), img], axis=1).tobytes()  # filter 0 per row
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 8, 0, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(raw, 6)) + chunk(b"IEND", b""))


@dataclass
class _File:
    rel: PurePosixPath  # path inside the archive/folder, '/'-separated
    size: int
    key: Any  # a ZipInfo or an absolute path


def _zip_items(source: str, path: str, tree: Optional[Callable[..., _Items]] = None) -> _Items:
    try:
        zf = zipfile.ZipFile(path)
    except PermissionError:
        raise DataError(f"Cannot read {source}: permission denied. Check the file's permissions.") from None
    except Exception as exc:  # BadZipFile, NotImplementedError (odd versions), OSError, ValueError ...
        raise DataError(
            f"{source} is not a valid ZIP archive ({_data._short_reason(exc)}; is it complete?). "
            "Re-create it, or pass the folder."
        ) from None
    infos = zf.infolist()
    _check_zip_limits(source, infos)
    files: list[_File] = []
    dirs: list[PurePosixPath] = []
    seen: set[str] = set()
    for info in infos:
        name = info.filename
        _check_member_name(source, name, info)
        rel = PurePosixPath(name.replace("\\", "/").strip("/"))
        if str(rel) in seen:
            raise DataError(
                f"{source} holds the member {name!r} twice, so which one is meant is ambiguous. "
                "Re-create the ZIP from the folder (e.g. zip -r data.zip FOLDER)."
            )
        seen.add(str(rel))
        if info.is_dir():
            dirs.append(rel)
            continue
        if info.flag_bits & 0x1:
            raise DataError(f"{source} is password-protected ({name!r} is encrypted). Re-create it without a password.")
        files.append(_File(rel, info.file_size, info))

    def read(f: _File) -> bytes:
        if f.size > MAX_IMAGE_FILE_BYTES:
            raise _Unreadable(f"{f.size / (1 << 20):.0f} MB, above the {MAX_IMAGE_FILE_BYTES >> 20} MB limit per image")
        try:
            with zf.open(f.key) as fh:
                data = fh.read(MAX_IMAGE_FILE_BYTES + 1)
        except (zipfile.BadZipFile, OSError, EOFError, NotImplementedError, RuntimeError, ValueError) as exc:
            raise _Unreadable(f"damaged in the ZIP ({_data._short_reason(exc)})") from None
        except Exception as exc:  # zlib.error and friends: one damaged member is not fatal
            raise _Unreadable(f"damaged in the ZIP ({type(exc).__name__})") from None
        if len(data) > MAX_IMAGE_FILE_BYTES:
            raise _Unreadable(f"above the {MAX_IMAGE_FILE_BYTES >> 20} MB limit per image")
        return data

    return (tree or _tree_items)(source, files, dirs, read, "ZIP")


def _check_zip_limits(source: str, infos: list[zipfile.ZipInfo]) -> None:
    """Refuse a ZIP bomb from its directory alone, before anything is decompressed.

    (The declared sizes are enforced while reading: zipfile stops at a member's declared size and
    checks its CRC, and each member is read at most `MAX_IMAGE_FILE_BYTES` at a time.)"""
    if len(infos) > MAX_ZIP_MEMBERS:
        raise DataError(
            f"{source} is refused: it has {len(infos):,} members, above the limit of {MAX_ZIP_MEMBERS:,} "
            "(MAX_ZIP_MEMBERS; a guard against ZIP bombs). Split the data into smaller archives, or pass the folder."
        )
    total = sum(i.file_size for i in infos)
    if total > MAX_ZIP_TOTAL_BYTES:
        raise DataError(
            f"{source} is refused: its members unpack to {total / (1 << 30):.1f} GiB, above the limit of "
            f"{MAX_ZIP_TOTAL_BYTES / (1 << 30):.1f} GiB of uncompressed data (MAX_ZIP_TOTAL_BYTES; a guard "
            "against ZIP bombs). Unzip it yourself and pass the folder, or use a smaller sample."
        )
    packed = sum(i.compress_size for i in infos)
    for info in infos:
        if info.file_size >= ZIP_RATIO_MIN_BYTES and info.file_size > MAX_ZIP_RATIO * max(info.compress_size, 1):
            raise DataError(
                f"{source} is refused: its member {info.filename!r} expands {info.file_size / max(info.compress_size, 1):,.0f} "
                f"times ({info.compress_size:,} bytes to {info.file_size:,}), above the compression ratio limit of "
                f"{MAX_ZIP_RATIO} (MAX_ZIP_RATIO; a guard against ZIP bombs). Images barely compress; check the archive."
            )
    if total >= ZIP_RATIO_MIN_BYTES and total > MAX_ZIP_RATIO * max(packed, 1):
        raise DataError(
            f"{source} is refused: it expands {total / max(packed, 1):,.0f} times ({packed:,} bytes to {total:,}), "
            f"above the compression ratio limit of {MAX_ZIP_RATIO} (MAX_ZIP_RATIO; a guard against ZIP bombs)."
        )


_DRIVE = re.compile(r"^[A-Za-z]:")


def _check_member_name(source: str, name: str, info: zipfile.ZipInfo) -> None:
    """Refuse members whose path would land outside the target folder if extracted ("zip slip")."""
    parts = name.replace("\\", "/").split("/")
    why = None
    if "\x00" in name:
        why = "contains a NUL byte"
    elif name.startswith(("/", "\\")) or _DRIVE.match(name):
        why = "is an absolute path"
    elif ".." in parts:
        why = "climbs out of the archive's folder with '..'"
    elif stat.S_ISLNK(info.external_attr >> 16):
        why = "is a symbolic link"
    if why:
        raise DataError(
            f"{source} is refused: its member {name!r} {why}, which could write or read outside the target folder "
            "(a \"zip slip\"). Nothing was extracted. Re-create the ZIP from inside the folder of class folders "
            "(e.g. cd DATA && zip -r ../data.zip .) without links."
        )


def _folder_items(source: str, path: str, tree: Optional[Callable[..., _Items]] = None) -> _Items:
    root = os.path.realpath(path)
    files: list[_File] = []
    dirs: list[PurePosixPath] = []
    outside: list[str] = []
    try:
        for here, subdirs, names in os.walk(root, onerror=_raise):
            subdirs.sort()
            rel_here = PurePosixPath(os.path.relpath(here, root).replace(os.sep, "/"))
            for d in subdirs:
                dirs.append(_rel(rel_here, d))
            for name in sorted(names):
                full = os.path.join(here, name)
                rel = _rel(rel_here, name)
                try:
                    st = os.stat(full)  # follows links: where does it point?
                except OSError:
                    outside.append(f"{rel} (a dangling link)")
                    continue
                if os.path.islink(full) and os.path.commonpath([root, os.path.realpath(full)]) != root:
                    outside.append(f"{rel} (a link outside the folder)")
                    continue
                if not stat.S_ISREG(st.st_mode):
                    outside.append(f"{rel} (not a regular file)")
                    continue
                files.append(_File(rel, st.st_size, full))
    except OSError as exc:
        raise DataError(f"Cannot read the folder {source}: {exc.strerror or exc}.") from None

    def read(f: _File) -> bytes:
        if f.size > MAX_IMAGE_FILE_BYTES:
            raise _Unreadable(f"{f.size / (1 << 20):.0f} MB, above the {MAX_IMAGE_FILE_BYTES >> 20} MB limit per image")
        try:
            with open(f.key, "rb") as fh:
                return fh.read(MAX_IMAGE_FILE_BYTES + 1)
        except OSError as exc:
            raise _Unreadable(f"cannot be read ({exc.strerror or exc})") from None

    items = (tree or _tree_items)(source, files, dirs, read, "folder")
    if outside:
        items.warnings.append(_listing(f"Skipped {len(outside)} entries of {source} that are not regular files inside it", outside))
    return items


def _raise(err: OSError) -> None:
    raise err


def _rel(here: PurePosixPath, name: str) -> PurePosixPath:
    return PurePosixPath(name) if str(here) == "." else here / name


def _is_junk(rel: PurePosixPath) -> bool:
    return any(p.startswith(".") or p == "__MACOSX" for p in rel.parts) or rel.name.lower() in _JUNK_NAMES


def _tree_items(source: str, files: list[_File], dirs: list[PurePosixPath], read_file: Callable[[_File], bytes],
                kind: str) -> _Items:
    """Class folders (and split folders) from the paths of a ZIP or folder."""
    files = [f for f in files if not _is_junk(f.rel)]
    dirs = [d for d in dirs if not _is_junk(d)]
    images = [f for f in files if f.rel.suffix.lower() in IMAGE_EXTENSIONS]
    others = [str(f.rel) for f in files if f.rel.suffix.lower() not in IMAGE_EXTENSIONS]
    if not images:
        held = f" It holds: {', '.join(others[:_MAX_SHOWN])}{' ...' if len(others) > _MAX_SHOWN else ''}." if others else " It is empty."
        if kind == "folder":
            raise DataError(
                f"{source} is a directory with no image files in it.{held} Pass a data file ({_data._FORMATS_HELP}), "
                "or a folder of class folders of images (cat/001.png, dog/002.png)."
            )
        raise DataError(
            f"No image files found in the {kind} {source}: expected class folders of images "
            f"({', '.join(sorted(('.png', '.jpg', '.jpeg', '.bmp', '.gif', '.webp')))} ...), like cat/001.png and dog/002.png.{held}"
        )
    # Strip common top folders while every image stays inside a subfolder.
    prefix: tuple[str, ...] = ()
    while True:
        firsts = {f.rel.parts[len(prefix)] for f in images}
        if len(firsts) != 1 or any(len(f.rel.parts) < len(prefix) + 3 for f in images):
            break
        prefix += (next(iter(firsts)),)
    depth = len(prefix)

    def sub(p: PurePosixPath) -> tuple[str, ...]:
        return p.parts[depth:] if p.parts[:depth] == prefix else ()

    top_dirs = {sub(d)[0] for d in dirs if sub(d)} | {sub(f.rel)[0] for f in images if len(sub(f.rel)) > 1}
    split_layout = bool(top_dirs) and all(_split_name(d) for d in top_dirs) and any(
        _split_name(d) == "train" for d in top_dirs) and any(len(sub(f.rel)) >= 3 for f in images)
    level = 1 if split_layout else 0  # where the class folder sits below the prefix
    warnings: list[str] = []
    names, raw_labels, split_codes, kept = [], [], [], []
    loose = []
    for f in images:
        parts = sub(f.rel)
        if len(parts) < level + 2:
            loose.append(str(f.rel))
            continue
        names.append("/".join(parts))
        raw_labels.append(parts[level])
        split_codes.append(_PARTS.index(_split_name(parts[0])) if split_layout else -1)
        kept.append(f)
    if loose:
        where = "a split folder's class folder" if split_layout else "a class folder"
        warnings.append(_listing(f"Skipped {len(loose)} images of {source} that are not inside {where}", loose))
    if others:
        warnings.append(_listing(f"Ignored {len(others)} files of {source} that are not images (by their extension)", others))
    labels, label_warnings = _folder_labels(raw_labels, source)
    warnings.extend(label_warnings)
    # Class folders without any image file: left out, with a warning.
    class_dirs = {sub(d)[level] for d in dirs if len(sub(d)) > level and (not split_layout or _split_name(sub(d)[0]))}
    with_images = set(raw_labels)
    empty = sorted(class_dirs - with_images)
    if empty:
        one = len(empty) == 1
        warnings.append(_listing(
            f"{len(empty)} class folder{'' if one else 's'} of {source} hold{'s' if one else ''} no images and "
            f"{'is' if one else 'are'} left out (a class needs images to be learned)", empty))
    layout = f"class folders{' under ' + repr('/'.join(prefix) + '/') if prefix else ''}"
    if split_layout:
        layout += ", split folders " + ", ".join(sorted(top_dirs))
    if not names:
        raise DataError(
            f"No images of {source} are inside class folders: put each class's images in a folder named after the "
            "class (cat/001.png, dog/002.png), or train/cat/001.png for your own splits."
        )
    return _Items(
        origin=source, names=names, labels=labels, splits=np.asarray(split_codes, dtype=np.int64),
        read=lambda i: read_file(kept[i]), warnings=warnings, label_col="label", image_col="image",
        empty_classes=empty, layout=layout,
    )


def _flat_items(source: str, files: list[_File], dirs: list[PurePosixPath], read_file: Callable[[_File], bytes],
                kind: str) -> _Items:
    """Every image of a ZIP or folder, in any layout (for prediction): its parent folder's name is
    kept as its raw label (None at the top level)."""
    images = [f for f in files if not _is_junk(f.rel) and f.rel.suffix.lower() in IMAGE_EXTENSIONS]
    if not images:
        raise DataError(f"No image files found in the {kind} {source} ({', '.join(sorted(IMAGE_EXTENSIONS)[:6])} ...).")
    labels = [_data.normalize_label(f.rel.parent.name) if len(f.rel.parts) > 1 else None for f in images]
    return _Items(origin=source, names=[str(f.rel) for f in images], labels=labels,
                  splits=np.full(len(images), -1, dtype=np.int64), read=lambda i: read_file(images[i]))


def read_image_inputs(source: str, labels: Optional[list[str]] = None) -> tuple[Split, list[str]]:
    """Images to classify with an exported system, and what was skipped (warnings).

    `source` is one image file, or a folder or ZIP holding images in any layout (a ZIP is read in
    memory with the same zip-slip and bomb guards as training data). An image inside a folder
    named after one of `labels` keeps that gold label, so `predict` can score it; the others are
    unlabelled (-1). Unreadable files are skipped and named; none readable is a DataError.
    """
    path = os.path.expanduser(str(source).strip())
    if Path(path).suffix.lower() in IMAGE_EXTENSIONS:
        _data.check_data_path(source)
        try:
            data = Path(path).read_bytes()
            return Split.from_images([convert_image(data, Path(path).name)], [Path(path).name]), []
        except OSError as exc:
            raise DataError(f"Cannot read {source}: {exc.strerror or exc}.") from None
        except _Unreadable as why:
            raise DataError(f"{source} is not a readable image ({why}).") from None
    if Path(path).suffix.lower() == ".zip":
        _data.check_data_path(source)
        items = _zip_items(source, path, _flat_items)
    elif os.path.isdir(path):
        items = _folder_items(source, path, _flat_items)
    else:
        _data.check_data_path(source)
        raise DataError(f"{source}: give an image file, a folder of images or a .zip of images to classify.")
    index = {label: i for i, label in enumerate(labels or [])}
    images, names, gold, skipped = [], [], [], []
    for i, name in enumerate(items.names):
        try:
            images.append(convert_image(items.read(i), name))
        except _Unreadable as why:
            skipped.append(f"{name} ({why})")
            continue
        names.append(name)
        gold.append(index.get(items.labels[i], -1) if items.labels[i] is not None else -1)
    if not images:
        raise DataError(f"None of the {len(items.names)} image files of {source} could be read: {'; '.join(skipped[:3])}.")
    warnings = [_listing(f"Skipped {len(skipped)} unreadable files of {source}", skipped)] if skipped else []
    return Split(names, np.asarray(gold, dtype=np.int64), None, images), warnings


def _split_name(name: str) -> Optional[str]:
    return _data._SPLIT_NAMES.get(name.strip().lower())


def _folder_labels(raw: list[str], source: str) -> tuple[list[Optional[str]], list[str]]:
    """Folder names as labels under the text loader's rule; say when two folders become one class."""
    canon: dict[str, Optional[str]] = {}
    for folder in sorted(set(raw)):
        try:
            canon[folder] = _data.normalize_label(folder)
        except ValueError as err:
            raise DataError(
                f"The class folder {folder!r} of {source} is not a usable class name ({err}); this tool does "
                "classification, so folder names are class names or integer class ids. Rename the folder."
            ) from None
    warnings = []
    groups: dict[str, list[str]] = {}
    for folder, label in canon.items():
        if label is not None:
            groups.setdefault(label, []).append(folder)
    merged = {label: folders for label, folders in groups.items() if len(folders) > 1}
    if merged:
        shown = "; ".join(f"{' + '.join(repr(f) for f in folders)} -> {label!r}" for label, folders in list(merged.items())[:_MAX_SHOWN])
        warnings.append(
            f"Class folders of {source} whose names are the same label were merged into one class: {shown} "
            "(labels follow one rule: spaces stripped, 1, 01 and 1.0 are the class \"1\"). Rename the folders to keep them apart."
        )
    return [canon[f] for f in raw], warnings


def _items_of_parts(parts: dict[str, Any], image_col: str, label_col: Optional[str], split_col: Optional[str],
                    allow_outside: bool) -> _Items:
    """Tables (one, or one per split) with an image column and a label column."""
    main_key = "all" if "all" in parts else "train"
    main = parts[main_key]
    names_ = main.table.column_names
    image = _data._find(names_, image_col) or image_col
    if label_col:
        label = _data._explicit(main, label_col, "--label-col")
    else:
        found = [c for c in (_data._find(names_, n) for n in _data.LABEL_COLUMNS) if c and c != image]
        if len(found) != 1:
            what = "Several columns could be the label: " + ", ".join(found) if found else "Could not find the label column"
            raise DataError(f"{what}. Pass --label-col (label_col=...). Columns in {main.origin}: {', '.join(names_)}.")
        label = found[0]
    split = None
    if main_key == "all":
        split = _data._explicit(main, split_col, "--split-col") if split_col else next(
            (c for c in (_data._find(names_, s) for s in _data.SPLIT_COLUMNS) if c), None)
    all_names: list[str] = []
    all_labels: list[Optional[str]] = []
    all_splits: list[np.ndarray] = []
    readers: list[Callable[[], bytes]] = []
    warnings: list[str] = []
    escaped: list[str] = []
    for key, part in parts.items():
        cols = part.table.column_names
        for col, flag in ((image, "--text-col"), (label, "--label-col")):
            if _data._find(cols, col) is None:
                raise DataError(f"{part.origin} has no column {col!r} ({flag}), which the training data uses. "
                                f"Columns: {', '.join(cols)}. Use the same column names in every file.")
        idx, values = _data._encode_labels(part, _data._find(cols, label))
        row_labels = [values[i] if i >= 0 else None for i in idx.tolist()]
        n = part.table.num_rows
        if split is not None and key == "all":
            codes = _data._encode_split(part, split)
        else:
            codes = np.full(n, -1 if key == "all" else _PARTS.index(key), dtype=np.int64)
        col = part.table.column(_data._find(cols, image))
        kind = _bytes_kind(col.type)
        values_ = col.to_pylist()
        base = _table_folder(part.origin)
        stem = Path(str(part.origin).split(" [")[0]).stem or "image"
        missing = 0
        for r, value in enumerate(values_):
            if kind == "struct":
                data, pth = (value or {}).get("bytes"), (value or {}).get("path")
            elif kind == "bytes":
                data, pth = value, None
            else:
                data, pth = None, (str(value).strip() if value is not None else None)
            if data:
                reader, shown = (lambda d=data: bytes(d)), (pth or f"{stem}-{r:05d}.png")
            elif pth:
                reader, shown = _path_reader(pth, base, allow_outside, escaped)
            else:
                missing += 1
                reader, shown = _no_image, f"{stem}-{r:05d}"
            readers.append(reader)
            all_names.append(str(shown))
        all_labels.extend(row_labels)
        all_splits.append(codes)
        if missing:
            warnings.append(f"{missing} of {n} rows of {part.origin} have no image in column {image!r}; they are skipped.")
    if escaped:
        raise DataError(
            f"{main.origin} names image files outside its own folder ({', '.join(repr(e) for e in escaped[:_MAX_SHOWN])}"
            f"{' ...' if len(escaped) > _MAX_SHOWN else ''}). Image paths must be relative to the table's folder and stay "
            "inside it; move the images next to the table (e.g. images/cat/001.png) and write those paths."
        )
    no_label = sum(1 for v in all_labels if v is None)
    if no_label:
        warnings.append(f"Dropped {no_label} rows of {main.origin} with a missing label in column {label!r}.")
    return _Items(
        origin=main.origin, names=all_names, labels=all_labels, splits=np.concatenate(all_splits),
        read=lambda i: readers[i](), warnings=warnings, label_col=label, image_col=image,
        layout=f"table: images in column {image!r}, labels in {label!r}",
    )


def _table_folder(origin: str) -> Optional[str]:
    path = os.path.expanduser(str(origin))
    return os.path.dirname(os.path.realpath(path)) if os.path.isfile(path) else None


def _no_image() -> bytes:
    raise _Unreadable("no image in this row")


def _path_reader(value: str, base: Optional[str], allow_outside: bool,
                 escaped: list[str]) -> tuple[Callable[[], bytes], str]:
    rel = value.replace("\\", "/")
    if allow_outside and os.path.isabs(value):
        full = value
    elif base is None:
        return _no_image, value
    else:
        if rel.startswith("/") or _DRIVE.match(rel):
            escaped.append(value)
            return _no_image, value
        full = os.path.realpath(os.path.join(base, rel))
        if os.path.commonpath([base, full]) != base and not allow_outside:
            escaped.append(value)
            return _no_image, value

    def read() -> bytes:
        try:
            st = os.stat(full)
        except OSError:
            raise _Unreadable("file not found") from None
        if not stat.S_ISREG(st.st_mode):
            raise _Unreadable("not a regular file")
        if st.st_size > MAX_IMAGE_FILE_BYTES:
            raise _Unreadable(f"above the {MAX_IMAGE_FILE_BYTES >> 20} MB limit per image")
        try:
            with open(full, "rb") as fh:
                return fh.read()
        except OSError as exc:
            raise _Unreadable(f"cannot be read ({exc.strerror or exc})") from None

    return read, value


# --------------------------------------------------------------------------------------------
# Labels, splits, caps (the text loader's functions), then reading the chosen images
# --------------------------------------------------------------------------------------------


def _build_task(items: _Items, name: str, val_frac: float, test_frac: float, seed: int,
                caps_: tuple[Optional[int], ...], max_side: Optional[int]) -> TaskData:
    max_side = MAX_IMAGE_SIDE if max_side is None else int(max_side)
    caps = dict(zip(_PARTS, caps_))
    warnings = list(items.warnings)
    origin = items.origin
    has_label = np.array([v is not None for v in items.labels], dtype=bool)
    seen = {v for v in items.labels if v is not None}
    if not seen:
        raise DataError(f"No usable images in {origin}: no image has a label. {' '.join(warnings)}".strip())
    labels = sorted(seen, key=_data._label_sort_key(seen))
    warnings.extend(_data._case_variant_warnings(labels, "class folder names" if items.label_col == "label" else items.label_col))
    pos = {lab: i for i, lab in enumerate(labels)}
    codes = np.array([pos[v] if v is not None else -1 for v in items.labels], dtype=np.int64)
    if len(labels) < 2:
        raise DataError(
            f"Only one class ({labels[0]!r}) found in {origin}; a classifier needs at least 2 classes. "
            + ("Put each class's images in its own folder (cat/..., dog/...)." if items.label_col == "label"
               else f"Check that --label-col names the right column (now {items.label_col!r}).")
        )

    rng_split, *rng_caps = np.random.default_rng(seed).spawn(4)
    pools: dict[str, np.ndarray] = {}
    if (items.splits >= 0).any():
        for p in _PARTS:
            idx = np.flatnonzero(has_label & (items.splits == _PARTS.index(p)))
            if len(idx):
                pools[p] = idx
        if "train" not in pools:
            raise DataError(f"{origin} has no training images: name the training folder (or split value) 'train'.")
        if not (items.splits >= 0).all():
            dropped = int(np.sum(has_label & (items.splits < 0)))
            if dropped:
                warnings.append(f"Dropped {dropped} images of {origin} with no split.")
    else:
        pools["train"] = np.flatnonzero(has_label)
    fracs = dict(zip(("val", "test"), DEMO_DIGITS_FRACTIONS)) if items.fixed_split else \
        _data._carve_fractions(pools, val_frac, test_frac)
    fracs = {p: f for p, f in fracs.items() if p not in pools and f > 0}
    if fracs:
        train_idx = pools["train"]
        need = 1 + len(fracs)
        counts = np.bincount(codes[train_idx], minlength=len(labels))
        small = [(labels[c], int(counts[c])) for c in np.flatnonzero((counts > 0) & (counts < need))]
        if small:
            listing = ", ".join(f"{lab!r} has {n} image{'s' if n != 1 else ''}" for lab, n in small[:_MAX_SHOWN])
            raise DataError(
                f"Too few images to split {origin}: class {listing}; splitting into train/"
                + "/".join(_data._PART_NAMES[p] for p in fracs)
                + f" needs at least {need} per class. Add images, remove the class, or give your own splits "
                "(train/ and test/ folders, or a split column)."
            )
        cols = SimpleNamespace(label=items.label_col)
        carved = _data._stratified_split(train_idx, codes[train_idx], fracs, rng_split, labels, cols, origin)
        pools["train"] = carved.pop("train")
        pools.update(carved)
    for p in _PARTS:
        if p not in pools:
            pools[p] = np.zeros(0, dtype=np.int64)
            warnings.append(f"The {_data._PART_NAMES[p]} split is empty ({p}_frac is 0).")
    _data._check_train_covers_labels(
        {p: ("all", idx) for p, idx in pools.items()}, {"all": SimpleNamespace(codes=codes)}, labels,
        {"all": SimpleNamespace(origin=origin)},
    )
    final: dict[str, np.ndarray] = {}
    for p, rng in zip(_PARTS, rng_caps):
        idx = pools[p]
        kept = _data._stratified_sample(idx, codes[idx], caps[p], rng)
        final[p] = kept
        if len(kept) < len(idx):
            warnings.extend(_data._cap_warnings(p, caps[p], codes, idx, kept, labels))

    # Read and check the chosen images only.
    bad: list[str] = []
    splits: dict[str, tuple[list[str], list[int], list[bytes]]] = {}
    for p in _PARTS:
        names, ys, blobs = [], [], []
        for i in final[p].tolist():
            try:
                data = items.read(i)
                blobs.append(data if items.trusted else convert_image(data, items.names[i], max_side))
            except _Unreadable as why:
                bad.append(f"{items.names[i]} ({why})")
                continue
            names.append(items.names[i])
            ys.append(int(codes[i]))
        splits[p] = (names, ys, blobs)
    if bad:
        warnings.append(_listing(f"Skipped {len(bad)} files of {origin} that are not readable images", bad))
    # Classes left with no image at all (every file unreadable) are dropped; labels renumbered.
    present = sorted({y for p in _PARTS for y in splits[p][1]})
    if len(present) < len(labels):
        gone = [labels[c] for c in range(len(labels)) if c not in set(present)]
        warnings.append(_listing(f"{len(gone)} classes of {origin} have no readable image and are left out", gone))
        remap = {old: new for new, old in enumerate(present)}
        labels = [labels[c] for c in present]
        splits = {p: (n, [remap[y] for y in ys], b) for p, (n, ys, b) in splits.items()}
    in_train = set(splits["train"][1])
    if len(in_train) < 2:
        raise DataError(
            f"The training split of {origin} has {'no readable images' if not in_train else 'a single class'} "
            f"after reading the images{' and sampling (max_train=' + str(caps['train']) + ')' if caps['train'] else ''}. "
            "Check the warnings about unreadable files, and give at least 2 classes of readable images."
        )
    for p in ("val", "test"):
        stray = sorted(set(splits[p][1]) - in_train)
        if stray:
            raise DataError(
                f"Class {', '.join(repr(labels[c]) for c in stray[:_MAX_SHOWN])} has {_data._PART_NAMES[p]} images in "
                f"{origin} but no readable training image, so no model can learn it. Add training images of it."
            )
    out = {p: Split(list(n), np.asarray(ys, dtype=np.int64), None, list(b)) for p, (n, ys, b) in splits.items()}
    warnings.extend(_duplicate_warnings(out))
    return TaskData(
        name=name, labels=labels, train=out["train"], val=out["val"], test=out["test"], warnings=warnings,
        text_col=items.image_col, pair_col=None, label_col=items.label_col,
    )


def _duplicate_warnings(splits: dict[str, Split]) -> list[str]:
    """Identical image bytes in training and in validation/test make their accuracy optimistic."""
    train = {hashlib.sha1(b).digest() for b in splits["train"].images or []}
    out = []
    for p in ("test", "val"):
        images = splits[p].images or []
        if not images:
            continue
        shared = sum(1 for b in images if hashlib.sha1(b).digest() in train)
        if shared:
            name = _data._PART_NAMES[p]
            out.append(
                f"{shared} of {len(images)} {name} images ({shared / len(images):.1%}) are byte-for-byte copies of a "
                f"training image, so {name} accuracy may be optimistic. Remove duplicates from the data to avoid this."
            )
    return out


def _listing(head: str, names: list[str], shown: int = 5) -> str:
    more = f" (and {len(names) - shown} more)" if len(names) > shown else ""
    return f"{head}: {', '.join(names[:shown])}{more}."


def _info_of(items: _Items, n_preview: int, per_class: int) -> ImageSourceInfo:
    counts: Counter = Counter(v for v in items.labels if v is not None)
    order = sorted(counts, key=_data._label_sort_key(set(counts)))
    samples: dict[str, list[str]] = {lab: [] for lab in order}
    for name, lab in zip(items.names, items.labels):
        if lab is not None and len(samples[lab]) < per_class:
            samples[lab].append(name)
    detect_error = None
    if len(order) < 2:
        detect_error = f"Only {len(order)} class found in {items.origin}; a classifier needs at least 2 classes."
    preview = [{"image": n, "label": lab} for n, lab in zip(items.names[:n_preview], items.labels[:n_preview])]
    return ImageSourceInfo(
        columns=[items.image_col, items.label_col], n_rows=len(items.names), preview=preview,
        text_col=items.image_col, label_col=items.label_col, detect_error=detect_error,
        class_counts={lab: counts[lab] for lab in order}, samples=samples, layout=items.layout,
        warnings=list(items.warnings),
    )


# --------------------------------------------------------------------------------------------
# One image: decode fully once, convert only when needed
# --------------------------------------------------------------------------------------------


def convert_image(data: bytes, name: str = "image", max_side: Optional[int] = None) -> bytes:
    """The bytes to store for one image file: `data` itself when it is a PNG/JPEG in a common mode
    no larger than `max_side`, otherwise the image converted (first frame, EXIF rotation applied,
    16-bit/CMYK/... to 8-bit, downscaled) and re-encoded (JPEG stays JPEG, anything else PNG).

    The image is fully decoded, so a truncated or corrupt file is caught here. Raises
    `_Unreadable` (internal; callers skip the file) with the reason."""
    from PIL import Image, ImageOps

    max_side = MAX_IMAGE_SIDE if max_side is None else int(max_side)
    if not data:
        raise _Unreadable("empty file")
    try:
        with _warnings.catch_warnings():
            _warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            img = Image.open(io.BytesIO(data))
            fmt = img.format
            w, h = img.size
            if w < 1 or h < 1:
                raise _Unreadable(f"{w}x{h} pixels")
            if w * h > MAX_PIXELS and fmt != "JPEG" or w * h > 4 * MAX_PIXELS:
                raise _Unreadable(f"{w}x{h} pixels, above the limit of {MAX_PIXELS:,} pixels")
            if fmt == "JPEG" and max(w, h) > max_side:
                img.draft(img.mode, (max_side, max_side))  # decode at a reduced scale: fast and small
            img.load()
            orientation = 1
            try:
                orientation = int(img.getexif().get(0x0112, 1) or 1)
            except Exception:
                orientation = 1
            n_frames = getattr(img, "n_frames", 1)
            if (fmt in ("PNG", "JPEG") and img.mode in _KEPT_MODES and max(w, h) <= max_side
                    and orientation == 1 and n_frames == 1):
                return bytes(data)
            if n_frames > 1:
                img.seek(0)
            img = ImageOps.exif_transpose(img) if orientation != 1 else img
            img = _to_common_mode(img)
            if max(img.size) > max_side:
                scale = max_side / max(img.size)
                img = img.resize((max(1, round(img.width * scale)), max(1, round(img.height * scale))),
                                 Image.Resampling.LANCZOS, reducing_gap=3.0)
            buf = io.BytesIO()
            if fmt == "JPEG" and img.mode in ("RGB", "L"):
                img.save(buf, format="JPEG", quality=95)
            else:
                img.save(buf, format="PNG", optimize=False)
            return buf.getvalue()
    except _Unreadable:
        raise
    except Image.DecompressionBombError as err:
        raise _Unreadable(f"too large ({str(err)[:80]})") from None
    except Exception as err:  # Pillow raises many types for a damaged or unknown file
        text = str(err).strip().splitlines()[0][:100] if str(err).strip() else type(err).__name__
        if "cannot identify image file" in text:
            text = "not an image Pillow can read"
        raise _Unreadable(text) from None


def _to_common_mode(img):
    """8-bit L/LA/RGB/RGBA (P and 1 expanded; 16-bit and float scaled, not clipped)."""
    if img.mode in ("RGB", "RGBA", "L", "LA"):
        return img
    if img.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I", "F"):
        arr = np.asarray(img, dtype=np.float64)
        lo, hi = float(arr.min()), float(arr.max())
        scaled = np.zeros_like(arr) if hi <= lo else (arr - lo) * (255.0 / (hi - lo))
        from PIL import Image

        return Image.fromarray(np.clip(np.rint(scaled), 0, 255).astype(np.uint8), mode="L")
    if img.mode == "P":
        return img.convert("RGBA" if "transparency" in img.info else "RGB")
    if img.mode == "1":
        return img.convert("L")
    if img.mode in ("PA",):
        return img.convert("RGBA")
    return img.convert("RGB")  # CMYK, YCbCr, LAB, HSV


def _thumbnail(data: bytes, max_side: int) -> bytes:
    from PIL import Image

    stored = convert_image(data, "preview", max(max_side, 1))
    try:
        with Image.open(io.BytesIO(stored)) as img:
            img = _to_common_mode(img)
            img.thumbnail((max_side, max_side))
            buf = io.BytesIO()
            img.save(buf, format="PNG")
            return buf.getvalue()
    except Exception as err:  # pragma: no cover - convert_image decoded it already
        raise _Unreadable(str(err)[:80]) from None
