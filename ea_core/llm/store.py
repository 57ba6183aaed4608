"""A provider's side of the answer cache: lookups, claims, and answers kept in memory while the
cache cannot be written.

Why: "pay for an answer once" has the same rules for every provider: look in the cache first;
claim a prompt before sending it, so another process sharing the cache waits for that answer
instead of buying it too; write each answer the moment it arrives; when the disk is full, keep
the answer in memory and write it as soon as the cache takes it. `AnswerCache` is the SQLite
file; an `AnswerStore` is one provider's (endpoint, model) view of it. A store without a cache
answers nothing and keeps nothing.
"""

from __future__ import annotations

import logging
import sqlite3
import threading
from typing import Any, Iterable, Optional, Sequence

from ea_core.llm.base import LMAnswer
from ea_core.llm.cache import AnswerCache, CachedAnswer, human_bytes, is_disk_full, is_storage_error
from ea_core.llm.prompt import find_label

log = logging.getLogger("ea_core.llm")


def to_answer(hit: CachedAnswer, labels: Sequence[str]) -> Optional[LMAnswer]:
    """A stored answer for this task's labels (free, ``cached=True``); None when it names a label
    the task does not have (ask again)."""
    if hit.label_str is None:
        label = find_label(hit.raw, labels)[0]
    elif hit.label_str in labels:
        label = list(labels).index(hit.label_str)
    else:
        return None
    return LMAnswer(label=label, confidence=hit.confidence, raw=hit.raw, prompt_tokens=hit.prompt_tokens,
                    completion_tokens=hit.completion_tokens, cost_usd=0.0, latency_s=0.0, cached=True)


