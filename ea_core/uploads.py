"""What a browser's owner keeps on the server between visits: uploaded data files and the setup.

Uploads belong to the owner (the token a browser keeps; see `ea_core.runs.owner_hash`), as runs
do, not to a page session: a reload, a closed and reopened browser or a restarted server finds
them again, until the owner removes them or leaves them unused longer than the age limit. One
quota bounds what an owner keeps. Both limits are settings (`StoreLimits`, defaults below; the
app's ``--upload-quota-mb`` / ``--upload-max-days``), and `OwnerStore.usage` is the one measure
of an owner's disk use that the limit is checked against.

The owner's setup (the run form's values, never an API key) is kept beside the uploads, so a
reloaded page shows the setup it showed.

    runs/.owners/<owner hash>/uploads/NAME     the owner's data files, by the name they were uploaded as
    runs/.owners/<owner hash>/setup.json       the last setup the owner's page showed
"""

from __future__ import annotations

import filecmp
import json
import os
import re
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Optional
from urllib.parse import urlsplit, urlunsplit

from ea_core.errors import ConfigError, DataError
from ea_core.runfolder import write_json
from ea_core.runs import owner_hash

#: Defaults of `StoreLimits`: what one owner may keep, and for how long after its last use.
DEFAULT_QUOTA_MB = 1024
DEFAULT_MAX_AGE_DAYS = 30
OWNERS_DIR = ".owners"
UPLOADS_DIR = "uploads"
SETUP_JSON = "setup.json"
#: Setup fields never stored, whatever a caller passes (a key belongs to the page's memory only).
_SECRET_FIELD = re.compile(r"key|token|secret|password", re.I)


@dataclass(frozen=True)
class StoreLimits:
    """How much an owner may keep (MB, 0 = no limit) and how long a file unused is kept (days,
    0 = until removed)."""

    quota_mb: float = DEFAULT_QUOTA_MB
    max_age_days: float = DEFAULT_MAX_AGE_DAYS

    def __post_init__(self) -> None:
        if self.quota_mb < 0 or self.max_age_days < 0:
            raise ConfigError("The upload quota and age limit must be 0 (no limit) or more.")

    @property
    def quota_bytes(self) -> Optional[int]:
        return int(self.quota_mb * 2**20) if self.quota_mb else None

    @property
    def max_age_s(self) -> Optional[float]:
        return self.max_age_days * 86400.0 if self.max_age_days else None

    def describe(self) -> str:
        """For people: "kept on this server for 30 days after their last use, up to 1 GB per browser"."""
        age = (f"for {self.max_age_days:g} days after their last use" if self.max_age_days
               else "until you remove them")
        quota = f", up to {size_text(self.quota_bytes)} per browser" if self.quota_bytes else ""
        return f"kept on this server {age}{quota}"


def size_text(n: Optional[int]) -> str:
    """Bytes for people: 812 B, 3.4 MB, 1 GB."""
    if n is None:
        return "no limit"
    for unit, scale in (("GB", 2**30), ("MB", 2**20), ("kB", 2**10)):
        if n >= scale:
            value = n / scale
            return f"{value:.1f} {unit}".replace(".0 ", " ")
    return f"{n} B"


def safe_name(name: str) -> str:
    """A file name fit for the store: its last path part, odd characters replaced, no leading dot."""
    base = re.split(r"[\\/]", str(name))[-1]
    base = re.sub(r"[^A-Za-z0-9._ +()-]", "_", base).strip(" .")
    if len(base) > 120:
        stem, dot, ext = base.rpartition(".")
        base = (stem[:110] + dot + ext[:9]) if dot else base[:120]
    return base or "upload"


def owner_folder(root: str | Path, owner: str) -> Path:
    """The folder of what `owner` keeps under a runs folder (shared with the owner's LM cache)."""
    if not owner:
        raise ConfigError("The page is still starting (no owner yet): try again in a second.")
    return Path(root) / OWNERS_DIR / owner_hash(owner)


@dataclass(frozen=True)
class StoredFile:
    """One of an owner's uploads."""

    name: str
    path: Path
    size: int
    last_used: float

    def label(self) -> str:
        """For a picker: "reviews.csv · 3.4 MB · used 2026-12-01"."""
        used = time.strftime("%Y-%m-%d", time.localtime(self.last_used))
        return f"{self.name} · {size_text(self.size)} · used {used}"


