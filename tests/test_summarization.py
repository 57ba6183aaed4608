"""Summarization as a task kind: the router on (confidence, quality), ROUGE, data, models, the LM
prompt against the scripted server, mining and the end-to-end engine (no network, no key)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from ea_core.calibration import quality_calibration
from ea_core.data.summaries import load_aclsum, load_summaries, split_sentences
from ea_core.errors import ConfigError, DataError
from ea_core.llm.summarize import OpenAISummaryLM, SummaryLM, render_prompt
from ea_core.operating_point import choose_operating_point
from ea_core.rouge import rouge, rouge_l
from ea_core.router import StageOutput, StageStack, synthetic_stages
from ea_core.tuning import autotune, pareto_front, val_test_report
from tests.scripted_server import ScriptedServer


# -- the generalisation: classification is quality = 1 where the label is right -----------------
def graded_twin(stages: list[StageOutput], y: np.ndarray) -> list[StageOutput]:
    return [StageOutput.graded(s.name, s.conf, (s.pred == y).astype(float), is_lm=s.is_lm, cost_usd=s.cost_usd)
            for s in stages]


def test_labels_are_the_special_case_of_quality() -> None:
    stages, y = synthetic_stages(1500, 4, 3, seed=3)
    graded = graded_twin(stages, y)
    for budget in (0.1, 0.3, 0.6):
        a, b = autotune(stages, y, max_lm_rate=budget), autotune(graded, None, max_lm_rate=budget)
        assert a.thresholds == b.thresholds and a.accuracy == pytest.approx(b.accuracy)
    fa, fb = pareto_front(stages, y), pareto_front(graded, None)
    assert [p.accuracy for p in fa] == pytest.approx([p.accuracy for p in fb])
    ca = choose_operating_point(stages, y, {"ssm": [0], "full": [0, 1, 2, 3]}, max_lm_rate=0.3)
    cb = choose_operating_point(graded, None, {"ssm": [0], "full": [0, 1, 2, 3]}, max_lm_rate=0.3)
    assert (ca.system, ca.thresholds) == (cb.system, cb.thresholds)
    ma = StageStack(stages, y).evaluate(ca.thresholds)
    mb = StageStack(graded).evaluate(ca.thresholds)
    assert ma.accuracy == pytest.approx(mb.accuracy) and ma.oracle_accuracy == pytest.approx(mb.oracle_accuracy)
    assert ma.shares == mb.shares and ma.cost_per_1k_usd == pytest.approx(mb.cost_per_1k_usd)


def test_graded_routing_scores_mean_quality_and_oracle() -> None:
    conf = [np.array([0.9, 0.2, 0.8]), np.ones(3)]
    q = [np.array([0.5, 0.1, 0.3]), np.array([0.2, 0.6, 0.4])]
    st = [StageOutput.graded("ext", conf[0], q[0]), StageOutput.graded("lm", conf[1], q[1], is_lm=True)]
    m = StageStack(st).evaluate([0.5, 0.0])
    assert m.accuracy == pytest.approx((0.5 + 0.6 + 0.3) / 3)
    assert m.lm_call_rate == pytest.approx(1 / 3) and m.oracle_accuracy == pytest.approx((0.5 + 0.6 + 0.4) / 3)
    assert np.isnan(m.macro_f1)
    rep = val_test_report(st, None, st, None, [0.5, 0.0])
    assert rep["val"]["accuracy"] == pytest.approx(m.accuracy)


def test_graded_stages_refuse_bad_quality() -> None:
    with pytest.raises(ConfigError, match="qualities must be"):
        StageOutput.graded("x", [0.5, 0.5], [0.1, 1.7])
    with pytest.raises(ConfigError, match="missing on: lm"):
        StageStack([StageOutput.graded("x", [0.5], [0.1]), StageOutput("lm", [0], [1.0], is_lm=True)])
    with pytest.raises(ConfigError, match="quality"):
        _ = StageStack([StageOutput.graded("x", [0.5], [0.1])]).correct


def test_honest_rule_keeps_an_lm_that_is_better_where_the_small_model_is_unsure() -> None:
    rng = np.random.default_rng(0)
    n = 600
    hard = rng.random(n) < 0.3
    ssm_q = np.where(hard, 0.1, 0.4) + rng.normal(0, 0.03, n)
    conf = np.where(hard, 0.2, 0.7) + rng.normal(0, 0.05, n)
    lm_q = np.where(hard, 0.5, 0.3) + rng.normal(0, 0.03, n)
    st = [StageOutput.graded("ext", np.clip(conf, 0, 1), np.clip(ssm_q, 0, 1)),
          StageOutput.graded("lm", np.ones(n), np.clip(lm_q, 0, 1), is_lm=True)]
    choice = choose_operating_point(st, None, {"ssm": [0], "specific_layer": [0, 1]}, max_lm_rate=0.35)
    assert choice.system != "ssm" and choice.lm_call_rate <= 0.35 + 1e-9
    assert choice.val_accuracy > float(np.clip(ssm_q, 0, 1).mean()) + 0.05


# -- ROUGE, calibration ----------------------------------------------------------------------
def test_rouge_per_example_with_stemming() -> None:
    s = rouge(["the cats are running", ""], ["the cat runs", "anything"])
    assert s.rouge1[0] > 0.5 and s.rougeL[1] == 0.0
    assert rouge_l(["same text"], ["same text"])[0] == pytest.approx(1.0)
    with pytest.raises(ConfigError):
        rouge(["a"], [])


def test_quality_calibration_is_out_of_fold_and_monotone() -> None:
    rng = np.random.default_rng(1)
    raw = rng.random(200)
    q = np.clip(0.5 * raw + rng.normal(0, 0.05, 200), 0, 1)
    val, other = quality_calibration(raw, q, np.array([0.1, 0.9]))
    assert val.shape == (200,) and np.all((val >= 0) & (val <= 1))
    assert other[1] > other[0] and np.corrcoef(val, q)[0, 1] > 0.8


# -- data ------------------------------------------------------------------------------------
def test_aclsum_demo_reads_the_package_files() -> None:
    task = load_aclsum()
    assert (len(task.train), len(task.val), len(task.test)) == (300, 150, 300)  # 100 / 50 / 100 papers x 3 aspects
    assert set(task.train.instructions) == {"challenge", "approach", "outcome"}
    assert task.truncated > 0 and "truncated" in task.warnings[0]
    small = load_aclsum(max_val=5, max_source_words=20)
    assert len(small.val) == 5 and all(len(s.split()) <= 20 for s in small.val.sources)


def write_csv(path: Path, rows: list[dict]) -> str:
    import pandas as pd

    pd.DataFrame(rows).to_csv(path, index=False)
    return str(path)


def test_table_file_columns_detected_and_bad_input_named(tmp_path: Path) -> None:
    rows = [{"document": f"Sentence one of doc {i}. Sentence two here.", "summary": f"doc {i}"} for i in range(20)]
    task = load_summaries(write_csv(tmp_path / "ok.csv", rows), seed=1)
    assert len(task.train) + len(task.val) + len(task.test) == 20 and task.train.instructions[0] == ""
    with pytest.raises(DataError, match="no reference-summary column"):
        load_summaries(write_csv(tmp_path / "nosum.csv", [{"document": "a", "x": "b"}] * 8))
    with pytest.raises(DataError, match="empty reference summary"):
        load_summaries(write_csv(tmp_path / "empty.csv", rows[:7] + [{"document": "x y.", "summary": ""}]))
    with pytest.raises(DataError, match="empty in every row"):
        load_summaries(write_csv(tmp_path / "allempty.csv", [{"document": "x.", "summary": None}] * 8))
    bad = tmp_path / "bad.jsonl"
    bad.write_text("\n".join(json.dumps({"text": ["not", "text"], "summary": "s"}) for _ in range(8)))
    with pytest.raises(DataError):
        load_summaries(str(bad))
    with pytest.raises(DataError, match="no column 'nope'"):
        load_summaries(str(tmp_path / "ok.csv"), summary_column="nope")
    long = [{"text": "word " * 50 + ".", "summary": "s"} for _ in range(8)]
    assert load_summaries(write_csv(tmp_path / "long.csv", long), max_source_words=10).truncated == 8
    assert split_sentences("One here. Two there! three") == ["One here.", "Two there! three"]


# -- the LM: prompt, cache, budget, output tokens, against the scripted server ---------------
def test_openai_summary_lm_counts_output_tokens_caches_and_keeps_budget(tmp_path: Path) -> None:
    gold = {"Alpha beta gamma delta.": "alpha beta", "Epsilon zeta eta.": "epsilon zeta"}
    with ScriptedServer(gold) as srv:
        lm = OpenAISummaryLM(srv.url, "m", api_key="k", price_in_per_1m=1.0, price_out_per_1m=10.0,
                             cache_path=str(tmp_path / "c.sqlite"))
        out = lm.summarize(list(gold), ["", "outcome"])
        assert out.texts == ["alpha beta", "epsilon zeta"] and out.calls == 2 and out.completion_tokens > 0
        assert out.cost_usd == pytest.approx(sum(out.cost_per_example)) and out.cost_usd > 0
        assert np.all((out.confidence > 0) & (out.confidence <= 1))
        again = lm.summarize(list(gold), ["", "outcome"])
        assert again.cached == 2 and again.calls == 0 and srv.count == 2
        poor = OpenAISummaryLM(srv.url, "m", api_key="k", price_out_per_1m=1e6, budget_usd=1e-3)
        with pytest.raises(Exception, match="budget"):
            poor.summarize(["Something new entirely."], [""])
    assert "the outcome" in render_prompt("src", "outcome") and "src" in render_prompt("src")


# -- models and the engine -------------------------------------------------------------------
def test_tiny_seq2seq_trains_and_generates_with_confidence() -> None:
    from ea_core.models.seq2seq import Seq2SeqSummarizer

    task = load_aclsum(max_train=6, max_val=3, max_test=3, max_source_words=30)
    m = Seq2SeqSummarizer("tiny", from_config=dict(d_model=16, d_ff=32, num_layers=1, num_heads=2, d_kv=8),
                          epochs=1, max_target_tokens=6, max_source_tokens=64)
    out = m.fit(task.train).summarize(task.val)
    assert len(out.texts) == 3 and np.all((out.raw_conf >= 0) & (out.raw_conf <= 1)) and m.losses_


class ScriptedSummaries(SummaryLM):
    """A generation LM that writes the reference on inputs `good` says, the source's last words elsewhere."""

    def __init__(self, task, good) -> None:  # noqa: ANN001
        super().__init__()
        self.model = self.endpoint = "scripted"
        self.answers = {}
        for split in (task.train, task.val, task.test):
            for s, i, r in zip(split.sources, split.instructions, split.references):
                self.answers[render_prompt(s, i)] = (r if good(s, i) else " ".join(s.split()[-12:]))

    def _generate(self, prompts):  # noqa: ANN001, ANN202
        return [(self.answers[p], 0.8, 100, 20) for p in prompts]


