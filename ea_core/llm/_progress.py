"""Progress reporting shared by the LM providers: running usage totals turned into events."""

from __future__ import annotations

import time
from typing import Optional

from ea_core.events import EventKind, ProgressCallback, ProgressEvent
from ea_core.llm.base import LMAnswer, LMUsage


class UsageTracker:
    """Counts answers as they come and emits throttled `ProgressEvent`s (the last one always)."""

    def __init__(
        self, stage: str, total: int, callback: Optional[ProgressCallback], usage: LMUsage, min_interval_s: float = 0.1
    ) -> None:
        self.stage = stage
        self.total = total
        self.callback = callback
        self.usage = usage
        self.done = 0
        self.start = time.perf_counter()
        self.min_interval_s = min_interval_s
        self._last_emit = 0.0

    def record(self, answer: LMAnswer, *, paid: bool) -> None:
        """Count one finished input (`paid`: it came from a request sent in this run)."""
        u = self.usage
        self.done += 1
        if answer.cached:
            u.cache_hits += 1
        elif paid:
            u.calls += 1
            u.prompt_tokens += answer.prompt_tokens
            u.completion_tokens += answer.completion_tokens
            u.cost_usd += answer.cost_usd
        if answer.label == -2:  # FAILED: no answer (not cached)
            u.failures += 1
        elif answer.label == -1:  # UNPARSEABLE: an answer naming no label (cached)
            u.unparseable += 1
        elif answer.confidence is not None:
            u.with_confidence += 1

    def emit(self, force: bool = False, message: Optional[str] = None) -> None:
        if self.callback is None:
            return
        now = time.perf_counter()
        if not force and now - self._last_emit < self.min_interval_s:
            return
        self._last_emit = now
        elapsed = now - self.start
        worked = self.done - self.usage.cache_hits
        eta = None
        if self.done >= self.total:
            eta = 0.0
        elif worked > 0:
            eta = elapsed / worked * (self.total - self.done)
        self.callback(
            ProgressEvent(
                stage=self.stage,
                step=self.done,
                total=self.total,
                kind=EventKind.LM,
                calls=self.usage.calls,
                cache_hits=self.usage.cache_hits,
                failures=self.usage.failures,
                unparsed=self.usage.unparseable,
                tokens=self.usage.tokens,
                cost_usd=round(self.usage.cost_usd, 6),
                elapsed_s=round(elapsed, 3),
                eta_s=None if eta is None else round(eta, 3),
                message=message,
            )
        )
