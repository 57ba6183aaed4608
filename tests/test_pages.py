"""Tab handlers called in-process: settings round trip, bundle uploads, sessions, plots, estimates."""

from __future__ import annotations

import io
import json
import zipfile
from pathlib import Path
from types import SimpleNamespace

import gradio as gr
import pytest

from ea_core.errors import ConfigError
from ea_core.runconfig import RunConfig
from pages import form, lm, models, plots, try_it
from pages.session import Studio


def request(session: str) -> SimpleNamespace:
    return SimpleNamespace(session_hash=session)


def test_settings_survive_a_round_trip_through_the_form(tmp_path):
    cfg = RunConfig(data="demo:tweets", ssm=["tfidf", "head:minilm"], max_train=500, oof_folds=4, mining="top",
                    lm="deepseek", lm_model="deepseek-chat", lm_base_url="https://api.deepseek.com/v1",
                    price_in=0.27, price_out=1.1, budget_usd=2.0, few_shot=2, max_lm_rate=0.25,
                    router="learned", router_labels=50,
                    ssm_settings={"head": {"epochs": 7, "max_length": 64}, "finetune": {"epochs": 2, "max_length": 64}},
                    prompt={"system": "S", "instruction": "Pick one of {labels}.", "input_format": "T: {text}",
                            "pair_format": "A: {text} B: {pair}"})
    values = form.form_from_config(cfg)
    assert values["preset"] == "deepseek" and values["source"] == "demo" and values["head_epochs"] == 7
    studio = Studio(tmp_path / "runs")
    again = form.config_from_form(studio.store("owner-s1"), values)
    for field in ("data", "ssm", "max_train", "oof_folds", "mining", "lm", "lm_model", "lm_base_url", "price_in",
                  "price_out", "budget_usd", "few_shot", "max_lm_rate", "ssm_settings", "prompt", "router",
                  "router_labels"):
        assert getattr(again, field) == getattr(cfg, field), field
    # Router labels are the learned router's: with the cascade alone, none are bought.
    assert form.config_from_form(studio.store("owner-s1"), {**values, "router": "cascade"}).router_labels == 0


def test_a_settings_file_never_holds_the_cache_path_or_the_upload_path(tmp_path):
    run = tmp_path / "runs" / "r"
    (run / "input").mkdir(parents=True)
    cfg = RunConfig(data=str(run / "input" / "reviews.csv"), ssm=["tfidf"], cache="/srv/secret/lm_cache.sqlite")
    path = form.settings_file(cfg.to_dict(), run, tmp_path / "settings.json")
    saved = json.loads(path.read_text())
    assert "cache" not in saved and saved["data"] == "upload:reviews.csv"
    back = form.read_settings(str(path))
    assert form.form_from_config(back)["source"] == "file" and "upload it again" in form.upload_note(back)
    (tmp_path / "bad.json").write_text('{"data": "x", "ssm": ["tfidf"], "sneaky": 1}')
    with pytest.raises(ConfigError, match="Unknown run setting"):
        form.read_settings(str(tmp_path / "bad.json"))


def test_lm_form_needs_a_key_for_a_remote_endpoint_but_not_for_a_local_one():
    values = {k: None for k in lm.FORM_KEYS}
    values.update(preset="custom", base_url="https://api.example.com/v1", model="m", concurrency=4, few_shot=0,
                  prompt_system="s", prompt_instruction="i {labels}", prompt_input="{text}",
                  prompt_pair="{text} {pair}", budget_usd=0)
    assert lm.settings_of(values)["budget_usd"] is None  # an untouched number box arrives as 0
    with pytest.raises(ConfigError, match="paste your API key|Paste your API key"):
        lm.check_key(values, "")
    lm.check_key(values, "sk-x")
    lm.check_key({**values, "base_url": "http://127.0.0.1:8000/v1"}, "")
    lm.check_key({**values, "preset": "local"}, "")
    with pytest.raises(ConfigError, match="both prices"):
        lm.settings_of({**values, "price_in": 1.0})


