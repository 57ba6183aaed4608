"""Image sources as labelled examples, and each image read once: ``demo:digits``, a ZIP or a folder
of class folders (optionally split into train/, val/, test/), a table with an image column (paths
or bytes), a Hugging Face image dataset.

Labels and splits come from names before any image is read, so caps also bound the reading work.
A ZIP is read in memory, never extracted, behind `ea_core.archives`' guard; unreadable files are
skipped and named, not fatal; kept images are decoded once and stored as PNG/JPEG bytes.
"""

from __future__ import annotations

import io
import os
import re
import stat
import warnings as _warnings
import zipfile
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any, Callable, Optional

import numpy as np
import pyarrow as pa

from ea_core.archives import ZipLimits, open_zip
from ea_core.data.columns import LABEL_COLUMNS, SPLIT_COLUMNS, Part, explicit_column, find_column
from ea_core.data.formats import FORMATS_HELP
from ea_core.data.labels import encode_labels, label_sort_key, normalize_label
from ea_core.data.messages import MAX_SHOWN, listing, short_reason
from ea_core.data.sources import DEMO_DATASETS, check_data_path, read_table
from ea_core.data.splitting import PARTS, SPLIT_NAMES, encode_split
from ea_core.errors import DataError
from ea_core.imaging import MAX_PIXELS
from ea_core.splits import Split

__all__ = [
    "IMAGE_DEMO_DATASETS", "IMAGE_EXTENSIONS", "IMAGE_COLUMNS", "MAX_IMAGE_SIDE", "MAX_IMAGE_FILE_BYTES",
    "MAX_ZIP_MEMBERS", "MAX_ZIP_TOTAL_BYTES", "DEMO_DIGITS_FRACTIONS", "Unreadable", "Items", "is_image_source",
    "image_column", "items_of", "items_of_parts", "image_preview", "read_image_inputs", "convert_image",
]

#: Longer side, in pixels, above which an image is downscaled on load (and re-encoded). The
#: largest small-model input is 224-384 px and vision LMs get a further downscaled copy, so this
#: only bounds memory (5,000 photos at 1024 px are about 1 GB as JPEG).
MAX_IMAGE_SIDE = 1024
#: Largest image file read at all (bytes); bigger files are skipped with a warning.
MAX_IMAGE_FILE_BYTES = 64 << 20
#: A dataset ZIP's limits: members and total uncompressed size (the compression ratio limit is
#: `ea_core.archives.MAX_ZIP_RATIO`). Beyond any of them the ZIP is refused.
MAX_ZIP_MEMBERS = 200_000
MAX_ZIP_TOTAL_BYTES = 4 << 30
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
IMAGE_DEMO_DATASETS: dict[str, str] = {k: v for k, v in DEMO_DATASETS.items() if k in ("demo:digits",)}
#: The digits demo's own split fractions (validation, test).
DEMO_DIGITS_FRACTIONS = (0.2, 0.2)

#: Files a ZIP or folder may hold that are never data (macOS/Windows clutter): skipped silently.
_JUNK_NAMES = frozenset({".ds_store", "thumbs.db", "desktop.ini"})
#: Modes stored as they are (others are converted to RGB or 8-bit grayscale on load).
_KEPT_MODES = frozenset({"1", "L", "LA", "P", "RGB", "RGBA"})
#: A Windows drive ("C:"): an absolute path in a table of image paths.
_DRIVE = re.compile(r"^[A-Za-z]:")


class Unreadable(Exception):
    """One file is not a usable image (the message says why); it is skipped, not fatal."""


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
        found = find_column(names, text_col)
        return found if found and _holds_images(table.column(found)) else None
    for field_ in table.schema:
        if _bytes_kind(field_.type):
            return field_.name
    for wanted in IMAGE_COLUMNS:
        found = find_column(names, wanted)
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


