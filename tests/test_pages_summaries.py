"""The Summaries tab's handlers called in-process (no browser): preview, a run against the scripted
server, Try it; errors are messages, never tracebacks."""

from __future__ import annotations

import html
import json
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any, Iterator

import pandas as pd
import pytest

from ea_core.data.summaries import load_aclsum
from pages import summaries
from ea_core.summary_opened import OpenedSummaryRun
from pages.session import Studio
from tests.scripted_server import ScriptedServer

TAB = {name: name for name in summaries.RUN_KEYS + summaries.RUN_OUT + summaries.PREVIEW_OUT + summaries.BATCH_KEYS
       + summaries.BATCH_OUT + summaries.BATCH_UPLOAD_OUT + summaries.SERVE_KEYS
       + summaries.ATTACH_OUT + summaries.SLIDERS_OUT + ("trace", "lm_reply", "serve_status")}


def test_preview_shows_rows_prompt_and_split_sizes(tmp_path: Path) -> None:
    studio = Studio(tmp_path / "runs")
    out = summaries.preview(studio, TAB, "demo", None, "", "", "", 10, 10, summaries.DEFAULT_SUMMARY_PROMPT)
    assert len(out["preview"]) == 5 and "Summarize" in out["prompt_preview"] and "300 / 10 / 10" in out["data_note"]
    bad = summaries.preview(studio, TAB, "file", None, "", "", "", 10, 10, "")
    assert "Upload a file" in bad["data_note"]


def run_in_worker(studio: Studio, owner: str, values: dict[str, Any], request: Any,
                  timeout_s: float = 300.0) -> dict[str, Any]:
    """Press Run, then let the page's timer tick until the worker has finished: every update merged."""
    merged = summaries.start(studio, TAB, owner, *[values[k] for k in summaries.RUN_KEYS])
    run_id = merged.get("current")
    assert run_id, merged.get("status")
    deadline = time.time() + timeout_s
    while time.time() < deadline:
        active = studio.manager.status(run_id).active
        merged.update(summaries.tick(studio, TAB, owner, run_id, request))
        if not active:
            return merged
        time.sleep(0.5)
    raise AssertionError(f"the run did not finish in {timeout_s} s: {merged.get('log')}")


