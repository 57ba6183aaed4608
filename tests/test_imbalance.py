"""Imbalanced labels: class weighting, the selection metric, per-class recall in the results.

A synthetic 3-class task with 80/15/5 labels where each text has one noisy cue word: unweighted
models answer the majority (the rare class's cue is still more often seen on majority examples),
which accuracy hides and macro-F1 and per-class recall show. Runs offline on 2 CPU cores: TF-IDF
and a head on a tiny randomly initialised BERT (MiniLM's tokenizer).
"""

from __future__ import annotations

import json
import os

import numpy as np
import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from ea_core.errors import ConfigError, ModelError  # noqa: E402
from ea_core.metrics import macro_f1  # noqa: E402
from ea_core.models import load_model, make_model  # noqa: E402
from ea_core.models.common import class_weights, imbalance_ratio, resolve_selection_metric  # noqa: E402
from ea_core.operating_point import choose_operating_point  # noqa: E402
from ea_core.router import StageOutput  # noqa: E402
from ea_core.runconfig import RunConfig  # noqa: E402
from ea_core.runfolder import save_arrays  # noqa: E402
from ea_core.runstate import StageRecord, rank_records  # noqa: E402
from ea_core.splits import Split  # noqa: E402
from ea_core.tuning import autotune  # noqa: E402
from tests.test_models import save_tiny_bert  # noqa: E402

LABELS = ["major", "mid", "rare"]
CUES = [["alpha", "apple", "arrow"], ["bravo", "banana", "bridge"], ["charlie", "cherry", "castle"]]
FILL = "the car drive road today city we it is a very new old blue green house tree".split()


def skewed(n: int, seed: int, props=(0.80, 0.15, 0.05), signal: float = 0.6, noise: float = 0.15) -> Split:
    """Fillers plus at most one cue word: the label's own cue with probability `signal`, any
    label's with probability `noise`, else none. The rare label's cue is then as often on a
    majority input as on a rare one: unweighted models answer the majority there."""
    rng = np.random.default_rng(seed)
    y = rng.choice(3, size=n, p=props)
    texts = []
    for c in y:
        words = list(rng.choice(FILL, 4))
        u = rng.random()
        src = c if u < signal else int(rng.integers(3)) if u < signal + noise else None
        if src is not None:
            words.insert(int(rng.integers(5)), str(rng.choice(CUES[src])))
        texts.append(" ".join(words))
    return Split(texts, y)


def recall(split: Split, pred: np.ndarray) -> np.ndarray:
    from sklearn.metrics import recall_score

    return recall_score(split.labels, pred, labels=[0, 1, 2], average=None, zero_division=0.0)


@pytest.fixture(scope="module")
def task() -> tuple[Split, Split, Split]:
    return skewed(900, 0), skewed(300, 1), skewed(400, 2)


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory: pytest.TempPathFactory) -> str:
    return save_tiny_bert(tmp_path_factory.mktemp("tiny_bert"))


# ---------------------------------------------------------------------------- the rule


def test_auto_rule_follows_the_imbalance_ratio():
    y = np.array([0] * 80 + [1] * 15 + [2] * 5)
    assert imbalance_ratio(y, 3) == 16.0
    w = class_weights(y, 3, "auto")
    assert w is not None and w[2] > w[1] > w[0]
    np.testing.assert_allclose(w, len(y) / (3 * np.bincount(y)))  # scikit-learn's "balanced"
    assert class_weights(y, 3, "auto", ratio=20.0) is None
    assert class_weights(y, 3, "none") is None
    even = np.array([0, 1, 2] * 10 + [0] * 5)  # 15:10:10 is below 3:1
    assert class_weights(even, 3, "auto") is None and class_weights(even, 3, "balanced") is not None
    assert resolve_selection_metric("auto", y, 3) == "macro_f1"
    assert resolve_selection_metric("auto", even, 3) == "accuracy"
    assert resolve_selection_metric("accuracy", y, 3) == "accuracy"
    with pytest.raises(ModelError, match="class_weight"):
        make_model("tfidf", class_weight="sometimes")


# ---------------------------------------------------------------------------- the models


