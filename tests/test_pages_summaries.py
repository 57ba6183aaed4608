"""The Summaries tab's handlers called in-process (no browser): preview, a run against the scripted
server, Try it; errors are messages, never tracebacks."""

from __future__ import annotations

import html
from pathlib import Path
from types import SimpleNamespace
from typing import Any, Iterator

import pandas as pd
import pytest

from ea_core.data.summaries import load_aclsum
from pages import summaries
from pages.session import Studio
from tests.scripted_server import ScriptedServer

TAB = {name: name for name in summaries.RUN_KEYS + summaries.RUN_OUT + summaries.PREVIEW_OUT + summaries.BATCH_KEYS
       + summaries.BATCH_OUT + summaries.BATCH_UPLOAD_OUT + summaries.SERVE_KEYS
       + ("trace", "lm_reply", "serve_status")}


def test_preview_shows_rows_prompt_and_split_sizes(tmp_path: Path) -> None:
    studio = Studio(tmp_path / "runs")
    out = summaries.preview(studio, TAB, "demo", None, "", "", "", 10, 10, summaries.DEFAULT_SUMMARY_PROMPT)
    assert len(out["preview"]) == 5 and "Summarize" in out["prompt_preview"] and "300 / 10 / 10" in out["data_note"]
    bad = summaries.preview(studio, TAB, "file", None, "", "", "", 10, 10, "")
    assert "Upload a file" in bad["data_note"]


def test_run_and_try_it_with_an_endpoint(tmp_path: Path) -> None:
    studio = Studio(tmp_path / "runs")
    task = load_aclsum()
    gold = dict(zip(task.train.sources + task.val.sources + task.test.sources,
                    task.train.references + task.val.references + task.test.references))
    with ScriptedServer(gold) as srv:
        values = {"source": "demo", "file": None, "source_col": "", "summary_col": "", "instruction_col": "",
                  "ssm": ["lead"], "lm_kind": "openai", "lm_url": srv.url, "lm_model": "m", "lm_key": "k",
                  "price_in": 0.1, "price_out": 0.4, "budget": None, "max_lm_rate": 0.5, "gamma": None,
                  "max_val": 15, "max_test": 15, "template": summaries.DEFAULT_SUMMARY_PROMPT}
        reply = summaries.test_lm(studio, TAB, *[values[k] for k in summaries.RUN_KEYS])["lm_reply"]
        assert f"**The LM's summary**: {gold[task.train.sources[0]]}" in reply and "output tokens" in reply
        no_url = summaries.test_lm(studio, TAB, *[{**values, "lm_url": ""}[k] for k in summaries.RUN_KEYS])
        assert "base URL" in no_url["lm_reply"]
        updates = list(summaries.run(studio, TAB, *[values[k] for k in summaries.RUN_KEYS]))
        final = updates[-1]
        assert "results" in final and set(final["results"]["system"]) >= {"lm", "lead", "specific_layer", "ea"}
        assert "Mining" in final["mining"] and "ROUGE-L vs LM calls" in final["plot"].plot
        assert [Path(f).name for f in final["downloads"]] == ["results.json", "results.csv", "summaries.json",
                                                               "bundle.zip"]
        import zipfile

        from ea_core.cli import main

        zipfile.ZipFile(final["downloads"][-1]).extractall(tmp_path / "unzipped")
        pd.DataFrame({"text": task.test.sources[:3]}).to_csv(tmp_path / "in.csv", index=False)
        assert main(["predict", "--bundle", str(tmp_path / "unzipped"), "--input", str(tmp_path / "in.csv"),
                     "--output", str(tmp_path / "out.csv"), "--no-lm"]) == 0
        assert len(pd.read_csv(tmp_path / "out.csv")["summary"]) == 3
        trace = summaries.try_text(studio, TAB, final["state"], task.test.sources[0], "challenge")["trace"]
        assert trace["answered"].tolist().count("answered") == 1
        missing = list(summaries.run(studio, TAB, *[{**values, "lm_url": ""}[k] for k in summaries.RUN_KEYS]))
        assert "base URL" in missing[-1]["log"]
    assert "Run EA" in summaries.try_text(studio, TAB, None, "x", "")["trace"]["summary"][0]


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
                           (summaries.run, summaries.RUN_KEYS, summaries.RUN_OUT),
                           (summaries.test_lm, summaries.RUN_KEYS, summaries.TEST_LM_OUT)):
        event = wired[("pages.summaries", fn.__name__)]
        assert (len(event.inputs), len(event.outputs)) == (len(keys), len(outs)), fn.__name__
    for fn, keys, outs in ((summaries.batch_uploaded, ("batch_file",), summaries.BATCH_UPLOAD_OUT),
                           (summaries.batch_predict, summaries.BATCH_KEYS, summaries.BATCH_OUT),
                           (summaries.serve_start, ("owner",) + summaries.SERVE_KEYS, ("serve_status",)),
                           (summaries.serve_stop, ("owner",), ("serve_status",))):
        event = wired[("pages.summaries", fn.__name__)]
        assert (len(event.inputs), len(event.outputs)) == (len(keys), len(outs)), fn.__name__
    assert ("pages.summaries", "try_text") in wired


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
        final = list(summaries.run(studio, TAB, *[values[k] for k in summaries.RUN_KEYS]))[-1]
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
