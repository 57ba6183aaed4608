"""The adapted system answering concurrent requests: the cascade of `AdaptedSystem`, async.

`ServeEngine.route` takes the inputs of one request and walks them through the stages like
`AdaptedSystem.predict` (a stage sees only the inputs still open), with a `RouteTrace`-style
record per input like `AdaptedSystem.route_one`. Small models run in worker threads through a
`MicroBatcher` each, so the inputs of concurrent requests share one model call; the LM stage is
async, at most `lm_concurrency` requests in flight, with the provider's answer cache and budget.
When the LM gives no usable answer (budget spent, endpoint failing, a reply naming no label) and
it is the last stage, the last small model reached answers and the result says so.
"""

from __future__ import annotations

import asyncio
import logging
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from typing import Any, Optional, Sequence

import numpy as np

from ea_core.errors import EAError
from ea_core.llm.base import FAILED, LMAnswer
from ea_core.serve.batching import MicroBatcher
from ea_core.serve.settings import ServeSettings
from ea_core.splits import ImageInput, Split
from ea_core.system import AdaptedSystem, StageTrace, SystemStage, lm_confidence
from ea_core.calibration import apply_temperature

log = logging.getLogger("ea_core.serve")

BUDGET_SPENT = "budget exhausted"


@dataclass
class ServeInput:
    """One input as a request gave it: a text (with `pair` for pair tasks) or an image's bytes
    (`text` is then only its display name)."""

    text: str
    pair: Optional[str] = None
    image: Optional[bytes] = None

    def lm_input(self) -> tuple[Any, Optional[str]]:
        if self.image is not None:
            return ImageInput(self.image, self.text or "image"), None
        return self.text, self.pair


@dataclass
class Routed:
    """How one input was answered: the label, who answered, every stage reached, the LM's part."""

    prediction: Optional[str]
    answered_by: str
    confidence: Optional[float]
    stages: list[StageTrace] = field(default_factory=list)
    probabilities: Optional[dict[str, float]] = None
    probabilities_from: Optional[str] = None
    lm_reached: bool = False
    lm_called: bool = False  # a paid request was sent (not a cache hit)
    lm_answered: bool = False  # the LM's answer is the prediction
    cache_hit: bool = False
    lm_label: Optional[str] = None
    lm_confidence: Optional[float] = None
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cost_usd: float = 0.0
    latency_s: float = 0.0
    note: Optional[str] = None

    def route(self) -> dict[str, Any]:
        """The `ea` object of a reply: the route, stage by stage, and the LM's part."""
        return {
            "answered_by": self.answered_by,
            "confidence": self.confidence,
            "stages": [{k: v for k, v in asdict(s).items() if k != "raw" or s.raw is not None} for s in self.stages],
            "lm_reached": self.lm_reached,
            "lm_called": self.lm_called,
            "lm_answered": self.lm_answered,
            "cache_hit": self.cache_hit,
            "cost_usd": self.cost_usd,
            "latency_s": self.latency_s,
            "note": self.note,
        }


def _takes_batch_size(fn: Any) -> bool:
    """Whether a model's `predict_proba` takes ``batch_size=`` (the small models' interface does;
    a stage with a narrower one is called without it)."""
    import inspect

    try:
        return "batch_size" in inspect.signature(fn).parameters
    except (TypeError, ValueError):
        return False


class _Open:
    """Per input, while it walks the stages: the last small model's answer (the fallback)."""

    __slots__ = ("proba", "stage")

    def __init__(self) -> None:
        self.proba: Optional[np.ndarray] = None
        self.stage: Optional[str] = None


