"""Typed progress events and their callbacks: what a stage emits, how a callback list fans it out,
and how the monitor, the CLI bars and an old run folder's event log read them (fields, not labels)."""

from __future__ import annotations

import io
import json

from ea_core.events import Callback, CallbackList, EventKind, ProgressEvent, tagged
from ea_core.monitor import RunProgress


def test_a_callback_list_fans_each_event_out_to_every_callback_in_order():
    seen: list[tuple[str, str]] = []
    inner = CallbackList([lambda e: seen.append(("b", e.stage)), None])
    fan = CallbackList([lambda e: seen.append(("a", e.stage)), inner, lambda e: seen.append(("c", e.stage))])
    assert len(fan) == 3  # nested lists are flattened, None dropped
    fan(ProgressEvent("x", 1, 2))
    fan(ProgressEvent("y", 2, 2))
    assert seen == [("a", "x"), ("b", "x"), ("c", "x"), ("a", "y"), ("b", "y"), ("c", "y")]


def test_a_callback_receives_each_kind_in_its_own_method():
    class Counter(Callback):
        def __init__(self) -> None:
            self.got: list[str] = []

        def on_train(self, event: ProgressEvent) -> None:
            self.got.append(f"train {event.model} {event.loss}")

        def on_lm(self, event: ProgressEvent) -> None:
            self.got.append(f"lm {event.lm_stage} {event.calls}")

    c = Counter()
    c(ProgressEvent("anything", 1, 3, kind=EventKind.TRAIN, model="tfidf", loss=0.5))
    c(ProgressEvent("anything", 2, 9, kind=EventKind.LM, lm_stage="mine", calls=2))
    c(ProgressEvent("anything", 0, 0, message="ignored: no on_stage of its own"))
    assert c.got == ["train tfidf 0.5", "lm mine 2"]


def test_tagged_sets_the_fields_an_event_left_unset():
    got: list[ProgressEvent] = []
    cb = tagged(got.append, model="head:minilm", fold=2, folds=3)
    cb(ProgressEvent("oof", 1, 5, kind=EventKind.TRAIN))
    cb(ProgressEvent("oof", 2, 5, kind=EventKind.TRAIN, model="its own"))
    assert (got[0].model, got[0].fold, got[0].folds) == ("head:minilm", 2, 3)
    assert got[1].model == "its own" and got[1].fold == 2
    assert tagged(None, model="x") is None


def test_events_round_trip_through_json_and_an_old_log_replays_typed():
    ev = ProgressEvent("lm:val", 3, 10, kind=EventKind.LM, lm_stage="val", calls=3, cost_usd=0.01)
    line = json.dumps(ev.to_dict())
    assert json.loads(line)["kind"] == "lm" and "model" not in json.loads(line)  # None fields are not written
    assert ProgressEvent.from_dict(json.loads(line)) == ev
    assert ProgressEvent.from_dict({**json.loads(line), "from_a_newer_version": 1}) == ev

    # Event logs written before events were typed: the same fields, from their labels.
    old = [{"stage": "run", "step": 1, "total": 4, "message": "ssm"},
           {"stage": "run", "step": 4, "total": 4, "message": "done"},
           {"stage": "train:assm:head:minilm", "step": 2, "total": 5, "loss": 0.4},
           {"stage": "oof:head:minilm:2/3", "step": 1, "total": 5, "loss": 0.9},
           {"stage": "model:tfidf", "step": 1, "total": 1, "val_accuracy": 0.7},
           {"stage": "lm:mine", "step": 5, "total": 10, "calls": 4},
           {"stage": "lm", "step": 0, "total": 0, "message": "LM endpoint answers"},
           {"stage": "mine", "step": 0, "total": 0, "message": "12 of 300 ..."},
           {"stage": "status", "step": 0, "total": 0, "message": "failed: the key was refused"}]
    typed = [ProgressEvent.from_dict(d) for d in old]
    assert [e.kind for e in typed] == [EventKind.RUN, EventKind.RUN, EventKind.TRAIN, EventKind.TRAIN,
                                       EventKind.MODEL, EventKind.LM, EventKind.LM, EventKind.STAGE,
                                       EventKind.STATUS]
    assert (typed[0].step_name, typed[1].step_name) == ("ssm", None)
    assert (typed[2].model, typed[2].fold) == ("assm:head:minilm", None)
    assert (typed[3].model, typed[3].fold, typed[3].folds) == ("head:minilm", 2, 3)
    assert typed[4].model == "tfidf" and typed[5].lm_stage == "mine" and typed[6].lm_stage is None
    assert typed[8].state == "failed" and typed[8].message == "failed: the key was refused"


