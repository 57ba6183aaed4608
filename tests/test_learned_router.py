"""The learned deferral router: its labels, its features, what it learns, and its results row."""

from __future__ import annotations

import numpy as np
import pytest

from ea_core.learned_router import (MIN_PER_CLASS, deferral_labels, features, fit_learned_router,
                                    fit_stacked_combiner, stack_features)
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


def test_an_lm_good_on_one_class_is_not_taken_as_good_where_the_small_model_is_right():
    """The LM is right on 95% of class 0 and 10% of class 1; mining asks it only where the small model
    is wrong. The classwise router (default) counts the LM's accuracy on the class the small model
    would have got right; the first version ("direct") cannot, and at an equal share it is not better."""
    rng = np.random.default_rng(3)

    def task(n: int):
        y = rng.integers(0, 2, n)
        conf = rng.uniform(0.5, 1.0, n)
        pred = np.where(rng.random(n) < conf, y, 1 - y)
        proba = np.zeros((n, 2))
        proba[np.arange(n), pred], proba[np.arange(n), 1 - pred] = conf, 1 - conf
        lm = np.where(rng.random(n) < np.where(y == 0, 0.95, 0.1), y, 1 - y)
        return Split(texts=["t"] * n, labels=y), proba, lm

    train, p_train, lm_train = task(2000)
    known = {int(i): int(lm_train[i]) for i in np.flatnonzero(p_train.argmax(1) != train.labels)}
    test, p_test, lm_test = task(4000)
    lm = StageOutput("lm", lm_test, np.ones(len(test.labels)), is_lm=True)
    acc = {}
    for method in ("classwise", "direct"):
        router = fit_learned_router([p_train], train, known, method=method)
        conf = 1 - router.score([p_test], test)
        acc[method] = evaluate([StageOutput("learned", p_test.argmax(1), conf), lm],
                               [float(np.quantile(conf, 0.3)), 0.0], test.labels).accuracy
    assert acc["classwise"] > acc["direct"] + 0.01


def test_the_scorer_round_trips_through_json_and_a_bad_one_is_a_message():
    from ea_core.errors import ConfigError
    from ea_core.learned_router import RouterParams

    train, p, lm = _length_task(600, 4)
    known = {int(i): int(lm[i]) for i in np.flatnonzero(p.argmax(1) != train.labels)}
    router = fit_learned_router([p], train, known)
    params = RouterParams.from_json(router.info()["model"], "x")
    assert len(params.length_edges) == 3 and params.length_edges == router.params.length_edges
    X = features([p], train, params.length_edges)  # log length and its quartile bin, cut where training was
    assert params.combine == "classwise" and np.array_equal(params.score(X), router.params.score(X))
    with pytest.raises(ConfigError, match="combine"):
        RouterParams.from_json({**router.info()["model"], "combine": "magic"}, "x")
    with pytest.raises(ConfigError, match="length_edges"):
        RouterParams.from_json({**router.info()["model"], "length_edges": [3.0, 1.0, "x"]}, "x")
    old = {k: v for k, v in router.info()["model"].items() if k != "length_edges"}
    assert RouterParams.from_json(old, "x").length_edges == ()  # a scorer saved before the bins still loads


def test_an_lm_at_chance_leaves_the_router_ranking_as_the_cascade():
    """Nothing tells where a coin-flip LM is right: a is the constant LM rate, so the deferral score
    falls as the small model's confidence rises, as the cascade's order does, instead of fitting noise."""
    train, p, _ = _length_task(1500, 5)
    coin = np.random.default_rng(9).integers(0, 2, len(train.labels))
    known = {int(i): int(coin[i]) for i in np.flatnonzero(p.argmax(1) != train.labels)}
    router = fit_learned_router([p], train, known)
    assert router is not None and not np.any(router.params.coef)
    score = router.score([p], train)
    order = np.argsort(p.max(1))
    assert np.all(np.diff(score[order]) <= 1e-12)


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
    from ea_core.runfolder import read_json
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
    # which row the run exports, as validation (never test) says: no router labels, no training evidence
    assert row["beats_cascade_on_val"] == (row["val_accuracy"] >= rows["ea"]["val_accuracy"] - 1e-12)
    assert row["beats_cascade"] == row["beats_cascade_on_val"]
    assert row["versus_cascade"]["train_inputs"] == 0
    assert row["versus_cascade"]["accuracy_diff"] == pytest.approx(row["val_accuracy"] - rows["ea"]["val_accuracy"])
    assert ("level with or ahead of the cascade (ea) on validation (150 inputs): the run exports this row"
            if row["beats_cascade"] else "below the cascade (ea) on validation (150 inputs): the run exports ea") \
        in row["note"]
    exported = read_json(tmp_path / "run" / "bundle" / "bundle.json")["metrics"]["system"]
    assert exported == ("ea_learned" if row["beats_cascade"] else "ea")


