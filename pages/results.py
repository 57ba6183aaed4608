"""Results & export tab: the results table (the paper's Tables 1, 3 and 4), what EA found (the
mined training examples), downloads, the adapted system as a bundle, the run's settings, and the
browser's past runs, compared side by side.

Thin: rows, mined examples, downloads, bundles and past runs come from `ea_core.opened`. Files
offered for download are copies in the session's private folder, so a download link never exposes
a run folder.
"""

from __future__ import annotations

import shutil
import time
from pathlib import Path
from typing import Any, Optional

import gradio as gr

from ea_core.opened import OpenedRun, PastRun, lm_spec, past_runs
from ea_core.operating_point import SYSTEM_WORDS
from ea_core.serve.main import serve_command
from ea_core.serve.settings import ServeSettings
from pages.form import settings_file
from pages.session import Session, Studio
from pages.thresholds import CONNECT, headroom_updates
from pages.train import spent_text
from pages.ui import Components, fit_widths, friendly, note, pct, seconds, usd

SYSTEM_TITLES = {"lm": "LM alone", "specific_layer": "Specific Layer (SSMs → LM)",
                 "ea": "EA (SSMs → ASSMs → LM)", "ea_lm_first": "EA, LM before ASSMs", "ea_full": "EA(Full)",
                 "ea_learned": "EA, learned router",
                 "oracle": "oracle (right if any stage is right)"}
TABLE_HEADERS = ["system", "val acc (95% CI)", "test acc (95% CI)", "macro-F1 (test)", "LM calls (test)", "train time",
                 "peak memory", "LM money (test)", "USD / 1k inputs"]
RUN_HEADERS = ["started", "state", "data", "small models", "LM", "EA (test, 95% CI)", "best SSM (test)",
               "LM alone (test)", "LM calls", "money"]
RUN_WIDTHS = ["9%", "7%", "8%", "12%", "12%", "12%", "13%", "11%", "7%", "9%"]
MINED_FILTERS = [("every example sent to the LM", "all"), ("underfit only (the LM wrong too)", "underfit"),
                 ("the LM fixed it", "lm_fixed")]
#: The side-by-side table before two runs are picked.
COMPARE_EMPTY = {"figure": ["(pick two or more runs above)"]}
#: A mined example's outcome as the table says it (the CSV keeps the codes).
OUTCOME_WORDS = {"underfit": "underfit (LM wrong too)", "lm_fixed": "the LM fixed it", "failed": "LM call failed"}
SHOWN_WORDS = {"all": "sent to the LM", "underfit": "underfit ones", "lm_fixed": "the LM fixed"}
#: Mined examples a page shows (the CSV holds them all).
MINED_SHOWN = 200
#: The variable the shown `serve` command reads its clients' key from.
SERVE_KEY_ENV = "EA_SERVE_KEY"