@dataclass
class Items:
    """The examples of one source: display names, raw labels, split folders, and a reader."""

    origin: str
    names: list[str]
    labels: list[Optional[str]]  # normalised label, or None when missing
    splits: np.ndarray  # -1 unknown, else index into PARTS
    read: Callable[[int], bytes]  # item i's encoded bytes, or Unreadable
    warnings: list[str] = field(default_factory=list)
    label_col: str = "label"
    image_col: str = "image"
    empty_classes: list[str] = field(default_factory=list)
    fixed_split: bool = False  # the source's own split (the demo): fractions do not apply
    trusted: bool = False  # images made here (the demo): stored as they are, not decoded again
    layout: str = ""


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
    for label in sorted(by_class, key=label_sort_key(set(by_class))):
        shown: list[tuple[str, bytes]] = []
        for i in by_class[label]:
            if len(shown) >= per_class:
                break
            try:
                shown.append((items.names[i], _thumbnail(items.read(i), max_side)))
            except Unreadable:
                continue
        out[label] = shown
    return out


def items_of(source: str) -> tuple[Items, str]:
    """The examples of an image demo, a ZIP or a folder of class folders, and the dataset's name."""
    key = source.lower()
    if key.startswith("demo:"):
        if key not in IMAGE_DEMO_DATASETS:
            raise DataError(f"Unknown demo dataset {source!r}. Available: {', '.join(DEMO_DATASETS)}.")
        return _digits_items(), "digits"
    path = os.path.expanduser(source)
    if Path(path).suffix.lower() == ".zip":
        check_data_path(source)  # missing, FIFO, device: the text loader's messages
        return _zip_items(source, path), Path(path).stem
    try:
        is_dir = stat.S_ISDIR(os.stat(path).st_mode)
    except (OSError, ValueError):
        is_dir = False
    if not is_dir:
        check_data_path(source)
        raise DataError(f"{source} is not an image dataset: pass a folder of class folders, a .zip of them, or demo:digits.")
    return _folder_items(source, path), Path(os.path.abspath(path)).name or "images"


def _items_for_preview(source: str) -> Items:
    if is_image_source(source):
        return items_of(source)[0]
    table = read_table(source)
    col = image_column(table)
    if col is None:
        raise DataError(f"{source} has no image column ({', '.join(IMAGE_COLUMNS[:6])} ...): it is not an image dataset.")
    return items_of_parts({"all": Part(table, source)}, col, None, None, False)


