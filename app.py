"""Easy Adaptation Studio: build the Gradio UI from `pages/` and launch it.

    python app.py [--host H] [--port P] [--runs-dir DIR] [--auth USER:PASSWORD]

Each tab is a module of `pages/` (components and thin handlers that call `ea_core`); this file
builds them and wires the events in one place, top to bottom. Runs are worker processes under
``--runs-dir`` (default ``runs/``), owned by the browser that started them.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Any, Optional, Sequence

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")  # no phoning home (and no network here)
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # before torch loads: see ea_core.process.PASSIVE_WAIT

import gradio as gr  # noqa: E402

from pages import data, form, lm, models, results, thresholds, train, try_it  # noqa: E402
from pages.session import Studio, new_owner_token  # noqa: E402
from pages.ui import CSS, bind as _bind, error_message, note  # noqa: E402

TITLE = "Easy Adaptation Studio"
INTRO = ("Adapt a large model (LM) to your classification task without touching its weights: small models learn "
         "your data, the LM answers only what they are unsure of, and augmented small models patch the LM's blind "
         "spots. Works offline on a laptop CPU with the demo; bring an API key for real gains.")


def build_app(runs_dir: str | Path = "runs") -> gr.Blocks:
    """The whole UI, bound to one `Studio` (run manager + sessions) over `runs_dir`."""
    studio = Studio(runs_dir)
    def bind(fn: Any) -> Any:  # handlers take the studio first; Gradio passes the components after it
        return _bind(fn, studio)

    with gr.Blocks(title=TITLE, delete_cache=(3600, 3600)) as demo:
        owner = gr.BrowserState(None, storage_key="ea-studio-owner", secret=studio.server_secret())
        current = gr.BrowserState(None, storage_key="ea-studio-run", secret=studio.server_secret())
        opened = gr.State(None)  # the finished run whose results the tabs show
        data_info = gr.State(None)
        gr.Markdown(f"# {TITLE}\n{INTRO}")
        with gr.Tabs():
            with gr.Tab("1 · Data", id="data"):
                d = data.build()
            with gr.Tab("2 · Small models", id="models"):
                m = models.build()
            with gr.Tab("3 · Large model", id="lm"):
                g = lm.build()
            with gr.Tab("4 · Train & mine", id="train"):
                t = train.build()
            with gr.Tab("5 · Thresholds", id="thresholds"):
                h = thresholds.build()
            with gr.Tab("6 · Try it", id="try"):
                y = try_it.build()
            with gr.Tab("7 · Results & export", id="results"):
                r = results.build()

        comps = {**d, **m, **g}
        form_inputs = [comps[k] for k in form.KEYS]
        data_inputs = [d[k] for k in data.FORM_KEYS]
        model_inputs = [m[k] for k in models.FORM_KEYS]
        lm_inputs = [g[k] for k in lm.FORM_KEYS]
        sliders = h["sliders"]
        route_state = [owner, opened, h["order"], h["calibrated"]]
        fast = dict(show_progress="hidden", concurrency_limit=None, trigger_mode="always_last")

        # -- Data --------------------------------------------------------------------------------
        d["source"].change(data.on_source, d["source"], [d["upload"], d["hf_name"], d["max_train"], d["max_val"],
                                                          d["max_test"]])
        d["upload"].upload(bind(data.on_upload), d["upload"],
                           [d["message"], d["text_col"], d["pair_col"], d["label_col"], d["split_col"], d["preview"],
                            d["gallery"]],
                           api_name="upload_data")
        load_outputs = [d["message"], d["summary"], d["counts"], d["warnings"], d["preview"], d["text_col"],
                        d["pair_col"], d["label_col"], d["split_col"], data_info, d["gallery"]]
        loaded = d["load"].click(bind(data.load), data_inputs, load_outputs, api_name="load_data")

        # -- Small models and LM: estimates follow the data and the settings ---------------------
        refresh_models = dict(fn=bind(models.refresh), inputs=model_inputs, outputs=[m["ssm"], m["catalog"]],
                              show_progress="hidden")
        estimate = dict(fn=bind(lm.estimate), inputs=[m["ea_full"], m["probe_lm"], *lm_inputs], outputs=g["estimate"],
                        show_progress="hidden")
        preview = dict(fn=bind(lm.render_preview), inputs=lm_inputs, outputs=g["preview"],
                       show_progress="hidden")
        loaded.then(**refresh_models).then(**estimate).then(**preview)
        gr.on([m[k].change for k in ("head_epochs", "finetune_epochs", "max_length", "oof_folds")], **refresh_models)
        g["preset"].change(lm.on_preset, g["preset"], [g["local_note"], g["api_group"], g["base_url"], g["model"],
                                                       g["price_in"], g["price_out"]]).then(**estimate)
        gr.on([g[k].input for k in ("prompt_system", "prompt_instruction", "prompt_input", "prompt_pair")]
              + [g["few_shot"].change], **preview)
        gr.on([g[k].change for k in ("price_in", "price_out", "budget_usd", "model")]
              + [m["ea_full"].change, m["probe_lm"].change], **estimate)
        g["test"].click(bind(lm.run_test), [g["api_key"], *lm_inputs], g["test_out"], concurrency_limit=4,
                        api_name="test_connection")

        # -- Train & mine ------------------------------------------------------------------------
        tick_outputs = [t["timer"], t["status"], t["stepper"], t["bars"], t["counters"], t["models"], t["curves"],
                        t["log"], t["cancel"], t["resume"], opened]
        attach = dict(fn=bind(_attach), inputs=[owner, current], outputs=tick_outputs, show_progress="hidden",
                      api_name="attach")
        t["run"].click(bind(train.start), [owner, g["api_key"], *form_inputs],
                       [current, t["timer"], t["status"], t["cancel"], t["resume"]], api_name="run").then(**attach)
        t["cancel"].click(bind(train.cancel), [owner, current], [t["status"], t["timer"]], api_name="cancel")
        t["resume"].click(bind(train.resume), [owner, current, g["api_key"]],
                          [t["timer"], t["status"], t["cancel"], t["resume"]]).then(**attach)
        t["timer"].tick(bind(_tick), [owner, current], tick_outputs, show_progress="hidden",
                        concurrency_limit=None, api_name="progress")

        # -- A finished run opens in Thresholds, Try it and Results ------------------------------
        thr_outputs = thresholds.outputs_of(h)
        examples = dict(fn=bind(try_it.examples), inputs=[*route_state, *sliders], outputs=y["examples"],
                        show_progress="hidden", concurrency_limit=None)
        res_outputs = [r["intro"], r["table"], r["shares"], r["summary"], r["dl_csv"], r["dl_json"], r["dl_settings"]]
        opened.change(bind(thresholds.open_views), [owner, opened], thr_outputs, api_name="open_run") \
            .then(**examples) \
            .then(bind(results.views), [owner, opened], res_outputs, api_name="results") \
            .then(bind(_try_intro), [owner, opened], [y["intro"], y["pair"], y["text"], y["image"]]) \
            .then(bind(results.runs_list), owner, [r["runs"], r["run_pick"]])

        # -- Thresholds --------------------------------------------------------------------------
        figures = [h["routing"], h["metrics"]]
        gr.on([s.input for s in sliders] + [s.release for s in sliders], bind(thresholds.on_slider),
              [*route_state, *sliders], figures, api_name="thresholds", **fast)
        gr.on([s.release for s in sliders], **examples)
        gr.on([h["order"].input, h["calibrated"].input], bind(_reopen_thresholds),
              [owner, opened, h["order"], h["calibrated"]], thr_outputs).then(**examples)
        h["autotune"].click(bind(thresholds.on_autotune), [*route_state, h["budget_kind"], h["budget"]],
                            [*sliders, *figures, h["tune_msg"]], concurrency_limit=None, api_name="autotune") \
            .then(**examples)
        h["rel_model"].input(bind(thresholds.on_reliability), [*route_state, h["rel_model"]],
                             h["reliability"], **fast)

        # -- Try it ------------------------------------------------------------------------------
        route_inputs = [*route_state, y["use_lm"], g["api_key"], y["text"], y["pair"], y["image"], *sliders]
        gr.on([y["route"].click, y["text"].submit, y["image"].upload], bind(try_it.route), route_inputs, y["trace"],
              concurrency_limit=4, api_name="try_route")
        y["examples"].select(bind(try_it.pick_example), [owner, opened], [y["text"], y["pair"], y["image"]]) \
            .then(bind(try_it.route), route_inputs, y["trace"], concurrency_limit=4)
        y["bundle"].upload(bind(try_it.load_bundle_zip), y["bundle"], y["bundle_msg"])
        y["unload_bundle"].click(bind(try_it.unload_bundle), None, y["bundle_msg"])

        # -- Results & export --------------------------------------------------------------------
        r["make_bundle"].click(bind(results.make_bundle), [*route_state, *sliders],
                               [r["dl_bundle"], r["bundle_msg"]], concurrency_limit=2, api_name="export_bundle")
        r["refresh_runs"].click(bind(results.runs_list), owner, [r["runs"], r["run_pick"]], api_name="runs")
        r["open"].click(_pick, r["run_pick"], current, api_name="open").then(**attach)
        r["settings_file"].upload(_load_settings, r["settings_file"], [*form_inputs, r["settings_msg"]])

        # -- Page load: owner token, the run this browser was watching, the demo data ------------
        demo.load(_ensure_owner, owner, owner).then(**attach) \
            .then(bind(results.runs_list), owner, [r["runs"], r["run_pick"]]) \
            .then(bind(data.load), data_inputs, load_outputs) \
            .then(**refresh_models).then(**estimate).then(**preview)
        demo.unload(studio.drop)
    demo.studio = studio  # for tests and benchmarks: the run manager, and the form's fields by name
    demo.form_fields = {k: comps[k] for k in form.KEYS}
    return demo


# -- small glue handlers (everything else lives in pages/) -------------------------------------------

def _ensure_owner(owner: Optional[str]) -> str:
    """The browser's owner token: made once, kept in its localStorage."""
    return owner or new_owner_token()