def build() -> Components:
    c: Components = {}
    c["intro"] = gr.HTML(note("Open a finished run to see its results.", "info"), elem_id="res-intro")
    c["headroom"] = gr.HTML("", visible=False, elem_id="res-headroom")
    with gr.Row():
        c["connect"] = gr.Button(CONNECT, visible=False, variant="primary", scale=0, min_width=380,
                                 elem_id="res-connect")
    c["table"] = gr.Dataframe(headers=TABLE_HEADERS, interactive=False, wrap=True, elem_id="res-table",
                              label="Systems: thresholds tuned on validation, accuracy on validation and test")
    with gr.Row(equal_height=False):
        c["shares"] = gr.Dataframe(headers=["stage", "share of test inputs", "accuracy there"], interactive=False,
                                   label="Who answers in EA (test)", scale=1)
        c["summary"] = gr.Markdown("", elem_id="res-summary")
    with gr.Row():
        c["dl_csv"] = gr.DownloadButton("results.csv", value=None, interactive=False, size="sm")
        c["dl_json"] = gr.DownloadButton("results.json", value=None, interactive=False, size="sm")
        c["dl_settings"] = gr.DownloadButton("run settings (.json, no key)", value=None, interactive=False, size="sm")
        c["make_bundle"] = gr.Button("Build bundle at the current thresholds", size="sm", elem_id="res-make-bundle")
        c["dl_bundle"] = gr.DownloadButton("bundle.zip", value=None, interactive=False, size="sm",
                                           elem_id="res-dl-bundle")
    c["bundle_msg"] = gr.HTML("")
    with gr.Accordion("Serve it: an OpenAI-compatible API over the adapted system", open=False,
                      elem_id="res-serve-box"):
        c["serve_cmd"] = gr.Markdown("", elem_id="res-serve-cmd")
        with gr.Row(equal_height=True):
            c["serve_port"] = gr.Number(8000, precision=0, minimum=0, maximum=65535, scale=1,
                                        label="port on 127.0.0.1 (0: any free port)", elem_id="res-serve-port")
            c["serve_lm"] = gr.Checkbox(True, label="Call the LM stage (with the key in Large model)", scale=2,
                                        elem_id="res-serve-lm")
            c["serve_start"] = gr.Button("Start a local server", variant="primary", scale=1,
                                         elem_id="res-serve-start")
            c["serve_stop"] = gr.Button("Stop it", scale=1, elem_id="res-serve-stop")
        c["serve_status"] = gr.HTML("", elem_id="res-serve-status")
    with gr.Accordion("What EA found: the training examples every small model got wrong", open=True,
                      elem_id="res-mined-box"):
        c["mined_intro"] = gr.HTML("", elem_id="res-mined-intro")
        with gr.Row(equal_height=False):
            c["mined_filter"] = gr.Radio(MINED_FILTERS, value="all", label="Show", scale=4, elem_id="res-mined-filter")
            c["mined_csv"] = gr.DownloadButton("mined examples (.csv)", value=None, interactive=False, size="sm",
                                               scale=1, elem_id="res-mined-csv")
        c["mined_table"] = gr.Dataframe(interactive=False, wrap=True, max_height=360, elem_id="res-mined",
                                        label="Mined training examples: each small model's answer (out of fold) "
                                              "and the LM's")
    with gr.Accordion("Your runs (this browser)", open=True):
        c["runs"] = gr.Dataframe(headers=RUN_HEADERS, interactive=False, wrap=True, elem_id="res-runs", max_height=300,
                                 column_widths=RUN_WIDTHS)
        with gr.Row():
            c["run_pick"] = gr.Dropdown([], label="Run", scale=3, elem_id="res-run-pick")
            c["open"] = gr.Button("Open", scale=1, elem_id="res-open")
            c["refresh_runs"] = gr.Button("Refresh list", scale=1)
            c["remove_run"] = gr.Button("Remove", scale=1, variant="stop", elem_id="res-remove")
        c["disk"] = gr.HTML("", elem_id="res-disk")  # what the owner's runs and uploads take, and the limits
        c["compare_pick"] = gr.Dropdown([], multiselect=True, label="Compare runs side by side (pick two or more)",
                                        elem_id="res-compare-pick")
        c["compare"] = gr.Dataframe(COMPARE_EMPTY, interactive=False, wrap=True, elem_id="res-compare",
                                    label="Runs side by side (test figures with 95% intervals)")
    with gr.Accordion("Load settings from a file", open=False):
        c["settings_file"] = gr.File(label="settings .json", file_types=[".json"], height=100)
        c["settings_msg"] = gr.HTML("")
    return c


def lm_usage_line(calls: int, spent: float, price: Any) -> str:
    """The run's LM usage as its price case says it: "paid calls" only for a priced LM."""
    if price is not None and price.free:
        return f"LM usage of this run: {calls:,} calls, {spent_text(price, spent)}."
    if price is not None and not price.known:
        return f"LM usage of this run: {calls:,} calls, price unknown (give the model's prices to count them)."
    return f"LM usage of this run: {calls:,} paid calls, {usd(spent)}."


def _download_dir(session: Session, run_id: str) -> Path:
    path = session.upload_dir / "downloads" / run_id[:12]
    path.mkdir(parents=True, exist_ok=True)
    return path


def _with_ci(value: Optional[float], ci: Any) -> str:
    """An accuracy with its 95% bootstrap interval, e.g. ``76.80% (73.0-80.4)``."""
    if value is None or not ci:
        return pct(value, 2)
    return f"{pct(value, 2)} ({100 * ci[0]:.1f}-{100 * ci[1]:.1f})"


