"""The EA run end to end against a scripted OpenAI-compatible server on 127.0.0.1.

The task is built so the right sets are known: most texts name their class's fruit; "hard" texts
name another class's fruit (the TF-IDF SSM gets them wrong out of fold) and the LM knows the
answer except on "dark" ones, where the scripted server answers wrong: those are underfit.
"""

from __future__ import annotations

import json
from collections import Counter
import re
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from ea_core.bundle import load_bundle
from ea_core.pipeline import Pipeline
from ea_core.report import build_rows
from ea_core.router import route
from ea_core.runconfig import RunConfig
from ea_core.runfolder import read_json
from tests.fruit import LABELS, calls_per_item, is_dark, is_hard, item, lm_answer, make_task
from tests.scripted_server import ScriptedServer

ROOT = Path(__file__).resolve().parents[1]
SECRET = "sk-TESTSECRET-4c1f9b2e7d5a8f3c6e0b"
@pytest.fixture
def server_and_data(tmp_path):
    data = tmp_path / "fruit.csv"
    gold = make_task(data)
    srv = ScriptedServer(gold, labels=LABELS, answer_fn=lm_answer).start()
    yield srv, data
    srv.close()


def config(data: Path, srv: ScriptedServer, **kw) -> RunConfig:
    base = dict(data=str(data), ssm=["tfidf"], lm="openai", lm_model="test-model", lm_base_url=srv.url,
                lm_key_env="EA_TEST_KEY", oof_folds=3, concurrency=4, max_lm_rate=0.5)
    base.update(kw)
    return RunConfig(**base)


def test_full_run_mines_trains_routes_reports_and_exports(tmp_path, server_and_data, monkeypatch):
    srv, data = server_and_data
    monkeypatch.setenv("EA_TEST_KEY", SECRET)
    events = []
    out = tmp_path / "runs" / "fruit"
    state = Pipeline(config(data, srv), out, callback=events.append).run()
    rows = state.rows
    names = [r["system"] for r in rows]
    assert names[:2] == ["tfidf", "lm"] and {"specific_layer", "ea", "oracle"} <= set(names)

    # Mining: only SSM-wrong training examples reached the LM, each exactly once.
    m = json.loads((out / "mining.json").read_text())
    calls = calls_per_item(srv)
    train_calls = [i for i in map(item, state.task.train.texts) if calls[i]]
    assert m["sent_to_lm"] == len(train_calls) > 0
    assert all(calls[i] == 1 for i in calls)
    assert m["sent_to_lm"] < len(state.task.train) / 2
    # Mostly the hard examples were mined; the underfit set is exactly the mined dark ones.
    assert sum(map(is_hard, train_calls)) >= 0.8 * len(train_calls)
    underfit = {item(state.task.train.texts[i]) for i in state.mining.underfit}
    assert underfit and underfit == {i for i in train_calls if is_dark(i)}

    # The ASSM learned the underfit set, which the SSM got wrong by construction.
    y = state.task.train.labels
    uf = state.mining.underfit
    ssm_acc = np.mean(state.ssms[0].outputs()["train"][uf].argmax(1) == y[uf])
    assm_acc = np.mean(state.assms[0].outputs()["train"][uf].argmax(1) == y[uf])
    assert assm_acc > ssm_acc

    # The LM was asked for every validation and test input.
    assert all(calls[item(t)] == 1 for t in state.task.val.texts + state.task.test.texts)

    # Progress events were streamed for every stage kind.
    stages = {e.stage.split(":")[0] for e in events}
    assert {"run", "train", "lm", "oof"} <= stages
    assert any(e.stage == "lm:mine" and e.calls for e in events)

    # Bundle round trip: the live cascade gives the same predictions as routing the cached outputs.
    ea = next(r for r in rows if r["system"] == "ea")
    test_stages = state.stage_outputs("test")
    cached = route(test_stages, list(ea["thresholds"].values()))
    system = load_bundle(out / "bundle", cache_path=str(out.parent / "lm_cache.sqlite"), base_url=srv.url)
    n_before = srv.count
    live = system.predict(state.task.test)
    assert np.array_equal(live.pred, cached.pred)
    assert np.array_equal(live.answered_by, cached.answered_by)
    assert srv.count == n_before  # every LM answer came from the cache

    trace = system.route_one(state.task.test.texts[0])
    assert trace.answered_by in [s.name for s in system.stages]
    assert trace.stages[-1].took and all(not s.took for s in trace.stages[:-1])

    # The key never reaches the disk: not in the run folder, the cache, the bundle.
    for path in (tmp_path / "runs").rglob("*"):
        if path.is_file():
            assert SECRET.encode() not in path.read_bytes(), path
    assert SECRET not in repr(Pipeline(config(data, srv), out, api_key=SECRET))