@pytest.mark.slow  # a worker process: ~50 s
def test_run_and_try_it_with_an_endpoint(tmp_path: Path) -> None:
    """Run goes to a background worker under the run queue; its progress, table, plot and downloads
    reach the page by the timer; the bundle predicts; a reload re-attaches; nobody else sees it."""
    studio = Studio(tmp_path / "runs")
    task = load_aclsum()
    gold = dict(zip(task.train.sources + task.val.sources + task.test.sources,
                    task.train.references + task.val.references + task.test.references))
    page = SimpleNamespace(session_hash="page-1")
    with ScriptedServer(gold) as srv:
        values = {"source": "demo", "file": None, "source_col": "", "summary_col": "", "instruction_col": "",
                  "ssm": ["lead", "extractive"], "lm_kind": "openai", "lm_url": srv.url, "lm_model": "m",
                  "lm_key": "k",
                  "price_in": 0.1, "price_out": 0.4, "budget": None, "max_lm_rate": 0.5, "gamma": None,
                  "max_val": 15, "max_test": 15, "template": summaries.DEFAULT_SUMMARY_PROMPT}
        reply = summaries.test_lm(studio, TAB, *[values[k] for k in summaries.RUN_KEYS])["lm_reply"]
        assert f"**The LM's summary**: {gold[task.train.sources[0]]}" in reply and "output tokens" in reply
        no_url = summaries.test_lm(studio, TAB, *[{**values, "lm_url": ""}[k] for k in summaries.RUN_KEYS])
        assert "base URL" in no_url["lm_reply"]
        final = run_in_worker(studio, "alice", values, page)
        run_id = final["current"]
        assert studio.manager.status(run_id).state == "done", final["status"]
        assert "Run finished" in final["status"] and "lm:test" in final["log"] and "train lead" in final["log"]
        assert set(final["results"]["system"]) >= {"lm", "lead", "extractive", "specific_layer", "ea"}
        curves = json.loads(final["curves"].plot)  # the extractive scorer's loss per epoch, as it trained
        assert any(t.get("name") == "extractive" and len(t["y"]) > 1 for t in curves["data"])
        assert "Mining" in final["mining"] and "ROUGE-L vs LM calls" in final["plot"].plot
        assert [Path(f).name for f in final["downloads"]] == ["results.json", "results.csv", "summaries.json",
                                                               "bundle.zip"]
        folder = studio.manager.folder(run_id)
        assert "k" not in json.loads((folder / "config.json").read_text()).values()  # the key never reaches a file
        import zipfile

        from ea_core.cli import main

        zipfile.ZipFile(final["downloads"][-1]).extractall(tmp_path / "unzipped")
        pd.DataFrame({"text": task.test.sources[:3]}).to_csv(tmp_path / "in.csv", index=False)
        assert main(["predict", "--bundle", str(tmp_path / "unzipped"), "--input", str(tmp_path / "in.csv"),
                     "--output", str(tmp_path / "out.csv"), "--no-lm"]) == 0
        assert len(pd.read_csv(tmp_path / "out.csv")["summary"]) == 3
        trace = summaries.try_text(studio, TAB, final["state"], task.test.sources[0], "challenge", "k", page)["trace"]
        assert trace["answered"].tolist().count("answered") == 1
        # The sliders route the saved arrays again: at the chosen thresholds, exactly the EA row.
        ea = next(r for r in json.loads((folder / "results.json").read_text())["rows"] if r["system"] == "ea")
        shown = [k for k in summaries.SLIDER_KEYS if final[k]["visible"]]
        assert len(shown) == len(ea["stages"]) - 1 >= 1 and final["use_point"]["visible"]
        assert [final[k]["value"] for k in shown] == [round(t, 3) for t in ea["thresholds"][:-1]]
        explorer = OpenedSummaryRun(studio.manager, run_id).explorer()
        at = explorer.evaluate(ea["thresholds"][:-1])
        assert at.val.accuracy == pytest.approx(ea["val_rougeL"], abs=1e-9)
        assert at.test.accuracy == pytest.approx(ea["test_rougeL"], abs=1e-9)
        assert at.test.lm_call_rate == pytest.approx(ea["test_lm_call_rate"], abs=1e-12)
        everything_to_lm = summaries.move(studio, TAB, final["state"], 1.0, 1.0, 1.0, 1.0, page)
        assert "LM calls 100.0%" in everything_to_lm["point"] and "the sliders" in str(everything_to_lm["plot"].plot)
        none_to_lm = summaries.move(studio, TAB, final["state"], 0.0, 0.0, 0.0, 0.0, page)["point"]
        assert none_to_lm.count("LM calls 0.0%") == 2
        # Use these thresholds: nothing to the LM, so Try it answers without it and a bundle is offered.
        used = summaries.use_point(studio, TAB, final["state"], 0.0, 0.0, 0.0, 0.0, page)
        assert Path(used["downloads"][-1]).name == "picked.zip" and used["state"]["bundle"].endswith("picked")
        calls = len(srv.requests)
        trace = summaries.try_text(studio, TAB, used["state"], task.test.sources[0] + " New.", "", "", page)["trace"]
        assert trace["answered"].tolist()[0] == "answered" and trace["stage"].tolist()[-1] == "lm"
        assert len(srv.requests) == calls  # the LM stage was never reached
        # A reload (a new session of the same browser) re-attaches: the whole log and the results again.
        again = summaries.attach(studio, TAB, "alice", run_id, SimpleNamespace(session_hash="page-2"))
        assert "train lead" in again["log"] and set(again["results"]["system"]) >= {"ea"}
        assert again["state"]["bundle"].endswith("picked")  # the thresholds last picked, on the sliders too
        assert [again[k]["value"] for k in shown] == [0.0] * len(shown) and "last picked" in again["point"]
        assert [c[1] for c in again["runs"]["choices"]] == [run_id]
        # Someone else: not their run, not in their list, not cancellable by them.
        other = summaries.attach(studio, TAB, "bob", run_id, SimpleNamespace(session_hash="page-3"))
        assert "results" not in other and other["runs"]["choices"] == []
        assert "No run" in summaries.cancel(studio, TAB, "bob", run_id)["status"]
        # The classification tabs' past runs leave summarization runs out.
        from ea_core.opened import past_runs

        assert past_runs(studio.manager, "alice") == []
        missing = summaries.start(studio, TAB, "alice", *[{**values, "lm_url": ""}[k] for k in summaries.RUN_KEYS])
        assert "base URL" in missing["status"] and "current" not in missing
    assert "Run EA" in summaries.try_text(studio, TAB, None, "x", "", "", page)["trace"]["summary"][0]