def test_engine_end_to_end_rows_and_mining(tmp_path: Path) -> None:
    from ea_core.summarization import run_summarization, write_summarization

    task = load_aclsum(max_train=45, max_val=30, max_test=30)
    lm = ScriptedSummaries(task, lambda s, i: i == "challenge")
    res = run_summarization(task, lm, ssms=("lead",), max_lm_rate=0.5, full=False)
    rows = {r["system"]: r for r in res.rows}
    assert {"lm", "lead", "specific_layer", "ea", "oracle"} <= set(rows)
    for r in rows.values():
        for key in ("val_rouge1", "val_rouge2", "val_rougeL", "test_rouge1", "test_rouge2", "test_rougeL"):
            assert 0.0 <= r[key] <= 1.0
    assert rows["oracle"]["test_rougeL"] >= max(rows["lm"]["test_rougeL"], rows["lead"]["test_rougeL"]) - 1e-9
    assert res.mining["underfit"] <= res.mining["lm_asked"] <= res.mining["ssms_missed"] <= 45
    path = write_summarization(res, tmp_path)
    data = json.loads(path.read_text())
    assert data["task_kind"] == "summarization" and data["rows"][0]["system"] == "lm"


def test_cli_bad_summary_file_is_a_clear_error(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    from ea_core.cli import main

    path = write_csv(tmp_path / "nosum.csv", [{"document": "a b.", "x": "b"}] * 8)
    assert main(["summarize", "--data", path, "--out", str(tmp_path / "o")]) == 2
    assert "no reference-summary column" in capsys.readouterr().err


def test_bundle_carries_the_task_kind_and_predict_writes_summary_stage_confidence(tmp_path: Path) -> None:
    from ea_core.cli import main
    from ea_core.summarization import run_summarization
    from ea_core.summary_bundle import export_summary_bundle, is_summary_bundle

    task = load_aclsum(max_train=24, max_val=24, max_test=12)
    gold = {s: r for s, r in zip(task.val.sources + task.test.sources + task.train.sources,
                                  task.val.references + task.test.references + task.train.references)}
    with ScriptedServer(gold) as srv:
        lm = OpenAISummaryLM(srv.url, "m", api_key="k", cache_path=str(tmp_path / "c.sqlite"))
        res = run_summarization(task, lm, ssms=("lead",), max_lm_rate=1.0, full=False)
        bundle = export_summary_bundle(res, lm.settings(), tmp_path / "bundle")
        assert is_summary_bundle(bundle)
        meta = json.loads((bundle / "bundle.json").read_text())
        assert meta["task"]["kind"] == "summarization" and "api_key" not in json.dumps(meta)
        inputs = write_csv(tmp_path / "in.csv", [{"text": s, "aspect": i} for s, i in
                                                  zip(task.test.sources[:6], task.test.instructions[:6])])
        assert main(["predict", "--bundle", str(bundle), "--input", inputs, "--output", str(tmp_path / "o.csv"),
                     "--lm-base-url", srv.url]) == 0
        assert main(["predict", "--bundle", str(bundle), "--input", inputs, "--output", str(tmp_path / "n.csv"),
                     "--no-lm"]) == 0
    import pandas as pd

    out, no_lm = pd.read_csv(tmp_path / "o.csv"), pd.read_csv(tmp_path / "n.csv")
    assert list(out.columns[-3:]) == ["summary", "stage", "confidence"] and len(out) == 6
    assert set(out["stage"]) <= set(meta_stage["name"] for meta_stage in meta["stages"])
    assert set(no_lm["stage"]) == {"lead"}


def test_extractive_scorer_learns_oracle_sentences_and_reloads(tmp_path: Path) -> None:
    from ea_core.models.summarizers import ExtractiveSummarizer, oracle_sentences
    from ea_core.models.summary_io import load_summarizer

    assert oracle_sentences(["The cat sat.", "Dogs bark loudly.", "Birds fly."], "dogs bark") == [1]
    task = load_aclsum(max_train=24, max_val=9, max_test=6)
    m = ExtractiveSummarizer(epochs=5).fit(task.train, task.val)
    before = m.summarize(task.test)
    m.save(tmp_path / "ext")
    after = load_summarizer(tmp_path / "ext").summarize(task.test)
    assert after.texts == before.texts and np.allclose(after.raw_conf, before.raw_conf, atol=1e-5)
    assert all(t in s for t, s in zip(after.texts, task.test.sources))


def test_cli_summarize_against_the_scripted_server_writes_the_fixed_rows(tmp_path: Path, monkeypatch) -> None:  # noqa: ANN001
    from ea_core.cli import main

    task = load_aclsum(max_train=30, max_val=15, max_test=15)
    rows = [{"document": s, "summary": r, "aspect": i} for split in (task.train, task.val, task.test)
            for s, r, i in zip(split.sources, split.references, split.instructions)]
    path = write_csv(tmp_path / "d.csv", rows)
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test")
    with ScriptedServer({r["document"]: r["summary"] for r in rows}) as srv:
        code = main(["summarize", "--data", path, "--summary-ssm", "lead", "--summary-lm", srv.url,
                     "--summary-lm-model", "m", "--price-out", "2.0", "--out", str(tmp_path / "run")])
    assert code == 0
    data = json.loads((tmp_path / "run" / "results.json").read_text())
    systems = {r["system"]: r for r in data["rows"]}
    assert {"lm", "lead", "specific_layer", "ea"} <= set(systems) and data["task_kind"] == "summarization"
    assert all(f"{sp}_{k}" in systems["ea"] for sp in ("val", "test") for k in ("rouge1", "rouge2", "rougeL"))
    assert data["mining"]["lm_output_tokens"] > 0 and data["mining"]["lm_cost_usd"] > 0
    assert (tmp_path / "run" / "bundle" / "bundle.json").is_file()


def test_a_shared_servers_endpoint_allow_list_applies_to_the_summary_lm() -> None:
    from ea_core.llm.endpoints import EndpointPolicy

    policy = EndpointPolicy.parse(["api.example.com"])
    with pytest.raises(ConfigError, match="not among the endpoints"):
        OpenAISummaryLM("http://10.0.0.7:8000/v1", "m", endpoint_policy=policy)


@pytest.mark.slow
def test_demo_aclsum_cli_end_to_end_writes_the_fixed_rows(tmp_path: Path) -> None:
    """The fixed surface, not mocked: ``python -m ea_core demo --data demo:aclsum`` with the packaged
    SmolLM2 as the LM (small caps so it stays a couple of minutes on CPU)."""
    import subprocess
    import sys

    out = tmp_path / "demo"
    proc = subprocess.run([sys.executable, "-m", "ea_core", "demo", "--data", "demo:aclsum", "--out", str(out),
                           "--max-train", "30", "--max-val", "12", "--max-test", "12", "--mine-lm-max", "4"],
                          capture_output=True, text=True, timeout=900, cwd=Path(__file__).resolve().parents[1])
    assert proc.returncode == 0, proc.stderr[-2000:]
    data = json.loads((out / "results.json").read_text())
    assert data["task_kind"] == "summarization"
    rows = {r["system"]: r for r in data["rows"]}
    assert {"lm", "extractive", "lead", "specific_layer", "ea", "oracle"} <= set(rows)
    keys = [f"{sp}_{k}" for sp in ("val", "test") for k in ("rouge1", "rouge2", "rougeL")]
    for name, row in rows.items():
        assert all(0.0 <= row[k] <= 1.0 for k in keys), name
    assert rows["lm"]["test_lm_call_rate"] == 1.0 and 0.0 <= rows["ea"]["test_lm_call_rate"] <= 1.0
    assert rows["oracle"]["test_rougeL"] >= max(rows[s]["test_rougeL"] for s in ("lm", "extractive", "lead")) - 1e-9
    assert data["mining"]["lm_calls"] > 0 and "test R-L" in proc.stdout
    assert (out / "bundle" / "bundle.json").is_file()


def test_predict_on_a_summary_bundle_names_bad_input_without_a_traceback(tmp_path: Path,
                                                                         capsys: pytest.CaptureFixture) -> None:
    from ea_core.cli import main
    from ea_core.summarization import run_summarization
    from ea_core.summary_bundle import export_summary_bundle

    task = load_aclsum(max_train=18, max_val=18, max_test=6)
    gold = dict(zip(task.train.sources + task.val.sources + task.test.sources,
                    task.train.references + task.val.references + task.test.references))
    with ScriptedServer(gold) as srv:
        lm = OpenAISummaryLM(srv.url, "m", api_key="k")
        res = run_summarization(task, lm, ssms=("lead",), max_lm_rate=1.0, full=False)
    bundle = str(export_summary_bundle(res, lm.settings(), tmp_path / "bundle"))
    good = write_csv(tmp_path / "in.csv", [{"text": s} for s in task.test.sources[:3]])

    def predict(*extra: str) -> str:
        assert main(["predict", "--bundle", bundle, "--output", str(tmp_path / "o.csv"), *extra]) == 2
        err = capsys.readouterr().err
        assert "Traceback" not in err and err.startswith("error: ")
        return err

    assert "give a CSV" in predict("--input", str(tmp_path / "missing.csv"), "--no-lm")
    assert "no source-text column" in predict("--input", write_csv(tmp_path / "x.csv", [{"body": "a"}]), "--no-lm")
    assert "no column 'nope'" in predict("--input", good, "--text-col", "nope", "--no-lm")
    assert "empty 'text' text" in predict("--input", write_csv(tmp_path / "e.csv", [{"text": "A b."}, {"text": ""}]),
                                          "--no-lm")
    assert "never chooses where your key is sent" in predict("--input", good)  # the bundle's endpoint, untrusted
    meta = json.loads((Path(bundle) / "bundle.json").read_text())
    (Path(bundle) / "bundle.json").write_text(json.dumps({**meta, "stages": []}))
    assert "non-empty list" in predict("--input", good, "--no-lm")


def test_rows_carry_table_2s_time_memory_and_lm_spend() -> None:
    from ea_core.summarization import format_summary_table, run_summarization

    task = load_aclsum(max_train=30, max_val=15, max_test=15)
    lm = ScriptedSummaries(task, lambda s, i: i == "outcome")
    res = run_summarization(task, lm, ssms=("lead",), max_lm_rate=0.5, full=False)
    rows = {r["system"]: r for r in res.rows}
    assert rows["lm"]["lm_calls"] == 30 and rows["lead"]["lm_calls"] == 0
    assert rows["ea"]["lm_calls"] == 30 + res.mining["lm_asked"]  # validation, test and mining
    for name in ("lm", "lead", "specific_layer", "ea"):
        assert rows[name]["seconds"] >= 0 and rows[name]["peak_rss_mb"] > 0
    assert rows["ea"]["seconds"] >= rows["specific_layer"]["seconds"] and "peak MB" in format_summary_table(res.rows)


def test_cli_k_shot_prompt_carries_worked_examples(tmp_path: Path, monkeypatch, capsys) -> None:  # noqa: ANN001
    from ea_core.cli import main

    task = load_aclsum(max_train=20, max_val=10, max_test=10)
    rows = [{"document": s, "summary": r, "aspect": i} for split in (task.train, task.val, task.test)
            for s, r, i in zip(split.sources, split.references, split.instructions)]
    path = write_csv(tmp_path / "d.csv", rows)
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test")
    args = ["summarize", "--data", path, "--summary-ssm", "lead", "--summary-lm", "http://127.0.0.1:9/v1",
            "--summary-lm-model", "m", "--out", str(tmp_path / "bad")]
    assert main(args + ["--summary-shots", "-1"]) == 2 and "--summary-shots" in capsys.readouterr().err
    with ScriptedServer({r["document"]: r["summary"] for r in rows}) as srv:
        args[args.index("http://127.0.0.1:9/v1")] = srv.url
        assert main(args[:-1] + [str(tmp_path / "run"), "--summary-shots", "2"]) == 0
        loaded = load_summaries(path)  # the run's own split: its first two training examples are the shots
        shot = f"Summary: {loaded.train.references[0]}"
        assert srv.requests and all(shot in r.text for r in srv.requests)
    settings = json.loads((tmp_path / "run" / "bundle" / "bundle.json").read_text())["lm"]
    assert len(settings["shots"]) == 2  # predict asks the LM with the same prompt


def test_a_tampered_saved_summarizer_is_a_message_naming_its_file(tmp_path):
    """A bundle is untrusted: broken JSON, NaN or a non-integer setting is a ModelError naming the
    file, never a ValueError traceback."""
    import json as _json

    from ea_core.errors import ModelError
    from ea_core.models.summarizers import SUMMARIZER_JSON, LeadSummarizer
    from ea_core.models.summary_io import load_summarizer

    LeadSummarizer(2).save(tmp_path)
    assert load_summarizer(tmp_path).n_sentences == 2
    for text in ('{"kind": "lead", "n_sentences": "x"}', '{"kind": "lead", "n_sentences": NaN}',
                 '{"kind": "lead", "n_sentences": 0}', '{"kind": "lea'):
        (tmp_path / SUMMARIZER_JSON).write_text(text)
        with pytest.raises(ModelError, match=SUMMARIZER_JSON):
            load_summarizer(tmp_path)
    (tmp_path / SUMMARIZER_JSON).write_text(_json.dumps({"kind": "lead", "n_sentences": 1}))
    assert load_summarizer(tmp_path).n_sentences == 1


def test_a_hugging_face_dataset_by_name_is_read_with_its_usual_columns(monkeypatch) -> None:
    """`--data xsum` (online) stacks the dataset's splits and finds xsum's document/summary columns;
    the download alone is replaced here (no network), the objects are the real `datasets` ones."""
    import datasets

    docs = [f"Sentence one of article {i}. It says more about item {i}. A third line." for i in range(40)]
    sums = [f"article {i} in short" for i in range(40)]
    asked: list[tuple] = []

    def fake_load(*args, **kwargs):  # noqa: ANN002, ANN003
        asked.append(args)
        make = lambda lo, hi: datasets.Dataset.from_dict(  # noqa: E731
            {"document": docs[lo:hi], "summary": sums[lo:hi], "id": [str(i) for i in range(lo, hi)]})
        return datasets.DatasetDict({"train": make(0, 30), "validation": make(30, 35), "test": make(35, 40)})

    monkeypatch.setattr(datasets, "load_dataset", fake_load)
    task = load_summaries("xsum")
    assert asked == [("xsum",)]
    assert len(task.train) + len(task.val) + len(task.test) == 40
    assert set(task.train.references + task.val.references + task.test.references) == set(sums)
    monkeypatch.setattr(datasets, "load_dataset", lambda *a, **k: (_ for _ in ()).throw(ConnectionError("offline")))
    with pytest.raises(DataError, match="needs the internet"):
        load_summaries("samsum")


def test_the_summary_sliders_route_saved_arrays_and_refuse_damaged_ones() -> None:
    """`summary_explore`: thresholds route the saved (confidence, quality, cost) arrays like the
    router does; a stage array of the wrong length, a NaN or a missing stage is a message, not a crash."""
    from ea_core.errors import EAError
    from ea_core.summary_explore import explorer_from

    small = {"name": "extractive", "kind": "ssm", "val_confidence": [0.9, 0.2, 0.6, 0.1],
             "test_confidence": [0.8, 0.3], "val_quality": [0.5, 0.1, 0.4, 0.2], "test_quality": [0.6, 0.2],
             "val_cost": None, "test_cost": None}
    lm = {"name": "lm", "kind": "lm", "val_confidence": [0.5] * 4, "test_confidence": [0.5] * 2,
          "val_quality": [0.3, 0.5, 0.3, 0.6], "test_quality": [0.1, 0.7], "val_cost": [0.01] * 4, "test_cost": [0.01] * 2}
    rows = [{"system": "ea", "stages": ["extractive", "lm"], "thresholds": [0.5, 0.0]}]
    ex = explorer_from({"stages": [small, lm]}, rows)
    assert ex.sliders == ["extractive"]
    p = ex.evaluate([0.5])  # validation: inputs 0 and 2 stay with the small model, 1 and 3 go to the LM
    assert p.val.accuracy == pytest.approx((0.5 + 0.5 + 0.4 + 0.6) / 4) and p.val.lm_call_rate == 0.5
    assert p.test.accuracy == pytest.approx((0.6 + 0.7) / 2) and p.test.cost_per_1k_usd == pytest.approx(5.0)
    assert ex.evaluate([1.0]).val.lm_call_rate == 1.0 and ex.evaluate([0.0]).test.lm_call_rate == 0.0
    assert "Validation" in p.describe() and "lm 50%" in p.describe()
    for damaged, says in (({**small, "test_quality": [0.6]}, "1 values"),
                          ({**small, "val_confidence": [float("nan")] * 4}, "list of numbers"),
                          ({**small, "name": "other"}, "extractive")):
        with pytest.raises(EAError, match=says):
            explorer_from({"stages": [damaged, lm]}, rows)
