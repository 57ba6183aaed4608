"""A finished run reopened without its key: sliders' routing, auto-tune, live system, bundle export."""

from __future__ import annotations

import numpy as np
import pytest

from ea_core.bundle import export_run_bundle, load_bundle, system_from_run
from ea_core.errors import ConfigError
from ea_core.explore import Explorer, slider_to_threshold
from ea_core.router import evaluate, route
from ea_core.runstate import open_run


@pytest.fixture(scope="module")
def state(fruit_run):
    return open_run(fruit_run[1])


def test_the_explorer_scores_exactly_what_the_router_scores(state):
    ex = Explorer.build(state, "ea")
    assert ex.names == ["tfidf", "assm:tfidf", "lm"] and ex.kinds == ["ssm", "assm", "lm"]
    rng = np.random.default_rng(0)
    for _ in range(20):
        thr = ex.thresholds(rng.uniform(0.3, 1.0, size=ex.n_stages - 1))
        val, test = ex.evaluate(thr)
        assert val.accuracy == evaluate(state.stage_outputs("val"), thr, state.task.val.labels).accuracy
        assert test.lm_call_rate == evaluate(state.stage_outputs("test"), thr, state.task.test.labels).lm_call_rate
    # A slider at 1 means "never answers": everything goes on to the LM.
    val, _ = ex.evaluate(ex.thresholds([1.0, 1.0]))
    assert slider_to_threshold(1.0) > 1 and val.shares[-1] == 1.0 and val.lm_call_rate == 1.0


def test_the_sliders_start_at_the_run_s_tuned_point_and_the_report_agrees(state):
    ex = Explorer.build(state, "ea")
    thr = ex.tuned_thresholds()
    row = next(r for r in state.rows if r["system"] == "ea")
    val, test = ex.evaluate(thr)
    assert (val.accuracy, test.accuracy) == (row["val_accuracy"], row["test_accuracy"])
    assert val.lm_call_rate <= state.config.max_lm_rate + 1e-9
    names = [r.name for r in ex.references]
    assert names[0] == "LM alone" and names[1].startswith("best SSM") and "Specific Layer" in names
    assert ex.front and all(a.accuracy < b.accuracy for a, b in zip(ex.front, ex.front[1:]))


def test_auto_tune_respects_the_budget(state):
    ex = Explorer.build(state, "ea")
    for budget in (0.0, 0.1, 0.3):
        val, _ = ex.evaluate(ex.autotune(max_lm_rate=budget))
        assert val.lm_call_rate <= budget + 1e-9
    cheap, _ = ex.evaluate(ex.autotune(max_lm_rate=0.0))
    rich, _ = ex.evaluate(ex.autotune(max_lm_rate=0.5))
    assert rich.accuracy >= cheap.accuracy and cheap.lm_call_rate == 0.0


def test_uncalibrated_outputs_and_reliability_bins(state):
    raw, cal = Explorer.build(state, "ea", calibrated=False), Explorer.build(state, "ea", calibrated=True)
    assert not np.allclose(raw.val.conf[0], cal.val.conf[0])  # temperature scaling changed the confidences
    bins = cal.reliability("tfidf")
    assert set(bins) == {"val", "test"} and bins["val"]["count"].sum() == len(state.task.val)
    with pytest.raises(ConfigError):
        cal.reliability("lm")


def test_the_live_system_at_slider_thresholds_routes_like_the_cached_outputs(state, fruit_run):
    srv = fruit_run[2]
    ex = Explorer.build(state, "ea")
    thr = ex.thresholds([0.8, 0.7])
    system = system_from_run(state, thr)  # no key: the local scripted endpoint needs none
    cached = route(state.stage_outputs("test"), thr)
    asked_before = srv.count
    for i in range(0, len(state.task.test), 7):
        trace = system.route_one(*state.task.test.input(i))
        assert trace.answered_by == ex.names[cached.answered_by[i]]
        assert trace.prediction == state.task.labels[cached.pred[i]]
    assert srv.count == asked_before  # LM answers came from the run's cache: nothing bought again
    # The LM dropped: the last small model answers what would have reached it.
    small = system_from_run(state, thr, use_lm=False)
    assert [s.name for s in small.stages] == ["tfidf", "assm:tfidf"]


def test_a_bundle_exported_at_slider_thresholds_predicts_like_the_sliders(state, tmp_path):
    ex = Explorer.build(state, "ea")
    thr = ex.thresholds([0.9, 0.6])
    out = export_run_bundle(state, state.rows, tmp_path / "b", system="ea", thresholds=thr, layers=("ssm", "assm", "lm"))
    system = load_bundle(out, cache_path=str(state.config.cache_path(state.folder.root)),
                         base_url=state.config.lm_base_url)  # a bundle's own endpoint is never used unasked
    preds = system.predict(state.task.test)
    cached = route(state.stage_outputs("test"), thr)
    assert np.array_equal(preds.pred, cached.pred)