def _attach(studio: Studio, owner: Optional[str], run_id: Optional[str], request: gr.Request) -> tuple[Any, ...]:
    """Show the run this browser is on (a reload re-attaches: the monitor replays its event log)."""
    if run_id:
        studio.session(request).watch = None
    return train.refresh(studio, owner, run_id, request, force=True)


def _tick(studio: Studio, owner: Optional[str], run_id: Optional[str], request: gr.Request) -> tuple[Any, ...]:
    return train.refresh(studio, owner, run_id, request)


def _pick(run_id: Optional[str]) -> Any:
    return run_id or gr.skip()


def _reopen_thresholds(studio: Studio, owner: Optional[str], run_id: Optional[str], order: str, calibrated: bool,
                       request: gr.Request) -> tuple[Any, ...]:
    return thresholds.open_views(studio, owner, run_id, request, order=order, calibrated=calibrated)


def _try_intro(studio: Studio, owner: Optional[str], run_id: Optional[str], request: gr.Request) -> tuple[Any, ...]:
    """Try it's inputs follow the opened run's task: a text (and a second one for pairs) or an image."""
    if not thresholds.owned(studio, owner, run_id):
        return gr.skip(), gr.skip(), gr.skip(), gr.skip()
    state = thresholds.run_state(studio, studio.session(request), run_id)
    what = "images (upload one, or click a test example)" if state.task.is_image else "inputs"
    text = (f"Route {what} through this run's system at the Thresholds tab's sliders. Labels: "
            f"{', '.join(state.task.labels)}.")
    image = state.task.is_image
    return (note(text, "info"), gr.update(visible=state.task.is_pair), gr.update(visible=not image),
            gr.update(visible=image))