def test_the_learned_router_travels_in_a_bundle_and_answers_as_the_run_scored(tmp_path, fruit_full_run):
    """Export `ea_learned`, load it: the stage scores exactly as the run did; `predict`, `route_one`
    (Try it) and the HTTP server answer with it."""
    import csv

    import httpx

    from ea_core.batch_predict import predict_file
    from ea_core.bundle import export_run_bundle, load_bundle
    from ea_core.learned_router import LearnedStage
    from ea_core.runstate import LEARNED_STAGE, open_run
    from ea_core.serve.app import create_app
    from ea_core.serve.main import ServerThread, build_served
    from ea_core.serve.settings import ServeSettings

    folder, srv = fruit_full_run
    state = open_run(folder)
    row = {r["system"]: r for r in state.rows}["ea_learned"]
    out = export_run_bundle(state, state.rows, tmp_path / "bundle", system="ea_learned")
    lm = {"base_url": srv.url, "key_env": "", "cache_path": str(tmp_path / "cache.sqlite")}
    system = load_bundle(out, **lm)
    assert [s.name for s in system.stages] == [LEARNED_STAGE, "lm"]
    stage = system.stages[0].model
    assert isinstance(stage, LearnedStage) and len(stage.models) == len(state.ssms)
    test = state.task.test
    best, score = stage.scores(test)
    assert np.allclose(score, state.learned["test"], rtol=0, atol=1e-9)
    assert np.array_equal(best, state.ssms[0].outputs()["test"].argmax(axis=1))
    preds = system.predict(test)  # the tuned operating point on test, as the results row reports it
    assert np.mean(preds.pred == test.labels) == pytest.approx(row["test_accuracy"])
    assert np.mean(preds.answered_by == 1) == pytest.approx(row["lm_call_rate"])
    i = int(np.argmin(score))  # the input the router is surest needs no LM
    trace = system.route_one(test.texts[i])
    assert trace.answered_by == LEARNED_STAGE and trace.stages[0].confidence == pytest.approx(1 - score[i])
    data = tmp_path / "new.csv"
    with open(data, "w", newline="") as f:
        csv.writer(f).writerows([["text"]] + [[t] for t in test.texts])
    summary = predict_file(str(out), str(data), str(tmp_path / "p.csv"), chunk_rows=7, cache=lm["cache_path"],
                           lm_options={"base_url": srv.url, "key_env": ""})
    assert summary.answered == [int(np.sum(preds.answered_by == k)) for k in (0, 1)]
    served = build_served(out, ServeSettings(api_key="k"), lm_base_url=srv.url, lm_api_key="sk-x",
                          cache=lm["cache_path"])
    with ServerThread(create_app(served)) as server:
        res = httpx.post(server.url + "/v1/classify", json={"inputs": [test.texts[i]]},
                         headers={"Authorization": "Bearer k"}, timeout=30).json()["results"][0]
    assert (res["label"], res["answered_by"]) == (trace.prediction, LEARNED_STAGE)


def test_a_damaged_learned_router_in_a_bundle_is_a_message(tmp_path, fruit_full_run):
    import json

    from ea_core.bundle import export_run_bundle, load_bundle
    from ea_core.errors import ConfigError
    from ea_core.runstate import open_run

    state = open_run(fruit_full_run[0])
    out = export_run_bundle(state, state.rows, tmp_path / "bundle", system="ea_learned")
    router = out / "models" / "00" / "router.json"
    meta = json.loads(router.read_text())
    meta["scorer"]["coef"] = meta["scorer"]["coef"][:-1]
    router.write_text(json.dumps(meta))
    with pytest.raises(ConfigError, match="one finite number per feature"):
        load_bundle(out, use_lm=False)
    meta["models"] = "../../elsewhere"
    router.write_text(json.dumps(meta))
    with pytest.raises(ConfigError, match="'models' must be a count"):
        load_bundle(out, use_lm=False)


def _three_class_rows(n: int, seed: int):
    """A small model right on ~75% (its probabilities say so), and an LM right on classes 0 and 1
    but answering 0 whenever the truth is 2."""
    rng = np.random.default_rng(seed)
    y = rng.integers(3, size=n)
    guess = np.where(rng.random(n) < 0.75, y, rng.integers(3, size=n))
    probs = np.full((n, 3), 0.15)
    probs[np.arange(n), guess] = 0.7
    lm = np.where(y == 2, 0, y)
    return probs, lm, y


