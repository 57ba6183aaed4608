"""The Summaries tab's handlers called in-process (no browser): preview, a run against the scripted
server, Try it; errors are messages, never tracebacks."""

from __future__ import annotations

from pathlib import Path

from ea_core.data.summaries import load_aclsum
from pages import summaries
from pages.session import Studio
from tests.scripted_server import ScriptedServer

TAB = {name: name for name in summaries.RUN_KEYS + summaries.RUN_OUT + summaries.PREVIEW_OUT + ("trace",)}


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
        updates = list(summaries.run(studio, TAB, *[values[k] for k in summaries.RUN_KEYS]))
        final = updates[-1]
        assert "results" in final and set(final["results"]["system"]) >= {"lm", "lead", "specific_layer", "ea"}
        assert "Mining" in final["mining"]
        trace = summaries.try_text(studio, TAB, final["state"], task.test.sources[0], "challenge")["trace"]
        assert trace["answered"].tolist().count("answered") == 1
        missing = list(summaries.run(studio, TAB, *[{**values, "lm_url": ""}[k] for k in summaries.RUN_KEYS]))
        assert "base URL" in missing[-1]["log"]
    assert "Run EA" in summaries.try_text(studio, TAB, None, "x", "")["trace"]["summary"][0]