def _fmt_row(r: dict[str, Any]) -> list[str]:
    name = r["system"]
    return [SYSTEM_TITLES.get(name, name), _with_ci(r.get("val_accuracy"), r.get("val_accuracy_ci")),
            _with_ci(r.get("test_accuracy"), r.get("test_accuracy_ci")),
            "-" if r.get("macro_f1") is None else f"{r['macro_f1']:.3f}", pct(r.get("lm_call_rate")),
            seconds(r.get("train_time_s")) if r.get("train_time_s") else "-",
            f"{r['peak_rss_mb']:.0f} MB" if r.get("peak_rss_mb") else "-",
            usd(r.get("lm_cost_usd")) if r.get("lm_cost_usd") is not None else "-",
            usd(r.get("cost_per_1k_usd")) if r.get("cost_per_1k_usd") is not None else "-"]


def recall_table(rows: list[dict[str, Any]], labels: list[str]) -> str:
    """Per-class recall of each system as a compact Markdown table: test recall, validation in
    brackets. Accuracy hides a system that answers the majority class; a 0% column shows it."""
    shown = [r for r in rows if r.get("test_recall") and r["system"] != "oracle"]
    if not shown:
        return ""

    def cell(r: dict[str, Any], label: str) -> str:
        test, val = (r.get("test_recall") or {}).get(label), (r.get("val_recall") or {}).get(label)
        return f"{pct(test)} ({pct(val)})" if val is not None else pct(test)

    def esc(text: str) -> str:
        return str(text).replace("|", "\\|")

    lines = ["**Recall per class** (test, validation in brackets)", "",
             "| system | " + " | ".join(esc(name) for name in labels) + " |",
             "|---|" + "---:|" * len(labels)]
    for r in shown:
        name = esc(SYSTEM_TITLES.get(r["system"], r["system"]))
        lines.append(f"| {name} | " + " | ".join(cell(r, label) for label in labels) + " |")
    return "\n".join(lines)


@friendly(into="intro")
def views(studio: Studio, tab: Components, owner: Optional[str], run_id: Optional[str],
          request: gr.Request) -> dict[Any, Any]:
    """The tab for a finished run: tables, summary, downloads (copies in the session's folder)."""
    import pandas as pd

    run = studio.opened(request, owner, run_id)
    if run is None:
        return gr.skip()
    state = run.state()
    rows = run.results()
    table = pd.DataFrame([_fmt_row(r) for r in rows], columns=TABLE_HEADERS)
    ea = next((r for r in rows if r["system"] == "ea"), None)
    shares = pd.DataFrame(
        [[name, pct(share), pct((ea.get("stage_accuracy") or {}).get(name))] for name, share in
         (ea.get("stage_shares") or {}).items()] if ea else [], columns=["stage", "share of test inputs",
                                                                         "accuracy there"])
    lines = [f"**{state.task.name}** · labels {', '.join(state.task.labels)} · train {len(state.task.train):,} / "
             f"val {len(state.task.val):,} / test {len(state.task.test):,}",
             f"SSM ranking (validation {state.config.metric_for(state.task).replace('_', '-')}): "
             f"{', '.join(r.name for r in state.ssms)}"]
    if state.mining is not None:
        m = state.mining.summary()
        lines.append(f"Mining: {m['sent_to_lm']:,} of {m['n_train']:,} training examples sent to the LM, "
                     f"{m['underfit']:,} underfit (the LM was wrong too), {m['lm_failed']} failed calls.")
    if state.lm_usage:
        calls, spent = run.lm_spend()
        lines.append(lm_usage_line(calls, spent, run.lm_price()))
    lines += [f"Note: {n}" for n in state.notes]
    lines += [f"{SYSTEM_TITLES.get(r['system'], r['system'])}: {r['note']}" for r in rows
              if r.get("note") and r["system"] != "oracle"]
    recall = recall_table(rows, state.task.labels)
    if recall:
        lines.append(recall)
    out = _download_dir(studio.session(request), run_id)
    files = run.copy_results(out)
    settings = settings_file(state.config.to_dict(), run.folder, out / "settings.json")
    intro = note(f"Run {state.task.name}: thresholds were tuned on validation; every test figure is on held-out "
                 "data. Accuracies show a 95% bootstrap interval.", "info")

    def download(name: str) -> Any:
        return gr.update(value=str(files[name]) if name in files else None, interactive=name in files)

    return {tab["intro"]: intro, tab["table"]: table, tab["shares"]: shares, tab["summary"]: "\n\n".join(lines),
            tab["dl_csv"]: download("results.csv"), tab["dl_json"]: download("results.json"),
            tab["dl_settings"]: gr.update(value=str(settings), interactive=True),
            tab["serve_cmd"]: serve_text(run), tab["serve_status"]: serve_status_html(studio, owner),
            **headroom_updates(tab, run.headroom(), run.lm_title())}


