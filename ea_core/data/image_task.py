"""Image examples (`ea_core.data.images.Items`) as an image-classification task, with the text
loader's split, cap and seed rules; and what the app shows of an image source before loading it.

Folder names are labels under the one label rule; an empty class folder, or one whose images are
all unreadable, is left out with a warning; fewer than two classes is a `DataError`.
"""

from __future__ import annotations

import hashlib
import io
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Optional

import numpy as np

from ea_core.data.columns import Part, SourceInfo
from ea_core.data.images import (
    DEMO_DIGITS_FRACTIONS,
    MAX_IMAGE_SIDE,
    Items,
    Unreadable,
    convert_image,
    items_of,
    items_of_parts,
)
from ea_core.data.labels import case_variant_warnings, label_sort_key
from ea_core.data.messages import MAX_SHOWN, listing
from ea_core.data.splitting import (
    PART_NAMES,
    PARTS,
    cap_warnings,
    carve_fractions,
    check_split_options,
    check_train_covers_labels,
    stratified_sample,
    stratified_split,
)
from ea_core.errors import DataError
from ea_core.splits import Split, TaskData

__all__ = [
    "ImageSourceInfo", "load_image_dataset", "load_image_parts", "inspect_image_source", "inspect_image_table",
    "describe_images",
]


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
    check_split_options(val_frac, test_frac, max_train, max_val, max_test)
    items, name = items_of(str(source).strip())
    return _build_task(items, name, val_frac, test_frac, seed, (max_train, max_val, max_test), max_side)


def load_image_parts(
    parts: dict[str, Part],
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
    "val": .., "test": ..}`` of `Part`) whose `image_col` holds images.

    Image paths are read relative to the table's folder and must stay inside it (a table naming
    ``/etc/...`` or ``../..`` is refused), unless `allow_outside` (Hugging Face cache files)."""
    check_split_options(val_frac, test_frac, max_train, max_val, max_test)
    items = items_of_parts(parts, image_col, label_col, split_col, allow_outside)
    return _build_task(items, name, val_frac, test_frac, seed, (max_train, max_val, max_test), max_side)


@dataclass
class ImageSourceInfo(SourceInfo):
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
    items, _ = items_of(str(source).strip())
    return _info_of(items, n_preview, per_class)


def inspect_image_table(part: Part, image_col: str, *, n_preview: int = 10, per_class: int = 4) -> ImageSourceInfo:
    """`inspect_image_source` for a table (a `Part`) with an image column."""
    items = items_of_parts({"all": part}, image_col, None, None, False)
    return _info_of(items, n_preview, per_class)


def describe_images(task: TaskData, sample: int = 2000) -> dict[str, Any]:
    """What `ea_core.data.describe` adds for an image task: the number of images, the image sizes
    seen (width x height, most common first, from the headers of up to `sample` images) and the
    formats."""
    from PIL import Image

    all_images = [img for part in PARTS for img in (task.split(part).images or [])]
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


def _build_task(items: Items, name: str, val_frac: float, test_frac: float, seed: int,
                caps_: tuple[Optional[int], ...], max_side: Optional[int]) -> TaskData:
    max_side = MAX_IMAGE_SIDE if max_side is None else int(max_side)
    caps = dict(zip(PARTS, caps_))
    warnings = list(items.warnings)
    origin = items.origin
    has_label = np.array([v is not None for v in items.labels], dtype=bool)
    seen = {v for v in items.labels if v is not None}
    if not seen:
        raise DataError(f"No usable images in {origin}: no image has a label. {' '.join(warnings)}".strip())
    labels = sorted(seen, key=label_sort_key(seen))
    warnings.extend(case_variant_warnings(labels, "class folder names" if items.label_col == "label" else items.label_col))
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
        for p in PARTS:
            idx = np.flatnonzero(has_label & (items.splits == PARTS.index(p)))
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
        carve_fractions(pools, val_frac, test_frac)
    fracs = {p: f for p, f in fracs.items() if p not in pools and f > 0}
    if fracs:
        train_idx = pools["train"]
        need = 1 + len(fracs)
        counts = np.bincount(codes[train_idx], minlength=len(labels))
        small = [(labels[c], int(counts[c])) for c in np.flatnonzero((counts > 0) & (counts < need))]
        if small:
            few = ", ".join(f"{lab!r} has {n} image{'s' if n != 1 else ''}" for lab, n in small[:MAX_SHOWN])
            raise DataError(
                f"Too few images to split {origin}: class {few}; splitting into train/"
                + "/".join(PART_NAMES[p] for p in fracs)
                + f" needs at least {need} per class. Add images, remove the class, or give your own splits "
                "(train/ and test/ folders, or a split column)."
            )
        carved = stratified_split(train_idx, codes[train_idx], fracs, rng_split, labels, items.label_col, origin)
        pools["train"] = carved.pop("train")
        pools.update(carved)
    for p in PARTS:
        if p not in pools:
            pools[p] = np.zeros(0, dtype=np.int64)
            warnings.append(f"The {PART_NAMES[p]} split is empty ({p}_frac is 0).")
    check_train_covers_labels({p: codes[idx] for p, idx in pools.items()}, dict.fromkeys(pools, origin), labels)
    final: dict[str, np.ndarray] = {}
    for p, rng in zip(PARTS, rng_caps):
        idx = pools[p]
        kept = stratified_sample(idx, codes[idx], caps[p], rng)
        final[p] = kept
        if len(kept) < len(idx):
            warnings.extend(cap_warnings(p, caps[p], codes, idx, kept, labels))

    # Read and check the chosen images only.
    bad: list[str] = []
    splits: dict[str, tuple[list[str], list[int], list[bytes]]] = {}
    for p in PARTS:
        names, ys, blobs = [], [], []
        for i in final[p].tolist():
            try:
                data = items.read(i)
                blobs.append(data if items.trusted else convert_image(data, items.names[i], max_side))
            except Unreadable as why:
                bad.append(f"{items.names[i]} ({why})")
                continue
            names.append(items.names[i])
            ys.append(int(codes[i]))
        splits[p] = (names, ys, blobs)
    if bad:
        warnings.append(listing(f"Skipped {len(bad)} files of {origin} that are not readable images", bad))
    # Classes left with no image at all (every file unreadable) are dropped; labels renumbered.
    present = sorted({y for p in PARTS for y in splits[p][1]})
    if len(present) < len(labels):
        gone = [labels[c] for c in range(len(labels)) if c not in set(present)]
        warnings.append(listing(f"{len(gone)} classes of {origin} have no readable image and are left out", gone))
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
                f"Class {', '.join(repr(labels[c]) for c in stray[:MAX_SHOWN])} has {PART_NAMES[p]} images in "
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
            name = PART_NAMES[p]
            out.append(
                f"{shared} of {len(images)} {name} images ({shared / len(images):.1%}) are byte-for-byte copies of a "
                f"training image, so {name} accuracy may be optimistic. Remove duplicates from the data to avoid this."
            )
    return out


def _info_of(items: Items, n_preview: int, per_class: int) -> ImageSourceInfo:
    counts: Counter = Counter(v for v in items.labels if v is not None)
    order = sorted(counts, key=label_sort_key(set(counts)))
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