def _zip(entries: dict[str, bytes], symlink: str | None = None) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for name, data in entries.items():
            zf.writestr(name, data)
        if symlink:
            info = zipfile.ZipInfo(symlink)
            info.external_attr = (0o120777 << 16)
            zf.writestr(info, "/etc/passwd")
    return buf.getvalue()


def test_an_uploaded_bundle_cannot_write_outside_its_folder(tmp_path):
    studio = Studio(tmp_path / "runs")
    req = request("s2")
    for name, payload in (("slip.zip", _zip({"../../escaped.txt": b"x", "bundle.json": b"{}"})),
                          ("abs.zip", _zip({"/tmp/abs-escape.txt": b"x"})),
                          ("link.zip", _zip({"bundle.json": b"{}"}, symlink="models/link")),
                          ("none.zip", _zip({"readme.txt": b"hello"})),
                          ("junk.zip", b"not a zip at all")):
        upload = tmp_path / name
        upload.write_bytes(payload)
        message = try_it.load_bundle_zip(studio, str(upload), req)
        assert "ea-error" in message and "Traceback" not in message, (name, message)
        assert not upload.exists()  # the upload is not kept
    assert not (tmp_path / "escaped.txt").exists() and not Path("/tmp/abs-escape.txt").exists()
    assert studio.session(req).bundle_dir is None


def test_a_real_bundle_loads_into_try_it_and_routes(tmp_path, fruit_run):
    import shutil

    zip_path = shutil.make_archive(str(tmp_path / "b"), "zip", root_dir=fruit_run[1] / "bundle")
    studio = Studio(tmp_path / "runs")
    req = request("s3")
    message = try_it.load_bundle_zip(studio, zip_path, req)
    assert "Bundle loaded" in message and "shown, not used" in message
    trace = try_it.route(studio, None, None, "ea", True, True, None, "apple fresh pie item 5", "", None, req, *[0.5] * 8)
    assert "Answer:" in trace and "never chooses an endpoint" in trace


def test_a_closed_session_loses_its_uploads(tmp_path):
    studio = Studio(tmp_path / "runs")
    req = request("s4")
    session = studio.session(req)
    (session.upload_dir / "data").mkdir()
    (session.upload_dir / "data" / "mine.csv").write_text("text,label\n")
    assert studio.session(req) is session and studio.n_sessions == 1
    studio.drop(req)
    assert not session.upload_dir.exists() and studio.n_sessions == 0
    assert studio.session(request("s5")).upload_dir != session.upload_dir


def test_figures_are_plain_plotly_json_with_titles_and_axis_units(fruit_run):
    from ea_core.explore import Explorer
    from ea_core.runstate import open_run

    ex = Explorer.build(open_run(fruit_run[1]))
    current = ex.evaluate(ex.tuned_thresholds())
    fig = plots.routing(ex.front, ex.references, ex.names, current)
    json.dumps(fig)  # plain data, serialisable as is
    layout = fig["layout"]
    assert layout["title"]["text"] and "%" in layout["xaxis"]["title"]["text"] and "%" in layout["yaxis"]["title"]["text"]
    names = {t["name"] for t in fig["data"]}
    assert {"LM alone", "Specific Layer", "current (validation)", "current (test)", "tfidf", "lm"} <= names
    dashed = [t["name"] for t in fig["data"] if t.get("line", {}).get("dash") == "dash"]
    assert len(dashed) == 2 and all("% on validation" in n for n in dashed)  # LM alone and best SSM, as RouteLLM draws them


def test_the_model_checklist_estimates_grow_with_the_data():
    small, _ = models.checklist(500, 200, settings={})
    large, rows = models.checklist(50_000, 20_000, settings={})
    assert [spec for _, spec in small] == [spec for _, spec in large]
    assert rows[0][0] == "tfidf" and any(r[3] == "offline" for r in rows)
    assert small[0][0] != large[0][0]  # the tfidf line's time changed with the size