def _load_settings(path: Optional[str]) -> tuple[Any, ...]:
    """Fill the Data, Small models and Large model tabs from a settings file."""
    if not path:
        return (gr.skip(),) * (len(form.KEYS) + 1)
    try:
        cfg = form.read_settings(path)
    except Exception as err:  # noqa: BLE001  (any bad file is a message, never a traceback)
        return (gr.skip(),) * len(form.KEYS) + (note(error_message(err), "error"),)
    values = form.form_from_config(cfg)
    msg = form.upload_note(cfg) or "Settings loaded into the Data, Small models and Large model tabs."
    return (*[values[k] for k in form.KEYS], note(msg, "warn" if form.upload_note(cfg) else "ok"))


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python app.py", description=f"{TITLE}: the Gradio app.")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1; 0.0.0.0 for all)")
    p.add_argument("--port", type=int, default=7860, help="port (default 7860)")
    p.add_argument("--runs-dir", default="runs", help="folder of the runs (default runs/ in the current folder)")
    p.add_argument("--auth", metavar="USER:PASSWORD", help="require this login (recommended with --host 0.0.0.0)")
    return p.parse_args(argv)


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = parse_args(argv)
    auth = None
    if args.auth:
        user, sep, password = args.auth.partition(":")
        if not sep or not user or not password:
            print("error: --auth takes USER:PASSWORD", file=sys.stderr)
            return 2
        auth = (user, password)
    from ea_core.process import configure_process

    configure_process()
    demo = build_app(args.runs_dir)
    demo.queue(default_concurrency_limit=4)
    demo.launch(server_name=args.host, server_port=args.port, auth=auth, **LAUNCH_OPTIONS)
    return 0


#: How the app is launched (tests and benchmarks launch it the same way).
LAUNCH_OPTIONS: dict[str, Any] = dict(css=CSS, theme=gr.themes.Soft(), footer_links=["api"], max_file_size="2gb",
                                      show_error=False)


if __name__ == "__main__":
    sys.exit(main())
