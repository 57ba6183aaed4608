"""The cascade router against a plain per-example loop, and its metrics against their definitions."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ea_core.errors import ConfigError, DataError
from ea_core.metrics import macro_f1
from ea_core.router import (
    RoutingMetrics,
    StageOutput,
    StageStack,
    evaluate,
    route,
    synthetic_stages,
)

# Values shared by confidences and thresholds so that ties (conf == threshold) are common.
GRID = [0.0, 0.25, 0.5, 0.75, 1.0]
HYP = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def loop_route(conf: list[list[float]], pred: list[list[int]], thr: list[float]) -> tuple[list[int], list[int]]:
    """The cascade written the obvious way, one example at a time."""
    S, n = len(conf), len(conf[0])
    answered, out = [], []
    for i in range(n):
        for k in range(S):
            if k == S - 1 or conf[k][i] >= thr[k]:
                answered.append(k)
                out.append(pred[k][i])
                break
    return answered, out


@st.composite
def cascades(draw, min_n: int = 0, max_n: int = 30, n_labels: int = 4):
    S = draw(st.integers(1, 6))
    n = draw(st.integers(min_n, max_n))
    value = st.one_of(st.sampled_from(GRID), st.floats(0, 1, allow_nan=False))
    conf = [draw(st.lists(value, min_size=n, max_size=n)) for _ in range(S)]
    pred = [draw(st.lists(st.integers(-2, n_labels - 1), min_size=n, max_size=n)) for _ in range(S)]
    thr = draw(
        st.lists(
            st.one_of(st.sampled_from(GRID + [1.01, -1.0, math.inf]), st.floats(0, 1, allow_nan=False)),
            min_size=S,
            max_size=S,
        )
    )
    is_lm = draw(st.lists(st.booleans(), min_size=S, max_size=S))
    paid = draw(st.lists(st.booleans(), min_size=S, max_size=S))
    cost = [draw(st.lists(st.floats(0, 0.01, allow_nan=False), min_size=n, max_size=n)) for _ in range(S)]
    y = draw(st.lists(st.integers(0, n_labels - 1), min_size=n, max_size=n))
    stages = [
        StageOutput(f"s{k}", np.array(pred[k], dtype=np.int64), np.array(conf[k], dtype=float), is_lm[k],
                    np.array(cost[k]) if paid[k] else None)
        for k in range(S)
    ]
    return stages, conf, pred, thr, np.array(y, dtype=np.int64), cost, paid, is_lm


@HYP
@given(cascades())
def test_route_matches_per_example_loop(case):
    stages, conf, pred, thr, *_ = case
    want_ans, want_pred = loop_route(conf, pred, thr)
    for result in (route(stages, thr), StageStack(stages).route(thr)):
        assert result.answered_by.tolist() == want_ans
        assert result.pred.tolist() == want_pred
        assert result.pred.dtype == np.int64


@HYP
@given(cascades(min_n=1))
def test_metrics_properties(case):
    sklearn_metrics = pytest.importorskip("sklearn.metrics")
    stages, conf, pred, thr, y, cost, paid, is_lm = case
    S, n = len(stages), len(y)
    m = evaluate(stages, thr, y)
    ans, out = loop_route(conf, pred, thr)
    out = np.array(out)
    assert m.n == n
    assert math.isclose(sum(m.shares), 1.0)
    assert m.shares == pytest.approx([ans.count(k) / n for k in range(S)])
    assert m.accuracy == pytest.approx(float(np.mean(out == y)))
    assert m.oracle_accuracy >= m.accuracy - 1e-12
    oracle = np.mean([any(pred[k][i] == y[i] for k in range(S)) for i in range(n)])
    assert m.oracle_accuracy == pytest.approx(float(oracle))
    present = sorted(set(y.tolist()) | {int(p) for p in out if p >= 0})
    want_f1 = sklearn_metrics.f1_score(y, out, labels=present, average="macro", zero_division=0)
    assert m.macro_f1 == pytest.approx(want_f1, abs=1e-12)
    for k in range(S):
        mine = [i for i in range(n) if ans[i] == k]
        if mine:
            assert m.stage_accuracy[k] == pytest.approx(np.mean([out[i] == y[i] for i in mine]))
        else:
            assert math.isnan(m.stage_accuracy[k])
    # LM calls: inputs that reach an LM stage (= sum of shares of the stages from the first LM on).
    lm = [k for k in range(S) if is_lm[k]]
    want_rate = 0.0 if not lm else float(np.mean([a >= lm[0] for a in ans]))
    assert m.lm_call_rate == pytest.approx(want_rate)
    if lm:
        assert m.lm_call_rate == pytest.approx(sum(m.shares[lm[0]:]))
    # Money: every paid stage an input reaches is paid for.
    want_cost = sum(cost[k][i] for i in range(n) for k in range(S) if paid[k] and k <= ans[i]) / n * 1000
    assert m.cost_per_1k_usd == pytest.approx(want_cost, rel=1e-9, abs=1e-12)
    json.dumps(m.to_dict())


@HYP
@given(cascades(min_n=1), st.lists(st.tuples(st.integers(0, 5), st.sampled_from(GRID + [0.1, 0.6, 1.01])), max_size=12))
def test_incremental_slider_moves_match_fresh_evaluation(case, moves):
    """StageStack.evaluate re-routes only what a one-threshold move changes; it must equal a fresh run."""
    stages, _, _, thr, y, *_ = case
    stack = StageStack(stages, y)
    thr = list(thr)
    stack.evaluate(thr)
    for k, value in moves:
        thr[k % len(thr)] = value
        got, want = stack.evaluate(thr), StageStack(stages, y).evaluate(thr)
        assert got.shares == want.shares and got.accuracy == want.accuracy
        assert got.macro_f1 == pytest.approx(want.macro_f1, abs=1e-12)
        assert got.lm_call_rate == want.lm_call_rate
        assert got.cost_per_1k_usd == pytest.approx(want.cost_per_1k_usd, rel=1e-9, abs=1e-12)
        assert got.stage_accuracy == pytest.approx(want.stage_accuracy, nan_ok=True)


def test_lm_last_rate_is_lm_share():
    stages, y = synthetic_stages(2000, 4, seed=3)
    m = evaluate(stages, [0.8, 0.8, 0.8, 0.0], y)
    assert m.lm_call_rate == pytest.approx(m.shares[-1])
    lm = stages[-1]
    taken = m.shares[-1] * len(y)
    by_lm = route(stages, [0.8] * 4).answered_by == 3
    assert m.cost_per_1k_usd == pytest.approx(lm.cost_usd[by_lm].sum() / len(y) * 1000)
    assert taken > 0


def test_lm_before_assm_pays_for_every_call():
    """Alternative order: the LM (thresholded on its confidence) before an ASSM that answers the rest."""
    y = np.array([0, 1, 0, 1])
    ssm = StageOutput("tfidf", [0, 0, 0, 0], [0.9, 0.2, 0.3, 0.1])
    lm = StageOutput("lm", [0, 1, 1, -1], [1.0, 0.9, 0.4, 0.2], is_lm=True, cost_usd=[1.0, 2.0, 3.0, 4.0])
    assm = StageOutput("assm:tfidf", [1, 1, 0, 1], [0.5, 0.5, 0.5, 0.5])
    m = evaluate([ssm, lm, assm], [0.8, 0.5, 0.0], y)
    assert route([ssm, lm, assm], [0.8, 0.5, 0.0]).answered_by.tolist() == [0, 1, 2, 2]
    assert m.shares == pytest.approx([0.25, 0.25, 0.5])
    assert m.lm_call_rate == pytest.approx(0.75)  # inputs 1, 2, 3 call the LM
    assert m.cost_per_1k_usd == pytest.approx((2.0 + 3.0 + 4.0) / 4 * 1000)
    assert m.accuracy == pytest.approx(1.0)


def test_single_stage_answers_everything():
    s = StageOutput("lm", [1, 0, 2], [0.1, 0.2, 0.3], is_lm=True)
    r = route([s], [0.99])
    assert r.answered_by.tolist() == [0, 0, 0]
    assert evaluate([s], [0.5], np.array([1, 0, 0])).lm_call_rate == 1.0


def test_from_proba():
    p = np.array([[0.1, 0.7, 0.2], [0.5, 0.25, 0.25]])
    s = StageOutput.from_proba("tfidf", p)
    assert s.pred.tolist() == [1, 0] and s.conf.tolist() == [0.7, 0.5] and not s.is_lm
    with pytest.raises(ConfigError):
        StageOutput.from_proba("x", np.ones(3))


def test_input_errors():
    a = StageOutput("a", [0, 1, 1], [0.5, 0.6, 0.7])
    b = StageOutput("b", [0, 1], [0.5, 0.6])
    with pytest.raises(ConfigError, match="lengths differ"):
        route([a, b], [0.5, 0.0])
    with pytest.raises(ConfigError, match="threshold"):
        route([a, a], [0.5])
    with pytest.raises(ConfigError, match="threshold"):
        route([a, a], [0.5, 0.5, 0.5])
    with pytest.raises(ConfigError, match="NaN"):
        route([a, a], [float("nan"), 0.5])
    with pytest.raises(ConfigError, match="at least one stage"):
        route([], [])
    with pytest.raises(ConfigError, match="confidence"):
        StageOutput("c", [0, 1], [0.5])
    with pytest.raises(ConfigError, match=r"\[0, 1\]"):
        StageOutput("c", [0, 1], [0.5, 3.0])
    with pytest.raises(ConfigError, match="NaN"):
        StageOutput("c", [0, 1], [0.5, float("nan")])
    with pytest.raises(ConfigError, match="integer"):
        StageOutput("c", [0.5, 1], [0.5, 0.5])
    with pytest.raises(ConfigError, match="cost"):
        StageOutput("c", [0, 1], [0.5, 0.5], cost_usd=[1.0])
    with pytest.raises(ConfigError, match="non-negative"):
        StageOutput("c", [0, 1], [0.5, 0.5], cost_usd=[1.0, -1.0])
    with pytest.raises(DataError, match="labels"):
        evaluate([a, a], [0.5, 0.0], np.array([0, 1]))
    with pytest.raises(DataError, match="no known label"):
        evaluate([a, a], [0.5, 0.0], np.array([0, -1, 1]))


def test_empty_split_gives_nan_metrics():
    s = StageOutput("a", np.zeros(0, np.int64), np.zeros(0))
    m = evaluate([s, s], [0.5, 0.0], np.zeros(0, np.int64))
    assert m.n == 0 and math.isnan(m.accuracy)
    assert m.to_dict()["accuracy"] is None
    assert route([s, s], [0.5, 0.0]).answered_by.shape == (0,)


def test_stack_reuses_and_refreshes_labels():
    stages, y = synthetic_stages(500, 4, seed=1)
    stack = StageStack(stages, y)
    thr = [0.7, 0.7, 0.7, 0.0]
    first = stack.evaluate(thr)
    assert stack.evaluate(thr, y.copy()) == first
    y2 = (y + 1) % 4
    assert stack.evaluate(thr, y2).accuracy == pytest.approx(evaluate(stages, thr, y2).accuracy)
    assert isinstance(first, RoutingMetrics) and first.names == [s.name for s in stages]


def test_macro_f1_ignores_failed_lm_answers():
    sk = pytest.importorskip("sklearn.metrics")
    y = np.array([0, 1, 2, 2, 1])
    pred = np.array([0, -1, 2, -2, 0])
    assert macro_f1(y, pred) == pytest.approx(sk.f1_score(y, pred, labels=[0, 1, 2], average="macro", zero_division=0))


def test_synthetic_stages_are_realistic():
    stages, y = synthetic_stages(5000, 6, seed=0)
    assert [s.name for s in stages] == ["ssm1", "ssm2", "ssm3", "ssm4", "assm1", "lm"]
    acc = [float(np.mean(s.pred == y)) for s in stages]
    assert acc == sorted(acc) and acc[-1] > 0.85
    for s in stages:  # confidence is informative: right answers are more confident
        assert s.conf[s.pred == y].mean() > s.conf[s.pred != y].mean()
    assert stages[-1].is_lm and stages[-1].cost_usd is not None


def test_many_labels_use_the_plain_path():
    sk = pytest.importorskip("sklearn.metrics")
    rng = np.random.default_rng(0)
    n, L = 300, 800  # 2 stages x 800 x 801 codes: too many for the one-bincount table
    y = rng.integers(0, L, n)
    stages = [
        StageOutput(f"s{k}", np.where(rng.random(n) < 0.6, y, rng.integers(-1, L, n)), rng.random(n)) for k in range(2)
    ]
    stack = StageStack(stages, y, n_labels=L)
    assert stack._key_flat is None
    for thr in ([0.5, 0.0], [0.2, 0.0], [0.9, 0.0]):
        m = stack.evaluate(thr)
        out = route(stages, thr).pred
        present = sorted(set(y.tolist()) | {int(p) for p in out if p >= 0})
        assert m.accuracy == pytest.approx(np.mean(out == y))
        assert m.macro_f1 == pytest.approx(sk.f1_score(y, out, labels=present, average="macro", zero_division=0))