def test_a_zip_of_image_class_folders_uploads_loads_and_offers_image_models(tmp_path):
    """The Data tab on a user's ZIP: class counts, a sample grid, image column pickers; the Small
    models tab then lists image architectures only, with the image defaults ticked."""
    from ea_core.data import load_dataset
    from pages import data
    from pages.ui import NONE

    digits = load_dataset("demo:digits", max_train=60, max_val=20, max_test=20)
    upload = tmp_path / "gradio" / "shapes.zip"
    upload.parent.mkdir()
    with zipfile.ZipFile(upload, "w") as zf:
        for i, (img, y) in enumerate(zip(digits.train.images, digits.train.labels)):
            if digits.labels[int(y)] in ("0", "1", "7"):
                zf.writestr(f"shapes/{digits.labels[int(y)]}/img{i}.png", img)
        zf.writestr("shapes/notes.txt", "not an image")
    studio = Studio(tmp_path / "runs")
    req = request("zip-user")
    with gr.Blocks():  # the tabs' components: handlers key their updates by them
        data_tab, models_tab = data.build(), models.build()
    up = data.on_upload(studio, data_tab, "zip-owner", str(upload), req)
    message, text_col, pair_col, gallery = (up[data_tab[k]] for k in ("message", "text_col", "pair_col", "gallery"))
    assert "images in 3 classes" in message and "Traceback" not in message
    assert text_col["label"] == "Image column" and pair_col["visible"] is False
    assert gallery["visible"] and len(gallery["value"]) == 3 * data.GALLERY_PER_CLASS
    assert up[data_tab["data_file"]]["value"] == "shapes.zip" and not upload.exists()  # the owner's file now
    values = dict(source="file", data_file="shapes.zip", hf_name="", text_col=NONE, pair_col=NONE, label_col=NONE,
                  split_col=NONE, val_frac=0.2, test_frac=0.2, max_train=0, max_val=0, max_test=0, seed=0)
    out = data.load(studio, data_tab, "zip-owner", req, *[values[k] for k in data.FORM_KEYS])
    assert out[data_tab["info"]]["modality"] == "image" and out[data_tab["gallery"]]["visible"]
    assert "images" in out[data_tab["summary"]]
    ticked = models.refresh(studio, models_tab, req, *[
        {"ssm": ["tfidf", "head:minilm"], "head_epochs": 3, "finetune_epochs": 1, "max_length": 64, "oof_folds": 0,
         "mining": "all", "assm": "top", "ea_full": False, "calibrate": True, "max_lm_rate": 0.3, "probe_lm": 0,
         "router": "cascade", "router_labels": 0}[k]
        for k in models.FORM_KEYS])[models_tab["ssm"]]
    specs = {spec for _, spec in ticked["choices"]}
    assert "tfidf" not in specs and "head:efficientnet_lite0" in specs
    assert ticked["value"] == models.DEFAULT_IMAGE_SSMS



def _owned_run(tmp_path, folder, owner="alice", run_id="fruit-run-0123456789abcdef"):
    """A Studio whose runs folder holds a copy of the run `folder`, owned by `owner`."""
    import shutil

    from ea_core.runfolder import read_json, write_json
    from ea_core.runs import owner_hash

    runs = tmp_path / "runs"
    shutil.copytree(folder, runs / run_id)
    status = read_json(runs / run_id / "status.json")
    write_json(runs / run_id / "status.json", {**status, "run_id": run_id, "owner": owner_hash(owner)})
    return Studio(runs), run_id


def test_thresholds_open_in_the_order_the_run_exported(tmp_path, fruit_run, fruit_full_run):
    """A run with the learned router opens at the system its bundle holds (`bundle.default_system`),
    its plot with the cascade's front beside the learned one's; a cascade run opens at ea."""
    from ea_core.bundle import default_system
    from ea_core.runstate import open_run
    from pages import thresholds

    with gr.Blocks():
        tab = thresholds.build()
    for k, folder in enumerate((fruit_run[1], fruit_full_run[0])):
        studio, run_id = _owned_run(tmp_path / str(k), folder)
        opened = thresholds.on_open(studio, tab, "alice", run_id, {}, request(f"open-{run_id}"))
        exported = default_system(open_run(folder).rows)
        assert opened[tab["order"]]["value"] == (exported if folder == fruit_full_run[0] else "ea")
        fronts = [t["name"] for t in json.loads(opened[tab["routing"]])["data"] if "front" in t.get("name", "")]
        assert ("EA cascade (validation front)" in fronts) == (opened[tab["order"]]["value"] == "ea_learned")