class AnswerStore:
    """One provider's answers in an `AnswerCache` (or None), under `endpoint` and `model`."""

    def __init__(self, cache: Optional[AnswerCache], endpoint: str, model: str, *, claim_ttl_s: float = 600.0) -> None:
        self.cache = cache
        self.endpoint = endpoint
        self.model = model
        self.claim_ttl_s = float(claim_ttl_s)
        # Answers received but not yet written (the cache's disk was full): key -> answer. Served
        # to later lookups and written by `flush` as soon as the cache takes them.
        self.unsaved: dict[str, CachedAnswer] = {}
        self._lock = threading.Lock()

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state.update(cache=None, unsaved={})  # a pickled provider has no cache (see its __getstate__)
        del state["_lock"]
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._lock = threading.Lock()

    @property
    def where(self) -> str:
        return f"The LM answer cache {getattr(self.cache, 'path', '?')}"

    # -- reading -------------------------------------------------------------------------------
    def get_many(self, keys: Iterable[str]) -> dict[str, CachedAnswer]:
        return self.cache.get_many(keys) if self.cache is not None else {}

    def lookup(self, keys: dict[Any, str], legacy: dict[Any, Optional[str]]) -> dict[str, CachedAnswer]:
        """Stored answers by key for `keys` (id -> key); on a miss, the id's `legacy` key (an older
        keying of the same request) is tried, and a hit is returned under the current key."""
        if self.cache is None:
            return {}
        hits = self.cache.get_many(keys.values())
        missing = {legacy[i]: keys[i] for i in keys if keys[i] not in hits and legacy.get(i)}
        if missing:
            for old, record in self.cache.get_many(missing).items():
                hits[missing[old]] = record
        return hits

    def kept_many(self, keys: Iterable[str]) -> dict[str, CachedAnswer]:
        """Answers held in memory (not yet written) for any of `keys`."""
        with self._lock:
            return {k: self.unsaved[k] for k in keys if k in self.unsaved}

    def kept(self, key: str, labels: Sequence[str]) -> Optional[LMAnswer]:
        with self._lock:
            record = self.unsaved.get(key)
        return None if record is None else to_answer(record, labels)

    def found(self, keys: dict[Any, str], labels: Sequence[str]) -> dict[Any, Optional[LMAnswer]]:
        """Per id: the answer stored under its key by now (by another process), or None."""
        hits = self.get_many(keys.values())
        return {i: (to_answer(hits[k], labels) if k in hits else None) for i, k in keys.items()}

    # -- writing -------------------------------------------------------------------------------
    def put(self, keys: Sequence[str], record: CachedAnswer) -> Optional[BaseException]:
        """Write `record` under `keys`; the storage error when it cannot be written (the answer is
        then kept in memory, see `unsaved`), else None."""
        if self.cache is None:
            return None
        try:
            for key in keys:
                self.cache.put(key, record, endpoint=self.endpoint, model=self.model)
            return None
        except (sqlite3.Error, OSError) as exc:
            with self._lock:
                for key in keys:
                    self.unsaved[key] = record
            return exc

    def put_or_warn(self, key: str, record: CachedAnswer) -> bool:
        """Write one free answer (a local model's); False, with a warning, when the disk is full or
        read-only: such answers cost only time, so the run goes on with them uncached."""
        if self.cache is None:
            return False
        try:
            self.cache.put(key, record, endpoint=self.endpoint, model=self.model)
            return True
        except Exception as err:  # noqa: BLE001  (only storage errors are expected here)
            if not is_storage_error(err):
                raise
            log.warning("The answer cache %s cannot be written (%s): local answers are kept in memory only "
                        "for this run; free some space to cache them.", self.cache.path, err)
            return False

    def flush(self) -> int:
        """Write the answers kept in memory; how many are still unsaved."""
        with self._lock:
            pending = dict(self.unsaved)
        if not pending or self.cache is None:
            return len(pending)
        try:
            for key, record in pending.items():
                self.cache.put(key, record, endpoint=self.endpoint, model=self.model)
                with self._lock:
                    self.unsaved.pop(key, None)
        except (sqlite3.Error, OSError):
            pass
        with self._lock:
            return len(self.unsaved)

    def storage_message(self, exc: BaseException, where: str, still_to_ask: int) -> str:
        """What could not be written, how much space the cache needs, and what was kept (scrub it:
        an error text may hold anything)."""
        path = getattr(self.cache, "path", "?")
        with self._lock:
            kept = list(self.unsaved.values())
        size = sum(r.size_bytes() for r in kept)
        per_answer = size / len(kept) if kept else 600.0
        # the kept answers and the rest of the stage, twice over (WAL copy, then the database)
        need = max(2 * (size + per_answer * still_to_ask) + 1_000_000, 1_000_000)
        disk = f"{path}" if path == ":memory:" else f"the disk holding {path}"
        reason = ("the disk is full" if is_disk_full(exc) else f"{type(exc).__name__}: {exc}")
        text = f"{where} cannot be written ({reason}), so the stage stopped instead of buying answers it cannot keep. "
        if kept:
            text += (f"{len(kept)} paid answers ({human_bytes(size)}) are kept in memory and written as soon as "
                     "the cache takes them, if this process asks again. ")
        return text + (f"Free at least {human_bytes(need)} on {disk} (or give --cache a path on another disk) and run "
                       "again: answers already in the cache are not bought twice.")

    # -- claims (see `AnswerCache.claim`) ----------------------------------------------------------
    def claim(self, key: str, owner: str) -> str:
        """`CLAIMED`, `ANSWERED` or `BUSY`; raises `sqlite3.Error` / `OSError` when the cache cannot be written."""
        assert self.cache is not None
        return self.cache.claim(key, owner, self.claim_ttl_s)

    def refresh(self, key: str, owner: str) -> None:
        """Renew a claim's time before another attempt (a long retry must not look abandoned)."""
        if self.cache is None:
            return
        try:
            self.cache.claim(key, owner, self.claim_ttl_s)
        except (sqlite3.Error, OSError):
            pass

    def release(self, key: str, owner: str) -> None:
        """Give up a claim (the request failed): another process may try."""
        if self.cache is None:
            return
        try:
            self.cache.release(key, owner)
        except (sqlite3.Error, OSError):
            pass  # a claim that cannot be dropped goes stale when this process ends

    # -- notes on the endpoint (capabilities, calibration) -----------------------------------------
    def capabilities(self) -> dict[str, Any]:
        return self.cache.capabilities(self.endpoint, self.model) if self.cache is not None else {}

    def capability(self, name: str) -> Optional[Any]:
        return self.cache.get_capability(self.endpoint, self.model, name) if self.cache is not None else None

    def set_capability(self, name: str, value: Any) -> None:
        if self.cache is not None:
            self.cache.set_capability(self.endpoint, self.model, name, value)
