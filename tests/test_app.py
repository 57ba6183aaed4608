"""The app: handlers in-process, and the main flow through gradio_client as two users would.

The flow (upload, load, run against a scripted OpenAI-compatible server, thresholds, try it,
export) calls the same endpoints the page's events call, in the order the page chains them.
"""

from __future__ import annotations

import html
import json
import re
import time
import zipfile
from pathlib import Path

import gradio as gr
import numpy as np
import pytest
from gradio_client import Client, handle_file

from ea_core.bundle import load_bundle
from ea_core.explore import Explorer
from ea_core.router import route
from ea_core.runstate import open_run
from tests.fruit import LABELS, lm_answer, make_task
from tests.scripted_server import ScriptedServer

KEY_ALICE = "sk-ALICEKEY-0a1b2c3d4e5f6a7b8c9d"
KEY_BOB = "sk-BOBKEY-9f8e7d6c5b4a3f2e1d0c"


def test_app_builds_and_the_engine_never_imports_gradio(tmp_path):
    from app import build_app

    assert isinstance(build_app(tmp_path / "runs"), gr.Blocks)
    import pathlib

    root = pathlib.Path(__file__).resolve().parents[1] / "ea_core"
    for path in root.rglob("*.py"):
        text = path.read_text()
        assert "import gradio" not in text and "from gradio" not in text, path


def test_app_command_line():
    from app import parse_args

    args = parse_args([])
    assert (args.host, args.port, args.runs_dir, args.auth) == ("127.0.0.1", 7860, "runs", None)
    args = parse_args(["--host", "0.0.0.0", "--port", "8000", "--runs-dir", "/tmp/r", "--auth", "u:p"])
    assert (args.host, args.port, args.runs_dir, args.auth) == ("0.0.0.0", 8000, "/tmp/r", "u:p")


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    """The app on a free port, a scripted LM, and the fruit task file."""
    from app import LAUNCH_OPTIONS, build_app

    root = tmp_path_factory.mktemp("app")
    data = root / "fruit.csv"
    gold = make_task(data)
    srv = ScriptedServer(gold, labels=LABELS, answer_fn=lm_answer).start()
    demo = build_app(root / "runs")
    demo.queue(default_concurrency_limit=4)
    _, url, _ = demo.launch(prevent_thread_lock=True, quiet=True, **LAUNCH_OPTIONS)
    yield demo, url, srv, data
    demo.close()
    srv.close()


def form_values(demo, **overrides) -> list:
    """The run form's values in order (the page's defaults, then `overrides`)."""
    from pages import form

    values = {k: demo.form_fields[k].value for k in form.KEYS}
    values.update(overrides)
    return [values[k] for k in form.KEYS]


def slider_values(sliders: dict) -> list:
    return [sliders.get(k, 0.5) for k in range(8)]


def wait_done(client: Client, owner: str, run_id: str, timeout: float = 240.0) -> str:
    deadline = time.time() + timeout
    while time.time() < deadline:
        out = client.predict(owner, run_id, api_name="/progress")
        status = out[1]
        if "Run finished" in status or "failed" in status or "interrupted" in status:
            return status
        time.sleep(0.5)
    raise AssertionError("the run did not finish")