def test_thresholds_remember_each_order_s_sliders_and_say_never(tmp_path, fruit_run):
    """Auto-tune, look at the LM-first order, come back: the auto-tuned sliders are still there.
    Slider values are rounded to 3 decimals; a slider at 1 reads "never"."""
    from pages import thresholds

    studio, run_id = _owned_run(tmp_path, fruit_run[1])
    req = request("thr")
    with gr.Blocks():
        tab = thresholds.build()
    sliders = tab["sliders"]
    opened = thresholds.on_open(studio, tab, "alice", run_id, {}, req)
    memory = opened[tab["memory"]]
    tuned = [opened[s]["value"] for s in sliders[:2]]
    assert all(v == round(v, 3) for v in tuned) and opened[tab["order"]]["choices"][1][1] == "ea_lm_first"
    assert opened[tab["headroom"]]["visible"] is False  # this run's LM is good: nothing to explain

    tuned_out = thresholds.on_autotune(studio, tab, "alice", run_id, "ea", True, "calls", 10, memory, req)
    memory = tuned_out[tab["memory"]]
    auto = [tuned_out[s]["value"] for s in sliders[:2]]
    assert auto != tuned and all(v == round(v, 3) for v in auto)
    other = thresholds.on_order(studio, tab, "alice", run_id, "ea_lm_first", True, memory, req)
    memory = other[tab["memory"]]
    back = thresholds.on_order(studio, tab, "alice", run_id, "ea", True, memory, req)
    assert [back[s]["value"] for s in sliders[:2]] == auto and back[tab["order"]]["value"] == "ea"

    moved = thresholds.on_slider(studio, tab, "alice", run_id, "ea", True, back[tab["memory"]], req, 0.25, 1.0,
                                 *[0.5] * 6)
    assert "<b>never</b> answers" in moved[tab["last"]] and "≥ 0.250" in moved[tab["last"]]
    again = thresholds.on_order(studio, tab, "alice", run_id, "ea", False, moved[tab["memory"]], req)
    assert [again[s]["value"] for s in sliders[:2]] != [0.25, 1.0]  # uncalibrated: a point of its own
    again = thresholds.on_order(studio, tab, "alice", run_id, "ea", True, again[tab["memory"]], req)
    assert [again[s]["value"] for s in sliders[:2]] == [0.25, 1.0]


def test_a_slider_move_sends_the_routing_figure_as_json_for_one_plotly_div(tmp_path, fruit_run):
    """The routing plot is a gr.HTML host that keeps one Plotly div (gr.Plot re-created it on every
    move): a move sends the figure as JSON, the same figure `plots.routing` draws, with no markup."""
    from ea_core.explore import Explorer
    from ea_core.runstate import open_run
    from pages import thresholds

    studio, run_id = _owned_run(tmp_path, fruit_run[1])
    req = request("thr-json")
    with gr.Blocks():
        tab = thresholds.build()
    assert isinstance(tab["routing"], gr.HTML) and "${value}" not in tab["routing"].html_template
    assert "P.react(gd" in tab["routing"].js_on_load and json.loads(tab["routing"].value)["data"] == []
    opened = thresholds.on_open(studio, tab, "alice", run_id, {}, req)
    moved = thresholds.on_slider(studio, tab, "alice", run_id, "ea", True, opened[tab["memory"]], req, 0.7, 0.9,
                                 *[0.5] * 6)
    sent = moved[tab["routing"]]
    assert isinstance(sent, str) and "<" not in sent
    ex = Explorer.build(open_run(fruit_run[1]), "ea")
    want = plots.routing(ex.front, ex.references, ex.names, ex.evaluate(ex.thresholds([0.7, 0.9])))
    assert json.loads(sent) == json.loads(json.dumps(want))
    current = next(t for t in json.loads(sent)["data"] if t["name"] == "current (validation)")
    val, _ = ex.evaluate(ex.thresholds([0.7, 0.9]))
    assert current["x"] == [100 * val.lm_call_rate] and current["y"] == [100 * val.accuracy]
    assert thresholds.figure_json({"data": [{"name": "<b>x</b>"}]}) == '{"data":[{"name":"\\u003cb>x\\u003c/b>"}]}'


