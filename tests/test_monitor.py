"""The monitor folds a run's events into what a page shows; a replay gives the same picture."""

from ea_core.monitor import RunProgress


def ev(stage, step=0, total=0, **kw):
    return {"stage": stage, "step": step, "total": total, "time": 1_800_000_000.0 + step, **kw}


EVENTS = [
    ev("run", 0, 4, message="data"),
    ev("data", message="warning: 3 duplicates"),
    ev("run", 1, 4, message="ssm"),
    ev("train:head:minilm", 1, 100, loss=1.0, val_accuracy=0.5),
    ev("train:head:minilm", 2, 100, loss=0.8, val_accuracy=0.6),
    ev("train:head:minilm", 3, 3, loss=0.7, val_accuracy=0.62, message="early stop"),
    ev("model:head:minilm", 1, 1, val_accuracy=0.62, elapsed_s=12.5, message="head:minilm: val acc 62.0%"),
    ev("run", 2, 4, message="mine"),
    ev("lm:mine", 5, 10, calls=4, cache_hits=1, failures=0, tokens=400, cost_usd=0.01, eta_s=5.0),
    ev("lm:mine", 10, 10, calls=8, cache_hits=2, failures=1, unparsed=2, tokens=800, cost_usd=0.02, eta_s=0.0),
]


def test_events_fold_into_stepper_bars_curves_models_and_lm_counters():
    p = RunProgress(steps=["data", "ssm", "mine", "report"])
    assert p.update(EVENTS)
    assert [p.step_state(s) for s in p.steps] == ["done", "done", "running", "pending"]
    assert [c["val_accuracy"] for c in p.curves["head:minilm"]] == [0.5, 0.6, 0.62]
    assert p.models["head:minilm"]["val_accuracy"] == 0.62
    bar = p.bars["lm:mine"]
    assert bar.fraction == 1.0
    totals = p.lm_totals()
    assert (totals.calls, totals.cache_hits, totals.failures, totals.unparsed, totals.tokens) == (8, 2, 1, 2, 800)
    assert any("1 failed, 2 named no label" in line for line in p.log)
    assert abs(totals.cost_usd - 0.02) < 1e-12
    assert any("3 duplicates" in line for line in p.log) and any("Mining" in line for line in p.log)

    p.update([ev("status", message="failed: the endpoint rejected the key")])
    assert p.step_state("mine") == "failed" and p.final.startswith("failed")


def test_a_replay_from_the_start_gives_the_same_picture_and_updates_are_incremental():
    whole = RunProgress()
    whole.update(EVENTS)
    parts = RunProgress()
    parts.update(EVENTS[:4])
    parts.update(EVENTS[4:])
    assert (whole.curves, whole.models, whole.done_steps, whole.log) == (parts.curves, parts.models,
                                                                        parts.done_steps, parts.log)
    assert not RunProgress().update([])