def test_tfidf_weighting_raises_minority_recall_and_macro_f1(task, tmp_path):
    train, val, test = task
    plain = make_model("tfidf", class_weight="none", selection_metric="accuracy").fit(train, val, LABELS)
    weighted = make_model("tfidf").fit(train, val, LABELS)  # auto: 16:1 here, so balanced + macro-F1
    assert weighted.class_weight_ is not None and weighted.selection_metric_ == "macro_f1"
    p0, p1 = plain.predict(test), weighted.predict(test)
    r0, r1 = recall(test, p0), recall(test, p1)
    assert r0[2] < 0.2, "the unweighted model should nearly never answer the rare class"
    assert r1[2] >= r0[2] + 0.2
    assert macro_f1(test.labels, p1, 3) >= macro_f1(test.labels, p0, 3) + 0.05  # measured 0.52 -> 0.58
    # the settings are saved; a model.json from before them still loads (with the defaults)
    weighted.save(tmp_path / "m")
    meta = json.loads((tmp_path / "m" / "model.json").read_text())
    assert meta["config"]["class_weight"] == "auto" and meta["config"]["selection_metric"] == "auto"
    for key in ("class_weight", "imbalance_ratio", "selection_metric"):
        del meta["config"][key]
    (tmp_path / "m" / "model.json").write_text(json.dumps(meta))
    old = load_model(tmp_path / "m")
    assert old.class_weight == "auto"
    np.testing.assert_allclose(old.predict_proba(test), weighted.predict_proba(test))


@pytest.mark.slow
def test_head_weighting_raises_minority_recall_and_macro_f1(task, tiny_dir, tmp_path):
    from ea_core.models.memory import EmbeddingMemory

    train, val, test = task
    memory = EmbeddingMemory()  # both heads share one set of embeddings: the encoder runs once
    common = dict(hidden=0, epochs=25, patience=25, use_cache=False)
    plain = make_model(f"head:{tiny_dir}", class_weight="none", selection_metric="accuracy", **common)
    weighted = make_model(f"head:{tiny_dir}", class_weight="balanced", selection_metric="macro_f1", **common)
    for model in (plain, weighted):
        model.memory = memory
        model.fit(train, val, LABELS)
    p0, p1 = plain.predict(test), weighted.predict(test)
    r0, r1 = recall(test, p0), recall(test, p1)
    assert r0[2] < 0.2 and r1[2] >= r0[2] + 0.25
    # balanced accuracy (mean recall) rises (measured over 4 encoder seeds: +0.02 to +0.13; this
    # encoder is seed 0, +0.02). Macro-F1 need not: on these weak random-encoder features the
    # weighted head gives up much majority recall.
    assert r1.mean() > r0.mean()
    # early stopping kept the epoch with the best validation macro-F1, not the best accuracy
    scores = [h["val_score"] for h in weighted.history_]
    assert weighted.best_val_score_ == pytest.approx(max(scores))
    assert all(h["metric"] == "macro_f1" for h in weighted.history_)


# ---------------------------------------------------------------------------- ranking and tuning


def _record(folder, name: str, val_pred: np.ndarray) -> StageRecord:
    folder.mkdir(parents=True)
    proba = np.eye(3)[val_pred]
    save_arrays(folder / "outputs.npz", train=proba[:1], val=proba, test=proba)
    y_acc = 0.0  # the ranking must not read the stored accuracy
    return StageRecord(name=name, folder=folder, val_accuracy=y_acc, test_accuracy=y_acc, train_time_s=0.0,
                       peak_rss_mb=0.0, trained_on=1)


def test_ranking_follows_the_selection_metric(tmp_path):
    y = np.array([0] * 90 + [1] * 7 + [2] * 3)
    majority = np.zeros(100, dtype=int)  # 90% accuracy, macro-F1 0.32
    balanced = y.copy()
    balanced[:20] = 1  # 80% accuracy, but every class found
    recs = [_record(tmp_path / "a", "majority", majority), _record(tmp_path / "b", "balanced", balanced)]
    assert [r.name for r in rank_records(recs, y, "accuracy", 3)] == ["majority", "balanced"]
    assert [r.name for r in rank_records(recs, y, "macro_f1", 3)] == ["balanced", "majority"]


def _cascade(scale: int = 1) -> tuple[list[StageOutput], np.ndarray]:
    """A small model that always answers 'major', and an LM right on the rare class but wrong on
    the inputs the small model is least sure of. Sending the mid-confidence inputs to the LM costs
    accuracy (0.90 -> 0.85) and gains balanced accuracy (0.50 -> 0.92)."""
    y = np.array(([0] * 30 + [1] * 20 + [0] * 150) * scale)
    conf = np.array(([0.5] * 30 + [0.7] * 20 + [0.9] * 150) * scale)
    lm = np.where(np.arange(len(y)) % 200 < 30, 1, y)
    return [StageOutput("ssm", np.zeros(len(y), dtype=int), conf),
            StageOutput("lm", lm, np.ones(len(y)), is_lm=True)], y


