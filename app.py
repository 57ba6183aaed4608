"""Easy Adaptation Studio: build the Gradio UI from `pages/` and launch it.

    python app.py [--host H] [--port P] [--runs-dir DIR] [--auth USER:PASSWORD]

Each tab is a module of `pages/` (its components by name, and thin handlers that call `ea_core`
and return updates keyed by component); this file builds the tabs and wires the events in one
place, top to bottom. Runs are worker processes under ``--runs-dir`` (default ``runs/``), owned
by the browser that started them.
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
from pages.ui import CSS, bind as _bind, pick  # noqa: E402

TITLE = "Easy Adaptation Studio"
INTRO = ("Adapt a large model (LM) to your classification task without touching its weights: small models learn "
         "your data, the LM answers only what they are unsure of, and augmented small models patch the LM's blind "
         "spots. Works offline on a laptop CPU with the demo; bring an API key for real gains.")


def build_app(runs_dir: str | Path = "runs") -> gr.Blocks:
    """The whole UI, bound to one `Studio` (run manager + sessions) over `runs_dir`."""
    studio = Studio(runs_dir)

    def bind(fn: Any, *tab: Any) -> Any:  # handlers take the studio (and their tab) first; Gradio passes the rest
        return _bind(fn, studio, *tab)

    with gr.Blocks(title=TITLE, delete_cache=(3600, 3600)) as demo:
        owner = gr.BrowserState(None, storage_key="ea-studio-owner", secret=studio.server_secret())
        current = gr.BrowserState(None, storage_key="ea-studio-run", secret=studio.server_secret())
        opened = gr.State(None)  # the finished run whose results the tabs show
        gr.Markdown(f"# {TITLE}\n{INTRO}")
        with gr.Tabs():
            with gr.Tab("1 · Data", id="data"):
                data_tab = data.build()
            with gr.Tab("2 · Small models", id="models"):
                models_tab = models.build()
            with gr.Tab("3 · Large model", id="lm"):
                lm_tab = lm.build()
            with gr.Tab("4 · Train & mine", id="train"):
                train_tab = train.build(current, opened)
            with gr.Tab("5 · Thresholds", id="thresholds"):
                thresholds_tab = thresholds.build()
            with gr.Tab("6 · Try it", id="try"):
                try_tab = try_it.build()
            with gr.Tab("7 · Results & export", id="results"):
                results_tab = results.build()

        form_fields = {k: {**data_tab, **models_tab, **lm_tab}[k] for k in form.KEYS}
        form_inputs = list(form_fields.values())
        data_inputs = pick(data_tab, *data.FORM_KEYS)
        model_inputs = pick(models_tab, *models.FORM_KEYS)
        lm_inputs = pick(lm_tab, *lm.FORM_KEYS)
        api_key = lm_tab["api_key"]
        sliders = thresholds_tab["sliders"]
        route_state = [owner, opened, thresholds_tab["order"], thresholds_tab["calibrated"]]
        fast = dict(show_progress="hidden", concurrency_limit=None, trigger_mode="always_last")

        # -- Data --------------------------------------------------------------------------------
        data_tab["source"].change(_bind(data.on_source, data_tab), data_tab["source"],
                                  pick(data_tab, "upload", "hf_name", "max_train", "max_val", "max_test"))
        data_tab["upload"].upload(bind(data.on_upload, data_tab), data_tab["upload"],
                                  pick(data_tab, "message", "text_col", "pair_col", "label_col", "split_col",
                                       "preview", "gallery"), api_name="upload_data")
        load_data = dict(fn=bind(data.load, data_tab), inputs=data_inputs,
                         outputs=pick(data_tab, "message", "summary", "counts", "warnings", "preview", "text_col",
                                      "pair_col", "label_col", "split_col", "info", "gallery"))
        loaded = data_tab["load"].click(**load_data, api_name="load_data")

        # -- Small models and LM: estimates follow the data and the settings ---------------------
        refresh_models = dict(fn=bind(models.refresh, models_tab), inputs=model_inputs,
                              outputs=pick(models_tab, "ssm", "catalog"), show_progress="hidden")
        estimate = dict(fn=bind(lm.estimate), inputs=[models_tab["ea_full"], models_tab["probe_lm"], *lm_inputs],
                        outputs=lm_tab["estimate"], show_progress="hidden")
        preview = dict(fn=bind(lm.render_preview), inputs=lm_inputs, outputs=lm_tab["preview"],
                       show_progress="hidden")
        loaded.then(**refresh_models).then(**estimate).then(**preview)
        gr.on([models_tab[k].change for k in ("head_epochs", "finetune_epochs", "max_length", "oof_folds")],
              **refresh_models)
        lm_tab["preset"].change(lm.on_preset, lm_tab["preset"],
                                pick(lm_tab, "local_note", "api_group", "base_url", "model", "price_in", "price_out",
                                     "free")) \
            .then(**estimate)
        gr.on([lm_tab[k].input for k in ("prompt_system", "prompt_instruction", "prompt_input", "prompt_pair")]
              + [lm_tab["few_shot"].change], **preview)
        gr.on([lm_tab[k].change for k in ("price_in", "price_out", "free", "budget_usd", "model")]
              + [models_tab["ea_full"].change, models_tab["probe_lm"].change], **estimate)
        lm_tab["test"].click(bind(lm.run_test), [api_key, *lm_inputs], lm_tab["test_out"], concurrency_limit=4,
                             api_name="test_connection")

        # -- Train & mine ------------------------------------------------------------------------
        buttons = pick(train_tab, "timer", "status", "cancel", "resume")
        tick_outputs = pick(train_tab, "timer", "status", "stepper", "bars", "counters", "models", "curves", "log",
                            "cancel", "resume", "opened")
        attach = dict(fn=bind(train.attach, train_tab), inputs=[owner, current], outputs=tick_outputs,
                      show_progress="hidden", api_name="attach")
        train_tab["run"].click(bind(train.start, train_tab), [owner, api_key, *form_inputs], [current, *buttons],
                               api_name="run").then(**attach)
        train_tab["cancel"].click(bind(train.cancel, train_tab), [owner, current], pick(train_tab, "status", "timer"),
                                  api_name="cancel")
        train_tab["resume"].click(bind(train.resume, train_tab), [owner, current, api_key], buttons).then(**attach)
        train_tab["timer"].tick(bind(train.tick, train_tab), [owner, current], tick_outputs, show_progress="hidden",
                                concurrency_limit=None, api_name="progress")

        # -- A finished run opens in Thresholds, Try it and Results ------------------------------
        thr_outputs = thresholds.outputs_of(thresholds_tab)
        examples = dict(fn=bind(try_it.examples), inputs=[*route_state, *sliders], outputs=try_tab["examples"],
                        show_progress="hidden", concurrency_limit=None)
        runs_list = dict(fn=bind(results.runs_list, results_tab), inputs=owner,
                         outputs=pick(results_tab, "runs", "run_pick"))
        opened.change(bind(thresholds.open_views, thresholds_tab), [owner, opened], thr_outputs, api_name="open_run") \
            .then(**examples) \
            .then(bind(results.views, results_tab), [owner, opened],
                  pick(results_tab, "intro", "table", "shares", "summary", "dl_csv", "dl_json", "dl_settings"),
                  api_name="results") \
            .then(bind(try_it.intro, try_tab), [owner, opened], pick(try_tab, "intro", "pair", "text", "image")) \
            .then(**runs_list)

        # -- Thresholds --------------------------------------------------------------------------
        figures = pick(thresholds_tab, "routing", "metrics")
        gr.on([s.input for s in sliders] + [s.release for s in sliders], bind(thresholds.on_slider, thresholds_tab),
              [*route_state, *sliders], figures, api_name="thresholds", **fast)
        gr.on([s.release for s in sliders], **examples)
        gr.on([thresholds_tab["order"].input, thresholds_tab["calibrated"].input],
              bind(thresholds.on_order, thresholds_tab), [owner, opened, thresholds_tab["order"],
                                                          thresholds_tab["calibrated"]], thr_outputs) \
            .then(**examples)
        thresholds_tab["autotune"].click(bind(thresholds.on_autotune, thresholds_tab),
                                         [*route_state, thresholds_tab["budget_kind"], thresholds_tab["budget"]],
                                         [*sliders, *figures, thresholds_tab["tune_msg"]], concurrency_limit=None,
                                         api_name="autotune").then(**examples)
        thresholds_tab["rel_model"].input(bind(thresholds.on_reliability), [*route_state, thresholds_tab["rel_model"]],
                                          thresholds_tab["reliability"], **fast)

        # -- Try it ------------------------------------------------------------------------------
        route = dict(fn=bind(try_it.route), outputs=try_tab["trace"], concurrency_limit=4,
                     inputs=[*route_state, try_tab["use_lm"], api_key, *pick(try_tab, "text", "pair", "image"),
                             *sliders])
        gr.on([try_tab["route"].click, try_tab["text"].submit, try_tab["image"].upload], **route,
              api_name="try_route")
        try_tab["examples"].select(bind(try_it.pick_example, try_tab), [owner, opened],
                                   pick(try_tab, "text", "pair", "image")).then(**route)
        try_tab["bundle"].upload(bind(try_it.load_bundle_zip), try_tab["bundle"], try_tab["bundle_msg"])
        try_tab["unload_bundle"].click(bind(try_it.unload_bundle), None, try_tab["bundle_msg"])

        # -- Results & export --------------------------------------------------------------------
        results_tab["make_bundle"].click(bind(results.make_bundle, results_tab), [*route_state, *sliders],
                                         pick(results_tab, "dl_bundle", "bundle_msg"), concurrency_limit=2,
                                         api_name="export_bundle")
        results_tab["refresh_runs"].click(**runs_list, api_name="runs")
        results_tab["open"].click(results.pick, results_tab["run_pick"], current, api_name="open").then(**attach)
        results_tab["settings_file"].upload(_bind(results.load_settings, form_fields, results_tab),
                                            results_tab["settings_file"], [*form_inputs, results_tab["settings_msg"]])

        # -- Page load: owner token, the run this browser was watching, the demo data ------------
        demo.load(_ensure_owner, owner, owner).then(**attach).then(**runs_list).then(**load_data) \
            .then(**refresh_models).then(**estimate).then(**preview)
        demo.unload(studio.drop)
    demo.studio = studio  # for tests and benchmarks: the run manager, and the form's fields by name
    demo.form_fields = form_fields
    return demo


def _ensure_owner(owner: Optional[str]) -> str:
    """The browser's owner token: made once, kept in its localStorage."""
    return owner or new_owner_token()


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
