"""ZIP archives from users (image datasets, uploaded bundles): one guard for all of them.

An archive is judged from its directory alone, before anything is decompressed or written: ZIP
bombs (member count, unpacked size, compression ratio) and zip slips (absolute paths, '..', NUL
bytes, links) are refused, and so are duplicate and encrypted members. Each kind of archive sets
its own size limits (`ZipLimits`); every check applies to every kind.
"""

from __future__ import annotations

import re
import stat
import zipfile
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Optional

from ea_core.errors import ConfigError, DataError, EAError

__all__ = ["MAX_ZIP_RATIO", "ZIP_RATIO_MIN_BYTES", "ZipLimits", "bundle_zip_limits", "open_zip", "check_zip",
           "extract_zip"]

#: Largest compression ratio of a member of at least `ZIP_RATIO_MIN_BYTES`, and of the whole archive.
MAX_ZIP_RATIO = 100
ZIP_RATIO_MIN_BYTES = 1 << 20
#: An uploaded bundle: most members and most unpacked bytes.
MAX_BUNDLE_ZIP_MEMBERS = 10_000
MAX_BUNDLE_ZIP_TOTAL_BYTES = 2 << 30

_DRIVE = re.compile(r"^[A-Za-z]:")


@dataclass(frozen=True)
class ZipLimits:
    """What one kind of archive may unpack to, and how its refusals read.

    `settings` prefixes the limits' names in messages (``MAX_ZIP`` gives ``MAX_ZIP_MEMBERS`` and
    ``MAX_ZIP_TOTAL_BYTES``); `remake` says how to re-create a refused archive, `instead` what to
    do with one too big; `error` is the exception raised.
    """

    max_members: int
    max_total_bytes: int
    settings: str
    remake: str
    instead: str
    error: type[EAError] = DataError


def bundle_zip_limits() -> ZipLimits:
    """The limits of an uploaded bundle (`MAX_BUNDLE_ZIP_MEMBERS`, `MAX_BUNDLE_ZIP_TOTAL_BYTES`)."""
    return ZipLimits(
        MAX_BUNDLE_ZIP_MEMBERS, MAX_BUNDLE_ZIP_TOTAL_BYTES, "MAX_BUNDLE_ZIP",
        remake="Export the bundle again from Results & export.",
        instead="Is it a bundle? Export one from Results & export.",
        error=ConfigError,
    )


def open_zip(path: str | Path, source: str, limits: ZipLimits) -> zipfile.ZipFile:
    """The archive at `path`, its directory checked (`check_zip`); `source` names it in messages."""
    try:
        zf = zipfile.ZipFile(path)
    except PermissionError:
        raise limits.error(f"Cannot read {source}: permission denied. Check the file's permissions.") from None
    except Exception as exc:  # BadZipFile, NotImplementedError (odd versions), OSError, ValueError ...
        reason = (str(exc).strip().splitlines() or [type(exc).__name__])[0].rstrip(".")[:300]
        raise limits.error(
            f"{source} is not a valid ZIP archive ({reason}; is it complete?). {limits.remake}"
        ) from None
    try:
        check_zip(source, zf.infolist(), limits)
    except EAError:
        zf.close()
        raise
    return zf


def check_zip(source: str, infos: list[zipfile.ZipInfo], limits: ZipLimits) -> None:
    """Refuse a ZIP bomb or a zip slip from the archive's directory, before anything is decompressed.

    (The declared sizes are enforced while reading: zipfile stops at a member's declared size and
    checks its CRC; readers also bound what they read of each member.)"""
    _check_sizes(source, infos, limits)
    seen: set[str] = set()
    for info in infos:
        name = info.filename
        _check_member_name(source, name, info, limits)
        rel = str(PurePosixPath(name.replace("\\", "/").strip("/")))
        if rel in seen:
            raise limits.error(
                f"{source} holds the member {name!r} twice, so which one is meant is ambiguous. {limits.remake}"
            )
        seen.add(rel)
        if not info.is_dir() and info.flag_bits & 0x1:
            raise limits.error(
                f"{source} is password-protected ({name!r} is encrypted). Re-create it without a password."
            )


def extract_zip(path: str | Path, target: Path, limits: ZipLimits, source: Optional[str] = None) -> None:
    """Extract the checked archive at `path` into the folder `target`, refusing any member that would
    land outside it. A damaged member raises `limits.error`; what was written stays for the caller
    to remove."""
    source = source or str(path)
    with open_zip(path, source, limits) as zf:
        root = target.resolve()
        for info in zf.infolist():
            dest = (target / info.filename).resolve()
            if root != dest and root not in dest.parents:
                raise limits.error(f"{source} is refused: its member {info.filename!r} points outside the folder "
                                   f"it is extracted to. {limits.remake}")
        try:
            zf.extractall(target)
        except (zipfile.BadZipFile, EOFError, NotImplementedError, RuntimeError, ValueError) as exc:
            raise limits.error(f"{source} is damaged ({type(exc).__name__}: {exc}). {limits.remake}") from None


def _check_sizes(source: str, infos: list[zipfile.ZipInfo], limits: ZipLimits) -> None:
    if len(infos) > limits.max_members:
        raise limits.error(
            f"{source} is refused: it has {len(infos):,} members, above the limit of {limits.max_members:,} "
            f"({limits.settings}_MEMBERS; a guard against ZIP bombs). {limits.instead}"
        )
    total = sum(i.file_size for i in infos)
    if total > limits.max_total_bytes:
        raise limits.error(
            f"{source} is refused: its members unpack to {total / (1 << 30):.1f} GiB, above the limit of "
            f"{limits.max_total_bytes / (1 << 30):.1f} GiB of uncompressed data ({limits.settings}_TOTAL_BYTES; a "
            f"guard against ZIP bombs). {limits.instead}"
        )
    packed = sum(i.compress_size for i in infos)
    for info in infos:
        if info.file_size >= ZIP_RATIO_MIN_BYTES and info.file_size > MAX_ZIP_RATIO * max(info.compress_size, 1):
            raise limits.error(
                f"{source} is refused: its member {info.filename!r} expands {info.file_size / max(info.compress_size, 1):,.0f} "
                f"times ({info.compress_size:,} bytes to {info.file_size:,}), above the compression ratio limit of "
                f"{MAX_ZIP_RATIO} (MAX_ZIP_RATIO; a guard against ZIP bombs). Check the archive."
            )
    if total >= ZIP_RATIO_MIN_BYTES and total > MAX_ZIP_RATIO * max(packed, 1):
        raise limits.error(
            f"{source} is refused: it expands {total / max(packed, 1):,.0f} times ({packed:,} bytes to {total:,}), "
            f"above the compression ratio limit of {MAX_ZIP_RATIO} (MAX_ZIP_RATIO; a guard against ZIP bombs)."
        )


def _check_member_name(source: str, name: str, info: zipfile.ZipInfo, limits: ZipLimits) -> None:
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
        raise limits.error(
            f"{source} is refused: its member {name!r} {why}, which could write or read outside the target folder "
            f"(a \"zip slip\"). Nothing was extracted. {limits.remake}"
        )
