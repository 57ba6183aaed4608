"""A summarization bundle served: the same HTTP surface, the reply's content is the summary.

`SummaryEngine` has `ServeEngine`'s face (``route``, ``has_lm``, ``budget``, ``close``), so the
FastAPI app, the metrics, the request log and the headers serve it unchanged: a stage answers when
its confidence (mapped to expected ROUGE-L, as in `ea_core.summary_bundle.predict_summaries`)
reaches its threshold, the last stage answers the rest, and when the LM gives no summary (budget
spent, endpoint failing) the last small model's summary is the answer and the reply says so. The
summarizers are loaded once; a request runs in a worker thread, off the event loop.
"""

from __future__ import annotations

import asyncio
import logging
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from types import SimpleNamespace
from typing import Any, Optional, Sequence

import numpy as np

from ea_core.calibration import apply_quality_map
from ea_core.data.summaries import SummarySplit, split_sentences
from ea_core.errors import ConfigError, EAError
from ea_core.serve.engine import Routed, ServeInput
from ea_core.serve.settings import ServeSettings
from ea_core.system import StageTrace

log = logging.getLogger("ea_core.serve")


class SummaryEngine:
    """Routes the inputs of a request down a summarization bundle's cascade (see the module docstring)."""

    pair_task = False
    image_task = False
    labels: list[str] = []  # no labels: POST /v1/feedback is refused with the reason
    provider = None

    def __init__(self, folder: str | Path, settings: Optional[ServeSettings] = None, *, use_lm: bool = True,
                 api_key: Optional[str] = None, cache: Optional[str] = None, base_url: Optional[str] = None,
                 trust_endpoint: bool = False, budget_usd: Optional[float] = None, observer: Any = None) -> None:
        from ea_core.llm.summarize import summary_lm_from_settings
        from ea_core.models.summary_io import load_summarizer
        from ea_core.summary_bundle import read_summary_bundle_meta

        root = Path(folder)
        meta = read_summary_bundle_meta(root)
        self.settings = settings or ServeSettings()
        self.observer = observer
        entries = [e for e in meta["stages"] if use_lm or not e.get("lm")]
        if not entries:
            raise ConfigError("This bundle has only an LM stage: serve it with the LM (without --no-lm).")
        lm_settings = meta.get("lm") or {}
        self.lm = None
        if any(e.get("lm") for e in entries):
            if lm_settings.get("kind") == "openai" and not base_url and not trust_endpoint:
                raise ConfigError(f"This bundle's LM stage calls {lm_settings.get('base_url')!r}. A bundle never "
                                  "chooses where your key is sent: pass --lm-base-url URL, or --trust-bundle-endpoint "
                                  "for a bundle you made, or --no-lm to use the small models only.")
            self.lm = summary_lm_from_settings(lm_settings, api_key=api_key, cache_path=cache, base_url=base_url)
            self.lm.budget_usd = budget_usd  # spent in this process (a restart starts again from 0)
            if hasattr(self.lm, "max_retries"):  # a client waits for them: the server's, shorter than a run's
                self.lm.timeout_s, self.lm.max_retries = self.settings.lm_timeout_s, self.settings.lm_max_retries
        self.entries = entries
        self.models = [None if e.get("lm") else load_summarizer(root / e["folder"], root=root) for e in entries]
        # What the app and the metrics read of a system: its stages' names and thresholds.
        self.system = SimpleNamespace(stages=[SimpleNamespace(name=str(e["name"]), threshold=float(e["threshold"]),
                                                              is_lm=bool(e.get("lm"))) for e in entries])
        self._pool = ThreadPoolExecutor(max_workers=self.settings.model_threads, thread_name_prefix="ea-summary")

    @property
    def has_lm(self) -> bool:
        return self.lm is not None

    def budget(self) -> Any:
        return None

    def warm_up(self, sample: ServeInput) -> None:
        self._route([sample], small_only=True)

    async def route(self, items: Sequence[ServeInput]) -> list[Routed]:
        """Route one request's inputs; one `Routed` per input, in order (the summary is `prediction`)."""
        results = await asyncio.get_running_loop().run_in_executor(self._pool, self._route, list(items))
        if self.observer is not None:
            for r in results:
                self.observer.routed(r)
        return results

    def _route(self, items: list[ServeInput], small_only: bool = False) -> list[Routed]:
        t_all = time.perf_counter()
        n = len(items)
        sources = [it.text for it in items]
        split = SummarySplit(sources, [""] * n, [""] * n, [split_sentences(s) for s in sources])
        results = [Routed(prediction=None, answered_by="", confidence=None) for _ in range(n)]
        fallback: list[Optional[tuple[str, str, float]]] = [None] * n  # the last small model's (summary, stage, conf)
        todo = np.arange(n)
        for k, (e, model) in enumerate(zip(self.entries, self.models)):
            if todo.size == 0:
                break
            if small_only and model is None:
                continue
            last = k == len(self.entries) - 1
            name, threshold = str(e["name"]), float(e["threshold"])
            part = split.subset(todo)
            t0 = time.perf_counter()
            if model is None:
                why = None
                try:
                    gen = self.lm.summarize(part.sources, part.instructions)
                    texts, raw = gen.texts, np.asarray(gen.confidence, dtype=np.float64)
                except EAError as err:  # budget spent, endpoint failing: the keys are masked in the message
                    why = "the LM budget is spent" if "budget" in str(err).lower() else "the LM call failed"
                    log.warning("LM call failed: %s", str(err).split(" Details:")[0][:300])
                if why is not None:
                    for i in todo:
                        r = results[int(i)]
                        r.lm_reached = True
                        r.stages.append(StageTrace(name, None, threshold, None, False, time.perf_counter() - t0))
                        self._fallback(r, fallback[int(i)], why, last)
                    if last:
                        todo = todo[:0]
                    continue
                each = len(todo) or 1
                for i in todo:
                    r = results[int(i)]
                    r.lm_reached = True
                    r.cache_hit = gen.cached > 0
                    r.lm_called = gen.calls > 0
                    r.prompt_tokens += gen.prompt_tokens // each
                    r.completion_tokens += gen.completion_tokens // each
                    r.cost_usd += gen.cost_usd / each
            else:
                out = model.summarize(part)
                texts, raw = out.texts, np.asarray(out.raw_conf, dtype=np.float64)
            conf = apply_quality_map(e["quality_map"][0], e["quality_map"][1], raw)
            took_s = time.perf_counter() - t0
            still = []
            for j, i in enumerate(todo):
                i = int(i)
                c = float(conf[j])
                take = last or c >= threshold
                results[i].stages.append(StageTrace(name, c, threshold, None, take, took_s))
                if model is not None:
                    fallback[i] = (texts[j], name, c)
                if take:
                    r = results[i]
                    r.prediction, r.answered_by, r.confidence = texts[j], name, c
                    r.lm_answered = model is None
                else:
                    still.append(i)
            todo = np.array(still, dtype=int)
        for i in todo:  # small_only: the last small model answers what the skipped LM would have
            self._fallback(results[int(i)], fallback[int(i)], "the LM is not asked here", True)
        latency = time.perf_counter() - t_all
        for r in results:
            r.latency_s = latency
        return results

    @staticmethod
    def _fallback(r: Routed, fb: Optional[tuple[str, str, float]], why: str, last: bool) -> None:
        if not last:
            r.note = f"{why}: passed on to the next stage"
            return
        if fb is None:
            r.note = f"{why}, and no small model comes before it"
            return
        r.prediction, r.answered_by, r.confidence = fb
        r.note = f"{why}: the last small model ({fb[1]}) answered"

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)


__all__ = ["SummaryEngine"]
