"""What a run's progress events add up to: the view any monitor (app, notebook, test) shows.

The run writes small events (see `ea_core.events`) to ``events.jsonl``; `RunProgress` folds
them, in order, into plain data: which stage the run is in, a bar per stage, the loss and
validation-accuracy curve of every small model, the trained models with their accuracies, the LM
counters per stage (calls, cache hits, failures, tokens, USD, ETA) and a readable log. A page
that reloads replays the file from the start and gets the same picture (the LlamaBoard users'
complaint of an empty loss plot after a refresh does not arise).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Iterable, Optional

#: Stage names of the ``run`` events, as people read them.
STEP_TITLES = {
    "data": "Data", "ssm": "Small models", "mine": "Mining", "lm_eval": "LM on val/test",
    "assm": "Augmented models", "ea_full": "EA(Full)", "calibrate": "Calibrate", "tune": "Tune",
    "report": "Report", "export": "Export",
}
LOG_LINES = 400


@dataclass
class Bar:
    """Progress of one stage (e.g. ``train:tfidf``, ``lm:mine``)."""

    stage: str
    step: int = 0
    total: int = 0
    eta_s: Optional[float] = None
    elapsed_s: Optional[float] = None
    message: str = ""

    @property
    def fraction(self) -> float:
        return min(self.step / self.total, 1.0) if self.total else 0.0


@dataclass
class LMCounters:
    """Running totals of one LM stage, as the provider streams them."""

    stage: str
    done: int = 0
    total: int = 0
    calls: int = 0
    cache_hits: int = 0
    failures: int = 0  # requests that got no answer (not cached, asked again next run)
    unparsed: int = 0  # answers that named no label (paid and cached)
    tokens: int = 0
    cost_usd: float = 0.0
    eta_s: Optional[float] = None


@dataclass
class RunProgress:
    """The folded state of a run's events. Feed it with `update(events)`, in order."""

    steps: list[str] = field(default_factory=list)  # stage names of the run, in order
    current_step: Optional[str] = None
    done_steps: set[str] = field(default_factory=set)
    bars: dict[str, Bar] = field(default_factory=dict)
    curves: dict[str, list[dict[str, Any]]] = field(default_factory=dict)  # model -> points per epoch/step
    models: dict[str, dict[str, Any]] = field(default_factory=dict)  # trained model -> accuracies, time
    lm: dict[str, LMCounters] = field(default_factory=dict)
    log: list[str] = field(default_factory=list)  # the last LOG_LINES lines
    logged: int = 0  # lines logged in all (the log keeps only the last ones)
    final: Optional[str] = None  # the terminal status message (``done``, ``failed: ...``)
    started: Optional[float] = None
    last_event: Optional[float] = None
    n_events: int = 0

    def update(self, events: Iterable[dict[str, Any]]) -> bool:
        """Fold events (dicts as in events.jsonl) in; True if anything was added."""
        changed = False
        for ev in events:
            self._one(ev)
            changed = True
        return changed

    def _one(self, ev: dict[str, Any]) -> None:
        self.n_events += 1
        stage = str(ev.get("stage", ""))
        step, total = int(ev.get("step") or 0), int(ev.get("total") or 0)
        message = ev.get("message")
        t = ev.get("time")
        self.started = self.started or t
        self.last_event = t
        if stage == "status":
            self.final = str(message or "")
            if self.final.startswith("done") and self.current_step:
                self.done_steps.add(self.current_step)
            self._log(t, f"run {self.final}")
            return
        if stage == "run":
            if message == "done":
                self.done_steps.update(self.steps)
                self.current_step = None
            elif message:
                if self.current_step and self.current_step != message:
                    self.done_steps.add(self.current_step)
                if message not in self.steps:
                    self.steps.append(message)
                self.current_step = str(message)
                self._log(t, f"== {STEP_TITLES.get(str(message), message)}")
            return
        if stage.startswith("model:"):
            name = stage[len("model:"):]
            self.models[name] = {"val_accuracy": ev.get("val_accuracy"), "train_time_s": ev.get("elapsed_s"),
                                 "message": message}
            self._log(t, str(message or name))
            return
        if not total:  # a message, not a step
            if message:
                self._log(t, f"{stage}: {message}" if stage else str(message))
            return
        bar = self.bars.setdefault(stage, Bar(stage))
        bar.step, bar.total = step, total
        bar.eta_s, bar.elapsed_s = ev.get("eta_s"), ev.get("elapsed_s")
        bar.message = str(message or "")
        if stage.startswith("lm:"):
            c = self.lm.setdefault(stage, LMCounters(stage))
            c.done, c.total = step, total
            for key in ("calls", "cache_hits", "failures", "unparsed", "tokens"):
                if ev.get(key) is not None:
                    setattr(c, key, int(ev[key]))
            if ev.get("cost_usd") is not None:
                c.cost_usd = float(ev["cost_usd"])
            c.eta_s = ev.get("eta_s")
            if step == total:
                self._log(t, f"{stage}: {c.calls} calls, {c.cache_hits} cached, {c.failures} failed, "
                             f"{c.unparsed} named no label, ${c.cost_usd:.4f}")
            return
        # Curves of the models the run keeps (out-of-fold refits for mining would crowd them out).
        if stage.startswith("train:") and (ev.get("loss") is not None or ev.get("val_accuracy") is not None):
            model = stage.split(":", 1)[1]
            self.curves.setdefault(model, []).append(
                {"step": step, "loss": ev.get("loss"), "val_accuracy": ev.get("val_accuracy")})

    def _log(self, t: Optional[float], line: str) -> None:
        stamp = time.strftime("%H:%M:%S", time.localtime(t)) if t else "--:--:--"
        self.log.append(f"{stamp}  {line}")
        self.logged += 1
        del self.log[:-LOG_LINES]

    # -- summaries for display ----------------------------------------------------------
    def step_state(self, name: str) -> str:
        """``done``, ``running``, ``failed`` or ``pending`` for one stage of the stepper."""
        if name in self.done_steps:
            return "done"
        if name == self.current_step:
            if self.final and not self.final.startswith("done"):
                return "failed" if self.final.startswith("failed") else "stopped"
            return "running"
        return "pending"

    def lm_totals(self) -> LMCounters:
        """All LM stages added up (the ETA is the running stage's)."""
        total = LMCounters("lm")
        for c in self.lm.values():
            total.done += c.done
            total.total += c.total
            total.calls += c.calls
            total.cache_hits += c.cache_hits
            total.failures += c.failures
            total.unparsed += c.unparsed
            total.tokens += c.tokens
            total.cost_usd += c.cost_usd
            if c.done < c.total:
                total.eta_s = c.eta_s
        return total

    def active_bars(self, limit: int = 6) -> list[Bar]:
        """The most recent stage bars (the running one last)."""
        return list(self.bars.values())[-limit:]