def view_outputs(c: Components) -> list[Any]:
    """What `views` sets."""
    return [c[k] for k in ("intro", "table", "shares", "summary", "dl_csv", "dl_json", "dl_settings", "headroom",
                           "connect", "serve_cmd", "serve_status")]


def serve_text(run: OpenedRun, tuned_lm_share: Optional[float] = None, port: int = 8000) -> str:
    """How to serve the run's system on any machine: the bundle zip built above, unzipped, and the
    `serve` command (its clients' key in a variable, the LM's key in the provider's own; with the
    bundle built, the validation LM share at its thresholds, which the server watches for drift)."""
    import shlex

    name = run.bundle_name()
    spec = lm_spec(run.config())
    with_lm = spec is not None and spec.is_endpoint
    command = serve_command(name, port=port, lm_base_url=spec.base_url if with_lm else None, key_env=SERVE_KEY_ENV,
                            tuned_lm_share=tuned_lm_share)
    lm_key = (f"export {spec.key_env}=...        # the LM's key\n" if with_lm and spec.needs_key and spec.key_env
              else "")
    return ("Serve the system over an OpenAI-compatible API (`/v1/chat/completions` answers the label, "
            "`/v1/classify` a batch, `/metrics` for Prometheus): build the bundle above at the thresholds you want, "
            "then on the machine that serves it\n\n"
            f"```bash\nunzip {shlex.quote(name + '.zip')} -d {shlex.quote(name)}\n"
            f"export {SERVE_KEY_ENV}=$(python -c 'import secrets; print(secrets.token_urlsafe())')  # clients send it\n"
            f"{lm_key}{command}\n```\n\n"
            f"Clients: `openai.OpenAI(base_url=\"http://HOST:{port}/v1\", api_key=<the key>)`. "
            "Add `--log-dir DIR` to log requests and feedback as data for the next run (`python -m ea_core from-log`)."
            + ("" if tuned_lm_share is not None or spec is None else
               " Once the bundle is built, the command also carries `--tuned-lm-share`: the LM share on validation at "
               "its thresholds, which the server compares its traffic with (drift)."))


def serve_status_html(studio: Studio, owner: Optional[str]) -> str:
    """The owner's local server, if one runs: where, its key, what answers."""
    server = studio.servers.get(owner)
    if server is None:
        return ""
    return note(f"{server.describe()} Key: {server.key} (clients send it as the API key). It serves the system at "
                "the thresholds of the moment it started: start it again after moving them. It stops when you press "
                "Stop, close this page or the app closes.", "ok")


@friendly(into="serve_status")
def serve_start(studio: Studio, tab: Components, owner: Optional[str], run_id: Optional[str], order: str,
                calibrated: bool, use_lm: bool, api_key: Optional[str], port: Optional[float], request: gr.Request,
                *sliders: float) -> dict[Any, Any]:
    """Serve the open run's system at the current thresholds on this machine (127.0.0.1), in the app."""
    run = studio.opened(request, owner, run_id)
    if run is None:
        return {tab["serve_status"]: note("Open a finished run first.", "info")}
    use_lm = bool(use_lm) and lm_spec(run.config()) is not None
    if use_lm:
        run.check_lm_endpoint()
        if run.lm_needs_key() and not (api_key or "").strip():
            return {tab["serve_status"]: note("The LM stage needs your API key: paste it in Large model, or untick "
                                              "'Call the LM stage' to let the last small model answer.", "warn")}
    studio.servers.stop(owner)  # before its bundle folder is replaced
    folder = _download_dir(studio.session(request), run.run_id) / "served"
    shutil.rmtree(folder, ignore_errors=True)
    bundle = run.export_bundle(folder, order, calibrated, sliders)
    settings = ServeSettings(tuned_lm_share=run.val_lm_share(order, calibrated, sliders) if use_lm else None)
    config = run.config()
    studio.servers.start(owner or "", bundle, port=int(port or 0), use_lm=use_lm,
                         lm_api_key=(api_key or "").strip() or None, settings=settings,
                         cache=config.cache if config is not None else None,  # the owner's LM answer cache
                         session=getattr(request, "session_hash", None))  # its end (the page closed) stops it
    return {tab["serve_status"]: serve_status_html(studio, owner)}