def test_the_stack_recovers_the_small_model_where_the_lm_is_wrong_on_one_class():
    probs, lm, y = _three_class_rows(300, seed=0)
    stack = fit_stacked_combiner([probs], lm, y, 3, seed=0)
    assert stack is not None and stack.rows == 300
    assert stack.cv_accuracy > stack.lm_accuracy + 0.1  # out of fold, on its own training rows
    probs_new, lm_new, y_new = _three_class_rows(600, seed=1)
    combined = stack.predict([probs_new], lm_new)
    lm_acc, stack_acc = np.mean(lm_new == y_new), np.mean(combined == y_new)
    assert stack_acc > lm_acc + 0.1
    # where the LM said 0 but the small model says 2, the stack answers 2: the small model's class back
    said_2 = (lm_new == 0) & (probs_new.argmax(axis=1) == 2)
    assert said_2.any() and np.all(combined[said_2] == 2)
    # where the LM is reliable (it says 1) the stack keeps its answer
    assert np.all(combined[lm_new == 1] == 1)


def test_stack_features_one_hot_the_lm_answer_and_leave_a_failed_one_blank():
    X = stack_features([np.array([[0.2, 0.8], [0.6, 0.4]])], np.array([1, FAILED]), 2)
    np.testing.assert_array_equal(X, [[0.2, 0.8, 0.0, 1.0], [0.6, 0.4, 0.0, 0.0]])
    assert fit_stacked_combiner([np.eye(2)[[0, 0, 0]]], np.array([0, 0, 0]), np.array([0, 0, 0]), 2) is None


# -- router labels (`--router-labels`) and the training split's evidence beside validation ----------------------


def test_router_label_sample_is_uniform_seeded_and_skips_the_few_shot_rows():
    from ea_core.learned_router import router_label_sample

    a = router_label_sample(1000, 200, seed=3, shown=[0, 1, 2])
    assert len(a) == 200 and len(np.unique(a)) == 200 and np.all(np.diff(a) > 0)
    assert not np.isin([0, 1, 2], a).any()
    assert np.array_equal(a, router_label_sample(1000, 200, seed=3, shown=[0, 1, 2]))
    assert not np.array_equal(a, router_label_sample(1000, 200, seed=4, shown=[0, 1, 2]))
    # uniform over the split, not drawn from one end of it (as a probe of the unsure region is)
    assert 350 < a.mean() < 650
    assert len(router_label_sample(10, 50, seed=0)) == 10


def test_region_pairs_keep_the_sampled_rows_among_the_least_sure_share():
    from ea_core.learned_router import region_pairs

    unsure = np.array([0.9, 0.1, np.nan, 0.8, 0.2, 0.7, 0.3, 0.6, 0.4, 0.5])
    y = np.arange(10) % 2
    sample = {"index": np.array([0, 1, 2, 3, 5]), "ssm_label": np.array([1, 1, 0, 0, 0]),
              "lm_label": np.array([0, 1, 0, 1, 1])}
    pairs = region_pairs(unsure, sample, y, share=0.3)  # the 3 least sure: rows 0, 3, 5
    assert pairs["index"].tolist() == [0, 3, 5]
    assert pairs["y"].tolist() == [0, 1, 1] and pairs["ssm_label"].tolist() == [1, 0, 0]
    assert pairs["lm_label"].tolist() == [0, 1, 1]
    assert region_pairs(np.full(10, np.nan), sample, y, share=0.5)["index"].size == 0  # NaN: never in it


def test_paired_vs_cascade_scores_each_sampled_row_by_which_routing_gets_it_right():
    from ea_core.learned_router import paired_vs_cascade

    y = np.zeros(10, dtype=np.int64)
    # sampled rows 0-3: the small model right on 0 and 1, the LM right on 1 and 2
    sample = {"index": np.array([0, 1, 2, 3]), "ssm_label": np.array([0, 0, 1, 1]),
              "lm_label": np.array([1, 0, 0, 1])}
    learned = np.array([0.0, 0.9, 0.8, 0.0, 0, 0, 0, 0, 0, 0.1])  # sends rows 1, 2 (the 20% least sure)
    cascade = np.array([0.9, 0.0, 0.0, 0.8, 0, 0, 0, 0, 0, 0.1])  # sends rows 0, 3
    d = paired_vs_cascade(learned, cascade, sample, y, share=0.2)
    # row 0: the learned keeps the right small answer, the cascade asks a wrong LM: +1; row 1: both
    # right; row 2: the learned asks a right LM, the cascade keeps a wrong answer: +1; row 3: both wrong
    assert d.tolist() == [1, 0, 1, 0]
    assert paired_vs_cascade(cascade, learned, sample, y, share=0.2).tolist() == [-1, 0, -1, 0]
    assert not paired_vs_cascade(learned, learned, sample, y, share=0.2).any()