def test_second_run_makes_no_paid_calls(tmp_path, server_and_data, monkeypatch):
    srv, data = server_and_data
    monkeypatch.setenv("EA_TEST_KEY", SECRET)
    Pipeline(config(data, srv), tmp_path / "runs" / "one").run()
    first = srv.count
    # A fresh run folder sharing the answer cache: every LM answer is a cache hit.
    state = Pipeline(config(data, srv), tmp_path / "runs" / "two").run()
    assert srv.count == first
    assert state.lm_usage["val"]["calls"] == 0 and state.lm_usage["val"]["cache_hits"] == len(state.task.val)


def test_budget_cap_stops_calls_and_the_run_goes_on(tmp_path, server_and_data, monkeypatch):
    srv, data = server_and_data
    monkeypatch.setenv("EA_TEST_KEY", SECRET)
    from ea_core.llm.cost import PriceTable  # noqa: F401  (the price table exists and the cap is in USD)

    cfg = config(data, srv, budget_usd=0.0, price_in=0.15, price_out=0.6)  # a cap needs a price, also on 127.0.0.1
    state = Pipeline(cfg, tmp_path / "runs" / "b").run()
    assert srv.count == 0
    assert any("budget" in n.lower() for n in state.notes)
    rows = build_rows(state)
    assert next(r for r in rows if r["system"] == "tfidf")["test_accuracy"] > 0.5


@pytest.mark.slow
def test_resume_after_kill_during_mining_buys_no_answer_twice(tmp_path):
    data = tmp_path / "fruit.csv"
    gold = make_task(data)
    srv = ScriptedServer(gold, labels=LABELS, answer_fn=lm_answer, latency_s=0.05).start()
    try:
        out = tmp_path / "runs" / "k"
        cmd = [sys.executable, "-m", "ea_core", "run", "--data", str(data), "--ssm", "tfidf", "--lm", "openai",
               "--lm-model", "test-model", "--lm-base-url", srv.url, "--lm-key-env", "EA_TEST_KEY",
               "--oof-folds", "3", "--concurrency", "1", "--out", str(out)]
        env = {**os.environ, "EA_TEST_KEY": SECRET}
        proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.time() + 120
        while srv.count < 5 and time.time() < deadline and proc.poll() is None:
            time.sleep(0.02)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        paid_before_kill = srv.count
        assert paid_before_kill >= 5
        res = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
        assert res.returncode == 0, res.stderr
        # Every answer received before the kill came from the cache; only the one request in
        # flight at the moment of the kill (concurrency 1) can have been sent again.
        repeated = [i for i, c in calls_per_item(srv).items() if c > 1]
        assert len(repeated) <= 1 and max(calls_per_item(srv).values()) <= 2
        results = json.loads((out / "results.json").read_text())
        assert "ea" in [r["system"] for r in results["rows"]]
    finally:
        srv.close()


def test_run_folder_refuses_a_different_run(tmp_path, server_and_data, monkeypatch):
    srv, data = server_and_data
    monkeypatch.setenv("EA_TEST_KEY", SECRET)
    out = tmp_path / "runs" / "x"
    Pipeline(config(data, srv, lm=None), out).run()
    from ea_core.errors import ConfigError

    with pytest.raises(ConfigError, match="new --out"):
        Pipeline(config(data, srv, ssm=["tfidf", "head:minilm"]), out)


def test_ea_full_ablation_asks_the_lm_about_the_whole_training_split(tmp_path, server_and_data, monkeypatch):
    srv, data = server_and_data
    monkeypatch.setenv("EA_TEST_KEY", SECRET)
    state = Pipeline(config(data, srv, ea_full=True), tmp_path / "runs" / "full").run()
    calls = calls_per_item(srv)
    assert all(calls[item(t)] == 1 for t in state.task.train.texts)  # every training example, once
    assert state.lm_usage["mine"]["calls"] < 0.25 * len(state.task.train)  # EA asks far less than EA(Full)
    # EA(Full) trains on every LM error: here exactly the dark training examples.
    rows = {r["system"]: r for r in build_rows(state)}
    assert "ea_full" in rows and state.assm_full
    dark = sum(is_dark(item(t)) for t in state.task.train.texts)
    assert read_json(state.assm_full[0].folder / "info.json")["trained_on"] == dark


