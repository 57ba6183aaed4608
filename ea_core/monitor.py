"""What a run's progress events add up to: the view any monitor (app, notebook, test) shows.

`RunProgress` is a progress callback: fed live, or with the dicts of a run's ``events.jsonl`` in
order (a reloaded page replays the file and gets the same picture), it keeps plain data: the
stage the run is in, a bar per stage, the loss and validation curves of the small models, the
trained models, the LM's counters per stage and a readable log. It reads the events' typed
fields, never their labels.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Iterable, Optional

from ea_core.events import Callback, ProgressEvent

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
    summary: str = ""  # the stage's last "done" line in the log (a provider reports the end more than once)


@dataclass
class RunProgress(Callback):
    """The folded state of a run's events: call it with each event, or `update(dicts)`, in order."""

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
    final_state: Optional[str] = None  # how the run ended: done, failed, cancelled, interrupted
    started: Optional[float] = None
    last_event: Optional[float] = None
    n_events: int = 0

    def update(self, events: Iterable[dict[str, Any]]) -> bool:
        """Fold events (dicts as in events.jsonl) in; True if anything was added."""
        changed = False
        for ev in events:
            self(ProgressEvent.from_dict(ev))
            changed = True
        return changed

    def __call__(self, event: ProgressEvent) -> None:
        self.n_events += 1
        self.started = self.started or event.time
        self.last_event = event.time
        super().__call__(event)

    # -- one method per kind of event --------------------------------------------------------
    def on_status(self, ev: ProgressEvent) -> None:
        self.final, self.final_state = str(ev.message or ev.state or ""), ev.state
        if ev.state == "done" and self.current_step:
            self.done_steps.add(self.current_step)
        self._log(ev.time, f"run {self.final}")

    def on_run(self, ev: ProgressEvent) -> None:
        name = ev.step_name
        if name is None:  # the plan is done
            self.done_steps.update(self.steps)
            self.current_step = None
            return
        if self.current_step and self.current_step != name:
            self.done_steps.add(self.current_step)
        if name not in self.steps:
            self.steps.append(name)
        self.current_step = name
        self._log(ev.time, f"== {STEP_TITLES.get(name, name)}")

    def on_model(self, ev: ProgressEvent) -> None:
        name = ev.model or ev.stage
        self.models[name] = {"val_accuracy": ev.val_accuracy, "test_accuracy": ev.test_accuracy,
                             "train_time_s": ev.elapsed_s, "message": ev.message}
        self._log(ev.time, str(ev.message or name))

    def on_train(self, ev: ProgressEvent) -> None:
        if self._bar(ev) and ev.fold is None and (ev.loss is not None or ev.val_accuracy is not None):
            # Curves of the models the run keeps (out-of-fold refits for mining would crowd them out).
            self.curves.setdefault(ev.model or ev.stage, []).append(
                {"step": ev.step, "loss": ev.loss, "val_accuracy": ev.val_accuracy})

    def on_lm(self, ev: ProgressEvent) -> None:
        if not self._bar(ev):
            return
        c = self.lm.setdefault(ev.stage, LMCounters(ev.stage))
        c.done, c.total = ev.step, ev.total
        for key in ("calls", "cache_hits", "failures", "unparsed", "tokens"):
            if getattr(ev, key) is not None:
                setattr(c, key, int(getattr(ev, key)))
        if ev.cost_usd is not None:
            c.cost_usd = float(ev.cost_usd)
        c.eta_s = ev.eta_s
        if ev.step == ev.total:
            line = (f"{ev.stage}: {c.calls} calls, {c.cache_hits} cached, {c.failures} failed, "
                    f"{c.unparsed} named no label, ${c.cost_usd:.4f}")
            if line != c.summary:  # the same end reported again (cached answers, then the close) is one line
                c.summary = line
                self._log(ev.time, line)

    def on_stage(self, ev: ProgressEvent) -> None:
        self._bar(ev)

    def _bar(self, ev: ProgressEvent) -> bool:
        """A message goes to the log (False); a step moves the stage's bar (True)."""
        if ev.is_message:
            if ev.message:
                self._log(ev.time, f"{ev.stage}: {ev.message}" if ev.stage else str(ev.message))
            return False
        bar = self.bars.setdefault(ev.stage, Bar(ev.stage))
        bar.step, bar.total = ev.step, ev.total
        bar.eta_s, bar.elapsed_s = ev.eta_s, ev.elapsed_s
        bar.message = str(ev.message or "")
        return True

    def _log(self, t: Optional[float], line: str) -> None:
        stamp = time.strftime("%H:%M:%S", time.localtime(t)) if t else "--:--:--"
        self.log.append(f"{stamp}  {line}")
        self.logged += 1
        del self.log[:-LOG_LINES]

    # -- summaries for display ----------------------------------------------------------
    def step_state(self, name: str) -> str:
        """``done``, ``running``, ``failed``, ``stopped`` or ``pending`` for one stage of the stepper."""
        if name in self.done_steps:
            return "done"
        if name == self.current_step:
            if self.final_state and self.final_state != "done":
                return "failed" if self.final_state == "failed" else "stopped"
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
