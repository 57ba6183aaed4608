"""Honest operating points and bootstrap intervals, on synthetic stage outputs with known answers."""

from __future__ import annotations

import numpy as np
import pytest

from ea_core.errors import ConfigError
from ea_core.llm.base import LMAnswer, LMProvider, LMUsage, normalize_request
from ea_core.metrics import bootstrap_ci, bootstrap_means
from ea_core.router import StageOutput, evaluate
from ea_core.tuning import HONEST_DEFAULT, HONEST_RULES, NEVER_TAKES, choose_operating_point, paired_bootstrap

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
        for rule in ("crossfit_guarded", "crossfit_keep_simpler"):
            c = choose_operating_point(stages, y, CANDIDATES, rule=rule, max_lm_rate=0.3, seed=seed)
            if c.system == "ssm":
                kept_simple += 1
                assert c.thresholds[0] == 0.0 and c.lm_call_rate == 0.0  # the small model answers everything
    assert kept_simple >= 14


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
    for rule in ("crossfit_guarded", "crossfit_keep_simpler", "crossfit", "bootstrap_keep_simpler"):
        c = choose_operating_point(stages, y, CANDIDATES, rule=rule, max_lm_rate=0.4)
        assert c.system != "ssm", rule
        assert 0 < c.lm_call_rate <= 0.4
        assert c.val_accuracy > evaluate(stages, [0.0, NEVER_TAKES, 0.0], y).accuracy + 0.05
    c = choose_operating_point(stages, y, CANDIDATES, rule=HONEST_DEFAULT, max_lm_rate=0.4)
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
    from ea_core.pipeline import Pipeline, RunConfig

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
    from ea_core.pipeline import RunConfig

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
