"""Train/validation/test splits as index arrays: reproducible, stratified, capped.

Splits are seeded and stratified by label; a cap on one split never changes the others; a cap
too small for every class says which classes it drops. Text and image tasks share these.
"""

from __future__ import annotations

import math
from typing import Optional

import numpy as np

from ea_core.data.columns import Part, column_of, dict_encode
from ea_core.data.messages import MAX_SHOWN
from ea_core.errors import ConfigError, DataError

__all__ = [
    "PARTS", "PART_NAMES", "SPLIT_NAMES", "check_split_options", "carve_fractions", "encode_split",
    "stratified_split", "stratified_sample", "cap_warnings", "check_train_covers_labels",
]

#: The three splits, in order (a split column's codes index this).
PARTS = ("train", "val", "test")
PART_NAMES = {"train": "training", "val": "validation", "test": "test"}
#: Split names as datasets spell them (a split column's values, Hugging Face splits, split folders).
SPLIT_NAMES = {
    "train": "train", "training": "train", "trn": "train",
    "validation": "val", "valid": "val", "val": "val", "dev": "val", "development": "val", "eval": "val",
    "test": "test", "testing": "test", "tst": "test",
}


def check_split_options(val_frac: float, test_frac: float, *caps: Optional[int]) -> None:
    """Refuse fractions outside [0, 1) or leaving no training rows, and caps that are not positive integers."""
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


def carve_fractions(pools: dict, val_frac: float, test_frac: float) -> dict[str, float]:
    """Fractions of the training pool to move to the splits that are still missing."""
    return {part: frac for part, frac in (("val", val_frac), ("test", test_frac)) if part not in pools and frac > 0}


def encode_split(part: Part, name: str) -> np.ndarray:
    """Per row, the index in `PARTS` of the split column's value (-1 when empty); other values are refused."""
    idx, raw = dict_encode(column_of(part, name))
    lut, unknown = [], []
    for value in raw:
        key = str(value).strip().lower() if value is not None else ""
        if key in SPLIT_NAMES:
            lut.append(PARTS.index(SPLIT_NAMES[key]))
        elif not key:
            lut.append(-1)
        else:
            lut.append(-1)
            unknown.append(str(value))
    if unknown:
        raise DataError(
            f"The split column {name!r} of {part.origin} has values that are not split names: "
            f"{', '.join(map(repr, unknown[:MAX_SHOWN]))}. Use train, validation (or val/dev) and test, or pass "
            "another column with --split-col. Rename the column if it is not a split column."
        )
    return np.array(lut + [-1], dtype=np.int64)[idx]


def stratified_split(
    idx: np.ndarray,
    codes: np.ndarray,
    fracs: dict[str, float],
    rng: np.random.Generator,
    labels: list[str],
    label_col: str,
    origin: str,
) -> dict[str, np.ndarray]:
    """Split row indices into train + the parts in `fracs`, per class, at least one row each."""
    need = 1 + len(fracs)
    counts = np.bincount(codes, minlength=len(labels))
    small = [(labels[c], int(counts[c])) for c in np.flatnonzero((counts > 0) & (counts < need))]
    if small:
        parts = "/".join(["train"] + [PART_NAMES[p] for p in fracs])
        listing = ", ".join(f"{lab!r} has only {cnt} example{'s' if cnt != 1 else ''}" for lab, cnt in small[:MAX_SHOWN])
        more = f" (and {len(small) - MAX_SHOWN} more classes)" if len(small) > MAX_SHOWN else ""
        one = len(small) == 1
        raise DataError(
            f"Too few examples to split: class {listing}{more} in the label column {label_col!r} of {origin}. "
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


def stratified_sample(idx: np.ndarray, codes: np.ndarray, cap: Optional[int], rng: np.random.Generator) -> np.ndarray:
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


def cap_warnings(
    part: str, cap: Optional[int], codes: np.ndarray, pool: np.ndarray, kept: np.ndarray, labels: list[str]
) -> list[str]:
    """A cap smaller than the number of classes drops whole classes: say how many and which."""
    before, after = np.unique(codes[pool]), np.unique(codes[kept])
    missing = np.setdiff1d(before, after)
    if len(missing) == 0:
        return []
    name, flag = PART_NAMES[part], f"--max-{part}"
    shown = ", ".join(repr(labels[c]) for c in missing[:MAX_SHOWN])
    more = ", ..." if len(missing) > MAX_SHOWN else ""
    effect = (
        "no model can learn them" if part == "train"
        else f"the {name} accuracy says nothing about them"
    )
    return [
        f"The {name} size cap ({cap:,}) keeps {len(kept):,} of {len(pool):,} {name} rows, fewer than its "
        f"{len(before):,} classes: {len(missing):,} of them have no {name} example ({shown}{more}), so {effect}. "
        f"Raise {flag} to at least {len(before):,} to keep one example of every class."
    ]


def check_train_covers_labels(codes: dict[str, np.ndarray], origins: dict[str, str], labels: list[str]) -> None:
    """Refuse a class that has validation or test rows but no training row (`codes`: the label
    codes of each split's rows; `origins`: where each split's rows come from)."""
    in_train = set(np.unique(codes["train"]).tolist())
    for part in ("val", "test"):
        missing = sorted(set(np.unique(codes[part]).tolist()) - in_train)
        if missing:
            names = ", ".join(repr(labels[m]) for m in missing[:MAX_SHOWN])
            raise DataError(
                f"Class {names} appears in the {PART_NAMES[part]} data ({origins[part]}) but never in the "
                "training data, so no model can learn it. Add training examples of it, or remove those rows."
            )