def _digits_items() -> Items:
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
            raise DataError(f"Cannot read scikit-learn's digits data ({short_reason(exc)}). "
                            "Reinstall it: pip install --force-reinstall scikit-learn") from None
    gray = np.clip(np.rint(pixels * (255.0 / 16.0)), 0, 255).astype(np.uint8)
    encoded = [_png_gray(img) for img in gray]
    names = [f"digits/{i:04d}.png" for i in range(len(encoded))]
    labels = [str(int(t)) for t in target]
    return Items(
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


def _zip_items(source: str, path: str, tree: Optional[Callable[..., Items]] = None) -> Items:
    zf = open_zip(path, source, _zip_limits())
    files: list[_File] = []
    dirs: list[PurePosixPath] = []
    for info in zf.infolist():
        rel = PurePosixPath(info.filename.replace("\\", "/").strip("/"))
        if info.is_dir():
            dirs.append(rel)
        else:
            files.append(_File(rel, info.file_size, info))

    def read(f: _File) -> bytes:
        if f.size > MAX_IMAGE_FILE_BYTES:
            raise Unreadable(f"{f.size / (1 << 20):.0f} MB, above the {MAX_IMAGE_FILE_BYTES >> 20} MB limit per image")
        try:
            with zf.open(f.key) as fh:
                data = fh.read(MAX_IMAGE_FILE_BYTES + 1)
        except (zipfile.BadZipFile, OSError, EOFError, NotImplementedError, RuntimeError, ValueError) as exc:
            raise Unreadable(f"damaged in the ZIP ({short_reason(exc)})") from None
        except Exception as exc:  # zlib.error and friends: one damaged member is not fatal
            raise Unreadable(f"damaged in the ZIP ({type(exc).__name__})") from None
        if len(data) > MAX_IMAGE_FILE_BYTES:
            raise Unreadable(f"above the {MAX_IMAGE_FILE_BYTES >> 20} MB limit per image")
        return data

    return (tree or _tree_items)(source, files, dirs, read, "ZIP")


def _zip_limits() -> ZipLimits:
    """A dataset ZIP's limits, read when it is opened (`MAX_ZIP_MEMBERS`, `MAX_ZIP_TOTAL_BYTES`)."""
    return ZipLimits(
        MAX_ZIP_MEMBERS, MAX_ZIP_TOTAL_BYTES, "MAX_ZIP",
        remake="Re-create the ZIP from inside the folder of class folders (e.g. cd DATA && zip -r ../data.zip .) "
               "without links.",
        instead="Unzip it yourself and pass the folder, or use a smaller sample.",
    )


def _folder_items(source: str, path: str, tree: Optional[Callable[..., Items]] = None) -> Items:
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
            raise Unreadable(f"{f.size / (1 << 20):.0f} MB, above the {MAX_IMAGE_FILE_BYTES >> 20} MB limit per image")
        try:
            with open(f.key, "rb") as fh:
                return fh.read(MAX_IMAGE_FILE_BYTES + 1)
        except OSError as exc:
            raise Unreadable(f"cannot be read ({exc.strerror or exc})") from None

    items = (tree or _tree_items)(source, files, dirs, read, "folder")
    if outside:
        items.warnings.append(listing(f"Skipped {len(outside)} entries of {source} that are not regular files inside it", outside))
    return items


def _raise(err: OSError) -> None:
    raise err


def _rel(here: PurePosixPath, name: str) -> PurePosixPath:
    return PurePosixPath(name) if str(here) == "." else here / name


def _is_junk(rel: PurePosixPath) -> bool:
    return any(p.startswith(".") or p == "__MACOSX" for p in rel.parts) or rel.name.lower() in _JUNK_NAMES


def _tree_items(source: str, files: list[_File], dirs: list[PurePosixPath], read_file: Callable[[_File], bytes],
                kind: str) -> Items:
    """Class folders (and split folders) from the paths of a ZIP or folder."""
    files = [f for f in files if not _is_junk(f.rel)]
    dirs = [d for d in dirs if not _is_junk(d)]
    images = [f for f in files if f.rel.suffix.lower() in IMAGE_EXTENSIONS]
    others = [str(f.rel) for f in files if f.rel.suffix.lower() not in IMAGE_EXTENSIONS]
    if not images:
        held = f" It holds: {', '.join(others[:MAX_SHOWN])}{' ...' if len(others) > MAX_SHOWN else ''}." if others else " It is empty."
        if kind == "folder":
            raise DataError(
                f"{source} is a directory with no image files in it.{held} Pass a data file ({FORMATS_HELP}), "
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
        split_codes.append(PARTS.index(_split_name(parts[0])) if split_layout else -1)
        kept.append(f)
    if loose:
        where = "a split folder's class folder" if split_layout else "a class folder"
        warnings.append(listing(f"Skipped {len(loose)} images of {source} that are not inside {where}", loose))
    if others:
        warnings.append(listing(f"Ignored {len(others)} files of {source} that are not images (by their extension)", others))
    labels, label_warnings = _folder_labels(raw_labels, source)
    warnings.extend(label_warnings)
    # Class folders without any image file: left out, with a warning.
    class_dirs = {sub(d)[level] for d in dirs if len(sub(d)) > level and (not split_layout or _split_name(sub(d)[0]))}
    with_images = set(raw_labels)
    empty = sorted(class_dirs - with_images)
    if empty:
        one = len(empty) == 1
        warnings.append(listing(
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
    return Items(
        origin=source, names=names, labels=labels, splits=np.asarray(split_codes, dtype=np.int64),
        read=lambda i: read_file(kept[i]), warnings=warnings, label_col="label", image_col="image",
        empty_classes=empty, layout=layout,
    )


def _flat_items(source: str, files: list[_File], dirs: list[PurePosixPath], read_file: Callable[[_File], bytes],
                kind: str) -> Items:
    """Every image of a ZIP or folder, in any layout (for prediction): its parent folder's name is
    kept as its raw label (None at the top level)."""
    images = [f for f in files if not _is_junk(f.rel) and f.rel.suffix.lower() in IMAGE_EXTENSIONS]
    if not images:
        raise DataError(f"No image files found in the {kind} {source} ({', '.join(sorted(IMAGE_EXTENSIONS)[:6])} ...).")
    labels = [normalize_label(f.rel.parent.name) if len(f.rel.parts) > 1 else None for f in images]
    return Items(origin=source, names=[str(f.rel) for f in images], labels=labels,
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
        check_data_path(source)
        try:
            data = Path(path).read_bytes()
            return Split.from_images([convert_image(data, Path(path).name)], [Path(path).name]), []
        except OSError as exc:
            raise DataError(f"Cannot read {source}: {exc.strerror or exc}.") from None
        except Unreadable as why:
            raise DataError(f"{source} is not a readable image ({why}).") from None
    if Path(path).suffix.lower() == ".zip":
        check_data_path(source)
        items = _zip_items(source, path, _flat_items)
    elif os.path.isdir(path):
        items = _folder_items(source, path, _flat_items)
    else:
        check_data_path(source)
        raise DataError(f"{source}: give an image file, a folder of images or a .zip of images to classify.")
    index = {label: i for i, label in enumerate(labels or [])}
    images, names, gold, skipped = [], [], [], []
    for i, name in enumerate(items.names):
        try:
            images.append(convert_image(items.read(i), name))
        except Unreadable as why:
            skipped.append(f"{name} ({why})")
            continue
        names.append(name)
        gold.append(index.get(items.labels[i], -1) if items.labels[i] is not None else -1)
    if not images:
        raise DataError(f"None of the {len(items.names)} image files of {source} could be read: {'; '.join(skipped[:3])}.")
    warnings = [listing(f"Skipped {len(skipped)} unreadable files of {source}", skipped)] if skipped else []
    return Split(names, np.asarray(gold, dtype=np.int64), None, images), warnings


def _split_name(name: str) -> Optional[str]:
    return SPLIT_NAMES.get(name.strip().lower())


def _folder_labels(raw: list[str], source: str) -> tuple[list[Optional[str]], list[str]]:
    """Folder names as labels under the text loader's rule; say when two folders become one class."""
    canon: dict[str, Optional[str]] = {}
    for folder in sorted(set(raw)):
        try:
            canon[folder] = normalize_label(folder)
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
        shown = "; ".join(f"{' + '.join(repr(f) for f in folders)} -> {label!r}" for label, folders in list(merged.items())[:MAX_SHOWN])
        warnings.append(
            f"Class folders of {source} whose names are the same label were merged into one class: {shown} "
            "(labels follow one rule: spaces stripped, 1, 01 and 1.0 are the class \"1\"). Rename the folders to keep them apart."
        )
    return [canon[f] for f in raw], warnings


def items_of_parts(parts: dict[str, Part], image_col: str, label_col: Optional[str], split_col: Optional[str],
                    allow_outside: bool) -> Items:
    """Tables (one, or one per split, `Part`s) with an image column and a label column."""
    main_key = "all" if "all" in parts else "train"
    main = parts[main_key]
    names_ = main.table.column_names
    image = find_column(names_, image_col) or image_col
    if label_col:
        label = explicit_column(main, label_col, "--label-col")
    else:
        found = [c for c in (find_column(names_, n) for n in LABEL_COLUMNS) if c and c != image]
        if len(found) != 1:
            what = "Several columns could be the label: " + ", ".join(found) if found else "Could not find the label column"
            raise DataError(f"{what}. Pass --label-col (label_col=...). Columns in {main.origin}: {', '.join(names_)}.")
        label = found[0]
    split = None
    if main_key == "all":
        split = explicit_column(main, split_col, "--split-col") if split_col else next(
            (c for c in (find_column(names_, s) for s in SPLIT_COLUMNS) if c), None)
    all_names: list[str] = []
    all_labels: list[Optional[str]] = []
    all_splits: list[np.ndarray] = []
    readers: list[Callable[[], bytes]] = []
    warnings: list[str] = []
    escaped: list[str] = []
    for key, part in parts.items():
        cols = part.table.column_names
        for col, flag in ((image, "--text-col"), (label, "--label-col")):
            if find_column(cols, col) is None:
                raise DataError(f"{part.origin} has no column {col!r} ({flag}), which the training data uses. "
                                f"Columns: {', '.join(cols)}. Use the same column names in every file.")
        idx, values = encode_labels(part, find_column(cols, label))
        row_labels = [values[i] if i >= 0 else None for i in idx.tolist()]
        n = part.table.num_rows
        if split is not None and key == "all":
            codes = encode_split(part, split)
        else:
            codes = np.full(n, -1 if key == "all" else PARTS.index(key), dtype=np.int64)
        col = part.table.column(find_column(cols, image))
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
            f"{main.origin} names image files outside its own folder ({', '.join(repr(e) for e in escaped[:MAX_SHOWN])}"
            f"{' ...' if len(escaped) > MAX_SHOWN else ''}). Image paths must be relative to the table's folder and stay "
            "inside it; move the images next to the table (e.g. images/cat/001.png) and write those paths."
        )
    no_label = sum(1 for v in all_labels if v is None)
    if no_label:
        warnings.append(f"Dropped {no_label} rows of {main.origin} with a missing label in column {label!r}.")
    return Items(
        origin=main.origin, names=all_names, labels=all_labels, splits=np.concatenate(all_splits),
        read=lambda i: readers[i](), warnings=warnings, label_col=label, image_col=image,
        layout=f"table: images in column {image!r}, labels in {label!r}",
    )


def _table_folder(origin: str) -> Optional[str]:
    path = os.path.expanduser(str(origin))
    return os.path.dirname(os.path.realpath(path)) if os.path.isfile(path) else None


def _no_image() -> bytes:
    raise Unreadable("no image in this row")


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
            raise Unreadable("file not found") from None
        if not stat.S_ISREG(st.st_mode):
            raise Unreadable("not a regular file")
        if st.st_size > MAX_IMAGE_FILE_BYTES:
            raise Unreadable(f"above the {MAX_IMAGE_FILE_BYTES >> 20} MB limit per image")
        try:
            with open(full, "rb") as fh:
                return fh.read()
        except OSError as exc:
            raise Unreadable(f"cannot be read ({exc.strerror or exc})") from None

    return read, value


def convert_image(data: bytes, name: str = "image", max_side: Optional[int] = None) -> bytes:
    """The bytes to store for one image file: `data` itself when it is a PNG/JPEG in a common mode
    no larger than `max_side`, otherwise the image converted (first frame, EXIF rotation applied,
    16-bit/CMYK/... to 8-bit, downscaled) and re-encoded (JPEG stays JPEG, anything else PNG).

    The image is fully decoded, so a truncated or corrupt file is caught here. Raises
    `Unreadable` (callers skip the file) with the reason."""
    from PIL import Image, ImageOps

    max_side = MAX_IMAGE_SIDE if max_side is None else int(max_side)
    if not data:
        raise Unreadable("empty file")
    try:
        with _warnings.catch_warnings():
            _warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            img = Image.open(io.BytesIO(data))
            fmt = img.format
            w, h = img.size
            if w < 1 or h < 1:
                raise Unreadable(f"{w}x{h} pixels")
            if w * h > MAX_PIXELS and fmt != "JPEG" or w * h > 4 * MAX_PIXELS:
                raise Unreadable(f"{w}x{h} pixels, above the limit of {MAX_PIXELS:,} pixels")
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
    except Unreadable:
        raise
    except Image.DecompressionBombError as err:
        raise Unreadable(f"too large ({str(err)[:80]})") from None
    except Exception as err:  # Pillow raises many types for a damaged or unknown file
        text = str(err).strip().splitlines()[0][:100] if str(err).strip() else type(err).__name__
        if "cannot identify image file" in text:
            text = "not an image Pillow can read"
        raise Unreadable(text) from None


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
        raise Unreadable(str(err)[:80]) from None
