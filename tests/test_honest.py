"""Honest operating points and bootstrap intervals, on synthetic stage outputs with known answers."""

from __future__ import annotations

import numpy as np
import pytest

from ea_core.errors import ConfigError
from ea_core.llm.base import LMAnswer, LMProvider, LMUsage, normalize_request
from ea_core.metrics import bootstrap_ci, bootstrap_means
from ea_core.router import StageOutput, evaluate
from ea_core.operating_point import HONEST_DEFAULT, HONEST_RULES, choose_operating_point, paired_bootstrap
from ea_core.tuning import NEVER_TAKES

CANDIDATES = {"ssm": [0], "specific_layer": [0, 2], "full": [0, 1, 2]}


def cascade(n: int, lm_acc: float, seed: int = 0, n_labels: int = 3) -> tuple[list[StageOutput], np.ndarray]:
    """An SSM whose confidence tracks its correctness (~75% right, chance at worst), an augmented stage that is pure
    noise, and an LM right with probability `lm_acc` (1/n_labels: chance) on every input."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, n_labels, n)
    margin = rng.normal(0.8, 1.0, n)
    right = rng.random(n) < 1 / (1 + np.exp(-2 * margin))  # else a random label: never below chance
    guess = rng.integers(0, n_labels, n)
    ssm = StageOutput("ssm", np.where(right, y, guess), 1 / n_labels + (1 - 1 / n_labels) / (1 + np.exp(-margin)))
    noise = StageOutput("assm", rng.integers(0, n_labels, n), rng.random(n))
    lm_right = rng.random(n) < lm_acc
    lm_pred = np.where(lm_right, y, (y + rng.integers(1, n_labels, n)) % n_labels)
    if lm_acc <= 1 / n_labels:
        lm_pred = rng.integers(0, n_labels, n)
    lm = StageOutput("lm", lm_pred, np.ones(n), is_lm=True)
    return [ssm, noise, lm], y


def test_noise_stages_are_not_chosen_by_the_keep_simpler_rule():
    """Extra stages that are pure noise (a random augmented stage, an LM at chance): the default
    rule keeps the small model alone, bar the bootstrap's 5% false alarms."""
    kept_simple = 0
    for seed in range(8):
        stages, y = cascade(400, lm_acc=1 / 3, seed=seed)
        for rule in ("budget_guarded", "crossfit_guarded", "crossfit_keep_simpler"):
            c = choose_operating_point(stages, y, CANDIDATES, rule=rule, max_lm_rate=0.3, seed=seed)
            if c.system == "ssm":
                kept_simple += 1
                assert c.thresholds[0] == 0.0 and c.lm_call_rate == 0.0  # the small model answers everything
    assert kept_simple >= 21


def test_in_sample_tuning_reads_noise_as_gain():
    """Why the default is not `insample`: on pure-noise extra stages it still 'gains' on validation."""
    gains = []
    for seed in range(5):
        stages, y = cascade(400, lm_acc=1 / 3, seed=seed)
        c = choose_operating_point(stages, y, CANDIDATES, rule="insample", max_lm_rate=0.3)
        gains.append(c.val_accuracy - evaluate(stages, [0.0, NEVER_TAKES, 0.0], y).accuracy)
    assert min(gains) >= 0 and max(gains) > 0


def test_a_genuinely_better_lm_is_chosen():
    stages, y = cascade(600, lm_acc=0.95, seed=1)
    for rule in ("budget_guarded", "crossfit_guarded", "crossfit_keep_simpler", "crossfit", "bootstrap_keep_simpler"):
        c = choose_operating_point(stages, y, CANDIDATES, rule=rule, max_lm_rate=0.4)
        assert c.system != "ssm", rule
        assert 0 < c.lm_call_rate <= 0.4
        assert c.val_accuracy > evaluate(stages, [0.0, NEVER_TAKES, 0.0], y).accuracy + 0.05
    c = choose_operating_point(stages, y, CANDIDATES, rule="crossfit_guarded", max_lm_rate=0.4)
    assert c.crossfit_accuracy == pytest.approx(c.detail["crossfit_accuracy"][c.system])
    # The cross-fitted estimate is no higher than the in-sample accuracy of the refitted point.
    assert c.crossfit_accuracy <= c.val_accuracy + 0.02