def test_a_run_that_kept_its_small_model_says_what_a_real_lm_would_change(tmp_path, fruit_chance_run):
    from pages import results, thresholds

    studio, run_id = _owned_run(tmp_path, fruit_chance_run[0])
    req = request("first")
    with gr.Blocks():
        thr_tab, res_tab = thresholds.build(), results.build()
    out = thresholds.on_open(studio, thr_tab, "alice", run_id, {}, req)
    note_html = out[thr_tab["headroom"]]["value"]
    assert out[thr_tab["headroom"]]["visible"] and out[thr_tab["connect"]]["visible"]
    assert "kept the best small model alone" in note_html and "With a real LM" in note_html
    assert "of the 54 validation inputs" in note_html and "ceiling of routing" in note_html
    res = results.views(studio, res_tab, "alice", run_id, req)
    assert res[res_tab["headroom"]]["visible"] and res[res_tab["connect"]]["visible"]


def test_the_route_trace_says_never_for_a_stage_at_1():
    from ea_core.system import RouteTrace, StageTrace
    from ea_core.tuning import NEVER_TAKES

    trace = RouteTrace("a", "lm", [StageTrace("tfidf", 0.97, NEVER_TAKES, "a", False, 0.001),
                                   StageTrace("lm", 0.9, 0.0, "a", True, 0.2)])
    shown = try_it.trace_html(trace)
    assert "never (passes every input on)" in shown and "1.010" not in shown and "0: answers every input that reaches it" in shown


def test_the_trade_off_plot_names_its_points_and_draws_the_front(fruit_run):
    from ea_core.explore import Explorer
    from ea_core.runstate import open_run

    ex = Explorer.build(open_run(fruit_run[1]))
    fig = plots.routing(ex.front, ex.references, ex.names, ex.evaluate(ex.tuned_thresholds()))
    front = next(t for t in fig["data"] if t["name"].startswith("best thresholds"))
    assert front["mode"] == "lines+markers" and front["marker"]["size"] >= 6 and front["line"]["width"] >= 2
    texts = [a["text"] for a in fig["layout"]["annotations"]]
    for ref in ex.references:  # each reference named on the plot, beside its marker
        assert ref.name in texts
    names = [t["name"] for t in fig["data"]]
    dashed = [t["name"] for t in fig["data"] if t.get("line", {}).get("dash") == "dash"]  # named in the legend
    assert any(n.startswith("LM alone:") for n in dashed) and any(n.startswith("best SSM (tfidf):") for n in dashed)
    assert names.index("current (validation)") < names.index("best SSM (tfidf)")  # references drawn on top
    arrows = [a for a in fig["layout"]["annotations"] if a.get("showarrow")]
    spots = {(a["x"], a["y"], a["ax"], a["ay"]) for a in arrows}
    assert len(spots) == len(arrows)  # no two labels in the same place