@pytest.mark.slow
def test_main_flow_through_gradio_client_and_a_second_user_sees_nothing(served, tmp_path):
    demo, url, srv, data = served
    alice, bob = Client(url, verbose=False), Client(url, verbose=False)
    owner_a, owner_b = "owner-alice-" + "a" * 20, "owner-bob-" + "b" * 20
    responses: dict[str, list] = {"alice": [], "bob": []}

    def call(who, client, *args, api_name):
        out = client.predict(*args, api_name=api_name)
        responses[who].append(json.dumps(out, default=str))
        return out

    # Upload: moved to the session's private folder; columns detected.
    up = call("alice", alice, owner_a, handle_file(str(data)), api_name="/upload_data")
    assert "Columns detected" in up[0] and up[1]["value"] == "text" and up[3]["value"] == "label"
    private = list((demo.studio.runs_dir / ".owners").glob("*/uploads/fruit.csv"))
    assert len(private) == 1  # moved out of Gradio's shared cache into the owner's own folder
    values = form_values(demo, source="file", data_file="fruit.csv", max_train=0, max_val=0, max_test=0, text_col="text", label_col="label",
                         preset="custom", base_url=srv.url, model="test-model", price_in=0.15, price_out=0.6,
                         ssm=["tfidf"], oof_folds=3, max_lm_rate=0.5)
    from pages import data as data_page

    loaded = call("alice", alice, owner_a, *values[:len(data_page.FORM_KEYS)], api_name="/load_data")
    assert "Loaded: 360 examples" in loaded[0] and "3 labels" in loaded[1]

    # A bad setting is a message, not a traceback, and the run does not start.
    bad = call("alice", alice, owner_a, KEY_ALICE, *form_values(demo, source="file", data_file="fruit.csv", ssm=[]),
               api_name="/run")
    assert "Tick at least one small model" in json.dumps(bad)

    # Run in the background with Alice's key; watch it to the end.
    out = call("alice", alice, owner_a, KEY_ALICE, *values, api_name="/run")
    run_id = out[0]
    assert re.fullmatch(r"[A-Za-z0-9_-]{20,}", run_id)
    status = wait_done(alice, owner_a, run_id)
    assert "Run finished" in status
    assert any(r.headers.get("authorization") == f"Bearer {KEY_ALICE}" for r in srv.requests)

    # Bob sees none of it: not in his list, not through Alice's run id.
    assert call("bob", bob, owner_b, api_name="/runs")[1]["choices"] == []
    progress_b = call("bob", bob, owner_b, run_id, api_name="/progress")
    assert "Run finished" not in json.dumps(progress_b) and "tfidf" not in json.dumps(progress_b)
    assert "ea-note" not in json.dumps(call("bob", bob, owner_b, api_name="/results"))
    assert [c[1] for c in call("alice", alice, owner_a, api_name="/runs")[1]["choices"]] == [run_id]

    # Thresholds: the run opens at its tuned point; a slider move gives the engine's figures.
    opened = call("alice", alice, owner_a, api_name="/open_run")
    state = open_run(demo.studio.manager.folder(run_id))
    ex = Explorer.build(state, "ea")
    tuned = ex.tuned_thresholds()
    assert [opened[3 + k]["value"] for k in range(2)] == ex.sliders(tuned)  # rounded down to 3 decimals
    sliders = slider_values({0: 0.9, 1: 0.8})
    figs = call("alice", alice, owner_a, "ea", True, *sliders, api_name="/thresholds")
    val, test = ex.evaluate(ex.thresholds(sliders))
    table = figs[1]
    assert f"<td>accuracy</td><td>{100 * val.accuracy:.2f}%</td><td>{100 * test.accuracy:.2f}%</td>" in table
    assert (f"<td>inputs sent to the LM</td><td>{100 * val.lm_call_rate:.1f}%</td>"
            f"<td>{100 * test.lm_call_rate:.1f}%</td>") in table
    plot = json.loads(figs[0])  # the routing figure as JSON: one kept Plotly div draws it (pages/thresholds.plot_host)
    current = next(t for t in plot["data"] if t.get("name") == "current (validation)")
    assert current["x"][0] == pytest.approx(100 * val.lm_call_rate) and current["y"][0] == pytest.approx(
        100 * val.accuracy)

    # Auto-tune for a 10% LM budget sets the sliders within it.
    tuned_out = call("alice", alice, owner_a, "ea", True, "calls", 10, api_name="/autotune")
    tuned_sliders = [tuned_out[k]["value"] for k in range(2)]
    v10, _ = ex.evaluate(ex.thresholds(tuned_sliders))
    assert v10.lm_call_rate <= 0.10 + 1e-9 and "Auto-tuned" in tuned_out[-1]

    # Try it: one test input routed with the current sliders, as the cached routing predicts.
    i = 3
    text = state.task.test.texts[i]
    trace = call("alice", alice, owner_a, "ea", True, True, KEY_ALICE, text, "", None, *sliders, api_name="/try_route")
    cached = route(state.stage_outputs("test"), ex.thresholds(sliders))
    assert f"by {ex.names[cached.answered_by[i]]}" in trace
    assert f"Answer: {state.task.labels[cached.pred[i]]}" in trace

    # Export at the current sliders: the bundle predicts what the sliders showed.
    exported = call("alice", alice, owner_a, "ea", True, *sliders, api_name="/export_bundle")
    zip_path = exported[0]["value"]
    unpacked = tmp_path / "bundle"
    with zipfile.ZipFile(zip_path) as zf:
        zf.extractall(unpacked)
    bundle = json.loads((unpacked / "bundle.json").read_text())
    assert KEY_ALICE not in json.dumps(bundle)
    system = load_bundle(unpacked, use_lm=False)
    small = route(state.stage_outputs("test", ("ssm", "assm")), ex.thresholds(sliders)[:2])
    assert np.array_equal(system.predict(state.task.test).pred, small.pred)

    # Results: the table, and downloads that are copies (not the run folder's files).
    res = call("alice", alice, owner_a, api_name="/results")
    assert any("EA (SSMs" in row[0] for row in res[1]["data"])
    assert str(demo.studio.manager.folder(run_id)) not in json.dumps(res)

    # Alice's key never reached Bob, and nothing Alice got back contains it either.
    assert all(KEY_ALICE not in r for r in responses["bob"])
    assert all(KEY_ALICE not in r for r in responses["alice"])
    for path in (demo.studio.runs_dir).rglob("*"):
        if path.is_file():
            assert KEY_ALICE.encode() not in path.read_bytes(), path


@pytest.mark.slow
def test_upload_errors_are_messages_and_keep_the_settings(served, tmp_path):
    demo, url, _, _ = served
    client = Client(url, verbose=False)
    bad = tmp_path / "broken.csv"
    bad.write_bytes(b"\x00\x01binary\x00junk")
    out = client.predict("owner-errors-" + "e" * 20, handle_file(str(bad)), api_name="/upload_data")
    assert "ea-error" in out[0] and "Traceback" not in out[0] and "broken.csv" in out[0]
    assert str(demo.studio.runs_dir) not in out[0]  # the private server path is not shown
    # Loading with a column that does not exist: a message naming it; nothing else changes.
    values = form_values(demo, source="demo", text_col="nope")
    from pages import data as data_page

    out = client.predict("owner-errors-" + "e" * 20, *values[:len(data_page.FORM_KEYS)], api_name="/load_data")
    message = html.unescape(out[0])
    assert "Column 'nope' ('Text column') not found in demo:tweets" in message and "ea-error" in message
    assert "--text-col" not in message  # the page's field names, not the CLI's flags
