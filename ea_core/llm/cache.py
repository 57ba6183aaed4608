"""A durable cache of LM answers, so every answer is paid for once.

LM calls cost money and time, so each answer is written to SQLite (WAL mode) the moment it
arrives and committed at once: a process killed mid-stage (even with SIGKILL) keeps every answer
it had received, and the next run asks only for the rest. What a kill -9 does lose is the
requests in flight at that moment (at most the provider's concurrency): they were sent, may be
billed, but their answers never arrived. Entries are keyed by a SHA-256 of what determines the
answer: the endpoint (without any ``user:password@`` in its URL), the model, the full rendered
prompt and the generation settings. The API key is never part of a key nor stored anywhere.
Answers store the label as a string, so a cache survives a reordering of the label list.

Several processes may share one cache (two runs, the app and a CLI run). So that a prompt in
flight in one of them is not bought again by another, a provider *claims* a key before it sends
the request (`claim`); the others see the claim and wait for the answer. A claim whose process
is gone (killed) or that is older than its time-to-live is stale and may be taken over.

The same database holds a small capability table (does this endpoint accept structured output,
log-probs ...) so later runs do not probe an endpoint again.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import socket
import sqlite3
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Optional, Union

from ea_core.errors import ConfigError

_SCHEMA = """
CREATE TABLE IF NOT EXISTS answers (
    key TEXT PRIMARY KEY,
    endpoint TEXT NOT NULL,
    model TEXT NOT NULL,
    label_str TEXT,
    confidence REAL,
    raw TEXT NOT NULL,
    prompt_tokens INTEGER NOT NULL DEFAULT 0,
    completion_tokens INTEGER NOT NULL DEFAULT 0,
    cost_usd REAL NOT NULL DEFAULT 0,
    latency_s REAL NOT NULL DEFAULT 0,
    created REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS capabilities (
    endpoint TEXT NOT NULL,
    model TEXT NOT NULL,
    name TEXT NOT NULL,
    value TEXT NOT NULL,
    updated REAL NOT NULL,
    PRIMARY KEY (endpoint, model, name)
);
CREATE TABLE IF NOT EXISTS claims (
    key TEXT PRIMARY KEY,
    owner TEXT NOT NULL,
    pid INTEGER NOT NULL,
    host TEXT NOT NULL,
    updated REAL NOT NULL
);
"""

#: What `AnswerCache.claim` found: the key is now ours, already answered, or claimed by a live other.
CLAIMED, ANSWERED, BUSY = "claimed", "answered", "busy"
_SQLITE_MAGIC = b"SQLite format 3\x00"
#: Bytes a stored answer takes besides its reply text (row, index entry, WAL frame share).
ROW_OVERHEAD_BYTES = 400


@dataclass
class CachedAnswer:
    """One stored answer. `label_str` is None when the LM's reply named no label."""

    label_str: Optional[str]
    confidence: Optional[float]
    raw: str
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cost_usd: float = 0.0
    latency_s: float = 0.0

    def size_bytes(self) -> int:
        """About what this answer takes on disk (for "free N MB" messages)."""
        return len((self.raw or "").encode("utf-8")) + len((self.label_str or "").encode("utf-8")) + ROW_OVERHEAD_BYTES


def make_key(endpoint: str, model: str, prompt: Any, settings: dict[str, Any]) -> str:
    """SHA-256 (hex) of what determines an answer. Never pass secrets in here."""
    payload = json.dumps(
        {"endpoint": endpoint, "model": model, "prompt": prompt, "settings": settings},
        sort_keys=True,
        ensure_ascii=False,
        separators=(",", ":"),
        default=str,
    )
    return hashlib.sha256(payload.encode("utf-8")).hexdigest()


def is_storage_error(exc: BaseException) -> bool:
    """Whether `exc` means the cache cannot be written (disk full, read-only, I/O error)."""
    if isinstance(exc, OSError):
        return exc.errno in (errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM, errno.EIO)
    if isinstance(exc, sqlite3.OperationalError):
        text = str(exc).lower()
        return any(w in text for w in ("full", "readonly", "read-only", "disk i/o", "unable to open"))
    return False


def is_disk_full(exc: BaseException) -> bool:
    if isinstance(exc, OSError):
        return exc.errno in (errno.ENOSPC, errno.EDQUOT)
    return "full" in str(exc).lower()


def human_bytes(n: float) -> str:
    """1.2 kB, 3.4 MB ... (decimal units, as disk tools show them)."""
    for unit in ("B", "kB", "MB", "GB"):
        if n < 1000 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n:.1f} GB"


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # someone else's process: alive
    return True