def test_every_rule_respects_the_budget_and_an_unknown_rule_is_refused():
    stages, y = cascade(300, lm_acc=0.9, seed=2)
    for rule in HONEST_RULES:
        c = choose_operating_point(stages, y, CANDIDATES, rule=rule, max_lm_rate=0.1)
        assert c.lm_call_rate <= 0.1 + 1e-9, rule
        assert len(c.thresholds) == 3 and c.thresholds[-1] == 0.0
    with pytest.raises(ConfigError, match="crossfit"):
        choose_operating_point(stages, y, CANDIDATES, rule="luck")


def difficulty_cascade(n: int, lm_gain: float, seed: int) -> tuple[list[StageOutput], np.ndarray]:
    """A calibrated small model (right with probability = its confidence) and an LM whose accuracy
    falls with the same difficulty but less steeply (slope 0.3), `lm_gain` better overall and
    independent of the small model's errors given the difficulty: the regime EA exists for."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 2, n)
    conf = rng.uniform(0.5, 1.0, n)
    ssm_right = rng.random(n) < conf
    lm_p = np.clip(conf.mean() + lm_gain + 0.3 * (conf - conf.mean()), 0, 1)
    lm_right = rng.random(n) < lm_p
    ssm = StageOutput("ssm", np.where(ssm_right, y, 1 - y), conf)
    noise = StageOutput("assm", rng.integers(0, 2, n), rng.random(n))
    lm = StageOutput("lm", np.where(lm_right, y, 1 - y), np.ones(n), is_lm=True)
    return [ssm, noise, lm], y


def test_budget_quantile_sends_the_least_confident_share_within_the_caps():
    from ea_core.operating_point import budget_quantile_thresholds

    stages, y = difficulty_cascade(200, 0.05, seed=0)
    thr = budget_quantile_thresholds(stages, max_lm_rate=0.3)
    m = evaluate(stages, thr, y)
    assert m.lm_call_rate == pytest.approx(0.3)
    sent = stages[0].conf < thr[0]
    assert stages[0].conf[sent].max() < stages[0].conf[~sent].min()  # exactly the least confident
    assert thr[1] == NEVER_TAKES  # other stages switched off
    priced = [stages[0], stages[1], StageOutput("lm", stages[2].pred, stages[2].conf, True, np.full(200, 0.002))]
    thr = budget_quantile_thresholds(priced, max_lm_rate=0.3, max_cost_per_1k=0.2)  # $0.2 / 1k: 10% of inputs
    m = evaluate(priced, thr, y)
    assert 0 < m.lm_call_rate <= 0.1 and m.cost_per_1k_usd <= 0.2 + 1e-12


def test_the_default_keeps_the_lm_gain_where_the_small_model_is_unsure():
    """An LM 8 points better, most useful where the small model is unsure: the default spends the
    budget on the LM nearly always and gains on fresh data, more than re-tuned folds do."""
    gains, old_gains, took = [], [], 0
    for seed in range(8):
        val, y_val = difficulty_cascade(300, 0.08, seed=seed)
        test, y_test = difficulty_cascade(2000, 0.08, seed=100 + seed)
        alone = evaluate(test, [0.0, 0.0, 0.0], y_test).accuracy
        c = choose_operating_point(val, y_val, CANDIDATES, max_lm_rate=0.3, seed=seed)
        assert c.rule == HONEST_DEFAULT and "noise" in c.detail["why"]
        took += c.lm_call_rate > 0
        gains.append(evaluate(test, c.thresholds, y_test).accuracy - alone)
        old = choose_operating_point(val, y_val, CANDIDATES, rule="crossfit_guarded", max_lm_rate=0.3, seed=seed)
        old_gains.append(evaluate(test, old.thresholds, y_test).accuracy - alone)
    assert took >= 6 and min(gains) >= 0 and np.mean(gains) > 0.05
    assert np.mean(gains) > np.mean(old_gains)
    assert set(c.detail["estimates"]) >= {"ssm", "budget_quantile", "specific_layer", "full"}


def test_probed_training_inputs_add_power_to_the_guard():
    """Where validation alone is too small to see the gain, probed training pairs from the same
    region (here 300, drawn like the region's validation pairs) let the guard see it; probes where
    the LM is no better than the small model do not invent one."""
    val, y_val = difficulty_cascade(120, 0.05, seed=7)
    without = choose_operating_point(val, y_val, CANDIDATES, max_lm_rate=0.3, seed=7)
    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, 300)
    good = {"y": y, "ssm_label": np.where(rng.random(300) < 0.55, y, 1 - y),
            "lm_label": np.where(rng.random(300) < 0.75, y, 1 - y)}
    useless = {**good, "lm_label": np.where(rng.random(300) < 0.45, y, 1 - y)}
    with_good = choose_operating_point(val, y_val, CANDIDATES, max_lm_rate=0.3, seed=7, probe=good)
    with_useless = choose_operating_point(val, y_val, CANDIDATES, max_lm_rate=0.3, seed=7, probe=useless)
    assert without.system == "ssm"  # 36 validation inputs in the region: within noise
    assert with_good.system == "budget_quantile" and "300 probed training inputs" in with_good.detail["why"]
    assert with_useless.system == "ssm" and with_useless.detail["probe_pairs"] == 300


def test_the_lm_alone_is_the_baseline_when_the_budget_allows_it():
    """With no LM budget, the LM alone competes: an LM right everywhere is not refused for a cascade."""
    stages, y = cascade(400, lm_acc=0.97, seed=4)
    c = choose_operating_point(stages, y, CANDIDATES, max_lm_rate=1.0)
    lm_alone = evaluate(stages, [NEVER_TAKES, NEVER_TAKES, 0.0], y).accuracy
    assert c.detail["baseline"] == "lm"
    assert c.val_accuracy >= lm_alone - 0.01


def test_bootstrap_means_match_naive_resampling():
    rng = np.random.default_rng(0)
    v = rng.integers(-1, 2, 500).astype(float)
    fast = bootstrap_means(v, n_boot=4000, seed=1)
    naive = v[rng.integers(0, v.size, (4000, v.size))].mean(axis=1)
    assert fast.mean() == pytest.approx(naive.mean(), abs=0.005)
    assert fast.std() == pytest.approx(naive.std(), rel=0.08)
    d = paired_bootstrap(np.ones(50), np.zeros(50))
    assert np.all(d == 1.0)


def test_accuracy_ci_contains_the_estimate_and_shrinks_with_n():
    rng = np.random.default_rng(3)
    widths = []
    for n in (100, 1000, 10000):
        hits = rng.random(n) < 0.7
        lo, hi = bootstrap_ci(hits, seed=0)
        assert lo <= hits.mean() <= hi
        widths.append(hi - lo)
    assert widths[0] > widths[1] > widths[2]
    assert widths[1] == pytest.approx(2 * 1.96 * np.sqrt(0.21 / 1000), rel=0.15)
    assert np.isnan(bootstrap_ci(np.zeros(0))).all()
    h = rng.random(300) < 0.6
    assert bootstrap_ci(h, seed=7) == bootstrap_ci(h, seed=7)  # seeded: reproducible


class _HalfRightLM(LMProvider):
    """Answers label 0 always: a weak LM for a quick run."""

    def describe(self):
        return {"provider": "test", "model": "always-0"}

    def classify(self, inputs, labels, *, stage="lm", callback=None, cancel=None):
        inputs, labels = normalize_request(inputs, labels)
        return [LMAnswer(label=0) for _ in inputs], LMUsage(calls=len(inputs))


def test_a_run_reports_intervals_and_the_rule(tmp_path):
    from ea_core.pipeline import Pipeline
    from ea_core.runconfig import RunConfig

    cfg = RunConfig(data="demo:tweets", ssm=["tfidf"], max_train=200, max_val=120, max_test=120, lm="openai",
                    lm_model="always-0", cache=str(tmp_path / "answers.sqlite"))
    state = Pipeline(cfg, tmp_path / "run", provider=_HalfRightLM()).run()
    assert state.tuning["ea"]["rule"] == HONEST_DEFAULT
    assert state.tuning["ea"]["chosen"] in ("ssm", "specific_layer", "full")
    rows = {r["system"]: r for r in state.rows}
    assert 0.0 <= rows["ea"]["val_accuracy_crossfit"] <= 1.0  # estimated on folds not tuned on
    for name in ("tfidf", "lm", "ea", "specific_layer", "oracle"):
        lo, hi = rows[name]["test_accuracy_ci"]
        assert lo <= rows[name]["test_accuracy"] <= hi, name
        lo, hi = rows[name]["val_accuracy_ci"]
        assert lo <= rows[name]["val_accuracy"] <= hi, name


def test_the_old_rule_is_a_setting_and_a_bad_rule_is_refused(tmp_path) -> None:
    """`--operating-point insample` reproduces tuning on all of validation; an unknown rule is a clear error."""
    from ea_core.cli import build_parser, _config_from_args
    from ea_core.errors import ConfigError
    from ea_core.runconfig import RunConfig

    args = build_parser().parse_args(["run", "--data", "demo:tweets", "--ssm", "tfidf", "--lm", "local", "--operating-point", "insample"])
    cfg = _config_from_args(args, lm=True)
    assert cfg.operating_point == "insample"
    cfg.validate()
    assert RunConfig.from_dict(cfg.to_dict()).operating_point == "insample"
    with pytest.raises(ConfigError, match="--operating-point must be one of"):
        RunConfig(data="demo:tweets", ssm=["tfidf"], operating_point="luckiest").validate()


def test_tfidf_can_choose_its_C_on_training_folds_so_validation_stays_unpicked() -> None:
    """With C_selection="cv" the validation split plays no part in the fit: the same model comes out
    whatever its labels say (with "val", C is picked for its luck there)."""
    from ea_core.data import load_dataset
    from ea_core.models import make_model

    task = load_dataset("demo:tweets", max_train=400, max_val=200, max_test=10)
    shuffled = task.val.subset(np.arange(len(task.val)))
    shuffled.labels = np.random.default_rng(0).permutation(shuffled.labels)
    fits = [make_model("tfidf", C_selection="cv").fit(task.train, val, task.labels) for val in (task.val, shuffled)]
    assert fits[0].C_ == fits[1].C_ and np.array_equal(fits[0].coef_, fits[1].coef_)
    assert fits[0].C_ in fits[0].C_grid


def test_a_run_lists_what_mining_found_and_the_probe_feeds_the_guard(tmp_path):
    """The mined examples (every small model wrong out of fold) with each model's answer and the LM's,
    filterable and written as a spreadsheet-safe CSV; --probe-lm's answers are saved and reopened."""
    import csv

    from ea_core.findings import mined_counts, mined_examples, write_mined_csv
    from ea_core.pipeline import Pipeline
    from ea_core.runconfig import RunConfig
    from ea_core.runstate import open_run

    cfg = RunConfig(data="demo:tweets", ssm=["tfidf"], max_train=200, max_val=120, max_test=120, lm="openai",
                    lm_model="always-0", cache=str(tmp_path / "answers.sqlite"), probe_lm=25)
    Pipeline(cfg, tmp_path / "run", provider=_HalfRightLM()).run()
    state = open_run(tmp_path / "run")
    rows = mined_examples(state)
    counts = mined_counts(state)
    assert len(rows) == counts["sent"] > 0 and counts["underfit"] + counts["lm_fixed"] + counts["failed"] == counts["sent"]
    labels = state.task.labels
    for row in rows:
        assert row["tfidf"] != row["gold"]  # mined: the small model was wrong (out of fold)
        assert row["lm"] == labels[0]  # the LM always answers label 0
        assert row["outcome"] == ("lm_fixed" if row["gold"] == labels[0] else "underfit")
    assert all(r["outcome"] == "underfit" for r in mined_examples(state, "underfit"))
    assert len(mined_examples(state, "lm_fixed")) == counts["lm_fixed"]
    path = write_mined_csv(rows, tmp_path / "mined.csv")
    with open(path, newline="") as f:
        back = list(csv.DictReader(f))
    assert len(back) == len(rows) and set(back[0]) >= {"row", "text", "gold", "tfidf", "lm", "outcome"}
    assert state.probe is not None and len(state.probe["index"]) == 25
    assert state.tuning["ea"]["candidates"] and "probed training inputs" in state.tuning["ea"]["why"]
