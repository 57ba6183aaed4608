"""Calibration and threshold search, checked against definitions and exhaustive enumeration."""

from __future__ import annotations

import itertools
import json

import numpy as np
import pytest

from ea_core.errors import ConfigError, DataError
from ea_core.router import StageOutput, StageStack, evaluate, synthetic_stages
from ea_core.calibration import (
    Calibration,
    apply_temperature,
    expected_calibration_error,
    fit_temperature,
    reliability_bins,
)
from ea_core.tuning import (
    NEVER_TAKES,
    autotune,
    brute_force_tune,
    candidate_thresholds,
    pareto_front,
    val_test_report,
)

# --------------------------------------------------------------------------------------------
# Calibration
# --------------------------------------------------------------------------------------------


def calibrated_sample(n: int = 6000, n_labels: int = 4, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Probabilities that are calibrated by construction: y is drawn from them."""
    rng = np.random.default_rng(seed)
    z = rng.normal(scale=1.5, size=(n, n_labels))
    p = np.exp(z) / np.exp(z).sum(axis=1, keepdims=True)
    y = (rng.random(n)[:, None] > np.cumsum(p, axis=1)).sum(axis=1)
    return p, np.minimum(y, n_labels - 1)


def test_temperature_recovers_overconfidence():
    p, y = calibrated_sample()
    over = p**3 / (p**3).sum(axis=1, keepdims=True)  # = softmax(3 * log p): temperature 3 undoes it
    t = fit_temperature(over, y)
    assert t == pytest.approx(3.0, rel=0.12)
    assert fit_temperature(p, y) == pytest.approx(1.0, rel=0.12)
    before = expected_calibration_error(over, y)
    after = expected_calibration_error(apply_temperature(over, t), y)
    assert after < before / 2
    cal = Calibration.fit(over, y)
    assert cal.temperature == pytest.approx(t) and cal.ece_after < cal.ece_before
    assert np.allclose(cal.apply(over), apply_temperature(over, t))
    json.dumps(cal.to_dict())


def test_temperature_fixes_underconfidence():
    p, y = calibrated_sample(seed=1)
    under = np.sqrt(p) / np.sqrt(p).sum(axis=1, keepdims=True)
    assert fit_temperature(under, y) == pytest.approx(0.5, rel=0.12)


def test_apply_temperature_basics():
    p, _ = calibrated_sample(200)
    assert np.allclose(apply_temperature(p, 1.0), p)
    q = apply_temperature(p, 2.0)
    assert np.allclose(q.sum(axis=1), 1.0)
    assert (q.argmax(axis=1) == p.argmax(axis=1)).all()
    assert (q.max(axis=1) <= p.max(axis=1) + 1e-12).all()
    with pytest.raises(ConfigError):
        apply_temperature(p, 0.0)
    with pytest.raises(ConfigError):
        apply_temperature(p[0], 1.0)


def test_ece_and_reliability_bins_match_a_loop():
    p, y = calibrated_sample(1500, seed=2)
    p = p**2 / (p**2).sum(axis=1, keepdims=True)
    n_bins = 10
    conf, correct = p.max(axis=1), p.argmax(axis=1) == y
    ece = 0.0
    for b in range(n_bins):
        lo, hi = b / n_bins, (b + 1) / n_bins
        inside = (conf > lo) & (conf <= hi) if b else (conf <= hi)
        if inside.any():
            ece += inside.mean() * abs(correct[inside].mean() - conf[inside].mean())
    assert expected_calibration_error(p, y, n_bins) == pytest.approx(ece)
    bins = reliability_bins(p, y, n_bins)
    assert bins["edges"].shape == (n_bins + 1,) and bins["count"].sum() == len(y)
    empty = bins["count"] == 0
    assert np.isnan(bins["accuracy"][empty]).all() and not np.isnan(bins["accuracy"][~empty]).any()
    share = bins["count"][~empty] / len(y)
    assert (share * np.abs(bins["gap"][~empty])).sum() == pytest.approx(ece)
    with pytest.raises(DataError):
        fit_temperature(p, y[:-1])


# --------------------------------------------------------------------------------------------
# Threshold search
# --------------------------------------------------------------------------------------------


def small_cascade(n: int, S: int, seed: int) -> tuple[list[StageOutput], np.ndarray]:
    stages, y = synthetic_stages(n, 6, seed=seed)
    return stages[: S - 1] + [stages[-1]], y


def exhaustive(stages, y, n_candidates, max_lm_rate=None, max_cost=None, keep=None):
    """Best (correct, -calls, -money) over every combination of candidate thresholds
    (`keep[k]`: only those candidate indices of stage k)."""
    stack = StageStack(stages, y)
    grids = [candidate_thresholds(stack.conf[k], n_candidates) for k in range(stack.n_stages - 1)]
    if keep is not None:
        grids = [g[i] for g, i in zip(grids, keep)]
    n = stack.n
    best, points = None, []
    for combo in itertools.product(*grids):
        thr = list(combo) + [0.0]
        m = stack.evaluate(thr)
        calls, correct = round(m.lm_call_rate * n), round(m.accuracy * n)
        points.append((correct, calls, m.cost_per_1k_usd, thr))
        if max_lm_rate is not None and calls > max_lm_rate * n + 1e-9:
            continue
        if max_cost is not None and m.cost_per_1k_usd > max_cost * (1 + 1e-9):
            continue
        key = (correct, -calls, -m.cost_per_1k_usd)
        if best is None or key > best[0]:
            best = (key, thr)
    return best, points


def test_candidate_thresholds():
    conf = np.random.default_rng(0).random(1000)
    c = candidate_thresholds(conf, 16)
    assert c[0] == 0.0 and c[-1] == NEVER_TAKES and (np.diff(c) > 0).all()
    assert np.allclose(c[1:-1], np.quantile(conf, np.linspace(0, 1, 16)))
    every = candidate_thresholds(np.array([0.2, 0.5, 0.5, 0.9]), None)
    assert every.tolist() == [0.0, 0.35, 0.7, NEVER_TAKES]


@pytest.mark.parametrize("S", [3, 4])
@pytest.mark.parametrize("seed", [0, 1])
def test_autotune_is_exact_on_the_candidate_grid(S, seed):
    stages, y = small_cascade(300, S, seed)
    stack = StageStack(stages, y)
    nc = 6
    _, points = exhaustive(stages, y, nc)
    for rate in (0.0, 0.05, 0.15, 0.3, 0.6, 1.0):
        best, _ = exhaustive(stages, y, nc, max_lm_rate=rate)
        got = autotune(stack, y, max_lm_rate=rate, n_candidates=nc, polish=False)
        assert got.method == "exact grid"
        assert round(got.accuracy * 300) == best[0][0]
        assert round(got.lm_call_rate * 300) == -best[0][1]  # ties go to fewer LM calls
        assert got.lm_call_rate <= rate + 1e-12
        polished = autotune(stack, y, max_lm_rate=rate, n_candidates=nc)
        assert polished.accuracy >= got.accuracy and polished.lm_call_rate <= rate + 1e-12
        m = evaluate(stages, polished.thresholds, y)
        assert (m.accuracy, m.lm_call_rate) == (polished.accuracy, polished.lm_call_rate)


def test_approximate_search_is_close_to_exhaustive():
    """The coarse-grid + pair-coordinate-ascent path on grids small enough to enumerate."""
    gaps = []
    for seed in range(3):
        stages, y = small_cascade(400, 5, seed)
        stack = StageStack(stages, y)
        nc = 5
        for rate in (0.05, 0.15, 0.3):
            best, _ = exhaustive(stages, y, nc, max_lm_rate=rate)
            got = autotune(stack, y, max_lm_rate=rate, n_candidates=nc, polish=False, max_exact_cells=100)
            assert got.method.startswith("coarse grid")
            assert got.lm_call_rate <= rate + 1e-12
            # never worse than the best on the coarse subgrid (each stage keeps 3 of its 7 candidates:
            # 0, the median and NEVER_TAKES)
            coarse, _ = exhaustive(stages, y, nc, max_lm_rate=rate, keep=[[0, 3, 6]] * 4)
            assert round(got.accuracy * 400) >= coarse[0][0]
            gaps.append(best[0][0] / 400 - got.accuracy)
    gaps = np.array(gaps)
    assert (gaps >= -1e-12).all()  # exhaustive is the optimum on the grid
    assert gaps.max() <= 0.01 and gaps.mean() <= 0.003


def test_autotune_respects_random_budgets():
    rng = np.random.default_rng(7)
    for seed, S in [(0, 3), (1, 4), (2, 6)]:
        stages, y = small_cascade(500, S, seed)
        stack = StageStack(stages, y)
        last = -1.0
        for rate in np.sort(rng.random(8)):
            got = autotune(stack, y, max_lm_rate=float(rate), n_candidates=16)
            m = evaluate(stages, got.thresholds, y)
            assert m.lm_call_rate <= rate + 1e-12
            assert m.accuracy == pytest.approx(got.accuracy)
            if S < 6:  # exact search: a bigger budget never scores lower
                assert got.accuracy >= last - 1e-12
            last = got.accuracy


def test_money_budget():
    stages, y = small_cascade(300, 3, 4)
    stack = StageStack(stages, y)
    full = evaluate(stages, [NEVER_TAKES, NEVER_TAKES, 0.0], y).cost_per_1k_usd
    for share in (0.0, 0.1, 0.3, 0.7):
        budget = share * full
        best, _ = exhaustive(stages, y, 6, max_cost=budget)
        got = autotune(stack, y, max_cost_per_1k=budget, n_candidates=6, polish=False)
        assert got.cost_per_1k_usd <= budget * (1 + 1e-9) + 1e-15
        assert round(got.accuracy * 300) == best[0][0]
        both = autotune(stack, y, max_cost_per_1k=budget, max_lm_rate=share / 2, n_candidates=6)
        assert both.cost_per_1k_usd <= budget * (1 + 1e-9) + 1e-15 and both.lm_call_rate <= share / 2 + 1e-12
    free = [StageOutput(s.name, s.pred, s.conf, s.is_lm) for s in stages]
    with pytest.raises(ConfigError, match="cost"):
        autotune(free, y, max_cost_per_1k=1.0)


@pytest.mark.parametrize("cost_weighted", [False, True])
def test_pareto_front_is_the_exhaustive_front(cost_weighted):
    stages, y = small_cascade(300, 4, 5)
    front = pareto_front(stages, y, n_candidates=5, cost_weighted=cost_weighted)
    x = [p.cost_per_1k_usd if cost_weighted else p.lm_call_rate for p in front]
    acc = [p.accuracy for p in front]
    assert all(b > a for a, b in zip(x, x[1:])) and all(b > a for a, b in zip(acc, acc[1:]))
    _, points = exhaustive(stages, y, 5)
    for correct, calls, cost, _thr in points:  # no grid point dominates a front point
        px = cost if cost_weighted else calls / 300
        for p, fx in zip(front, x):
            dominated = correct / 300 >= p.accuracy and px <= fx and (correct / 300 > p.accuracy or px < fx - 1e-12)
            assert not dominated
    for p in front:
        m = evaluate(stages, p.thresholds, y)
        assert m.accuracy == pytest.approx(p.accuracy) and m.lm_call_rate == pytest.approx(p.lm_call_rate)
        assert m.cost_per_1k_usd == pytest.approx(p.cost_per_1k_usd)
    if not cost_weighted:
        for rate in (0.1, 0.25, 0.5):
            best = max(p.accuracy for p in front if p.lm_call_rate <= rate)
            assert autotune(stages, y, max_lm_rate=rate, n_candidates=5, polish=False).accuracy == pytest.approx(best)


def test_pareto_front_large_is_monotone_and_fast_enough():
    stages, y = small_cascade(3000, 6, 0)
    front = pareto_front(stages, y, n_candidates=16)
    assert front[0].method.startswith("coarse grid")
    rates = [p.lm_call_rate for p in front]
    accs = [p.accuracy for p in front]
    assert rates == sorted(rates) and len(set(rates)) == len(rates)
    assert all(b > a for a, b in zip(accs, accs[1:]))
    assert all(len(p.thresholds) == 6 and p.thresholds[-1] == 0.0 for p in front)


def test_autotune_beats_brute_force():
    for seed in range(2):
        stages, y = small_cascade(250, 3, seed)
        brute = brute_force_tune(stages, y, 0.2, grid=40)
        assert brute.lm_call_rate <= 0.2 + 1e-12
        # every distinct routing of each stage is a candidate: exact search covers brute's grid
        ours = autotune(stages, y, max_lm_rate=0.2, n_candidates=None)
        assert ours.accuracy >= brute.accuracy - 1e-12
        assert autotune(stages, y, max_lm_rate=0.2).accuracy >= brute.accuracy - 0.02
    with pytest.raises(ConfigError, match="3 tunable"):
        brute_force_tune(*small_cascade(100, 5, 0), 0.2)


def test_lm_before_assm_order():
    stages, y = synthetic_stages(600, 4, seed=2)
    ssm, _, assm, lm = stages
    lm_conf = StageOutput(lm.name, lm.pred, lm.conf, True, lm.cost_usd)
    order = [ssm, lm_conf, assm]
    for rate in (0.1, 0.4, 0.8):
        got = autotune(order, y, max_lm_rate=rate, n_candidates=8)
        m = evaluate(order, got.thresholds, y)
        assert m.lm_call_rate <= rate + 1e-12
        assert m.lm_call_rate == pytest.approx(m.shares[1] + m.shares[2])  # passing on still called the LM
    with pytest.raises(ConfigError, match="budget"):
        autotune([lm_conf, assm], y, max_lm_rate=0.5)
    assert autotune([lm_conf, assm], y, max_lm_rate=1.0).lm_call_rate == 1.0


def test_single_stage_and_errors():
    stages, y = small_cascade(50, 3, 0)
    assert autotune(stages[-1:], y).thresholds == [0.0]
    assert len(pareto_front(stages[-1:], y)) == 1
    with pytest.raises(ConfigError):
        autotune(stages, y, max_lm_rate=1.5)
    with pytest.raises(DataError):
        autotune(stages, y[:-1])
    empty = [StageOutput("a", np.zeros(0, np.int64), np.zeros(0)), StageOutput("b", np.zeros(0, np.int64), np.zeros(0))]
    with pytest.raises(DataError, match="no"):
        autotune(empty, np.zeros(0, np.int64))


def test_budget_slider_reuses_cached_search():
    stages, y = small_cascade(2000, 4, 3)
    stack = StageStack(stages, y)
    a = autotune(stack, y, max_lm_rate=0.2)
    assert stack.cache  # search and grid are kept on the stack
    assert autotune(stack, y.copy(), max_lm_rate=0.2) == a
    y2 = np.roll(y, 1)
    assert autotune(stack, y2, max_lm_rate=0.2) == autotune(stages, y2, max_lm_rate=0.2)


def test_val_test_report():
    val, y_val = small_cascade(400, 3, 0)
    test, y_test = small_cascade(400, 3, 1)
    thr = autotune(val, y_val, max_lm_rate=0.2).thresholds
    rep = val_test_report(val, y_val, test, y_test, thr)
    json.dumps(rep)
    assert rep["val"]["accuracy"] == pytest.approx(evaluate(val, thr, y_val).accuracy)
    assert rep["test"]["accuracy"] == pytest.approx(evaluate(test, thr, y_test).accuracy)
    assert {r["metric"] for r in rep["table"]} >= {"accuracy", "macro_f1", "lm_call_rate", "cost_per_1k_usd"}
    with pytest.raises(ConfigError, match="differ"):
        val_test_report(val, y_val, test[::-1], y_test, thr)