def test_a_run_without_an_lm_reopens_and_routes_its_small_models(tmp_path, fruit_run):
    from ea_core.runconfig import RunConfig
    from ea_core.runs import execute_run

    data = fruit_run[1] / "data"
    cfg = RunConfig(data=str(fruit_run[0].parent / "fruit.csv"), ssm=["tfidf"])
    execute_run(cfg, tmp_path / "t")
    state = open_run(tmp_path / "t")
    assert state.rows and not state.lm_answers and data.is_dir()
    ex = Explorer.build(state, "ea")
    assert ex.names == ["tfidf"] and ex.front == []


def test_ea_full_and_the_learned_router_are_orders_when_the_run_has_them(state, fruit_full_run):
    from ea_core.explore import ORDERS, available_orders

    assert available_orders(state) == ["ea", "ea_lm_first"]  # neither EA(Full) nor a learned router
    with pytest.raises(ConfigError, match="EA\\(Full\\)"):
        Explorer.build(state, "ea_full")
    full = open_run(fruit_full_run[0])
    assert available_orders(full) == ["ea", "ea_lm_first", "ea_full", "ea_learned"]
    rows = {r["system"]: r for r in full.rows}
    for order, names, kinds in (("ea_full", ["tfidf", "assm_full:tfidf", "lm"], ["ssm", "assm_full", "lm"]),
                                ("ea_learned", ["learned_router", "lm"], ["learned", "lm"])):
        ex = Explorer.build(full, order)
        assert (ex.names, ex.kinds) == (names, kinds) and ORDERS[order][1] == tuple(full.tuning[order]["layers"])
        val, test = ex.evaluate(ex.thresholds(ex.sliders(ex.tuned_thresholds())))
        assert (val.accuracy, test.accuracy) == (rows[order]["val_accuracy"], rows[order]["test_accuracy"])
    # the learned router's order draws the cascade's validation front beside its own, and only it does
    from pages import plots

    learned, cascade = Explorer.build(full, "ea_learned"), Explorer.build(full, "ea")
    assert list(learned.other_fronts) == ["EA cascade"] and cascade.other_fronts == {}
    assert [(p.lm_call_rate, p.accuracy) for p in learned.other_fronts["EA cascade"]] == \
        [(p.lm_call_rate, p.accuracy) for p in cascade.front]
    fig = plots.routing(learned.front, learned.references, learned.names,
                        learned.evaluate(learned.tuned_thresholds()), learned.other_fronts)
    drawn = next(t for t in fig["data"] if t.get("name") == "EA cascade (validation front)")
    assert drawn["y"] == [100 * p.accuracy for p in cascade.front] and drawn["line"]["dash"] == "dot"


def test_sliders_show_3_decimals_rounded_down_and_the_tuned_point_routes_exactly(state):
    ex = Explorer.build(state, "ea")
    tuned = ex.tuned_thresholds()
    shown = ex.sliders(tuned)
    assert all(v == round(v, 3) and 0 <= v <= 1 for v in shown)
    assert all(v <= t or t > 1 for v, t in zip(shown, tuned))  # down, or 1 for "never"
    assert ex.thresholds(shown) == tuned  # the displayed tuned values route at the tuned thresholds themselves
    # Any other point: rounding an auto-tuned point down keeps it within its LM budget.
    for budget in (0.1, 0.2, 0.3):
        rounded, _ = ex.evaluate(ex.thresholds(ex.sliders(ex.autotune(max_lm_rate=budget))))
        assert rounded.lm_call_rate <= budget + 1e-9


def test_headroom_says_what_a_real_lm_would_change_when_ea_kept_the_small_model(state, fruit_chance_run):
    from ea_core.explore import headroom

    assert headroom(state) is None  # this run's LM is good: EA routes to it
    chance = open_run(fruit_chance_run[0])
    h = headroom(chance)
    ea = next(r for r in chance.rows if r["system"] == "ea")
    assert h is not None and ea["lm_call_rate"] == 0.0 and ea["chosen"] == "ssm"
    y = chance.task.val.labels
    best = chance.stage_outputs("val", ("ssm",))[0]
    assert h.n_val == len(y) and h.wrong == int((best.pred != y).sum()) and h.best_val == pytest.approx(1 - h.wrong / len(y))
    assert h.unsure == int(np.floor(chance.config.max_lm_rate * len(y))) and 0 <= h.unsure_wrong <= min(h.wrong, h.unsure)
    assert h.best_val <= h.reachable <= 1 and h.oracle_val >= h.best_val and h.lm_val < h.best_val