@pytest.mark.slow  # a worker process: ~30 s
def test_cancel_stops_a_summarization_run_and_bad_data_never_starts_one(tmp_path: Path) -> None:
    studio = Studio(tmp_path / "runs")
    page = SimpleNamespace(session_hash="page-1")
    values = {"source": "demo", "file": None, "source_col": "", "summary_col": "", "instruction_col": "",
              "ssm": ["lead"], "lm_kind": "openai", "lm_url": "http://127.0.0.1:9/v1", "lm_model": "m", "lm_key": "",
              "price_in": 0, "price_out": 0, "budget": None, "max_lm_rate": 0.5, "gamma": None,
              "max_val": 15, "max_test": 15, "template": ""}
    slow = ScriptedServer({}, latency_s=1.0)
    with slow as srv:
        started = summaries.start(studio, TAB, "alice", *[{**values, "lm_url": srv.url}[k] for k in summaries.RUN_KEYS])
        run_id = started["current"]
        deadline = time.time() + 120
        while len(srv.requests) < 3 and time.time() < deadline:  # cancelled while the LM answers
            time.sleep(0.3)
        shown = summaries.cancel(studio, TAB, "alice", run_id)["status"]
        assert "Cancelling" in shown or "cancelled" in shown
        deadline = time.time() + 60
        while studio.manager.status(run_id).active and time.time() < deadline:
            time.sleep(0.3)
        assert studio.manager.status(run_id).state == "cancelled"
        stopped = summaries.tick(studio, TAB, "alice", run_id, page)
        assert "Run cancelled" in stopped["status"] and stopped["resume"]["visible"]
        assert "No stopped" in summaries.resume(studio, TAB, "bob", run_id, "")["status"]  # not bob's run
        asked = len(srv.requests)
        resumed = summaries.resume(studio, TAB, "alice", run_id, "")
        assert "Resuming" in resumed["status"] and not resumed["resume"]["visible"]
        deadline = time.time() + 240
        while studio.manager.status(run_id).active and time.time() < deadline:
            time.sleep(0.5)
        assert studio.manager.status(run_id).state == "done"
        # The answers paid before Cancel came from the cache: only those in flight then were asked again.
        prompts = [r.text for r in srv.requests]
        assert asked >= 3 and len(prompts) - len(set(prompts)) <= 8  # at most one batch in flight
        assert len(srv.requests) - asked < len(set(prompts))
    bad = tmp_path / "notes.csv"
    pd.DataFrame({"a": ["x"], "b": ["y"]}).to_csv(bad, index=False)
    refused = summaries.start(studio, TAB, "alice", *[{**values, "source": "file", "file": str(bad)}[k]
                                                      for k in summaries.RUN_KEYS])
    assert "current" not in refused and "notes.csv" in refused["status"] and str(tmp_path) not in refused["status"]
    assert len(studio.manager.runs("alice")) == 1  # no run folder for the refused one


def test_an_upload_fills_the_column_pickers_and_a_missing_summary_column_is_a_message(tmp_path: Path) -> None:
    studio = Studio(tmp_path / "runs")
    rows = [{"article": f"Sentence one of doc {i}. Sentence two here.", "tldr": f"doc {i}", "aspect": "main"}
            for i in range(20)]
    path = tmp_path / "mine.csv"
    pd.DataFrame(rows).to_csv(path, index=False)
    out = summaries.uploaded(studio, TAB, str(path), 10, 10, "")
    assert out["source"] == "file" and out["source_col"]["choices"] == ["article", "tldr", "aspect"]
    assert out["summary_col"]["value"] is None and out["instruction_col"]["value"] == "aspect"
    assert "no reference-summary column" in out["data_note"] and "Pick the columns" in out["data_note"]
    picked = summaries.preview(studio, TAB, "file", str(path), "article", "tldr", "aspect", 10, 10, "")
    assert len(picked["preview"]) == 5 and picked["summary_col"]["value"] == "tldr"
    assert "the main" in picked["prompt_preview"]
    broken = tmp_path / "broken.txt"
    broken.write_text("x")
    assert "unknown file type" in summaries.uploaded(studio, TAB, str(broken), 10, 10, "")["data_note"]
    from ea_core.uploads import StoreLimits

    tight = Studio(tmp_path / "runs2", StoreLimits(quota_mb=0.0001))
    assert "upload limit" in summaries.uploaded(tight, TAB, str(path), 10, 10, "")["data_note"]


