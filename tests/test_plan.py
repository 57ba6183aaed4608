"""`plan`: what a predict job or a run will take, before anything is spent (nothing calls the LM)."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import pytest

from ea_core.batch_predict import predict_file
from ea_core.cli import main
from ea_core.llm.batch_api import BATCH_PRICE_FACTOR
from ea_core.plan import plan_bundle, plan_run
from ea_core.runconfig import RunConfig
from tests.fruit import LABELS


@pytest.fixture(scope="module")
def fruit(fruit_run):
    runs, run, srv = fruit_run
    return run / "bundle", runs.parent / "fruit.csv", srv


def test_a_bundle_plan_counts_rows_calls_and_money_from_the_tuned_share(fruit):
    bundle, data, srv = fruit
    before = srv.count
    plan = plan_bundle(str(bundle), str(data))
    meta = json.loads((bundle / "bundle.json").read_text())
    share = meta["metrics"]["lm_call_rate"]
    assert plan.rows == 360 and not plan.rows_exact  # a CSV: line ends counted
    assert plan.lm_calls == round(360 * share) and plan.stages[-1].is_lm
    price_in, price_out = meta["lm"]["prices"][meta["lm"]["model"]]  # USD per 1M tokens
    expected = (round(plan.lm_calls * plan.prompt_tokens) * price_in
                + round(plan.lm_calls * plan.answer_tokens) * price_out) / 1e6
    assert plan.usd == pytest.approx(expected) and plan.usd > 0
    assert plan.usd_batch == pytest.approx(expected * BATCH_PRICE_FACTOR)  # predict --lm-batch
    text = "\n".join(plan.lines())
    assert f"LM cost: ${plan.usd:.4f} at " in text and f"${plan.usd_batch:.4f} with --lm-batch" in text
    assert 20 < plan.prompt_tokens < 500 and plan.cpu_seconds[1] > 0
    assert srv.count == before  # nothing was asked


def test_a_sampled_plan_predicts_the_lm_calls_predict_makes(fruit, tmp_path):
    bundle, data, srv = fruit
    plan = plan_bundle(str(bundle), str(data), sample=10_000)  # every row: the share is exact
    summary = predict_file(str(bundle), str(data), str(tmp_path / "p.csv"), lm_options={"base_url": srv.url},
                           cache=str(tmp_path / "cache.sqlite"))
    assert plan.lm_calls == summary.answered[-1]
    assert all(st.measured_s is not None for st in plan.stages if not st.is_lm)
    assert "measured on the first 360 rows" in plan.share_source


def test_an_unknown_price_is_said_and_hand_set_thresholds_need_a_sample(fruit, tmp_path):
    bundle, data, _ = fruit
    folder = shutil.copytree(bundle, tmp_path / "b")
    meta = json.loads((folder / "bundle.json").read_text())
    meta["lm"]["model"], meta["lm"]["prices"] = "some-new-model", None
    meta["metrics"] = {"system": "custom", "note": "thresholds chosen in the app"}
    (folder / "bundle.json").write_text(json.dumps(meta))
    plan = plan_bundle(str(folder), str(data))
    text = "\n".join(plan.lines())
    assert plan.lm_calls is None and plan.usd is None and plan.usd_batch is None
    assert "LM cost: unknown" in text and "--sample N" in text and "--price-in" in text
    priced = plan_bundle(str(folder), str(data), sample=50, price_in=1.0, price_out=2.0)
    assert priced.lm_calls is not None and priced.usd is not None


def test_the_cli_plans_a_bundle_and_a_run(fruit, capsys):
    bundle, data, _ = fruit
    assert main(["plan", "--bundle", str(bundle), "--input", str(data)]) == 0
    out = capsys.readouterr().out
    assert "LM calls:" in out and "Small models' CPU time" in out and "LM cost: $" in out
    assert main(["plan", "--bundle", str(bundle), "--input", str(data), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["rows"] == 360
    assert main(["plan"]) == 2 and "plan needs --bundle" in capsys.readouterr().err
    assert main(["plan", "--data", str(data), "--ssm", "tfidf", "--lm", "openai", "--lm-model", "gpt-4o-mini"]) == 0
    out = capsys.readouterr().out
    assert "tfidf:" in out and "LM (openai gpt-4o-mini):" in out and "calls" in out
    lm_line = next(x for x in out.splitlines() if x.startswith("LM (openai"))
    low, high = (float(v) for v in re.findall(r"\$([0-9.]+)", lm_line.split("tokens, ")[1].split(" (with")[0]))
    b_low, b_high = (float(v) for v in re.findall(r"\$([0-9.]+)", lm_line.split("with --lm-batch")[1]))
    assert 0 < b_low < low and b_low <= b_high < high  # mining at the batch price, validation and test as usual


def test_a_run_plan_lists_each_small_model_and_the_lm(fruit):
    _, data, _ = fruit
    lines = plan_run(RunConfig(data=str(data), ssm=["tfidf"], lm="local"))
    assert lines[0].startswith("Data:") and any("tfidf:" in x for x in lines)
    assert any("packaged LM in process" in x for x in lines) and len(LABELS) == 3
