"""Issue 9: a rerun pays nothing on any endpoint, money caps that hold, honest LM confidences.

Runs the `run` command against a scripted OpenAI-compatible server on 127.0.0.1 (tests/fruit.py's
three-class task, whose hard and underfit examples are known by construction).
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from ea_core.cli import main
from tests.fruit import LABELS, calls_per_item, lm_answer, make_task
from tests.scripted_server import ScriptedServer

ROOT = Path(__file__).resolve().parents[1]
KEY_ENV = "EA_TEST_KEY"


def run_args(data: Path, srv: ScriptedServer, out: Path, *extra: str) -> list[str]:
    return ["run", "--data", str(data), "--ssm", "tfidf", "--lm", "openai", "--lm-model", "test-model",
            "--lm-base-url", srv.url, "--lm-key-env", KEY_ENV, "--concurrency", "4", "--out", str(out), *extra]


def cli(argv: list[str]) -> tuple[int, str]:
    """Run the CLI in this process; its exit code and what it wrote to stderr."""
    err = io.StringIO()
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(err):
        code = main(argv)
    return code, err.getvalue()


@pytest.fixture
def fruit(tmp_path, monkeypatch) -> Path:
    monkeypatch.setenv(KEY_ENV, "sk-test-key")
    data = tmp_path / "fruit.csv"
    make_task(data)
    return data


@pytest.mark.parametrize("extra", [(), ("--few-shot", "1", "--oof-folds", "3", "--concurrency", "8")])
def test_a_rerun_pays_nothing_on_an_endpoint_that_ignores_logprobs_and_structured_output(tmp_path, fruit, extra):
    gold = {line.split(",")[0]: line.split(",")[1] for line in fruit.read_text().splitlines()[1:]}
    with ScriptedServer(gold, labels=LABELS, answer_fn=lm_answer, ignores_logprobs=True,
                        ignores_response_format=True) as srv:
        code, err = cli(run_args(fruit, srv, tmp_path / "runs" / "one", *extra))
        assert code == 0, err
        first = srv.count
        assert first > 0 and max(calls_per_item(srv).values()) == 1  # each input bought once
        summary = json.loads((tmp_path / "runs" / "one" / "summary.json").read_text())
        assert summary["lm_with_confidence"]["val"]["with_confidence"] == 0  # log-probs ignored
        assert summary["lm_with_confidence"]["val"]["answers"] > 0
        # The same command again (a finished run), then a fresh run folder on the same cache.
        for out in ("one", "two"):
            code, err = cli(run_args(fruit, srv, tmp_path / "runs" / out, *extra))
            assert code == 0, err
            assert srv.count == first, f"run {out!r} paid again"


def test_an_answer_is_found_again_whatever_a_later_probe_learns(tmp_path):
    """Log-probs sent with the first answers, then no more (a model swapped behind the endpoint):
    the provider learns 'no log-probs' half way, and the next run still finds every answer."""
    from ea_core.llm.cache import AnswerCache
    from tests.scripted_server import LABELS as L3, Fault, make_inputs, provider_for

    inputs, gold = make_inputs(12)
    faults = [Fault("no_logprobs", match="number 0006")]
    with ScriptedServer(gold, faults=faults) as srv:
        first = provider_for(srv, AnswerCache(tmp_path / "c.sqlite"), concurrency=1)
        answers, _ = first.classify(inputs, L3)
        assert srv.count == len(inputs) and first.gives_confidence is False
        assert answers[0].confidence is not None and answers[-1].confidence is None
        _, usage = provider_for(srv, AnswerCache(tmp_path / "c.sqlite")).classify(inputs, L3)
        assert srv.count == len(inputs) and usage.cache_hits == len(inputs)


# ---------------------------------------------------------------------------------------- money


def test_every_preset_example_model_has_a_price_or_is_marked_unknown():
    from ea_core.llm import PRESETS, PriceTable, is_local_url, price_known

    for preset in PRESETS.values():
        known = is_local_url(preset.base_url) or PriceTable().known(preset.example_model)
        assert known != preset.example_price_unknown, preset.name
        assert price_known(preset.name) == known, preset.name


@pytest.mark.parametrize("cap", [["--budget-usd", "1"], ["--max-cost-per-1k", "0"]])
def test_a_money_cap_on_an_unknown_price_refuses_to_start_and_says_how_to_give_one(tmp_path, fruit, cap):
    with ScriptedServer({}) as srv:
        argv = run_args(fruit, srv, tmp_path / "runs" / "x", *cap)
        argv[argv.index("--lm-base-url") + 1] = "https://llm.example.com/v1"  # a paid endpoint
        code, err = cli(argv)
        assert code == 2 and cap[0] in err and "--price-in" in err and "price fields" in err
        assert srv.count == 0 and not (tmp_path / "runs" / "x" / "stages").exists()
        # With the price given, the same settings pass the check (and reach the run's config).
        from ea_core.cli import _config_from_args, build_parser
        from ea_core.runconfig import check_money_caps

        cfg = _config_from_args(build_parser().parse_args(argv + ["--price-in", "0.5", "--price-out", "2"]), lm=True)
        assert (cfg.price_in, cfg.price_out) == (0.5, 2.0)
        check_money_caps(cfg)


@pytest.mark.slow
def test_spend_recorded_per_answer_holds_the_budget_across_a_kill_9_and_a_resume(tmp_path, fruit):
    """Killed mid-mining, the resumed run's budget counts the money the killed one paid."""
    gold = {line.split(",")[0]: line.split(",")[1] for line in fruit.read_text().splitlines()[1:]}
    budget, price = 1.0, 1000.0  # USD; USD per 1M tokens: ~0.1 USD a call, ~10 calls in the budget
    with ScriptedServer(gold, labels=LABELS, answer_fn=lm_answer, latency_s=0.05) as srv:
        out = tmp_path / "runs" / "k"
        argv = run_args(fruit, srv, out, "--oof-folds", "3", "--concurrency", "1", "--budget-usd", str(budget),
                        "--price-in", str(price), "--price-out", str(price))
        cmd = [sys.executable, "-m", "ea_core", *argv]
        env = {**os.environ, KEY_ENV: "sk-test-key"}
        ledger = out / "lm" / "spend.jsonl"

        def spent() -> float:
            return sum(json.loads(x)["usd"] for x in ledger.read_text().splitlines()) if ledger.is_file() else 0.0

        proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.time() + 180
        while spent() < 0.4 * budget and time.time() < deadline and proc.poll() is None:
            time.sleep(0.02)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        paid_before = spent()
        assert 0.4 * budget <= paid_before < budget  # killed mid-mining, the ledger holds what was paid
        assert len(ledger.read_text().splitlines()) >= srv.count - 1  # every answer but the one in flight
        res = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
        assert res.returncode == 0, res.stderr
        per_call = max((sum(len(str(m.get("content", ""))) for m in r.body["messages"]) // 4 + 20) * price / 1e6
                       for r in srv.requests)
        assert spent() > paid_before  # the resumed run bought more ...
        assert spent() <= budget + per_call  # ... but only up to the run's budget (one call in flight)
        assert "budget" in res.stdout.lower()


# ------------------------------------------------------------------------------- LM confidence


def test_an_lm_answer_without_confidence_is_not_treated_as_certain_in_the_run_or_the_live_system():
    import numpy as np

    from ea_core.llm.base import MISSING_CONFIDENCE, LMAnswer
    from ea_core.runstate import lm_confidence_counts, lm_stage_output
    from ea_core.system import lm_confidence

    answers = [LMAnswer(label=0, confidence=0.93), LMAnswer(label=1), LMAnswer(label=-1), LMAnswer(label=-2)]
    arrays = {"label": np.array([a.label for a in answers]), "cost_usd": np.zeros(4),
              "confidence": np.array([np.nan if a.confidence is None else a.confidence for a in answers])}
    routed = lm_stage_output(arrays).conf
    assert list(routed) == [0.93, MISSING_CONFIDENCE, 0.0, 0.0] and MISSING_CONFIDENCE < 1
    assert [lm_confidence(a) for a in answers] == list(routed)  # one rule, run and live system alike
    assert lm_confidence_counts({"val": arrays}) == {"val": {"answers": 2, "with_confidence": 1}}


def test_usage_counts_the_answers_that_carried_a_confidence():
    from tests.scripted_server import LABELS as L3, Fault, make_inputs, provider_for

    inputs, gold = make_inputs(6)
    with ScriptedServer(gold, faults=[Fault("no_logprobs", match="number 0003")]) as srv:
        _, usage = provider_for(srv, concurrency=1).classify(inputs, L3)
    assert usage.with_confidence == 3  # answers 0-2; from 3 on the endpoint sent no log-probs


# ------------------------------------------------------------------------------- no label leaks


def test_few_shot_examples_are_not_mining_candidates_and_not_asked(tmp_path, fruit):
    """The LM sees the few-shot examples' labels in its prompt: asking it about them (in mining or
    in the EA(Full) ablation) would score a leak as skill."""
    from ea_core.llm.prompt import select_example_rows
    from ea_core.pipeline import Pipeline
    from ea_core.runconfig import RunConfig
    from tests.fruit import is_hard, item

    gold = {line.split(",")[0]: line.split(",")[1] for line in fruit.read_text().splitlines()[1:]}
    with ScriptedServer(gold, labels=LABELS, answer_fn=lm_answer) as srv:
        cfg = RunConfig(data=str(fruit), ssm=["tfidf"], lm="openai", lm_model="test-model", lm_base_url=srv.url,
                        lm_key_env=KEY_ENV, oof_folds=3, concurrency=4, few_shot=10, ea_full=True)
        state = Pipeline(cfg, tmp_path / "runs" / "fs").run()
        shown = select_example_rows(state.task.train, state.task.labels, 10, cfg.seed)
        shown_items = {item(state.task.train.texts[i]) for i in shown}
        assert len(shown) == 30 and any(map(is_hard, shown_items))  # some would have been SSM-wrong
        assert not set(state.mining.candidates) & set(shown)
        assert state.mining.summary()["shown_as_examples"] == 30
        asked = {item(r.text) for r in srv.requests}
        assert asked and not asked & shown_items  # neither in mining nor in EA(Full)
        assert any(item(t) in asked for t in state.task.train.texts)  # (the train split was asked)


def test_run_mines_with_out_of_fold_outputs_by_default_as_demo_does():
    from ea_core.cli import _config_from_args, build_parser
    from ea_core.mining import DEFAULT_OOF_FOLDS
    from ea_core.runconfig import RunConfig

    args = build_parser().parse_args(["run", "--data", "x.csv", "--ssm", "tfidf", "--lm", "openai"])
    assert _config_from_args(args, lm=True).oof_folds == DEFAULT_OOF_FOLDS >= 2
    assert RunConfig(data="x.csv", ssm=["tfidf"]).oof_folds == DEFAULT_OOF_FOLDS


def test_answers_cached_under_the_old_probe_dependent_keys_are_still_found(tmp_path):
    """Caches written before keys stopped following the probe: their answers are not bought again."""
    from ea_core.llm.cache import AnswerCache, CachedAnswer, make_key
    from tests.scripted_server import LABELS as L3, make_inputs, provider_for

    inputs, gold = make_inputs(5)
    with ScriptedServer(gold, ignores_logprobs=True) as srv:
        cache = AnswerCache(tmp_path / "c.sqlite")
        p = provider_for(srv, cache)
        cache.set_capability(p.base_url, p.model, "logprobs", False)  # what the old run had learnt
        p._load_caps()
        old_settings = p._settings(L3, p._mode())
        for (text, _), label in zip(inputs, gold.values()):
            key = make_key(p.base_url, p.model, p.prompt.render(text, None, L3), old_settings)
            cache.put(key, CachedAnswer(label, None, label))
        answers, usage = provider_for(srv, AnswerCache(tmp_path / "c.sqlite")).classify(inputs, L3)
        assert srv.count == 0 and usage.cache_hits == 5
        assert [L3[a.label] for a in answers] == list(gold.values())
        assert provider_for(srv, AnswerCache(tmp_path / "c.sqlite")).estimate(inputs, L3).calls == 0