def test_the_app_wires_the_summaries_tab(tmp_path: Path) -> None:
    """Every handler of the tab is bound to an event, with as many inputs and outputs as it names."""
    import inspect

    from app import build_app

    demo = build_app(tmp_path / "runs")
    wired = {(inspect.unwrap(d.fn).__module__, d.name): d for d in demo.fns.values() if d.fn is not None}
    for fn, keys, outs in ((summaries.preview, summaries.PREVIEW_KEYS, summaries.PREVIEW_OUT),
                           (summaries.uploaded, summaries.UPLOAD_KEYS, summaries.UPLOAD_OUT),
                           (summaries.start, ("owner",) + summaries.RUN_KEYS, summaries.RUN_OUT),
                           (summaries.tick, ("owner", "current"), summaries.TICK_OUT),
                           (summaries.attach, ("owner", "current"), summaries.ATTACH_OUT),
                           (summaries.cancel, ("owner", "current"), summaries.CANCEL_OUT),
                           (summaries.resume, ("owner", "current", "lm_key"), summaries.RESUME_OUT),
                           (summaries.try_text, summaries.TRY_KEYS, ("trace",)),
                           (summaries.move, ("state",) + summaries.SLIDER_KEYS, ("point", "plot")),
                           (summaries.use_point, ("state",) + summaries.SLIDER_KEYS, ("state", "downloads", "point")),
                           (summaries.test_lm, summaries.RUN_KEYS, summaries.TEST_LM_OUT)):
        event = wired[("pages.summaries", fn.__name__)]
        assert (len(event.inputs), len(event.outputs)) == (len(keys), len(outs)), fn.__name__
    for fn, keys, outs in ((summaries.batch_uploaded, ("batch_file",), summaries.BATCH_UPLOAD_OUT),
                           (summaries.batch_predict, summaries.BATCH_KEYS, summaries.BATCH_OUT),
                           (summaries.serve_start, ("owner",) + summaries.SERVE_KEYS, ("serve_status",)),
                           (summaries.serve_stop, ("owner",), ("serve_status",))):
        event = wired[("pages.summaries", fn.__name__)]
        assert (len(event.inputs), len(event.outputs)) == (len(keys), len(outs)), fn.__name__


# -- Summarise a file and serve the system: the run's bundle, from one small run ------------------

LM_KEY = "sk-summaries-test-key"  # the key typed in the tab; the scripted LM refuses any other