def test_results_shows_the_serve_command_and_starts_a_local_server(tmp_path, fruit_run):
    """Results: the `serve` command for the bundle (no key in it), and a local server of the open
    run's system at the current thresholds that an OpenAI client calls; Stop stops it."""
    import openai

    from pages import results, thresholds

    studio, run_id = _owned_run(tmp_path, fruit_run[1])
    req = request("serve")
    with gr.Blocks():
        thr_tab, tab = thresholds.build(), results.build()
    opened = thresholds.on_open(studio, thr_tab, "alice", run_id, {}, req)
    sliders = [opened[s].get("value", 0.5) for s in thr_tab["sliders"]]
    shown = results.views(studio, tab, "alice", run_id, req)
    command = shown[tab["serve_cmd"]]
    assert "python -m ea_core serve --bundle ea-bundle-" in command and "--api-key-env EA_SERVE_KEY" in command
    assert f"--lm-base-url {fruit_run[2].url}" in command and "sk-" not in command
    assert shown[tab["serve_status"]] == ""  # no server yet

    assert "Open a finished run" in results.serve_start(studio, tab, "bob", run_id, "ea", True, True, "", 0, req,
                                                        *sliders)[tab["serve_status"]]  # not bob's run
    out = results.serve_start(studio, tab, "alice", run_id, "ea", True, True, "sk-local", 0, req, *sliders)
    status = out[tab["serve_status"]]
    server = studio.servers.get("alice")
    try:
        assert server is not None and server.url in status and server.key in status and "sk-local" not in status
        client = openai.OpenAI(base_url=server.url, api_key=server.key, max_retries=0, timeout=30)
        reply = client.chat.completions.create(model="ea", messages=[{"role": "user", "content": "a ripe banana"}])
        assert reply.choices[0].message.content in studio.opened(req, "alice", run_id).state().task.labels
        assert server.url in results.views(studio, tab, "alice", run_id, req)[tab["serve_status"]]  # shown again
        share = studio.opened(req, "alice", run_id).val_lm_share("ea", True, sliders)
        assert server.readiness["lm_share"]["tuned"] == pytest.approx(share)  # drift watched at these thresholds
        built = results.make_bundle(studio, tab, "alice", run_id, "ea", True, req, *sliders)
        assert f"--tuned-lm-share {share:.4g}" in built[tab["serve_cmd"]]
    finally:
        stopped = results.serve_stop(studio, tab, "alice")[tab["serve_status"]]
    assert "stopped" in stopped and studio.servers.get("alice") is None and not server.alive
    assert "No local server" in results.serve_stop(studio, tab, "alice")[tab["serve_status"]]


def test_a_local_server_stops_when_the_page_that_started_it_closes(tmp_path, fruit_run):
    """The server serves a bundle in the session's folder with the key the page held: when that
    page's session ends (``demo.unload`` calls `Studio.drop`), it stops and the folder goes; another
    session of the same owner ending changes nothing. The LM's key is never written to disk."""
    import httpx

    from pages import results, thresholds

    studio, run_id = _owned_run(tmp_path, fruit_run[1])
    req, other = request("serving-page"), request("another-tab")
    with gr.Blocks():
        thr_tab, tab = thresholds.build(), results.build()
    opened = thresholds.on_open(studio, thr_tab, "alice", run_id, {}, req)
    sliders = [opened[s].get("value", 0.5) for s in thr_tab["sliders"]]
    results.serve_start(studio, tab, "alice", run_id, "ea", True, True, "sk-page-secret-77", 0, req, *sliders)
    server = studio.servers.get("alice")
    try:
        assert server is not None and server.alive and server.bundle.is_dir()
        assert server.bundle.is_relative_to(studio.session(req).upload_dir)
        written = [f for f in tmp_path.rglob("*") if f.is_file()]
        assert not any(b"sk-page-secret-77" in f.read_bytes() for f in written)  # the key stays in memory
        studio.session(other)
        studio.drop(other)  # the owner's other tab closes: the server stays
        assert server.alive and studio.servers.get("alice") is server
        studio.drop(req)  # the page that started it closes
        assert not server.alive and studio.servers.get("alice") is None and not server.bundle.exists()
        with pytest.raises(httpx.ConnectError):  # nothing listens there any more
            httpx.get(server.url + "/models", headers={"authorization": f"Bearer {server.key}"}, timeout=2)
    finally:
        studio.servers.stop_all()