def test_threshold_tuning_follows_the_selection_metric():
    stages, y = _cascade()
    by_acc = autotune(stages, y)
    by_f1 = autotune(stages, y, metric="macro_f1")
    assert by_acc.accuracy == pytest.approx(0.90) and by_acc.lm_call_rate == 0.0
    assert by_f1.accuracy == pytest.approx(0.85) and by_f1.lm_call_rate == pytest.approx(0.25)
    with pytest.raises(ConfigError, match="metric"):
        autotune(stages, y, metric="auto")


def test_operating_point_choice_follows_the_selection_metric():
    stages, y = _cascade(scale=3)
    candidates = {"ssm": [0], "full": [0, 1]}
    assert choose_operating_point(stages, y, candidates).system == "ssm"
    chosen = choose_operating_point(stages, y, candidates, metric="macro_f1")
    assert chosen.system == "full" and chosen.detail["metric"] == "macro_f1"
    assert chosen.detail["crossfit_score"]["full"] > chosen.detail["crossfit_score"]["ssm"]


# ---------------------------------------------------------------------------- config and results


def test_run_config_round_trip_and_old_configs():
    cfg = RunConfig(data="x.csv", ssm=["tfidf"], selection_metric="macro_f1", class_weight="none",
                    imbalance_ratio=5.0)
    back = RunConfig.from_dict(json.loads(json.dumps(cfg.to_dict())))
    assert back == cfg and back.selection_metric == "macro_f1" and back.imbalance_ratio == 5.0
    old = cfg.to_dict()
    for key in ("selection_metric", "class_weight", "imbalance_ratio"):
        del old[key]
    legacy = RunConfig.from_dict(old)
    assert (legacy.selection_metric, legacy.class_weight, legacy.imbalance_ratio) == ("auto", "auto", 3.0)
    assert legacy.model_settings("tfidf") == {}  # defaults add nothing: old runs keep their fingerprints
    assert cfg.model_settings("head:minilm") == {"selection_metric": "macro_f1", "class_weight": "none",
                                                 "imbalance_ratio": 5.0}
    with pytest.raises(ConfigError, match="selection-metric"):
        RunConfig(data="x.csv", ssm=["tfidf"], selection_metric="f1").validate()


def test_cli_flag_reaches_the_config():
    from ea_core.cli import _config_from_args, build_parser

    args = build_parser().parse_args(["train", "--data", "x.csv", "--ssm", "tfidf", "--selection-metric", "macro_f1",
                                      "--class-weight", "balanced"])
    cfg = _config_from_args(args, lm=False)
    assert cfg.selection_metric == "macro_f1" and cfg.class_weight == "balanced"
    demo = build_parser().parse_args(["demo", "--selection-metric", "accuracy"])
    assert demo.selection_metric == "accuracy"


def test_report_rows_carry_per_class_recall(fruit_run):
    from ea_core.report import format_table
    from ea_core.runstate import open_run

    state = open_run(fruit_run[1])
    rows = json.loads((fruit_run[1] / "results.json").read_text())["rows"]
    labels = state.task.labels
    for row in rows:
        for split in ("val", "test"):
            rec = row[f"{split}_recall"]
            assert list(rec) == labels
            y = state.task.split(split).labels
            # recall weighted by class share is accuracy
            share = np.bincount(y, minlength=len(labels)) / len(y)
            got = sum(s * (r or 0.0) for s, r in zip(share, rec.values()))
            assert got == pytest.approx(row[f"{split}_accuracy"] if row["system"] != "oracle" else got)
        if row["system"] != "oracle":
            assert 0.0 <= row["val_macro_f1"] <= 1.0
    assert "val macro-F1" in format_table(rows) and "test macro-F1" in format_table(rows)
    assert state.tuning["ea"]["selection_metric"] in ("accuracy", "macro_f1")


def test_results_page_shows_recall_per_class():
    from pages.results import recall_table

    rows = [{"system": "tfidf", "test_recall": {"a": 1.0, "b|c": 0.0}, "val_recall": {"a": 0.9, "b|c": 0.1}},
            {"system": "oracle", "test_recall": {"a": 1.0, "b|c": 1.0}}]
    table = recall_table(rows, ["a", "b|c"])
    assert "| tfidf | 100.0% (90.0%) | 0.0% (10.0%) |" in table
    assert "b\\|c" in table and "oracle" not in table
