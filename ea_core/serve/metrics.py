"""What a served system counts, in Prometheus' text format (`GET /metrics`), and LM-share drift.

Names have the ``ea_`` prefix and base units (seconds, USD). Labels take only values the server
chose (stage names from the bundle, fixed endpoint and error kinds, status codes): never a key,
a URL or an input's text. Each server has its own registry (no process-global state).

Drift: the system was tuned for an LM share (the share of inputs that reach the LM stage, on
validation). `DriftWatch` keeps the last N inputs; when the live share leaves the binomial 95%
interval of N draws at the tuned share, `ea_lm_share_drift` is 1 and the server log says so
once (and once again when it comes back). A bundle that records no tuned share (one exported at
thresholds chosen by hand) is not watched unless the operator gives one: the start-up log says so,
``ea_lm_share_drift_watched`` is 0 and ``ea_lm_share_drift`` NaN (unknown, not "no drift").
"""

from __future__ import annotations

import logging
from collections import deque
from typing import Optional, Sequence

from ea_core.serve.engine import Routed

log = logging.getLogger("ea_core.serve")

ENDPOINTS = ("chat", "classify", "feedback")
ERROR_KINDS = ("bad_request", "unauthorized", "too_large", "not_found", "lm_failed", "lm_budget_spent",
               "no_answer", "internal")
DURATION_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
CONFIDENCE_BUCKETS = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95, 0.99, 1.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)


class DriftWatch:
    """The LM share over the last `window` inputs against the tuned share's 95% interval."""

    def __init__(self, tuned: Optional[float], window: int = 500, min_inputs: int = 100) -> None:
        self.tuned = None if tuned is None else float(tuned)
        self.window = int(window)
        self.min_inputs = max(int(min_inputs), 1)
        self._seen: deque[bool] = deque(maxlen=self.window)
        self._reached = 0
        self._drifting = False
        self._since_check = 0
        self._interval_cache: dict[int, tuple[float, float]] = {}

    def record(self, reached_lm: bool) -> None:
        if len(self._seen) == self._seen.maxlen and self._seen[0]:
            self._reached -= 1
        self._seen.append(bool(reached_lm))
        self._reached += bool(reached_lm)
        self._since_check += 1
        if self._since_check >= 25:
            self._since_check = 0
            self.check()

    @property
    def n(self) -> int:
        return len(self._seen)

    @property
    def share(self) -> Optional[float]:
        return self._reached / len(self._seen) if self._seen else None

    def interval(self, n: Optional[int] = None) -> Optional[tuple[float, float]]:
        """The 95% interval of the share over `n` inputs (default: those seen) at the tuned share."""
        n = self.n if n is None else n
        if self.tuned is None or n < 1:
            return None
        if n not in self._interval_cache:
            from scipy.stats import binom

            lo, hi = binom.ppf([0.025, 0.975], n, self.tuned)
            self._interval_cache = {n: (float(lo) / n, float(hi) / n)}
        return self._interval_cache[n]

    @property
    def watched(self) -> bool:
        """Whether drift can be judged at all (a tuned share is known)."""
        return self.tuned is not None

    @property
    def drifting(self) -> bool:
        return self._drifting

    def check(self) -> bool:
        """Update (and log a change of) the drift state; True while drifting."""
        bounds = self.interval()
        share = self.share
        if bounds is None or share is None or self.n < self.min_inputs:
            return self._drifting
        now = not (bounds[0] <= share <= bounds[1])
        if now != self._drifting:
            self._drifting = now
            if now:
                log.warning("LM share drift: %.1f%% of the last %d inputs reached the LM, outside the tuned %.1f%%'s "
                            "95%% interval (%.1f-%.1f%%). The traffic differs from the validation data: consider "
                            "adapting again on the request log.", 100 * share, self.n, 100 * self.tuned,
                            100 * bounds[0], 100 * bounds[1])
            else:
                log.warning("LM share back within the tuned interval: %.1f%% of the last %d inputs.",
                            100 * share, self.n)
        return self._drifting