def test_the_monitor_reads_fields_so_labels_may_say_anything():
    events = [
        ProgressEvent("plan", 0, 3, kind=EventKind.RUN, step_name="ssm", time=1.0),
        ProgressEvent("training A", 1, 3, kind=EventKind.TRAIN, model="A", loss=1.0, val_accuracy=0.5, time=2.0),
        ProgressEvent("training A", 2, 3, kind=EventKind.TRAIN, model="A", loss=0.5, val_accuracy=0.6, time=3.0),
        ProgressEvent("refit", 1, 3, kind=EventKind.TRAIN, model="A", fold=1, folds=3, loss=2.0, time=4.0),
        ProgressEvent("A done", 1, 1, kind=EventKind.MODEL, model="A", val_accuracy=0.6, test_accuracy=0.55,
                      elapsed_s=3.0, message="A: trained", time=5.0),
        ProgressEvent("plan", 1, 3, kind=EventKind.RUN, step_name="mine", time=6.0),
        ProgressEvent("asking", 4, 4, kind=EventKind.LM, lm_stage="mine", calls=3, cache_hits=1, cost_usd=0.02,
                      time=7.0),
        ProgressEvent("end", 0, 0, kind=EventKind.STATUS, state="cancelled", message="cancelled: by you", time=8.0),
    ]
    live = RunProgress(steps=["data", "ssm", "mine"])
    for ev in events:
        live(ev)
    assert list(live.curves) == ["A"] and [p["loss"] for p in live.curves["A"]] == [1.0, 0.5]  # no fold refits
    assert live.models["A"]["test_accuracy"] == 0.55
    assert (live.lm_totals().calls, live.lm_totals().cache_hits) == (3, 1)
    assert [live.step_state(s) for s in live.steps] == ["pending", "done", "stopped"]
    assert live.final_state == "cancelled"

    replayed = RunProgress(steps=["data", "ssm", "mine"])  # the same events, from the log on disk
    assert replayed.update(json.loads(json.dumps(e.to_dict())) for e in events)
    assert (replayed.curves, replayed.models, replayed.done_steps, replayed.log) == (
        live.curves, live.models, live.done_steps, live.log)


def test_the_terminal_progress_prints_steps_and_messages_and_draws_bars():
    from ea_core.cli import TerminalProgress

    out = io.StringIO()
    bars = TerminalProgress(stream=out)
    bars(ProgressEvent("run", 0, 2, kind=EventKind.RUN, step_name="ssm"))
    bars(ProgressEvent("train:tfidf", 1, 2, kind=EventKind.TRAIN, model="tfidf", val_accuracy=0.5))
    bars(ProgressEvent("data", 0, 0, message="warning: 3 duplicates"))
    bars(ProgressEvent("run", 2, 2, kind=EventKind.RUN, message="done"))
    bars.close()
    text = out.getvalue()
    assert "== ssm" in text and "train:tfidf" in text and "warning: 3 duplicates" in text
    assert "== done" not in text


def test_a_run_types_its_events(fruit_run):
    """The event log of a real run (TF-IDF, out-of-fold mining, a scripted LM): every event typed."""
    lines = (fruit_run[1] / "events.jsonl").read_text().splitlines()
    events = [ProgressEvent.from_dict(json.loads(line)) for line in lines]
    assert all("kind" in json.loads(line) for line in lines)
    kinds = {e.kind for e in events}
    assert {EventKind.RUN, EventKind.TRAIN, EventKind.MODEL, EventKind.LM, EventKind.STATUS} <= kinds
    steps = [e.step_name for e in events if e.kind is EventKind.RUN]
    assert steps[0] == "data" and steps[-1] is None and "mine" in steps
    trained = {e.model for e in events if e.kind is EventKind.TRAIN and e.fold is None}
    assert "tfidf" in trained
    folds = {(e.model, e.fold, e.folds) for e in events if e.kind is EventKind.TRAIN and e.fold is not None}
    assert folds == {("tfidf", k, 3) for k in (1, 2, 3)}
    models = [e for e in events if e.kind is EventKind.MODEL]
    assert models and all(e.model and e.val_accuracy is not None and e.test_accuracy is not None for e in models)
    lm_stages = {e.lm_stage for e in events if e.kind is EventKind.LM and not e.is_message}
    assert {"mine", "val", "test"} <= lm_stages
    assert events[-1].kind is EventKind.STATUS and events[-1].state == "done"