class OwnerStore:
    """An owner's uploads and setup under a runs folder (`root`), within `limits`."""

    def __init__(self, root: str | Path, owner: str, limits: Optional[StoreLimits] = None, *,
                 disk_check: Optional[Callable[[int, str], Optional[str]]] = None) -> None:
        self.folder = owner_folder(root, owner)
        self.uploads = self.folder / UPLOADS_DIR
        self.limits = limits or StoreLimits()
        # The owner's disk quota over runs and uploads together (`ea_core.quotas.DiskQuota`, as the
        # run manager counts it): (bytes an upload adds, what it is) -> a refusal, or None.
        self.disk_check = disk_check

    # -- measure ----------------------------------------------------------------------------
    def usage(self) -> int:
        """Bytes the owner's uploads take (what the quota is checked against)."""
        if not self.uploads.is_dir():
            return 0
        return sum(p.stat().st_size for p in self.uploads.iterdir() if p.is_file())

    def describe_usage(self) -> str:
        """For people: "3.4 MB of 1 GB used"."""
        quota = self.limits.quota_bytes
        return f"{size_text(self.usage())} of {size_text(quota)} used" if quota else f"{size_text(self.usage())} used"

    # -- files ------------------------------------------------------------------------------
    def purge(self, now: Optional[float] = None) -> list[str]:
        """Delete the files unused longer than the age limit; their names."""
        max_age = self.limits.max_age_s
        if max_age is None or not self.uploads.is_dir():
            return []
        now = time.time() if now is None else now
        gone = []
        for path in self.uploads.iterdir():
            if path.is_file() and now - path.stat().st_mtime > max_age:
                path.unlink(missing_ok=True)
                gone.append(path.name)
        return gone

    def files(self) -> list[StoredFile]:
        """The owner's uploads, most recently used first (old ones purged first)."""
        self.purge()
        if not self.uploads.is_dir():
            return []
        out = [StoredFile(p.name, p, p.stat().st_size, p.stat().st_mtime) for p in self.uploads.iterdir()
               if p.is_file() and not p.name.startswith(".")]
        return sorted(out, key=lambda f: (-f.last_used, f.name))

    def add(self, src: str | Path, name: Optional[str] = None, *, move: bool = False) -> StoredFile:
        """Keep `src` as `name` (default: its own name); a file of that name is replaced. DataError,
        naming the sizes, when it would take the owner over the quota (nothing is kept then)."""
        src = Path(src)
        name = safe_name(name or src.name)
        size = src.stat().st_size
        quota = self.limits.quota_bytes
        target = self.uploads / name
        replaced = target.stat().st_size if target.is_file() else 0
        if quota is not None and self.usage() - replaced + size > quota:
            raise DataError(f"{name} ({size_text(size)}) does not fit: your uploads would take "
                            f"{size_text(self.usage() - replaced + size)}, over this server's {size_text(quota)} "
                            "per browser. Remove a file you no longer need (Data tab, 'Your uploaded files').")
        refused = self.disk_check(size - replaced, f"{name} ({size_text(size)})") if self.disk_check else None
        if refused:
            raise DataError(refused)
        self.uploads.mkdir(parents=True, exist_ok=True, mode=0o700)
        tmp = self.uploads / f".incoming-{os.getpid()}-{name}"
        if move:
            shutil.move(str(src), tmp)
        else:
            shutil.copyfile(src, tmp)
        os.replace(tmp, target)
        os.utime(target)
        return StoredFile(name, target, size, target.stat().st_mtime)

    def keep(self, src: str | Path) -> StoredFile:
        """`src` among the owner's files: the stored file of its name if that holds the same bytes,
        else a new copy (under a free variant of its name when the name is taken by other bytes)."""
        src = Path(src)
        name = safe_name(src.name)
        stem, dot, ext = name.rpartition(".")
        if not dot:
            stem, ext = name, ""
        for n in range(100):
            candidate = name if n == 0 else f"{stem}-{n + 1}{dot}{ext}"
            found = self.find(candidate)
            if found is None:
                return self.add(src, candidate)
            if filecmp.cmp(found, src, shallow=False):
                os.utime(found)
                return StoredFile(candidate, found, found.stat().st_size, found.stat().st_mtime)
        return self.add(src, name)

    def find(self, name: Optional[str]) -> Optional[Path]:
        """The stored file called `name` (as the picker gives it), or None; never a path outside the store."""
        if not name or safe_name(name) != name:
            return None
        path = self.uploads / name
        return path if path.is_file() else None

    def path(self, name: Optional[str]) -> Path:
        """The stored file `name`, marked as used now; DataError when it is not (or no longer) kept."""
        path = self.find(name)
        if path is None:
            if not name:
                raise DataError("Upload a data file first (CSV, TSV, JSONL, JSON, Parquet or a ZIP of image class "
                                "folders), or pick a demo.")
            raise DataError(f"{name} is no longer on this server (removed, or unused longer than the age limit: "
                            f"uploads are {self.limits.describe()}): upload it again.")
        os.utime(path)
        return path

    def remove(self, name: str) -> bool:
        """Delete the stored file `name`; whether there was one."""
        path = self.find(name)
        if path is None:
            return False
        path.unlink(missing_ok=True)
        return True

    # -- setup ------------------------------------------------------------------------------
    def save_setup(self, values: dict[str, Any]) -> None:
        """Keep the run form's values (anything named like a secret is dropped, and a key written
        into a URL's user part is cut out)."""
        clean = {k: _without_userinfo(v) if k.endswith("url") else v for k, v in values.items()
                 if not _SECRET_FIELD.search(k)}
        self.folder.mkdir(parents=True, exist_ok=True, mode=0o700)
        write_json(self.folder / SETUP_JSON, clean)

    def load_setup(self) -> Optional[dict[str, Any]]:
        """The setup last saved, or None (none yet, or unreadable)."""
        try:
            data = json.loads((self.folder / SETUP_JSON).read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return None
        return data if isinstance(data, dict) else None


def _without_userinfo(url: Any) -> Any:
    """`url` without a ``user:password@`` part (a key pasted there is never stored)."""
    if not isinstance(url, str) or "@" not in url:
        return url
    try:
        parts = urlsplit(url)
        if not parts.username and not parts.password:
            return url
        netloc = (parts.hostname or "") + (f":{parts.port}" if parts.port else "")
    except ValueError:
        return ""
    return urlunsplit((parts.scheme, netloc, parts.path, parts.query, parts.fragment))
