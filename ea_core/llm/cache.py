"""A durable cache of LM answers, so every answer is paid for once.

LM calls cost money and time, so each answer is written to SQLite (WAL mode) the moment it
arrives and committed at once: a process killed mid-stage (even with SIGKILL) keeps every answer
it had received, and the next run asks only for the rest. Entries are keyed by a SHA-256 of what
determines the answer: the endpoint, the model, the full rendered prompt and the generation
settings. The API key is never part of a key nor stored anywhere. Answers store the label as a
string, so a cache survives a reordering of the label list.

The same database holds a small capability table (does this endpoint accept structured output,
log-probs ...) so later runs do not probe an endpoint again.
"""

from __future__ import annotations

import hashlib
import json
import sqlite3
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Optional, Union

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
"""


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


class AnswerCache:
    """SQLite-backed answer cache, safe to share between threads (and, via WAL, processes).

    `path` may be ``":memory:"`` for a throwaway cache. Every `put` commits immediately.
    """

    def __init__(self, path: Union[str, Path]) -> None:
        self.path = str(path)
        if self.path != ":memory:":
            Path(self.path).parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.RLock()
        self._conn = sqlite3.connect(self.path, check_same_thread=False, timeout=30.0, isolation_level=None)
        with self._lock:
            if self.path != ":memory:":
                self._conn.execute("PRAGMA journal_mode=WAL")
            # NORMAL is durable against a killed process in WAL mode (not against power loss).
            self._conn.execute("PRAGMA synchronous=NORMAL")
            self._conn.execute("PRAGMA busy_timeout=30000")
            self._conn.executescript(_SCHEMA)
        self.hits = 0
        self.misses = 0
        self.writes = 0

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
        """Store one answer and commit it at once."""
        with self._lock:
            self._conn.execute(
                "INSERT OR REPLACE INTO answers (key, endpoint, model, label_str, confidence, raw, prompt_tokens,"
                " completion_tokens, cost_usd, latency_s, created) VALUES (?,?,?,?,?,?,?,?,?,?,?)",
                (
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
                ),
            )
            self.writes += 1

    def __contains__(self, key: str) -> bool:
        with self._lock:
            return self._conn.execute("SELECT 1 FROM answers WHERE key=?", (key,)).fetchone() is not None

    def __len__(self) -> int:
        with self._lock:
            return int(self._conn.execute("SELECT COUNT(*) FROM answers").fetchone()[0])

    def delete(self, keys: Iterable[str]) -> int:
        """Forget the given answers (e.g. to re-ask the LM); returns how many were removed."""
        n = 0
        with self._lock:
            for key in keys:
                n += self._conn.execute("DELETE FROM answers WHERE key=?", (key,)).rowcount
        return n

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
