"""Easy Adaptation Studio: build the Gradio UI from `pages/` and launch it.

    python app.py [--host H] [--port P] [--runs-dir DIR] [--auth-file FILE] [--allow-endpoint URL_OR_HOST ...]
                  [--max-runs N] [--disk-quota-mb MB] ...   (python app.py --help lists them all)

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

from ea_core.errors import ConfigError, EAError  # noqa: E402
from ea_core.llm.endpoints import EndpointPolicy, is_loopback_host  # noqa: E402
from ea_core.logins import AUTH_ENV, Logins, file_warning, hash_password  # noqa: E402
from ea_core.quotas import DiskQuota  # noqa: E402
from ea_core.runqueue import QueueSettings  # noqa: E402
from ea_core.uploads import DEFAULT_MAX_AGE_DAYS, DEFAULT_QUOTA_MB, StoreLimits  # noqa: E402
from pages import data, form, lm, models, results, setup, summaries, thresholds, train, try_it  # noqa: E402
from pages.session import Studio, new_owner_token  # noqa: E402
from pages.ui import CSS, bind as _bind, pick  # noqa: E402

TITLE = "Easy Adaptation Studio"
INTRO = ("Adapt a large model (LM) to your classification or summarization task without touching its weights: small models learn "
         "your data, the LM answers only what they are unsure of, and augmented small models patch the LM's blind "
         "spots. Works offline on a laptop CPU with the demo; bring an API key for real gains.")


def build_app(runs_dir: str | Path = "runs", *, queue: Optional[QueueSettings] = None,
              endpoints: Optional[EndpointPolicy] = None, quota: Optional[DiskQuota] = None,
              uploads: Optional[StoreLimits] = None, local_servers: int = 1) -> gr.Blocks:
    """The whole UI, bound to one `Studio` (run manager + sessions) over `runs_dir`; a shared
    server's limits (`queue`, `endpoints`, `quota`) go to its run manager (`ea_core.runs`),
    `uploads` bounds what each browser's owner keeps (`ea_core.uploads`), and `local_servers` is
    how many servers of the owners' systems Results may start on 127.0.0.1 (`ea_core.serve.local`)."""
    studio = Studio(runs_dir, uploads, queue=queue, endpoints=endpoints, quota=quota, local_servers=local_servers)

    def bind(fn: Any, *tab: Any) -> Any:  # handlers take the studio (and their tab) first; Gradio passes the rest
        return _bind(fn, studio, *tab)

    with gr.Blocks(title=TITLE, delete_cache=(3600, 3600)) as demo:
        owner = gr.BrowserState(None, storage_key="ea-studio-owner", secret=studio.server_secret())
        current = gr.BrowserState(None, storage_key="ea-studio-run", secret=studio.server_secret())
        opened = gr.State(None)  # the finished run whose results the tabs show
        restored = gr.State(False)  # the owner's saved setup is on screen: edits may now be saved
        gr.Markdown(f"# {TITLE}\n{INTRO}")
        with gr.Tabs() as tabs:
            with gr.Tab("1 · Data", id="data", elem_id="tab-data"):
                data_tab = data.build(studio.limits.describe())
            with gr.Tab("2 · Small models", id="models", elem_id="tab-models"):
                models_tab = models.build()
            with gr.Tab("3 · Large model", id="lm", elem_id="tab-lm"):
                lm_tab = lm.build(studio.manager.endpoints)
            with gr.Tab("4 · Train & mine", id="train"):
                train_tab = train.build(current, opened)
            with gr.Tab("5 · Thresholds", id="thresholds"):
                thresholds_tab = thresholds.build()
            with gr.Tab("6 · Try it", id="try"):
                try_tab = try_it.build()
            with gr.Tab("7 · Results & export", id="results"):
                results_tab = results.build()
            with gr.Tab("8 · Summaries", id="summaries", elem_id="tab-summaries"):
                sum_tab = summaries.build()
                sum_tab["current"] = gr.BrowserState(None, storage_key="ea-studio-summary-run",
                                                     secret=studio.server_secret())

        setup_ui = {**data_tab, **models_tab, **lm_tab}  # the setup tabs' components by name
        form_fields = {k: setup_ui[k] for k in form.KEYS}
        form_inputs = list(form_fields.values())
        data_inputs = pick(data_tab, *data.FORM_KEYS)
        model_inputs = pick(models_tab, *models.FORM_KEYS)
        lm_inputs = pick(lm_tab, *lm.FORM_KEYS)
        api_key = lm_tab["api_key"]
        sliders = thresholds_tab["sliders"]
        route_state = [owner, opened, thresholds_tab["order"], thresholds_tab["calibrated"]]
        memory = thresholds_tab["memory"]  # the sliders per run, order and calibration
        fast = dict(show_progress="hidden", concurrency_limit=None, trigger_mode="always_last")

        # -- Data: every new choice of data clears what described the previous one ---------------
        # (.input, not .change: a setup restored or opened from a run sets these without resetting them)
        data_panel = pick(data_tab, "message", "text_col", "pair_col", "label_col", "split_col", "preview", "gallery",
                          "data_file", "upload", "summary", "counts", "warnings", "info")
        data_tab["source"].input(bind(data.on_source, data_tab), [owner, data_tab["source"], data_tab["data_file"]],
                                 [*data_panel, *pick(data_tab, "files_row", "hf_name", "max_train", "max_val",
                                                     "max_test")])
        data_tab["upload"].upload(bind(data.on_upload, data_tab), [owner, data_tab["upload"]], data_panel,
                                  api_name="upload_data")
        data_tab["data_file"].input(bind(data.on_pick_file, data_tab), [owner, data_tab["data_file"]], data_panel,
                                    api_name="pick_data_file")
        data_tab["remove_file"].click(bind(data.on_remove_file, data_tab), [owner, data_tab["data_file"]], data_panel,
                                      api_name="remove_data_file")
        data_tab["hf_name"].input(bind(data.on_hf_name, data_tab), None,
                                  pick(data_tab, "summary", "counts", "warnings", "preview", "gallery", "info"),
                                  show_progress="hidden", trigger_mode="always_last")
        load_data = dict(fn=bind(data.load, data_tab), inputs=[owner, *data_inputs],
                         outputs=pick(data_tab, "message", "summary", "counts", "warnings", "preview", "text_col",
                                      "pair_col", "label_col", "split_col", "info", "gallery"))
        loaded = data_tab["load"].click(**load_data, api_name="load_data")

        # -- Small models and LM: estimates follow the data and the settings ---------------------
        refresh_models = dict(fn=bind(models.refresh, models_tab), inputs=model_inputs,
                              outputs=pick(models_tab, "ssm", "catalog", "ssm_note"), show_progress="hidden")
        models_tab["ssm"].input(models.on_ticked, models_tab["ssm"], models_tab["ssm_note"], show_progress="hidden")
        extra_calls = pick(models_tab, "ea_full", "probe_lm", "router", "router_labels")
        estimate = dict(fn=bind(lm.estimate), inputs=[*extra_calls, *lm_inputs],
                        outputs=lm_tab["estimate"], show_progress="hidden")
        preview = dict(fn=bind(lm.render_preview), inputs=lm_inputs, outputs=lm_tab["preview"],
                       show_progress="hidden")
        loaded.then(**refresh_models).then(**estimate).then(**preview)
        gr.on([models_tab[k].change for k in ("head_epochs", "finetune_epochs", "max_length", "oof_folds")],
              **refresh_models)
        lm_tab["preset"].input(lm.on_preset, lm_tab["preset"],
                                pick(lm_tab, "local_note", "api_group", "base_url", "model", "price_in", "price_out",
                                     "free")) \
            .then(**estimate)
        gr.on([lm_tab[k].input for k in ("prompt_system", "prompt_instruction", "prompt_input", "prompt_pair")]
              + [lm_tab["few_shot"].change], **preview)
        gr.on([lm_tab[k].change for k in ("price_in", "price_out", "free", "budget_usd", "model")]
              + [models_tab[k].change for k in ("ea_full", "probe_lm", "router", "router_labels")], **estimate)
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
        train_tab["log"].change(None, None, None, js=train.FOLLOW_LOG_JS, show_progress="hidden")  # in the browser

        # -- A finished run opens in Thresholds, Try it and Results ------------------------------
        thr_outputs = thresholds.outputs_of(thresholds_tab)
        examples = dict(fn=bind(try_it.examples), inputs=[*route_state, *sliders], outputs=try_tab["examples"],
                        show_progress="hidden", concurrency_limit=None)
        runs_list = dict(fn=bind(results.runs_list, results_tab), inputs=owner,
                         outputs=pick(results_tab, "runs", "run_pick", "compare_pick"))
        mined = dict(fn=bind(results.mined, results_tab), inputs=[owner, opened, results_tab["mined_filter"]],
                     outputs=pick(results_tab, "mined_intro", "mined_table", "mined_csv"), api_name="mined")
        opened.change(bind(thresholds.on_open, thresholds_tab), [owner, opened, memory], thr_outputs,
                      api_name="open_run") \
            .then(**examples) \
            .then(bind(results.views, results_tab), [owner, opened], results.view_outputs(results_tab),
                  api_name="results") \
            .then(**mined) \
            .then(bind(try_it.intro, try_tab), [owner, opened], pick(try_tab, "intro", "pair", "text", "image")) \
            .then(**runs_list)
        # A run that kept its best small model alone says what a real LM would change; one click to connect one.
        gr.on([thresholds_tab["connect"].click, results_tab["connect"].click], lambda: gr.Tabs(selected="lm"),
              None, tabs)

        # -- Thresholds --------------------------------------------------------------------------
        figures = thresholds.slider_outputs(thresholds_tab)  # the plot, the metrics, the route in words, memory
        gr.on([s.input for s in sliders] + [s.release for s in sliders], bind(thresholds.on_slider, thresholds_tab),
              [*route_state, memory, *sliders], figures, api_name="thresholds", queue=False, **fast)
        # queue=False: a move answers over one HTTP request, without the queue's status messages, each of
        # which makes Gradio's front end walk every component of the app (bench_shared_load: p95 under
        # others' runs 274-290 -> 203-227 ms); the handler takes < 1 ms, so it never needs a queue slot.
        gr.on([s.release for s in sliders], **examples)
        gr.on([thresholds_tab["order"].input, thresholds_tab["calibrated"].input],
              bind(thresholds.on_order, thresholds_tab), [*route_state, memory], thr_outputs) \
            .then(**examples)
        thresholds_tab["autotune"].click(bind(thresholds.on_autotune, thresholds_tab),
                                         [*route_state, thresholds_tab["budget_kind"], thresholds_tab["budget"], memory],
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
        # A file of inputs: prepared (read, models loaded), then streamed chunk by chunk; Cancel stops it.
        batch_after = pick(try_tab, "batch_progress", "batch_preview", "batch_download", "batch_run", "batch_cancel")
        try_tab["batch_file"].upload(bind(try_it.batch_upload, try_tab), try_tab["batch_file"],
                                     pick(try_tab, "batch_path", "batch_file", "batch_progress"))
        batch = try_tab["batch_run"].click(
            bind(try_it.batch_start, try_tab),
            [*route_state, try_tab["use_lm"], api_key, try_tab["batch_path"], *sliders],
            [try_tab["batch_job"], *batch_after], concurrency_limit=4, api_name="batch_predict") \
            .then(bind(try_it.batch_stream, try_tab), try_tab["batch_job"], batch_after, show_progress="hidden",
                  concurrency_limit=4)
        try_tab["batch_cancel"].click(bind(try_it.batch_cancel, try_tab), try_tab["batch_job"], batch_after,
                                      cancels=[batch], concurrency_limit=None, api_name="batch_cancel")

        # -- Results & export --------------------------------------------------------------------
        results_tab["make_bundle"].click(bind(results.make_bundle, results_tab), [*route_state, *sliders],
                                         pick(results_tab, "dl_bundle", "bundle_msg", "serve_cmd"),
                                         concurrency_limit=2,
                                         api_name="export_bundle")
        results_tab["serve_start"].click(bind(results.serve_start, results_tab),
                                         [*route_state, results_tab["serve_lm"], api_key, results_tab["serve_port"],
                                          *sliders], results_tab["serve_status"], concurrency_limit=2,
                                         api_name="serve_start")
        results_tab["serve_stop"].click(bind(results.serve_stop, results_tab), owner, results_tab["serve_status"],
                                        api_name="serve_stop")
        results_tab["refresh_runs"].click(**runs_list, api_name="runs")
        disk = dict(fn=bind(results.disk_note, results_tab), inputs=owner, outputs=results_tab["disk"],
                    show_progress="hidden")
        results_tab["runs"].change(**disk)  # the list changed: so may the disk used
        results_tab["remove_run"].click(bind(results.remove_run, results_tab), [owner, results_tab["run_pick"]],
                                        results_tab["disk"], api_name="remove_run").success(**runs_list)
        results_tab["mined_filter"].input(**{**mined, "api_name": "mined_filter"})
        results_tab["compare_pick"].input(bind(results.compare, results_tab), [owner, results_tab["compare_pick"]],
                                          results_tab["compare"], api_name="compare")
        # Opening a past run shows it, and fills the setup tabs with its settings (the key excepted).
        results_tab["open"].click(results.pick, results_tab["run_pick"], current, api_name="open").then(**attach) \
            .then(bind(setup.from_run, setup_ui), [owner, current], setup.outputs(setup_ui)).then(**load_data) \
            .then(**refresh_models).then(**estimate).then(**preview)
        results_tab["settings_file"].upload(bind(setup.from_file, setup_ui, results_tab["settings_msg"]),
                                            [owner, results_tab["settings_file"]],
                                            [*setup.outputs(setup_ui), results_tab["settings_msg"]]) \
            .then(**load_data).then(**refresh_models).then(**estimate).then(**preview)

        # -- The setup is the owner's: kept as it changes, shown again after a reload ------------
        gr.on([field.change for field in form_inputs], bind(setup.save), [owner, restored, *form_inputs], None,
              trigger_mode="always_last", show_progress="hidden", concurrency_limit=None)

        # -- Page load: owner token, the saved setup, the run this browser was watching (and its
        # summarization run), the data
        sum_attach = dict(fn=bind(summaries.attach, sum_tab), inputs=[owner, sum_tab["current"]],
                          outputs=pick(sum_tab, *summaries.ATTACH_OUT), show_progress="hidden")
        demo.load(_ensure_owner, owner, owner) \
            .then(bind(setup.restore, setup_ui, restored), owner, setup.outputs(setup_ui, restored)) \
            .then(**attach).then(**runs_list).then(**load_data) \
            .then(**refresh_models).then(**estimate).then(**preview).then(**sum_attach)
        demo.unload(studio.drop)

        # -- Summaries (issue 18): its own data, models, LM, run and Try it ------------------------
        sum_tab["preview_btn"].click(bind(summaries.preview, sum_tab), pick(sum_tab, *summaries.PREVIEW_KEYS),
                                     pick(sum_tab, *summaries.PREVIEW_OUT))
        sum_tab["file"].upload(bind(summaries.uploaded, sum_tab), pick(sum_tab, *summaries.UPLOAD_KEYS),
                               pick(sum_tab, *summaries.UPLOAD_OUT))
        sum_tab["test_lm_btn"].click(bind(summaries.test_lm, sum_tab), pick(sum_tab, *summaries.RUN_KEYS),
                                     pick(sum_tab, *summaries.TEST_LM_OUT), concurrency_limit=1)
        sum_tab["run"].click(bind(summaries.start, sum_tab), [owner, *pick(sum_tab, *summaries.RUN_KEYS)],
                             pick(sum_tab, *summaries.RUN_OUT), concurrency_limit=2)
        sum_tab["timer"].tick(bind(summaries.tick, sum_tab), [owner, sum_tab["current"]],
                              pick(sum_tab, *summaries.TICK_OUT), show_progress="hidden")
        sum_tab["cancel"].click(bind(summaries.cancel, sum_tab), [owner, sum_tab["current"]],
                                pick(sum_tab, *summaries.CANCEL_OUT))
        sum_tab["resume"].click(bind(summaries.resume, sum_tab), [owner, sum_tab["current"], sum_tab["lm_key"]],
                                pick(sum_tab, *summaries.RESUME_OUT))
        sum_tab["runs"].input(summaries.pick_run, sum_tab["runs"], sum_tab["current"]).then(**sum_attach)
        sum_sliders = [sum_tab["state"], *pick(sum_tab, *summaries.SLIDER_KEYS)]
        gr.on([sum_tab[k].input for k in summaries.SLIDER_KEYS], bind(summaries.move, sum_tab), sum_sliders,
              pick(sum_tab, "point", "plot"), **fast)
        sum_tab["use_point"].click(bind(summaries.use_point, sum_tab), sum_sliders,
                                   pick(sum_tab, "state", "downloads", "point"))
        sum_tab["try_btn"].click(bind(summaries.try_text, sum_tab), pick(sum_tab, *summaries.TRY_KEYS),
                                 sum_tab["trace"])
        sum_tab["batch_file"].upload(bind(summaries.batch_uploaded, sum_tab), sum_tab["batch_file"],
                                     pick(sum_tab, *summaries.BATCH_UPLOAD_OUT))
        sum_tab["batch_btn"].click(bind(summaries.batch_predict, sum_tab), pick(sum_tab, *summaries.BATCH_KEYS),
                                   pick(sum_tab, *summaries.BATCH_OUT), concurrency_limit=2,
                                   api_name="summaries_batch")
        sum_tab["batch_stop"].click(bind(summaries.batch_stop, sum_tab), None, sum_tab["batch_status"],
                                    concurrency_limit=None)
        sum_tab["serve_start"].click(bind(summaries.serve_start, sum_tab),
                                     [owner, *pick(sum_tab, *summaries.SERVE_KEYS)], sum_tab["serve_status"],
                                     concurrency_limit=2, api_name="summaries_serve_start")
        sum_tab["serve_stop"].click(bind(summaries.serve_stop, sum_tab), owner, sum_tab["serve_status"],
                                    api_name="summaries_serve_stop")
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
    p.add_argument("--auth", metavar="USER:PASSWORD",
                   help="require this login (ps shows it to every local user: prefer --auth-file or $EA_STUDIO_AUTH)")
    shared = p.add_argument_group("a shared server (see the README's 'Shared server')")
    shared.add_argument("--auth-file", metavar="FILE",
                        help="logins, one user:password or user:scrypt$... (--hash-password) per line; "
                             f"or the same lines in ${AUTH_ENV}")
    shared.add_argument("--hash-password", action="store_true",
                        help="read a password on stdin, print its hash for --auth-file, and exit")
    shared.add_argument("--insecure", action="store_true",
                        help="listen beyond loopback without a login (refused otherwise)")
    shared.add_argument("--allow-endpoint", action="append", default=[], metavar="URL_OR_HOST",
                        help="an LM endpoint runs may call (repeatable): a host, *.domain, host:port, a URL prefix, a "
                             "network (10.0.0.0/8) or 'public'; default beyond loopback: public hosts only")
    shared.add_argument("--allow-any-endpoint", action="store_true",
                        help="let users call any endpoint, private addresses included (the default on 127.0.0.1)")
    shared.add_argument("--max-runs", type=int, default=0, metavar="N",
                        help="runs at once on this server (default: from the cores and free memory; 1 on 2 cores)")
    shared.add_argument("--max-runs-per-user", type=int, default=0, metavar="N",
                        help="runs at once per browser (default: half of --max-runs, at least 1)")
    shared.add_argument("--max-queued-per-user", type=int, default=QueueSettings.max_queued_per_owner, metavar="N",
                        help=f"runs one browser may have waiting (default {QueueSettings.max_queued_per_owner})")
    shared.add_argument("--worker-nice", type=int, default=QueueSettings.worker_nice, metavar="N",
                        help=f"how much lower the runs' CPU priority is than the server's (default "
                             f"{QueueSettings.worker_nice})")
    shared.add_argument("--disk-quota-mb", type=float, default=0, metavar="MB",
                        help="disk one browser's runs and uploads may take (default 0: no limit)")
    shared.add_argument("--runs-max-days", type=float, default=0, metavar="DAYS",
                        help="remove ended runs this many days after they end (default 0: keep)")
    shared.add_argument("--upload-quota-mb", type=float, default=DEFAULT_QUOTA_MB, metavar="MB",
                        help=f"data files one browser may keep uploaded (default {DEFAULT_QUOTA_MB}; 0: no limit)")
    shared.add_argument("--upload-max-days", type=float, default=DEFAULT_MAX_AGE_DAYS, metavar="DAYS",
                        help=f"remove an uploaded data file unused this many days (default {DEFAULT_MAX_AGE_DAYS}; "
                             "0: keep until removed)")
    return p.parse_args(argv)


def login_of(args: argparse.Namespace) -> Any:
    """What Gradio's ``auth=`` gets: a checker over --auth-file (or $EA_STUDIO_AUTH), the --auth pair
    (with a warning: ps shows it), or None."""
    if args.auth_file:
        logins = Logins.from_file(args.auth_file)
        warning = file_warning(args.auth_file, logins)
        if warning:
            print(warning, file=sys.stderr)
        return logins.check
    if args.auth:
        user, sep, password = args.auth.partition(":")
        if not sep or not user or not password:
            raise ConfigError("--auth takes USER:PASSWORD")
        print("warning: --auth puts the password on the command line, where ps shows it to every local user; "
              f"use --auth-file FILE or ${AUTH_ENV} instead", file=sys.stderr)
        return (user, password)
    logins = Logins.from_env()
    return logins.check if logins is not None else None


def shared_server(args: argparse.Namespace) -> dict[str, Any]:
    """build_app's limits from the flags: the run queue, the endpoints runs may call, the disk quota."""
    return {"queue": QueueSettings(args.max_runs, args.max_runs_per_user, args.max_queued_per_user, args.worker_nice),
            "endpoints": EndpointPolicy.for_server(args.host, args.allow_endpoint, args.allow_any_endpoint),
            "quota": DiskQuota(args.disk_quota_mb, args.runs_max_days),
            "uploads": StoreLimits(args.upload_quota_mb, args.upload_max_days),
            # Results may start a server of the open run's system on 127.0.0.1: useful only to a browser on
            # this machine, so not on a shared server.
            "local_servers": 1 if is_loopback_host(args.host) else 0}


def _print_password_hash() -> int:
    import getpass

    password = getpass.getpass("password: ") if sys.stdin.isatty() else sys.stdin.readline().rstrip("\n")
    print(hash_password(password))
    return 0


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = parse_args(argv)
    if args.hash_password:
        return _print_password_hash()
    try:
        auth = login_of(args)
        shared = shared_server(args)
    except EAError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    if auth is None and not is_loopback_host(args.host) and not args.insecure:
        print(f"error: listening on {args.host} lets other machines in, and no login is set: give --auth-file FILE "
              f"(or ${AUTH_ENV}), or --insecure to run without one", file=sys.stderr)
        return 2
    os.environ.update(shared["endpoints"].env())  # every LM request of this process follows the policy too
    from ea_core.process import configure_process

    configure_process()
    demo = build_app(args.runs_dir, **shared)
    limits = demo.studio.manager.queue.settings()
    print(f"{shared['endpoints'].describe()} Runs at once: {limits.max_running} ({limits.max_running_per_owner} per "
          f"browser); {shared['quota'].limits_text()}.", file=sys.stderr)
    demo.queue(default_concurrency_limit=4)
    try:
        demo.launch(server_name=args.host, server_port=args.port, auth=auth, **LAUNCH_OPTIONS)
    finally:
        demo.studio.servers.stop_all()  # the local servers Results started (their threads would die anyway)
    return 0


#: Browser sessions whose Gradio state the server keeps (live ones are the most recently used).
SESSIONS_KEPT = 1000
#: How the app is launched (tests and benchmarks launch it the same way).
LAUNCH_OPTIONS: dict[str, Any] = dict(css=CSS, theme=gr.themes.Soft(), footer_links=["api"], max_file_size="2gb",
                                      show_error=False,
                                      # Gradio keeps each session's component state (~150 kB here) after the page
                                      # closes, until this many newer sessions push it out (its default: 10,000).
                                      state_session_capacity=SESSIONS_KEPT)


if __name__ == "__main__":
    sys.exit(main())
