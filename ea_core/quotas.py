"""Disk limits a shared server's operator sets: how much one owner may keep, and for how long.

Why: runs keep their models, cached outputs and a copy of their data, and nothing bounded what
one person could fill. `DiskQuota` is the operator's two numbers; `RunManager` counts an owner's
run folders against it (and, through a callback, what the owner keeps elsewhere, such as
uploads), refuses a new run past the limit, and removes ended runs older than the age limit.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

MB = 2**20
DAY_S = 86400.0


@dataclass(frozen=True)
class DiskQuota:
    """`per_owner_mb`: what one owner's runs (and uploads) may take on disk (0: no limit);
    `max_age_days`: ended runs older than this are removed (0: kept)."""

    per_owner_mb: float = 0.0
    max_age_days: float = 0.0

    @property
    def limit_bytes(self) -> Optional[int]:
        return int(self.per_owner_mb * MB) if self.per_owner_mb > 0 else None

    @property
    def max_age_s(self) -> Optional[float]:
        return self.max_age_days * DAY_S if self.max_age_days > 0 else None

    def over(self, used_bytes: int) -> Optional[str]:
        """The message when `used_bytes` is at or past the limit (None when there is room)."""
        limit = self.limit_bytes
        if limit is None or used_bytes < limit:
            return None
        return (f"Your runs and uploads use {size(used_bytes)} of the {size(limit)} this server allows each person: "
                "remove old runs (Results & export, Your runs) or uploads (Data) to start a new one.")

    def refuse_adding(self, used_bytes: int, added_bytes: int, what: str) -> Optional[str]:
        """The message when `what` (``reviews.csv (3 MB)``), `added_bytes` more, would take an owner
        who uses `used_bytes` past the limit (None when it fits): an upload counts as a run does."""
        limit = self.limit_bytes
        if limit is None or used_bytes + added_bytes <= limit:
            return None
        return (f"{what} does not fit: your runs and uploads would take {size(used_bytes + added_bytes)}, over the "
                f"{size(limit)} this server allows each person. Remove old runs (Results & export, Your runs) or "
                "uploads (Data) first.")

    def describe(self, used_bytes: int) -> str:
        """``Disk: 120 MB of 2.0 GB · runs are removed 30 days after they end``."""
        limit = self.limit_bytes
        text = f"Disk: {size(used_bytes)}" + (f" of {size(limit)}" if limit is not None else " (no limit)")
        if self.max_age_s is not None:
            text += f" · ended runs are removed {self.max_age_days:g} days after they end"
        return text


    def limits_text(self) -> str:
        """The operator's limits for people: ``disk per browser 2.0 GB, ended runs kept 30 days``."""
        limit = self.limit_bytes
        disk = f"disk per browser {size(limit)}" if limit is not None else "no disk limit"
        return disk + (f", ended runs kept {self.max_age_days:g} days" if self.max_age_s is not None else "")


def size(n_bytes: float) -> str:
    if n_bytes >= 1024 * MB:
        return f"{n_bytes / (1024 * MB):.1f} GB"
    if n_bytes >= MB:
        return f"{n_bytes / MB:.0f} MB"
    return f"{n_bytes / 1024:.0f} KB"


def folder_bytes(path: str | Path) -> int:
    """Bytes the files under `path` take (links not followed; files vanishing meanwhile skipped)."""
    total = 0
    for root, _dirs, files in os.walk(path):
        for name in files:
            try:
                total += os.lstat(os.path.join(root, name)).st_size
            except OSError:
                pass
    return total