@pytest.mark.slow
def test_predict_cli_routes_a_file_through_the_exported_bundle(tmp_path, server_and_data, monkeypatch):
    srv, data = server_and_data
    monkeypatch.setenv("EA_TEST_KEY", SECRET)
    out = tmp_path / "runs" / "p"
    state = Pipeline(config(data, srv), out).run()
    rows = {r["system"]: r for r in state.rows}
    # Every file we write is strict JSON (no NaN), whatever the routing left empty.
    for name in ("results.json", "pareto.json", "bundle/bundle.json", "summary.json"):
        json.loads((out / name).read_text(), parse_constant=lambda c: pytest.fail(f"{name} holds {c}"))
    inputs = tmp_path / "new.csv"
    inputs.write_text("text,label\n" + "\n".join(f"{t},{LABELS[y]}" for t, y in
                                                 zip(state.task.test.texts, state.task.test.labels)) + "\n")
    res = subprocess.run([sys.executable, "-m", "ea_core", "predict", "--bundle", str(out / "bundle"), "--input",
                          str(inputs), "--output", str(tmp_path / "pred.csv"), "--cache",
                          str(out.parent / "lm_cache.sqlite"), "--lm-base-url", srv.url], cwd=ROOT,
                         capture_output=True, text=True,
                         env={**os.environ, "EA_TEST_KEY": SECRET}, timeout=300)
    assert res.returncode == 0, res.stderr
    assert f"Accuracy on the {len(state.task.test)} inputs with a known label: {rows['ea']['test_accuracy']:.2%}" \
        in res.stdout
    lines = (tmp_path / "pred.csv").read_text().splitlines()
    assert lines[0] == "text,prediction,answered_by,confidence" and len(lines) == len(state.task.test) + 1
    # A wrong column name is a clear error, not a traceback.
    res = subprocess.run([sys.executable, "-m", "ea_core", "predict", "--bundle", str(out / "bundle"), "--input",
                          str(inputs), "--text-col", "nope"], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert res.returncode == 2 and "no column 'nope'" in res.stderr and "Traceback" not in res.stderr


def test_cancel_during_mining_stops_the_run_and_a_rerun_finishes_it(tmp_path, server_and_data, monkeypatch):
    srv, data = server_and_data
    monkeypatch.setenv("EA_TEST_KEY", SECRET)
    from ea_core.errors import Cancelled
    from ea_core.events import CancelToken

    token = CancelToken()

    def cancel_on_first_lm_call(event):
        if event.stage == "lm:mine" and event.calls:
            token.cancel()

    out = tmp_path / "runs" / "c"
    with pytest.raises(Cancelled):
        Pipeline(config(data, srv, concurrency=1), out, callback=cancel_on_first_lm_call, cancel=token).run()
    assert not (out / "mining.json").exists()
    state = Pipeline(config(data, srv), out).run()
    assert state.mining is not None and max(calls_per_item(srv).values()) == 1


@pytest.mark.slow
def test_an_edited_prompt_template_reaches_the_lm_and_the_bundle(tmp_path, server_and_data, monkeypatch):
    srv, data = server_and_data
    monkeypatch.setenv("EA_TEST_KEY", SECRET)
    prompt = {"instruction": "Which fruit class is this? Answer with one of: {labels}. ZZPROMPT"}
    state = Pipeline(config(data, srv, prompt=prompt), tmp_path / "runs" / "pr").run()

    systems = [m["content"] for r in srv.requests for m in r.body["messages"] if m["role"] == "system"]
    assert systems and all("ZZPROMPT" in m and "a, b, c" in m for m in systems)
    bundle = json.loads((tmp_path / "runs" / "pr" / "bundle" / "bundle.json").read_text())
    assert bundle["lm"]["prompt"] == prompt
    # The CLI validates a template file before any work starts.
    bad = tmp_path / "bad.json"
    bad.write_text('{"instructions": "typo"}')
    res = subprocess.run([sys.executable, "-m", "ea_core", "run", "--data", str(data), "--ssm", "tfidf", "--lm",
                          "openai", "--lm-model", "m", "--lm-base-url", srv.url, "--prompt-file", str(bad),
                          "--out", str(tmp_path / "runs" / "bad")], cwd=ROOT, capture_output=True, text=True,
                         timeout=120)
    assert res.returncode == 2 and "Unknown prompt template field(s) instructions" in res.stderr