def serve_stop(studio: Studio, tab: Components, owner: Optional[str]) -> dict[Any, Any]:
    """Stop the owner's local server."""
    stopped = studio.servers.stop(owner)
    return {tab["serve_status"]: note("The local server stopped." if stopped else "No local server runs.", "info")}


@friendly(into="mined_intro")
def mined(studio: Studio, tab: Components, owner: Optional[str], run_id: Optional[str], which: str,
          request: gr.Request) -> dict[Any, Any]:
    """What EA found (the paper's X_train^U): the training examples mining sent to the LM, with each
    small model's out-of-fold answer and the LM's, filtered; the whole filter as a CSV."""
    import pandas as pd

    run = studio.opened(request, owner, run_id)
    if run is None:
        return gr.skip()
    which = which or "all"
    counts = run.mined_counts()
    if not counts["sent"]:
        said = ("This run has no LM: nothing was mined." if not run.state().lm_answers else
                "Mining sent no training example to the LM: every one was right for some small model.")
        return {tab["mined_intro"]: note(said, "info"), tab["mined_table"]: pd.DataFrame(),
                tab["mined_csv"]: gr.update(value=None, interactive=False)}
    rows = run.mined(which)
    csv_path = run.mined_csv(which, _download_dir(studio.session(request), run.run_id))
    n_train = len(run.state().task.train)
    intro = note(f"Mining asked the LM about the {counts['sent']:,} of {n_train:,} training examples that every small "
                 f"model got wrong (out of fold): the LM fixed {counts['lm_fixed']:,}, and {counts['underfit']:,} stay "
                 f"underfit (the LM was wrong too: the paper's X_train^U, what the augmented models learn)"
                 + (f"; {counts['failed']:,} calls failed" if counts["failed"] else "")
                 + (f". Showing the first {MINED_SHOWN} of the {len(rows):,} {SHOWN_WORDS[which]}; the CSV holds them "
                    "all." if len(rows) > MINED_SHOWN else f". Showing the {len(rows):,} {SHOWN_WORDS[which]}."), "info")
    frame = pd.DataFrame([{**r, "outcome": OUTCOME_WORDS.get(r["outcome"], r["outcome"])} for r in rows[:MINED_SHOWN]])
    return {tab["mined_intro"]: intro, tab["mined_table"]: gr.update(value=frame, column_widths=fit_widths(frame)),
            tab["mined_csv"]: gr.update(value=str(csv_path), interactive=True)}


@friendly(into="bundle_msg")
def make_bundle(studio: Studio, tab: Components, owner: Optional[str], run_id: Optional[str], order: str,
                calibrated: bool, request: gr.Request, *sliders: float) -> dict[Any, Any]:
    """Export the adapted system at the current sliders as a zip to download."""
    run = studio.opened(request, owner, run_id)
    if run is None:
        return {tab["bundle_msg"]: note("Open a finished run first.", "info")}
    zip_path = run.bundle_zip(_download_dir(studio.session(request), run_id), order, calibrated, sliders)
    size = zip_path.stat().st_size / 2**20
    return {tab["dl_bundle"]: gr.update(value=str(zip_path), interactive=True),
            tab["serve_cmd"]: serve_text(run, run.val_lm_share(order, calibrated, sliders)),
            tab["bundle_msg"]: note(f"Bundle ready ({size:.1f} MB): {', '.join(run.stage_names(order))} at the "
                                    "current thresholds. Use it with `python -m ea_core predict --bundle DIR`, or "
                                    "load it in Try it.", "ok")}


def _acc(run: PastRun, system: str) -> str:
    """A past run's test accuracy of `system` with its 95% interval, or "-"."""
    value, ci = run.accuracy(system)
    return _with_ci(value, ci) if value is not None else "-"


def _started(run: PastRun) -> str:
    return time.strftime("%m-%d %H:%M", time.localtime(run.created))


def _run_label(run: PastRun) -> str:
    return f"{run.title or run.data} — {run.state} ({_started(run)}) · {run.run_id[:6]}"


def _money(run: PastRun) -> str:
    return "free (local)" if run.lm_free else usd(run.lm_cost_usd)