class AnswerCache:
    """SQLite-backed answer cache, safe to share between threads and processes (WAL mode).

    `path` may be ``":memory:"`` for a throwaway cache. Every `put` commits immediately. A path
    that cannot hold a cache (a directory, a file that is not one, a read-only place, a full
    disk) is a `ConfigError` naming the path and what to do, raised here rather than mid-run.
    """

    def __init__(self, path: Union[str, Path]) -> None:
        self.path = str(path)
        self._lock = threading.RLock()
        try:
            self._conn = self._open_when_free()
        except (sqlite3.Error, OSError) as exc:
            raise ConfigError(self._open_problem(exc)) from None
        self.hits = 0
        self.misses = 0
        self.writes = 0
        self.host = socket.gethostname()

    def _open_when_free(self, wait_s: float = 30.0) -> sqlite3.Connection:
        """`_open`, waiting while another process creates the same cache.

        Switching a new file to WAL and creating the tables take a lock that SQLite reports as
        "database is locked" at once (its busy handler is not called there), so two processes
        opening one new cache together would otherwise fail the second."""
        deadline = time.monotonic() + wait_s
        while True:
            try:
                return self._open()
            except sqlite3.OperationalError as exc:
                if "locked" not in str(exc).lower() or time.monotonic() > deadline:
                    raise
                time.sleep(0.05)

    def _open(self) -> sqlite3.Connection:
        if self.path != ":memory:":
            target = Path(self.path)
            if target.is_dir():
                raise IsADirectoryError(errno.EISDIR, "is a directory", self.path)
            if target.is_file() and target.stat().st_size > 0:
                with open(target, "rb") as f:
                    if f.read(16) != _SQLITE_MAGIC:
                        raise sqlite3.DatabaseError("file is not a database")
            target.parent.mkdir(parents=True, exist_ok=True)
        conn = sqlite3.connect(self.path, check_same_thread=False, timeout=30.0, isolation_level=None)
        try:
            conn.execute("PRAGMA busy_timeout=30000")
            if self.path != ":memory:":
                conn.execute("PRAGMA journal_mode=WAL")
            # NORMAL is durable against a killed process in WAL mode (not against power loss).
            conn.execute("PRAGMA synchronous=NORMAL")
            conn.execute("PRAGMA busy_timeout=30000")
            conn.executescript(_SCHEMA)
        except BaseException:
            conn.close()
            raise
        return conn

    def _open_problem(self, exc: BaseException) -> str:
        """Why the cache at `path` cannot be opened, and what to do, in one message."""
        where = f"The LM answer cache {self.path}"
        text = str(exc).lower()
        if isinstance(exc, IsADirectoryError) or Path(self.path).is_dir():
            return (f"{where} is a directory. Give a file path for the cache, e.g. "
                    f"--cache {Path(self.path) / 'lm_cache.sqlite'}.")
        if isinstance(exc, sqlite3.DatabaseError) and ("not a database" in text or "malformed" in text):
            return (f"{where} is not an answer cache (the file holds something else, or is damaged). "
                    "Give another --cache path, or move that file away to start a new cache.")
        if is_disk_full(exc):
            return (f"{where} cannot be written: the disk is full. Free some space (a new cache needs "
                    f"about {human_bytes(1_000_000)}) or give a --cache path on another disk.")
        read_only = isinstance(exc, OSError) and exc.errno in (errno.EROFS, errno.EACCES, errno.EPERM)
        if read_only or any(w in text for w in ("readonly", "read-only", "unable to open", "permission", "read only")):
            return (f"{where} cannot be written (a read-only place, or no permission). Give a --cache path in "
                    "a folder you can write to.")
        detail = getattr(exc, "strerror", None) or str(exc) or type(exc).__name__
        return f"{where} cannot be opened ({detail}). Give another --cache path."

    # ----------------------------------------------------------------------------- answers

    def get(self, key: str) -> Optional[CachedAnswer]:
        return self.get_many([key]).get(key)

    def get_many(self, keys: Iterable[str]) -> dict[str, CachedAnswer]:
        """Stored answers for those of `keys` that are cached."""
        keys = list(dict.fromkeys(keys))
        out: dict[str, CachedAnswer] = {}
        with self._lock:
            for start in range(0, len(keys), 500):
                chunk = keys[start : start + 500]
                marks = ",".join("?" * len(chunk))
                rows = self._conn.execute(
                    "SELECT key, label_str, confidence, raw, prompt_tokens, completion_tokens, cost_usd, latency_s "
                    f"FROM answers WHERE key IN ({marks})",
                    chunk,
                ).fetchall()
                for row in rows:
                    out[row[0]] = CachedAnswer(*row[1:])
            self.hits += len(out)
            self.misses += len(keys) - len(out)
        return out

    def put(self, key: str, answer: CachedAnswer, *, endpoint: str = "", model: str = "") -> None:
        """Store one answer and commit it at once (and drop any claim on its key: it is answered).

        Raises `sqlite3.OperationalError` / `OSError` when the disk is full or read-only: the
        caller keeps the answer and says so (see `is_storage_error`).
        """
        row = (
            key,
            endpoint,
            model,
            answer.label_str,
            answer.confidence,
            answer.raw or "",
            int(answer.prompt_tokens),
            int(answer.completion_tokens),
            float(answer.cost_usd),
            float(answer.latency_s),
            time.time(),
        )
        with self._lock:
            self._conn.execute("BEGIN IMMEDIATE")
            try:
                self._conn.execute(
                    "INSERT OR REPLACE INTO answers (key, endpoint, model, label_str, confidence, raw, prompt_tokens,"
                    " completion_tokens, cost_usd, latency_s, created) VALUES (?,?,?,?,?,?,?,?,?,?,?)",
                    row,
                )
                self._conn.execute("DELETE FROM claims WHERE key=?", (key,))
                self._conn.execute("COMMIT")
            except BaseException:
                self._rollback()
                raise
            self.writes += 1

    def _rollback(self) -> None:
        try:
            self._conn.execute("ROLLBACK")
        except sqlite3.Error:
            pass

    def __contains__(self, key: str) -> bool:
        with self._lock:
            return self._conn.execute("SELECT 1 FROM answers WHERE key=?", (key,)).fetchone() is not None

    def __len__(self) -> int:
        with self._lock:
            return int(self._conn.execute("SELECT COUNT(*) FROM answers").fetchone()[0])

    # ------------------------------------------------------------------------------ claims

    def claim(self, key: str, owner: str, ttl_s: float = 600.0) -> str:
        """Claim `key` for `owner` before sending its request, so no other process buys it too.

        Returns `ANSWERED` (an answer is stored: read it), `CLAIMED` (the key is `owner`'s now,
        or still was: a repeated claim refreshes its time) or `BUSY` (a live claim of another
        owner: wait for its answer). A claim older than `ttl_s`, or whose process on this host
        is gone, is stale and taken over. One short write transaction.
        """
        now = time.time()
        with self._lock:
            self._conn.execute("BEGIN IMMEDIATE")
            try:
                if self._conn.execute("SELECT 1 FROM answers WHERE key=?", (key,)).fetchone() is not None:
                    self._conn.execute("COMMIT")
                    return ANSWERED
                row = self._conn.execute("SELECT owner, pid, host, updated FROM claims WHERE key=?", (key,)).fetchone()
                if row is not None and row[0] != owner and not self._stale(row, now, ttl_s):
                    self._conn.execute("COMMIT")
                    return BUSY
                self._conn.execute(
                    "INSERT OR REPLACE INTO claims (key, owner, pid, host, updated) VALUES (?,?,?,?,?)",
                    (key, owner, os.getpid(), self.host, now),
                )
                self._conn.execute("COMMIT")
                return CLAIMED
            except BaseException:
                self._rollback()
                raise

    def _stale(self, row: tuple, now: float, ttl_s: float) -> bool:
        _, pid, host, updated = row
        if now - float(updated) > ttl_s:
            return True
        return host == self.host and not _pid_alive(int(pid))

    def release(self, key: str, owner: str) -> None:
        """Give up `owner`'s claim on `key` (its request failed: another process may try)."""
        with self._lock:
            self._conn.execute("DELETE FROM claims WHERE key=? AND owner=?", (key, owner))

    def claims(self) -> int:
        """How many claims are held (for tests and diagnostics)."""
        with self._lock:
            return int(self._conn.execute("SELECT COUNT(*) FROM claims").fetchone()[0])

    # ------------------------------------------------------------------------ capabilities

    def get_capability(self, endpoint: str, model: str, name: str) -> Optional[Any]:
        with self._lock:
            row = self._conn.execute(
                "SELECT value FROM capabilities WHERE endpoint=? AND model=? AND name=?", (endpoint, model, name)
            ).fetchone()
        return None if row is None else json.loads(row[0])

    def capabilities(self, endpoint: str, model: str) -> dict[str, Any]:
        with self._lock:
            rows = self._conn.execute(
                "SELECT name, value FROM capabilities WHERE endpoint=? AND model=?", (endpoint, model)
            ).fetchall()
        return {name: json.loads(value) for name, value in rows}

    def set_capability(self, endpoint: str, model: str, name: str, value: Any) -> None:
        with self._lock:
            self._conn.execute(
                "INSERT OR REPLACE INTO capabilities (endpoint, model, name, value, updated) VALUES (?,?,?,?,?)",
                (endpoint, model, name, json.dumps(value), time.time()),
            )

    # ------------------------------------------------------------------------------- misc

    def stats(self) -> dict[str, Any]:
        """Entry count, paid tokens and cost stored, and this process's hits/misses/writes."""
        with self._lock:
            n, pt, ct, usd = self._conn.execute(
                "SELECT COUNT(*), COALESCE(SUM(prompt_tokens),0), COALESCE(SUM(completion_tokens),0),"
                " COALESCE(SUM(cost_usd),0) FROM answers"
            ).fetchone()
            models = self._conn.execute("SELECT COUNT(DISTINCT endpoint || '|' || model) FROM answers").fetchone()[0]
        size = Path(self.path).stat().st_size if self.path != ":memory:" and Path(self.path).exists() else 0
        return {
            "path": self.path,
            "entries": int(n),
            "endpoints_models": int(models),
            "prompt_tokens": int(pt),
            "completion_tokens": int(ct),
            "cost_usd": float(usd),
            "hits": self.hits,
            "misses": self.misses,
            "writes": self.writes,
            "size_bytes": size,
        }

    def close(self) -> None:
        with self._lock:
            try:
                self._conn.close()
            except sqlite3.Error:
                pass

    def __enter__(self) -> "AnswerCache":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"AnswerCache({self.path!r})"