class ServeEngine:
    """Routes the inputs of concurrent requests through an `AdaptedSystem` (see the module docstring).

    `observer` (optional) is told about batches and routes: ``batch(stage, size)`` and
    ``routed(result)`` (the server's metrics).
    """

    def __init__(self, system: AdaptedSystem, settings: Optional[ServeSettings] = None, *,
                 pair_task: bool = False, image_task: bool = False, observer: Any = None) -> None:
        self.system = system
        self.settings = settings or ServeSettings()
        for stage in system.stages:  # no on-disk embedding cache: a file per batch of new traffic grows without end
            if stage.model is not None and getattr(stage.model, "use_cache", False):
                stage.model.use_cache = False
        self.labels = list(system.labels)
        self.pair_task = bool(pair_task)
        self.image_task = bool(image_task)
        self.observer = observer
        s = self.settings
        self._pool = ThreadPoolExecutor(max_workers=s.model_threads, thread_name_prefix="ea-model")
        self._lm_pool: Optional[ThreadPoolExecutor] = None  # for an in-process (sync) LM
        # Per stage: requests in progress that have not passed it yet (they may still reach it).
        self._before = [0] * len(system.stages)
        self._batchers: dict[int, MicroBatcher] = {}
        for k, stage in enumerate(system.stages):
            if not stage.is_lm:
                self._batchers[k] = MicroBatcher(
                    self._proba_fn(stage), self._pool, wait_s=s.batch_wait_s, max_batch=s.max_batch,
                    enabled=s.batching, on_batch=self._batch_reporter(stage.name),
                    expected=lambda k=k: self._before[k], max_running=s.model_threads)
        self._lm_gate: Optional[asyncio.Semaphore] = None
        self._warned: dict[str, float] = {}
        self.provider = system.provider

    # --------------------------------------------------------------------------- small models

    def _proba_fn(self, stage: SystemStage):
        model, temperature = stage.model, stage.temperature
        assert model is not None
        # A text encoder runs a micro-batch in length-sorted passes of `encode_batch` (little padding).
        options = ({"batch_size": self.settings.encode_batch}
                   if not self.image_task and _takes_batch_size(getattr(model, "predict_proba", None)) else {})

        def run(items: list[ServeInput]) -> np.ndarray:
            if self.image_task:
                split = Split.from_images([it.image or b"" for it in items], [it.text or "image" for it in items])
            else:
                split = Split.from_texts([it.text for it in items],
                                         [it.pair or "" for it in items] if self.pair_task else None)
            return apply_temperature(model.predict_proba(split, **options), temperature)

        return run

    def _batch_reporter(self, name: str):
        def report(size: int) -> None:
            if self.observer is not None:
                self.observer.batch(name, size)

        return report

    def warm_up(self, sample: ServeInput) -> None:
        """Run every small model once on `sample` (loads lazy parts before the first request)."""
        for stage in self.system.stages:
            if not stage.is_lm:
                self._proba_fn(stage)([sample])

    # --------------------------------------------------------------------------------- the LM

    @property
    def has_lm(self) -> bool:
        return any(s.is_lm for s in self.system.stages)

    def budget(self) -> Any:
        return getattr(self.provider, "budget", None)

    async def _ask_lm(self, item: ServeInput) -> tuple[Optional[LMAnswer], Optional[str]]:
        """The LM's answer for one input, or (None, why) when the call failed outright."""
        assert self.provider is not None
        if self._lm_gate is None:
            self._lm_gate = asyncio.Semaphore(self.settings.lm_concurrency)
        async with self._lm_gate:
            try:
                aclassify = getattr(self.provider, "aclassify", None)
                if aclassify is not None:
                    answers, _ = await aclassify([item.lm_input()], self.labels, stage="lm:serve")
                else:  # a provider with no async form: in threads (one for an in-process model)
                    if self._lm_pool is None:
                        local = getattr(self.provider, "base_url", None) is None
                        self._lm_pool = ThreadPoolExecutor(max_workers=1 if local else self.settings.lm_concurrency,
                                                           thread_name_prefix="ea-lm")
                    answers, _ = await asyncio.get_running_loop().run_in_executor(
                        self._lm_pool, lambda: self.provider.classify([item.lm_input()], self.labels,
                                                                      stage="lm:serve"))
                return answers[0], None
            except EAError as err:  # the provider's message (keys masked); an endpoint's details may echo
                self._warn(str(err).split(" Details:")[0][:300])  # the input: they are left out
                return None, "the LM call failed"
            except Exception as err:  # noqa: BLE001 - an LM fault never fails the request
                self._warn(type(err).__name__)
                return None, "the LM call failed"

    def _warn(self, what: str) -> None:
        """Log an LM failure, each distinct one at most once a minute (a dead endpoint fails every call)."""
        now = time.monotonic()
        if now - self._warned.get(what, -1e9) >= 60.0:
            self._warned[what] = now
            log.warning("LM call failed: %s", what)

    # ------------------------------------------------------------------------------- routing

    async def route(self, items: Sequence[ServeInput]) -> list[Routed]:
        """Route one request's inputs; one `Routed` per input, in order."""
        n_stages = len(self.system.stages)
        for k in range(n_stages):
            self._before[k] += 1
        passed = 0  # stages this request is done with

        def pass_to(k: int) -> None:
            nonlocal passed
            while passed < k:
                self._before[passed] -= 1
                if passed in self._batchers:
                    self._batchers[passed].poke()
                passed += 1

        t_all = time.perf_counter()
        n = len(items)
        results = [Routed(prediction=None, answered_by="", confidence=None) for _ in range(n)]
        fallback = [_Open() for _ in range(n)]
        open_idx = list(range(n))
        stages = self.system.stages
        try:
            for k, stage in enumerate(stages):
                if not open_idx:
                    break
                pass_to(k)
                last = k == len(stages) - 1
                t0 = time.perf_counter()
                still: list[int] = []
                if stage.is_lm:
                    replies = await asyncio.gather(*(self._ask_lm(items[i]) for i in open_idx))
                    for i, (answer, failure) in zip(open_idx, replies):
                        if not self._lm_took(results[i], fallback[i], stage, answer, failure, last, t0):
                            still.append(i)
                else:
                    proba = await self._batchers[k].submit([items[i] for i in open_idx])
                    took_s = time.perf_counter() - t0
                    for i, row in zip(open_idx, proba):
                        row = np.asarray(row, dtype=np.float64)
                        idx, conf = int(row.argmax()), float(row.max())
                        took = last or conf >= stage.threshold
                        results[i].stages.append(StageTrace(stage.name, conf, stage.threshold, self.labels[idx],
                                                            took, took_s))
                        fallback[i].proba, fallback[i].stage = row, stage.name
                        if took:
                            self._answer(results[i], stage.name, idx, conf, row, stage.name)
                        else:
                            still.append(i)
                open_idx = still
        finally:
            pass_to(n_stages)
        latency = time.perf_counter() - t_all
        for r in results:
            r.latency_s = latency
            if self.observer is not None:
                self.observer.routed(r)
        return results

    def _answer(self, r: Routed, by: str, idx: int, conf: float, proba: Optional[np.ndarray],
                proba_from: Optional[str]) -> None:
        r.prediction, r.answered_by, r.confidence = self.labels[idx], by, conf
        if proba is not None:
            r.probabilities = {lab: float(p) for lab, p in zip(self.labels, proba)}
            r.probabilities_from = proba_from

    def _lm_took(self, r: Routed, fb: _Open, stage: SystemStage, answer: Optional[LMAnswer],
                 failure: Optional[str], last: bool, t0: float) -> bool:
        """Record the LM's part for one input; True when it answers the input."""
        r.lm_reached = True
        latency = time.perf_counter() - t0
        if answer is None or answer.label == FAILED:
            why = failure or (f"the LM {answer.error}" if answer is not None and answer.error else "the LM failed")
            if answer is not None and answer.error == BUDGET_SPENT:
                why = "the LM budget is spent"
            r.stages.append(StageTrace(stage.name, None, stage.threshold, None, False, latency))
            return self._lm_passes(r, fb, why, last)
        cached = bool(answer.cached)
        r.cache_hit = r.cache_hit or cached
        r.lm_called = r.lm_called or not cached
        if not cached:
            r.prompt_tokens += int(answer.prompt_tokens)
            r.completion_tokens += int(answer.completion_tokens)
            r.cost_usd += float(answer.cost_usd)
        conf = lm_confidence(answer, self.system.lm_missing_confidence)
        if answer.label < 0:  # answered, naming no label
            r.stages.append(StageTrace(stage.name, conf, stage.threshold, "(unparseable)", False,
                                       latency, float(answer.cost_usd), answer.raw))
            return self._lm_passes(r, fb, "the LM's reply named no label", last)
        label = self.labels[answer.label]
        r.lm_label, r.lm_confidence = label, conf
        took = last or conf >= stage.threshold
        r.stages.append(StageTrace(stage.name, conf, stage.threshold, label, took, latency,
                                   0.0 if cached else float(answer.cost_usd), answer.raw))
        if took:
            r.prediction, r.answered_by, r.confidence, r.lm_answered = label, stage.name, conf, True
            if fb.proba is not None:
                r.probabilities = {lab: float(p) for lab, p in zip(self.labels, fb.proba)}
                r.probabilities_from = fb.stage
        return took

    def _lm_passes(self, r: Routed, fb: _Open, why: str, last: bool) -> bool:
        """The LM gave no answer: a later stage decides, or (last) the last small model answers."""
        if not last:
            r.note = f"{why}: passed on to the next stage"
            return False
        if fb.proba is None:
            r.note = f"{why}, and no small model comes before it"
            return True  # nobody can answer: prediction stays None
        idx = int(fb.proba.argmax())
        assert fb.stage is not None
        self._answer(r, fb.stage, idx, float(fb.proba.max()), fb.proba, fb.stage)
        r.note = f"{why}: the last small model ({fb.stage}) answered"
        return True

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)
        if self._lm_pool is not None:
            self._lm_pool.shutdown(wait=False, cancel_futures=True)