def runs_list(studio: Studio, tab: Components, owner: Optional[str]) -> dict[Any, Any]:
    """The owner's runs (only theirs): a table of what each ran on and what it scored, a picker to
    open one, and a picker to compare several."""
    import pandas as pd

    runs = past_runs(studio.manager, owner)
    best = [f"{r.best_ssm}: {_acc(r, 'best_ssm')}" if r.best_ssm else "-" for r in runs]
    table = pd.DataFrame([[_started(r), r.state, r.data, ", ".join(r.models) or "-", r.lm, _acc(r, "ea"), b,
                           _acc(r, "lm"), f"{r.lm_calls:,}", _money(r)] for r, b in zip(runs, best)],
                         columns=RUN_HEADERS)
    choices = [(_run_label(r), r.run_id) for r in runs]
    return {tab["runs"]: table, tab["run_pick"]: gr.update(choices=choices, value=choices[0][1] if choices else None),
            tab["compare_pick"]: gr.update(choices=choices, value=[])}


def disk_note(studio: Studio, tab: Components, owner: Optional[str]) -> dict[Any, Any]:
    """What this browser's runs and uploads take on the server, against its quota and age limit."""
    if not owner:
        return {tab["disk"]: ""}
    manager = studio.manager
    return {tab["disk"]: note(manager.quota.describe(manager.disk_use(owner)) + ".", "info")}


@friendly(into="disk")
def remove_run(studio: Studio, tab: Components, owner: Optional[str], run_id: Optional[str]) -> dict[Any, Any]:
    """Remove the picked run (an ended one: its folder, models and results) to free its disk."""
    if not run_id or not owner:
        return {tab["disk"]: note("Pick a run to remove.", "info")}
    studio.manager.remove(run_id, owner)
    return {tab["disk"]: note("Run removed.", "ok")}


def compare_rows(runs: list[PastRun]) -> list[list[str]]:
    """Runs side by side: one row per figure, one column per run."""
    def sizes(r: PastRun) -> str:
        return " / ".join(f"{r.sizes[k]:,}" for k in ("train", "val", "test") if k in r.sizes) or "-"

    def kept(r: PastRun) -> str:
        ea = r.row("ea")
        if not ea:
            return "-"
        return SYSTEM_WORDS.get(str(ea.get("chosen") or "full"), str(ea.get("chosen")))

    def ea_calls(r: PastRun) -> str:
        ea = r.row("ea")
        return pct(ea.get("lm_call_rate")) if ea else "-"

    figures = [("run", lambda r: r.title or r.run_id[:8]), ("started", _started), ("state", lambda r: r.state),
               ("data (train / val / test)", lambda r: f"{r.data} ({sizes(r)})"),
               ("small models", lambda r: ", ".join(r.models) or "-"), ("LM", lambda r: r.lm),
               ("LM budget", lambda r: pct(r.max_lm_rate, 0) if r.max_lm_rate is not None else "-"),
               ("EA, test (95% CI)", lambda r: _acc(r, "ea")),
               ("EA, validation", lambda r: pct(r.row("ea").get("val_accuracy"), 2) if r.row("ea") else "-"),
               ("best SSM, test", lambda r: f"{r.best_ssm}: {_acc(r, 'best_ssm')}" if r.best_ssm else "-"),
               ("LM alone, test", lambda r: _acc(r, "lm")), ("oracle, test", lambda r: _acc(r, "oracle")),
               ("EA's test inputs sent to the LM", ea_calls), ("what EA kept", kept),
               ("LM calls (whole run)", lambda r: f"{r.lm_calls:,}"), ("LM money (whole run)", _money),
               ("took", lambda r: seconds(r.elapsed_s))]
    return [[name] + [fn(r) for r in runs] for name, fn in figures]


def compare(studio: Studio, tab: Components, owner: Optional[str], run_ids: Optional[list[str]]) -> dict[Any, Any]:
    """Two or more of the owner's runs side by side (nobody else's: a foreign id is not listed)."""
    import pandas as pd

    picked = [r for r in past_runs(studio.manager, owner) if r.run_id in set(run_ids or [])]
    if len(picked) < 2:
        return {tab["compare"]: gr.update(value=pd.DataFrame(COMPARE_EMPTY), column_widths=["100%"])}
    headers = ["figure"] + [f"{k + 1}. {r.data} ({_started(r)})" for k, r in enumerate(picked)]
    share = f"{76 / len(picked):.1f}%"  # the runs share the width: every column on screen
    return {tab["compare"]: gr.update(value=pd.DataFrame(compare_rows(picked), columns=headers),
                                      column_widths=["24%"] + [share] * len(picked))}


def pick(run_id: Optional[str]) -> Any:
    """Open: the picked run becomes the one this browser watches (the Train & mine tab attaches)."""
    return run_id or gr.skip()
