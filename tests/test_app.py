"""The app builds, and its Results page reads a run folder (the UI is a client of ea_core)."""

import json

import gradio as gr


def test_app_builds():
    from app import build_app

    assert isinstance(build_app(), gr.Blocks)


def test_results_page_reads_a_run_folder(tmp_path):
    from pages.results import load_run

    rows, message = load_run(str(tmp_path))
    assert rows == [] and "No results" in message
    (tmp_path / "results.json").write_text(json.dumps({"rows": [{"system": "tfidf", "test_accuracy": 0.61234}]}))
    rows, message = load_run(str(tmp_path))
    assert rows[0][0] == "tfidf" and rows[0][2] == 0.6123


def test_engine_never_imports_gradio():
    import pathlib

    root = pathlib.Path(__file__).resolve().parents[1] / "ea_core"
    for path in root.rglob("*.py"):
        text = path.read_text()
        assert "import gradio" not in text and "from gradio" not in text, path