class ServeMetrics:
    """The server's counters and histograms (one registry per server). Also the engine's observer."""

    def __init__(self, stage_names: Sequence[str], *, drift: DriftWatch, budget_usd: Optional[float] = None) -> None:
        from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

        self.registry = r = CollectorRegistry(auto_describe=False)
        self.stage_names = list(stage_names)
        self.drift = drift
        self.requests = Counter("ea_requests", "Inputs answered, by the stage that answered", ["stage"], registry=r)
        self.http = Counter("ea_http_requests", "HTTP requests by endpoint and status code", ["endpoint", "code"],
                            registry=r)
        self.lm_calls = Counter("ea_lm_calls", "Paid LM requests (cache hits excluded)", registry=r)
        self.lm_cache_hits = Counter("ea_lm_cache_hits", "LM answers served from the answer cache", registry=r)
        self.lm_reached = Counter("ea_lm_reached", "Inputs that reached the LM stage", registry=r)
        self.lm_cost = Counter("ea_lm_cost_usd", "Money paid to the LM, USD", registry=r)
        self.lm_tokens = Counter("ea_lm_tokens", "LM tokens paid for", ["kind"], registry=r)
        self.duration = Histogram("ea_request_duration_seconds", "Time to answer a request, seconds", ["endpoint"],
                                  buckets=DURATION_BUCKETS, registry=r)
        self.confidence = Histogram("ea_stage_confidence", "Confidence of each stage on the inputs it saw",
                                    ["stage"], buckets=CONFIDENCE_BUCKETS, registry=r)
        self.errors = Counter("ea_errors", "Errors by kind", ["kind"], registry=r)
        self.batch_size = Histogram("ea_batch_size", "Inputs per small-model call (micro-batching)", ["stage"],
                                    buckets=BATCH_BUCKETS, registry=r)
        self.feedback = Counter("ea_feedback", "Gold labels received, by whether the served answer was right",
                                ["correct"], registry=r)
        share = Gauge("ea_lm_share", "Share of the last ea_lm_share_window inputs that reached the LM", registry=r)
        share.set_function(lambda: self.drift.share if self.drift.share is not None else float("nan"))
        window = Gauge("ea_lm_share_window", "Inputs in the live LM share's window", registry=r)
        window.set_function(lambda: self.drift.n)
        tuned = Gauge("ea_lm_share_tuned", "LM share the system was tuned for (validation)", registry=r)
        tuned.set_function(lambda: self.drift.tuned if self.drift.tuned is not None else float("nan"))
        low = Gauge("ea_lm_share_expected_low", "Low end of the tuned share's 95% interval over the window",
                    registry=r)
        low.set_function(lambda: self._bound(0))
        high = Gauge("ea_lm_share_expected_high", "High end of the tuned share's 95% interval over the window",
                     registry=r)
        high.set_function(lambda: self._bound(1))
        drifting = Gauge("ea_lm_share_drift", "1 when the live LM share is outside the tuned share's 95% interval "
                         "(NaN: not watched, no tuned share known)", registry=r)
        drifting.set_function(lambda: float(self.drift.check()) if self.drift.watched else float("nan"))
        watched = Gauge("ea_lm_share_drift_watched", "1 when a tuned LM share is known and drift is watched; 0: give "
                        "the server --tuned-lm-share", registry=r)
        watched.set_function(lambda: float(self.drift.watched))
        self.budget = Gauge("ea_lm_budget_usd", "The LM budget, USD (NaN: none)", registry=r)
        self.budget.set(float("nan") if budget_usd is None else budget_usd)
        self.spent = Gauge("ea_lm_budget_spent_usd", "Money spent against the LM budget, USD", registry=r)
        for stage in self.stage_names:
            self.requests.labels(stage=stage)
            self.confidence.labels(stage=stage)
        for kind in ERROR_KINDS:
            self.errors.labels(kind=kind)
        for kind in ("prompt", "completion"):
            self.lm_tokens.labels(kind=kind)

    def _bound(self, i: int) -> float:
        bounds = self.drift.interval()
        return float("nan") if bounds is None else bounds[i]

    # ---- the engine's observer

    def batch(self, stage: str, size: int) -> None:
        self.batch_size.labels(stage=stage).observe(size)

    def routed(self, r: Routed) -> None:
        if r.answered_by:
            self.requests.labels(stage=r.answered_by).inc()
        else:
            self.errors.labels(kind="no_answer").inc()
        for s in r.stages:
            if s.confidence is not None:
                self.confidence.labels(stage=s.stage).observe(s.confidence)
        if r.lm_reached:
            self.lm_reached.inc()
            if r.lm_called:
                self.lm_calls.inc()
                self.lm_cost.inc(max(r.cost_usd, 0.0))
                self.lm_tokens.labels(kind="prompt").inc(r.prompt_tokens)
                self.lm_tokens.labels(kind="completion").inc(r.completion_tokens)
            if r.cache_hit:
                self.lm_cache_hits.inc()
            if r.note and "budget" in r.note:
                self.errors.labels(kind="lm_budget_spent").inc()
            elif r.note:
                self.errors.labels(kind="lm_failed").inc()
        self.drift.record(r.lm_reached)

    def render(self) -> bytes:
        from prometheus_client import generate_latest

        return generate_latest(self.registry)