@pytest.fixture(scope="module")
def finished(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    """One small run (lead summarizer, the scripted LM behind a key) and its session state; the LM
    keeps answering while the module's tests run."""
    tmp = tmp_path_factory.mktemp("summaries")
    studio = Studio(tmp / "runs")
    task = load_aclsum()
    gold = dict(zip(task.train.sources + task.val.sources + task.test.sources,
                    task.train.references + task.val.references + task.test.references))
    with ScriptedServer(gold, api_key=LM_KEY) as srv:
        values = {"source": "demo", "file": None, "source_col": "", "summary_col": "", "instruction_col": "",
                  "ssm": ["lead"], "lm_kind": "openai", "lm_url": srv.url, "lm_model": "m", "lm_key": LM_KEY,
                  "price_in": 0.1, "price_out": 0.4, "budget": None, "max_lm_rate": 0.5, "gamma": None,
                  "max_val": 15, "max_test": 15, "template": summaries.DEFAULT_SUMMARY_PROMPT}
        final = run_in_worker(studio, "owner-1", values, SimpleNamespace(session_hash="fixture"))
        assert final["state"]["bundle"], final["log"]
        yield {"studio": studio, "state": final["state"], "task": task, "gold": gold, "srv": srv, "tmp": tmp}
    studio.servers.stop_all()


def _batch(f: dict[str, Any], path: Any, text_col: str = "", instruction_col: str = "", use_lm: bool = True,
           key: str = LM_KEY, state: Any = "run") -> dict[str, Any]:
    state = f["state"] if state == "run" else state
    return list(summaries.batch_predict(f["studio"], TAB, state, None if path is None else str(path), text_col,
                                        instruction_col, use_lm, key, SimpleNamespace(session_hash="s1")))[-1]


def test_a_file_is_summarised_by_the_runs_system(finished: dict[str, Any]) -> None:
    f, tmp = finished, finished["tmp"]
    texts = f["task"].test.sources[:7]
    pd.DataFrame({"id": range(7), "body": texts, "aspect": ["challenge"] * 7}).to_csv(tmp / "texts.csv", index=False)
    picked = summaries.batch_uploaded(f["studio"], TAB, str(tmp / "texts.csv"))
    assert picked["batch_text_col"]["value"] is None and "pick the text column" in picked["batch_status"]
    assert picked["batch_instruction_col"]["value"] == "aspect" and "body" in picked["batch_text_col"]["choices"]
    steps = list(summaries.batch_predict(f["studio"], TAB, f["state"], str(tmp / "texts.csv"), "body", "aspect", True,
                                         LM_KEY, SimpleNamespace(session_hash="s1")))
    assert any("Summarising 7 texts" in s["batch_status"] for s in steps)
    done = steps[-1]
    assert "Summarised 7 texts" in done["batch_status"] and "who answered" in done["batch_status"]
    preview = done["batch_preview"]
    assert list(preview.columns) == ["text", "summary", "stage", "confidence"] and len(preview) == 7
    assert set(preview["stage"]) <= {"lead", "lm"} and all(s.strip() for s in preview["summary"])
    out = pd.read_csv(done["batch_download"])
    assert list(out.columns) == ["id", "body", "aspect", "summary", "stage", "confidence"] and len(out) == 7
    assert f["studio"].session(SimpleNamespace(session_hash="s1")).upload_dir in Path(done["batch_download"]).parents
    lm_rows = out[out["stage"] == "lm"]  # the LM answered with the key typed in the tab
    assert all(s == f["gold"][t] for s, t in zip(lm_rows["summary"], lm_rows["body"]))
    assert len(lm_rows) > 0
    for key, words in ((LM_KEY[:-1], "401"), ("", "paste it in 'API key'")):  # a key the LM refuses, or none
        refused = _batch(f, tmp / "texts.csv", "body", key=key)
        assert words in html.unescape(refused["batch_status"]) and refused["batch_download"] is None
        assert LM_KEY[:-1] not in refused["batch_status"]
    small = _batch(f, tmp / "texts.csv", "body", "", use_lm=False)  # without the LM: the small model answers all
    assert set(pd.read_csv(small["batch_download"])["stage"]) == {"lead"}
    pd.DataFrame({"text": texts[:2]}).to_json(tmp / "texts.jsonl", orient="records", lines=True)
    jsonl = _batch(f, tmp / "texts.jsonl")  # the text column found by its name; JSON lines in, JSON lines out
    assert jsonl["batch_download"].endswith(".summaries.jsonl")
    assert len(pd.read_json(jsonl["batch_download"], lines=True)) == 2


def test_bad_batch_input_is_a_one_line_message(finished: dict[str, Any]) -> None:
    f, tmp = finished, finished["tmp"]
    pd.DataFrame({"body": ["A text.", " "]}).to_csv(tmp / "holes.csv", index=False)
    pd.DataFrame({"body": ["A text."]}).to_csv(tmp / "plain.csv", index=False)
    (tmp / "notes.txt").write_text("x")
    cases = [(_batch(f, tmp / "plain.csv", state=None), "Run EA on summaries first"),
             (_batch(f, None), "Upload a CSV"),
             (_batch(f, tmp / "plain.csv"), "no source-text column"),
             (_batch(f, tmp / "plain.csv", "nope"), "no column 'nope'"),
             (_batch(f, tmp / "holes.csv", "body"), "empty 'body' text"),
             (_batch(f, tmp / "notes.txt"), "give a CSV, TSV, JSON lines or Parquet")]
    for out, words in cases:
        assert words in html.unescape(out["batch_status"]) and "ea-error" in out["batch_status"], out["batch_status"]
        assert "Traceback" not in out["batch_status"] and out["batch_download"] is None
    assert "pick the text column" in cases[2][0]["batch_status"]
    assert "notes.txt: give a CSV" in summaries.batch_uploaded(f["studio"], TAB, str(tmp / "notes.txt"))["batch_status"]


def test_serve_this_system_answers_chat_completions_and_stops_with_the_page(finished: dict[str, Any]) -> None:
    import httpx

    f = finished
    request = SimpleNamespace(session_hash="page-1")
    assert "Run EA" in summaries.serve_start(f["studio"], TAB, "alice", None, True, LM_KEY, 0, request)["serve_status"]
    shown = summaries.serve_start(f["studio"], TAB, "alice", f["state"], True, LM_KEY, 0, request)["serve_status"]
    server = f["studio"].servers.get("alice")
    assert server is not None and server.url.startswith("http://127.0.0.1:") and server.url in shown
    assert "curl" in shown and "OpenAI(base_url=" in shown and "$EA_SERVE_KEY" in shown
    assert LM_KEY not in shown  # the LM's key is never shown, written or put on a command line
    assert not any(LM_KEY in p.read_text(errors="ignore") for p in Path(server.bundle).rglob("*") if p.is_file())
    texts = f["task"].test.sources[:3]
    answered = []
    for text in texts:
        reply = httpx.post(server.url + "/chat/completions", headers={"Authorization": f"Bearer {server.key}"},
                           json={"model": "ea", "messages": [{"role": "user", "content": text}]}, timeout=60)
        assert reply.status_code == 200, reply.text
        content = reply.json()["choices"][0]["message"]["content"]
        assert content.strip() and (content == f["gold"][text] or content in text)
        answered.append(reply.headers["x-ea-answered-by"])
    assert "lm" in answered  # the LM stage answered, with the key typed in the tab (kept in memory)
    refused = httpx.post(server.url + "/chat/completions", json={"model": "ea", "messages": [
        {"role": "user", "content": texts[0]}]}, timeout=30)
    assert refused.status_code == 401
    assert "stopped" in summaries.serve_stop(f["studio"], TAB, "alice")["serve_status"]
    assert f["studio"].servers.get("alice") is None
    summaries.serve_start(f["studio"], TAB, "alice", f["state"], False, "", 0, request)
    assert f["studio"].servers.get("alice") is not None
    f["studio"].drop(request)  # the page closed: its server stops
    assert f["studio"].servers.get("alice") is None


def test_a_shared_server_refuses_a_summarization_run_to_an_endpoint_it_does_not_allow(tmp_path: Path) -> None:
    """Listening publicly, the server calls public hosts only: a run to 127.0.0.1 is refused before
    any worker or run folder exists (the queue and the endpoint check are the same as for labels)."""
    from ea_core.llm.endpoints import EndpointPolicy

    studio = Studio(tmp_path / "runs", endpoints=EndpointPolicy.for_server("0.0.0.0"))
    values = {"source": "demo", "file": None, "source_col": "", "summary_col": "", "instruction_col": "",
              "ssm": ["lead"], "lm_kind": "openai", "lm_url": "http://127.0.0.1:9/v1", "lm_model": "m", "lm_key": "k",
              "price_in": 0, "price_out": 0, "budget": None, "max_lm_rate": 0.5, "gamma": None,
              "max_val": 10, "max_test": 10, "template": ""}
    refused = summaries.start(studio, TAB, "alice", *[values[k] for k in summaries.RUN_KEYS])
    assert "current" not in refused and "127.0.0.1" in refused["status"]
    assert studio.manager.runs("alice") == []


def test_stop_ends_a_file_being_summarised_before_its_next_chunk(finished: dict[str, Any]) -> None:
    from ea_core.data.summaries import SummarySplit, split_sentences
    from ea_core.errors import Cancelled
    from ea_core.events import CancelToken
    from ea_core.summary_bundle import predict_summaries_in_chunks

    f = finished
    texts = f["task"].test.sources[:20]
    split = SummarySplit(texts, [""] * 20, [""] * 20, [split_sentences(t) for t in texts])
    stop = CancelToken()
    stop.cancel()
    calls = len(f["srv"].requests)
    with pytest.raises(Cancelled):
        predict_summaries_in_chunks(f["state"]["bundle"], split, cancel=stop, api_key=LM_KEY, trust_endpoint=True)
    assert len(f["srv"].requests) == calls  # no LM call after Stop
    done = predict_summaries_in_chunks(f["state"]["bundle"], split, cancel=CancelToken(), api_key=LM_KEY,
                                       trust_endpoint=True)
    assert len(done.summaries) == 20
    request = SimpleNamespace(session_hash="stopper")
    assert "No file" in summaries.batch_stop(f["studio"], TAB, request)["batch_status"]
