"""The learned deferral router: its labels, its features, what it learns, and its results row."""

from __future__ import annotations

import numpy as np

from ea_core.learned_router import MIN_PER_CLASS, deferral_labels, features, fit_learned_router
from ea_core.llm.base import FAILED, LMAnswer, LMProvider, LMUsage, normalize_request
from ea_core.router import StageOutput, evaluate
from ea_core.splits import Split


def test_labels_come_only_from_what_is_known():
    y = np.array([0, 1, 2, 0, 1, 2])
    best = np.array([0, 0, 0, 1, 1, 1])  # right on rows 0 and 4
    lm = {1: 1, 2: 0, 3: FAILED}  # row 1: LM right; row 2: LM wrong; row 3: failed; row 5: never asked
    lab = deferral_labels(y, best, lm)
    assert lab.rows.tolist() == [0, 1, 2, 4] and lab.target.tolist() == [0, 1, 0, 0]
    assert lab.counts == {"ssm_right": 2, "lm_fixes": 1, "both_wrong": 1, "left_out": 2}


def test_features_cover_each_model_agreement_and_length():
    rng = np.random.default_rng(0)
    p1, p2 = rng.dirichlet(np.ones(3), 5), rng.dirichlet(np.ones(3), 5)
    split = Split(texts=["a", "bb", "ccc", "dddd", "e" * 50], labels=np.zeros(5, dtype=np.int64))
    X = features([p1, p2], split)
    assert X.shape == (5, 2 * (3 + 3) + 1 + 1)
    assert np.allclose(X[:, -1], np.log1p([1, 2, 3, 4, 50]))
    assert features([p1], None).shape == (5, 3 + 3 + 1)


def _length_task(n: int, seed: int):
    """A small model whose confidence says nothing about length, and an LM right on long inputs only."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 2, n)
    long_ = rng.random(n) < 0.5
    texts = ["word " * (40 if lg else 3) for lg in long_]
    conf = rng.uniform(0.5, 1.0, n)
    ssm_right = rng.random(n) < conf
    pred = np.where(ssm_right, y, 1 - y)
    proba = np.zeros((n, 2))
    proba[np.arange(n), pred] = conf
    proba[np.arange(n), 1 - pred] = 1 - conf
    lm_right = rng.random(n) < np.where(long_, 0.95, 0.2)
    lm = np.where(lm_right, y, 1 - y)
    return Split(texts=texts, labels=y), proba, lm


def test_the_router_learns_where_the_lm_is_right_and_routes_better_at_equal_share():
    train, p_train, lm_train = _length_task(1500, 0)
    known = {i: int(lm_train[i]) for i in np.flatnonzero(p_train.argmax(1) != train.labels)}  # mined rows
    router = fit_learned_router([p_train], train, known)
    assert router is not None and router.cv_auc > 0.7
    test, p_test, lm_test = _length_task(3000, 1)
    y = test.labels
    lm = StageOutput("lm", lm_test, np.ones(len(y)), is_lm=True)
    cascade = [StageOutput.from_proba("ssm", p_test), lm]
    learned = [StageOutput("learned", p_test.argmax(1), 1 - router.score([p_test], test)), lm]

    def at_share(stages, share=0.3):
        thr = float(np.quantile(stages[0].conf, share))
        return evaluate(stages, [thr, 0.0], y)

    c, le = at_share(cascade), at_share(learned)
    assert abs(c.lm_call_rate - le.lm_call_rate) < 0.02
    assert le.accuracy > c.accuracy + 0.03


def test_too_few_lm_fixes_learn_nothing():
    train, p, lm = _length_task(200, 2)
    wrong = np.flatnonzero(p.argmax(1) != train.labels)
    known = {int(i): int(1 - train.labels[i]) for i in wrong}  # the LM is wrong wherever it was asked
    known[int(wrong[0])] = int(train.labels[wrong[0]])
    assert fit_learned_router([p], train, known) is None
    assert MIN_PER_CLASS >= 2


class _ZeroLM(LMProvider):
    def describe(self):
        return {"provider": "test", "model": "always-0"}

    def classify(self, inputs, labels, *, stage="lm", callback=None, cancel=None):
        inputs, labels = normalize_request(inputs, labels)
        return [LMAnswer(label=0) for _ in inputs], LMUsage(calls=len(inputs))


def test_a_run_with_the_learned_router_reports_an_ea_learned_row(tmp_path):
    from ea_core.cli import _config_from_args, build_parser
    from ea_core.pipeline import Pipeline
    from ea_core.runconfig import RunConfig
    from ea_core.runstate import open_run

    args = build_parser().parse_args(["run", "--data", "demo:tweets", "--ssm", "tfidf", "--lm", "local",
                                      "--router", "learned"])
    assert _config_from_args(args, lm=True).router == "learned"
    cfg = RunConfig(data="demo:tweets", ssm=["tfidf"], max_train=300, max_val=150, max_test=150, lm="openai",
                    lm_model="always-0", cache=str(tmp_path / "answers.sqlite"), router="learned")
    Pipeline(cfg, tmp_path / "run", provider=_ZeroLM()).run()
    state = open_run(tmp_path / "run")
    rows = {r["system"]: r for r in state.rows}
    assert "ea" in rows and "ea_learned" in rows
    row = rows["ea_learned"]
    assert 0 <= row["lm_call_rate"] <= cfg.max_lm_rate + 0.05 and row["candidates"]
    lo, hi = row["test_accuracy_ci"]
    assert lo <= row["test_accuracy"] <= hi
    assert set(state.learned) == {"val", "test"} and len(state.learned["test"]) == len(state.task.test)
    assert "learned_router" in row["stage_shares"]