def test_out_of_fold_router_scores_rank_where_deferring_helps_on_rows_they_were_not_fitted_on():
    from ea_core.learned_router import oof_router_scores
    from sklearn.metrics import roc_auc_score

    train, p_train, lm_train = _length_task(900, 2)
    y = train.labels
    rng = np.random.default_rng(0)
    wrong = np.flatnonzero(p_train.argmax(1) != y)
    sample = rng.choice(len(y), 200, replace=False)
    known = {int(i): int(lm_train[i]) for i in np.union1d(wrong, sample)}
    oof = oof_router_scores([p_train], train, known, seed=0, folds=3)
    assert oof.shape == (900,) and np.all(np.isfinite(oof))
    helps = (p_train.argmax(1) != y) & (lm_train == y)
    assert roc_auc_score(helps, oof) > 0.75
    # too few LM answers in every fold: nothing is scored, nothing is made up
    assert np.all(np.isnan(oof_router_scores([p_train], train, {}, seed=0, folds=3)))


def test_a_run_with_router_labels_asks_the_lm_on_random_training_inputs_and_learns_from_them(tmp_path):
    from ea_core.cli import _config_from_args, build_parser
    from ea_core.errors import ConfigError
    from ea_core.learned_router import known_lm_answers, load_router_labels
    from ea_core.pipeline import Pipeline
    from ea_core.runconfig import RunConfig
    from ea_core.runfolder import read_json
    from ea_core.runstate import open_run

    args = build_parser().parse_args(["run", "--data", "demo:tweets", "--ssm", "tfidf", "--lm", "local",
                                      "--router", "learned", "--router-labels", "60"])
    assert _config_from_args(args, lm=True).router_labels == 60
    with pytest.raises(ConfigError, match="router-labels"):
        RunConfig(data="demo:tweets", ssm=["tfidf"], router="learned", router_labels=-1).validate()
    with pytest.raises(ConfigError, match="router-labels"):
        RunConfig(data="demo:tweets", ssm=["tfidf"], router="learned", router_labels=10, oof_folds=0).validate()
    with pytest.raises(ConfigError, match="router learned"):
        RunConfig(data="demo:tweets", ssm=["tfidf"], router_labels=10).validate()
    kw = dict(data="demo:tweets", ssm=["tfidf"], max_train=300, max_val=150, max_test=150, lm="openai",
              lm_model="always-0", router="learned")
    Pipeline(RunConfig(**kw, cache=str(tmp_path / "a.sqlite")), tmp_path / "plain", provider=_ZeroLM()).run()
    cfg = RunConfig(**kw, cache=str(tmp_path / "b.sqlite"), router_labels=60)
    Pipeline(cfg, tmp_path / "run", provider=_ZeroLM()).run()
    plain, state = open_run(tmp_path / "plain"), open_run(tmp_path / "run")
    assert load_router_labels(plain) is None and "router_labels" not in plain.lm_usage
    sample = load_router_labels(state)
    assert len(sample["index"]) == 60 and np.all(sample["lm_label"] == 0)
    mined = set(state.mining.candidates.tolist())
    # counted like the other LM calls, as its own stage (an endpoint's cache answers the rows mining asked)
    assert state.lm_usage["router_labels"]["calls"] == 60
    assert set(sample["index"].tolist()) - mined and set(sample["index"].tolist()) & mined  # right and wrong rows
    assert len(known_lm_answers(state, cfg.router_labels)) == len(mined | set(sample["index"].tolist()))
    assert len(known_lm_answers(state, 0)) == len(mined)
    info, info_plain = read_json(tmp_path / "run" / "learned_router.json"), read_json(tmp_path / "plain" /
                                                                                       "learned_router.json")
    assert info["training_rows"] == info_plain["training_rows"]  # the small-model-right rows count either way
    assert len(load_router_labels(state, 25)["index"]) == 25
    # the sampled inputs where each router would call the LM join validation's in its budget point's guard
    assert "probed training inputs" in state.tuning["ea_learned"]["why"]
    assert "probed training inputs" in state.tuning["ea"]["why"]
    assert "probed training inputs" not in plain.tuning["ea_learned"]["why"]
    # ... and decide, pooled with validation's, which of the two the run exports
    versus = state.tuning["ea_learned"]["train_vs_cascade"]
    assert len(versus) == 60 and set(versus) <= {-1, 0, 1} and "train_vs_cascade" not in plain.tuning["ea_learned"]
    row, ea = ({r["system"]: r for r in state.rows}[s] for s in ("ea_learned", "ea"))
    assert row["versus_cascade"]["train_inputs"] == 60 and row["versus_cascade"]["val_inputs"] == 150
    pooled = (150 * (row["val_accuracy"] - ea["val_accuracy"]) + sum(versus)) / 210
    assert row["versus_cascade"]["accuracy_diff"] == pytest.approx(pooled)
    assert row["beats_cascade"] == (pooled >= -1e-12)
    assert read_json(tmp_path / "run" / "bundle" / "bundle.json")["metrics"]["system"] == \
        ("ea_learned" if row["beats_cascade"] else "ea")
