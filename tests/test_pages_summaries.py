"""The Summaries tab's handlers called in-process (no browser): preview, a run against the scripted
server, Try it; errors are messages, never tracebacks."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from ea_core.data.summaries import load_aclsum
from pages import summaries
from pages.session import Studio
from tests.scripted_server import ScriptedServer

TAB = {name: name for name in summaries.RUN_KEYS + summaries.RUN_OUT + summaries.PREVIEW_OUT + ("trace", "lm_reply")}


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
    assert ("pages.summaries", "try_text") in wired
