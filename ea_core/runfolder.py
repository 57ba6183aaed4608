"""The run folder: where a run keeps its settings, event log, stage outputs and completion marks.

Every stage writes its outputs first and its completion mark last (atomically), so a run killed
at any point (Ctrl-C, kill -9, power loss) is resumed by running it again: stages whose mark is
present, with the same input fingerprint, are not redone. Nothing here ever holds an API key.
A write that fails for lack of space (or on a read-only disk) is an `EAError` naming the file,
not a traceback: the stages already marked done are intact, so freeing space and running again
resumes.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import json
import os
import tempfile
import time
from pathlib import Path
from typing import Any, Iterator, Optional

import numpy as np

from ea_core.errors import EAError, RunBusy
from ea_core.events import ProgressEvent

LOCK_FILE = "run.lock"


def fingerprint(*parts: Any) -> str:
    """A short stable hash of JSON-able values and numpy arrays (used to invalidate stale stages)."""
    h = hashlib.sha256()
    for part in parts:
        if isinstance(part, np.ndarray):
            h.update(np.ascontiguousarray(part).tobytes())
            h.update(str(part.dtype).encode())
        else:
            h.update(json.dumps(part, sort_keys=True, default=str).encode())
        h.update(b"|")
    return h.hexdigest()[:16]


_NO_SPACE = (errno.ENOSPC, errno.EDQUOT)
_READ_ONLY = (errno.EROFS, errno.EACCES, errno.EPERM)


@contextlib.contextmanager
def disk_errors(path: Path, tmp: Optional[str | Path] = None) -> Iterator[None]:
    """Turn a full or read-only disk while writing `path` into an `EAError` (removing `tmp`)."""
    try:
        yield
    except OSError as err:
        if tmp is not None:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
        if err.errno in _NO_SPACE:
            raise EAError(f"No space left on the disk to write {path}. Free some space and run the same command "
                          "again: finished stages and paid LM answers are kept.") from None
        if err.errno in _READ_ONLY:
            raise EAError(f"Cannot write {path} ({err.strerror}): the run folder must be on a writable disk.") from None
        raise


def write_json(path: Path, data: Any) -> None:
    """Write JSON atomically (temp file + rename), so a crash never leaves half a file."""
    tmp: Optional[str] = None
    with disk_errors(path, None):
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name, suffix=".tmp")
    with disk_errors(path, tmp):
        with os.fdopen(fd, "w") as f:
            json.dump(_finite(data), f, indent=2, default=_json_default, allow_nan=False)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)


def read_json(path: Path) -> Any:
    return json.loads(Path(path).read_text())


def save_arrays(path: Path, **arrays: np.ndarray) -> None:
    """Save arrays to .npz atomically (plain arrays only; loaded with allow_pickle=False)."""
    tmp = path.with_suffix(".tmp.npz")
    with disk_errors(path, tmp):
        path.parent.mkdir(parents=True, exist_ok=True)
        np.savez(tmp, **arrays)
        os.replace(tmp, path)


def load_arrays(path: Path) -> dict[str, np.ndarray]:
    with np.load(path, allow_pickle=False) as data:
        return {k: data[k] for k in data.files}


def _finite(obj: Any) -> Any:
    """NaN / inf become null, so every file we write is strict JSON (jq, browsers, other tools)."""
    if isinstance(obj, (float, np.floating)):
        return float(obj) if np.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: _finite(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_finite(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return _finite(obj.tolist())
    return obj


def _json_default(obj: Any) -> Any:
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")


class RunFolder:
    """Paths and completion marks of one run, and the lock that gives it one writer at a time."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        self._marks = self.root / "stages"
        self._lock_fd: Optional[int] = None

    # -- one writer at a time ---------------------------------------------------------------
    def lock(self, wait_s: float = 1.0) -> None:
        """Take the folder's write lock, or raise `RunBusy` naming the process that holds it.

        An OS advisory lock (flock): it is released by the kernel when its holder dies, even by
        kill -9, so a crashed run never leaves the folder locked.
        """
        if self._lock_fd is not None:
            return
        fd = os.open(self.root / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o600)
        deadline = time.monotonic() + wait_s  # ride out a watcher's momentary `is_locked` probe
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() < deadline:
                    time.sleep(0.05)
                    continue
                holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "?"
                os.close(fd)
                raise RunBusy(f"{self.root} is being written by another run (process {holder}). Wait for it to "
                              "finish or cancel it, or use another output folder.") from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, str(os.getpid()).encode(), 0)
        self._lock_fd = fd

    @property
    def holds_lock(self) -> bool:
        """Whether this object holds the folder's lock."""
        return self._lock_fd is not None

    def unlock(self) -> None:
        if self._lock_fd is not None:
            os.close(self._lock_fd)  # closing the descriptor releases the flock
            self._lock_fd = None

    def is_locked(self) -> bool:
        """Whether some process (this one included, through another RunFolder) holds the lock."""
        if self._lock_fd is not None:
            return True
        path = self.root / LOCK_FILE
        if not path.is_file():
            return False
        fd = os.open(path, os.O_RDONLY)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return True
        finally:
            os.close(fd)
        return False

    def path(self, *parts: str) -> Path:
        return self.root.joinpath(*parts)

    def is_done(self, stage: str, fp: str) -> bool:
        mark = self._marks / f"{stage.replace(':', '_').replace('/', '_')}.json"
        return mark.is_file() and read_json(mark).get("fingerprint") == fp

    def mark_done(self, stage: str, fp: str, info: Optional[dict] = None) -> None:
        write_json(self._marks / f"{stage.replace(':', '_').replace('/', '_')}.json", {"fingerprint": fp, **(info or {})})

    def log_event(self, event: ProgressEvent) -> None:
        path = self.root / "events.jsonl"
        with disk_errors(path):
            with open(path, "a") as f:
                f.write(json.dumps(event.to_dict(), default=_json_default) + "\n")
