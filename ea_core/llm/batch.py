"""One `classify` call of an async provider: identical prompts asked once, cached answers first,
a pool of workers for the rest, and one place that says why the call stopped.

Why its own piece: the bookkeeping (fan an answer out to every input with the same prompt, count
usage, wait for prompts another process claimed, stop on cancel, a fatal error, the budget or a
cache that cannot be written) is the same whatever sends the request; a provider supplies the
request itself.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import secrets
from dataclasses import dataclass
from typing import Any, Awaitable, Callable, Optional, Union

from ea_core.errors import Cancelled
from ea_core.events import CancelToken, ProgressCallback
from ea_core.llm._progress import UsageTracker
from ea_core.llm.base import FAILED, LMAnswer, LMUsage
from ea_core.llm.images import ImagePrep
from ea_core.llm.transport import ConnectionStreak, Fatal

log = logging.getLogger("ea_core.llm")

BUDGET_EXHAUSTED = "budget exhausted"


@dataclass(frozen=True)
class Wait:
    """Another process has claimed this prompt's key: wait for its answer instead of buying it."""

    key: str


#: A request: the prompt's id -> its answer, or `Wait`; raises `Fatal` to stop the call.
Request = Callable[[str], Awaitable[Union[LMAnswer, Wait]]]
#: Answers other processes stored by now: {prompt id: key} -> {prompt id: answer or None}.
Fetch = Callable[[dict[str, str]], dict[str, Optional[LMAnswer]]]


class BatchRun:
    """The state of one call, shared by its workers (all on one event loop)."""

    def __init__(self, prompts: list[Any], stage: str, callback: Optional[ProgressCallback], usage: LMUsage,
                 images: Optional[ImagePrep] = None) -> None:
        self.groups: dict[str, list[int]] = {}  # prompt id -> the inputs that render to it
        self.prompts: dict[str, Any] = {}
        for i, messages in enumerate(prompts):
            gid = json.dumps(messages, ensure_ascii=False)
            self.groups.setdefault(gid, []).append(i)
            self.prompts[gid] = messages
        self.keys: dict[str, str] = {}  # prompt id -> cache key (set by the provider)
        self.answers: list[Optional[LMAnswer]] = [None] * len(prompts)
        self.usage = usage
        self.tracker = UsageTracker(stage, len(prompts), callback, usage)
        self.images = images or ImagePrep()  # expands the image references of prompts when sending
        self.owner = f"{os.getpid()}-{secrets.token_hex(6)}"  # whose claims these are in the cache
        self.probe_lock = asyncio.Lock()
        self.connections = ConnectionStreak()
        self.stopped = False
        self.stop_reason: Optional[str] = None
        self.budget_hit = False
        self.fatal: list[str] = []
        self.store_error: Optional[BaseException] = None
        self.store_where = ""  # what could not be written (the cache, the spend ledger)

    # -- stopping ------------------------------------------------------------------------------
    def stop(self, reason: str) -> None:
        if not self.stopped:
            self.stopped = True
            self.stop_reason = reason

    def storage_failed(self, exc: BaseException, where: str) -> None:
        """The cache or the ledger cannot be written: stop buying answers that cannot be kept."""
        log.warning("%s cannot be written: %s", where, exc)
        if self.store_error is None:
            self.store_error, self.store_where = exc, where
        self.stop("stopped: the answer cache cannot be written")

    def emit(self, force: bool = False) -> None:
        try:
            self.tracker.emit(force=force)
        except Cancelled:  # a callback may cancel by raising, like `cancel.check()`
            self.stop("cancelled")

    # -- answers -------------------------------------------------------------------------------
    def take_cached(self, hits: dict[str, Optional[LMAnswer]]) -> list[str]:
        """Fill in the answers found (prompt id -> answer or None); the prompt ids still to ask."""
        pending: list[str] = []
        for gid, idx in self.groups.items():
            answer = hits.get(gid)
            if answer is None:
                pending.append(gid)
                continue
            for i in idx:
                self.answers[i] = answer if i == idx[0] else LMAnswer(**{**answer.to_dict(), "cached": True})
                self.tracker.record(self.answers[i], paid=False)  # type: ignore[arg-type]
        self.emit(force=True)
        return pending

    def finish(self, gid: str, answer: LMAnswer) -> None:
        """Give `answer` to every input of prompt `gid` (the copies are free cache hits)."""
        paid = not answer.cached and answer.label != FAILED
        for j, i in enumerate(self.groups[gid]):
            copy = answer if j == 0 else LMAnswer(**{**answer.to_dict(), "cached": True, "cost_usd": 0.0})
            self.answers[i] = copy
            self.tracker.record(copy, paid=paid and j == 0)
        if answer.error == BUDGET_EXHAUSTED:
            self.usage.budget_exhausted = True
            self.stop(BUDGET_EXHAUSTED)
        self.emit()

    def close(self) -> list[LMAnswer]:
        """Every input's answer, those never answered FAILED with the reason the call stopped."""
        reason = self.stop_reason or "not answered"
        for i, answer in enumerate(self.answers):
            if answer is None:
                self.answers[i] = LMAnswer(label=FAILED, error=reason)
                self.tracker.record(self.answers[i], paid=False)  # type: ignore[arg-type]
        if self.budget_hit:
            self.usage.budget_exhausted = True
        self.emit(force=True)
        return [a for a in self.answers if a is not None]

    # -- the workers ---------------------------------------------------------------------------
    async def work(self, pending: list[str], request: Request, fetch: Fetch, *, concurrency: int,
                   cancel: Optional[CancelToken], poll_s: float) -> None:
        """Ask every pending prompt with up to `concurrency` workers; prompts another process
        claimed are polled for (every `poll_s`) and asked again if that claim is given up."""
        queue: asyncio.Queue[str] = asyncio.Queue()
        for gid in pending:
            queue.put_nowait(gid)
        waiting: dict[str, str] = {}  # prompt id -> the key another process is asking about

        def look_again() -> None:
            found = fetch(dict(waiting))
            waiting.clear()
            for gid, answer in found.items():
                if answer is not None:
                    self.finish(gid, answer)
                else:
                    queue.put_nowait(gid)

        async def worker() -> None:
            while not self.stopped:
                if cancel is not None and cancel.cancelled:
                    self.stop("cancelled")
                    return
                try:
                    gid = queue.get_nowait()
                except asyncio.QueueEmpty:
                    if not waiting:
                        return
                    await asyncio.sleep(poll_s)
                    if waiting:
                        look_again()
                    continue
                try:
                    answer = await request(gid)
                except Fatal as exc:
                    self.fatal.append(str(exc))
                    self.stop("stopped: " + str(exc))
                    return
                if isinstance(answer, Wait):
                    waiting[gid] = answer.key
                    continue
                self.finish(gid, answer)

        tasks = [asyncio.create_task(worker()) for _ in range(min(concurrency, len(pending)))]
        watcher = asyncio.create_task(self._watch_cancel(tasks, cancel))
        await asyncio.gather(*tasks, return_exceptions=True)
        watcher.cancel()
        for task in tasks:
            if not task.cancelled() and task.exception() is not None:
                exc = task.exception()
                if isinstance(exc, Cancelled):
                    self.stop("cancelled")
                else:
                    raise exc  # type: ignore[misc]

    async def _watch_cancel(self, tasks: list[asyncio.Task[None]], cancel: Optional[CancelToken]) -> None:
        while True:
            await asyncio.sleep(0.05)
            if cancel is not None and cancel.cancelled:
                self.stop("cancelled")
                for task in tasks:
                    task.cancel()
                return
