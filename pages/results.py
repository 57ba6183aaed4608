"""Results & export tab: the results table (the paper's Tables 1, 3 and 4), downloads, the
adapted system as a bundle, the run's settings, and the session's past runs.

Thin: rows, downloads and bundles come from the opened run (`ea_core.opened`). Files offered for
download are copies in the session's private folder, so a download link never exposes a run folder.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Optional

import gradio as gr

from ea_core.opened import past_runs
from pages.form import KEYS, form_from_config, read_settings, settings_file, upload_note
from pages.session import Session, Studio
from pages.ui import Components, error_message, friendly, note, pct, seconds, usd

SYSTEM_TITLES = {"lm": "LM alone", "specific_layer": "Specific Layer (SSMs → LM)",
                 "ea": "EA (SSMs → ASSMs → LM)", "ea_lm_first": "EA, LM before ASSMs", "ea_full": "EA(Full)",
                 "oracle": "oracle (right if any stage is right)"}
TABLE_HEADERS = ["system", "val acc (95% CI)", "test acc (95% CI)", "macro-F1 (test)", "LM calls (test)", "train time",
                 "peak memory", "LM money (test)", "USD / 1k inputs"]
RUN_HEADERS = ["run", "state", "started", "took"]


def build() -> Components:
    c: Components = {}
    c["intro"] = gr.HTML(note("Open a finished run to see its results.", "info"), elem_id="res-intro")
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
    with gr.Accordion("Your runs (this browser)", open=True):
        c["runs"] = gr.Dataframe(headers=RUN_HEADERS, interactive=False, wrap=True, elem_id="res-runs", max_height=260)
        with gr.Row():
            c["run_pick"] = gr.Dropdown([], label="Run", scale=3, elem_id="res-run-pick")
            c["open"] = gr.Button("Open", scale=1, elem_id="res-open")
            c["refresh_runs"] = gr.Button("Refresh list", scale=1)
    with gr.Accordion("Load settings from a file", open=False):
        c["settings_file"] = gr.File(label="settings .json", file_types=[".json"], height=100)
        c["settings_msg"] = gr.HTML("")
    return c


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
        lines.append(f"LM usage of this run: {calls:,} paid calls, {usd(spent)}.")
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
            tab["dl_settings"]: gr.update(value=str(settings), interactive=True)}


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
            tab["bundle_msg"]: note(f"Bundle ready ({size:.1f} MB): {', '.join(run.stage_names(order))} at the "
                                    "current thresholds. Use it with `python -m ea_core predict --bundle DIR`, or "
                                    "load it in Try it.", "ok")}


def runs_list(studio: Studio, tab: Components, owner: Optional[str]) -> dict[Any, Any]:
    """The owner's runs (only theirs) as a table and as a picker."""
    import pandas as pd

    runs = past_runs(studio.manager, owner)
    table = pd.DataFrame([[r.title or r.run_id[:8], r.state, time.strftime("%Y-%m-%d %H:%M", time.localtime(r.created)),
                           seconds(r.elapsed_s)] for r in runs], columns=RUN_HEADERS)
    choices = [(f"{r.title or r.run_id[:8]} — {r.state} ({time.strftime('%H:%M', time.localtime(r.created))})",
                r.run_id) for r in runs]
    return {tab["runs"]: table, tab["run_pick"]: gr.update(choices=choices, value=choices[0][1] if choices else None)}


def pick(run_id: Optional[str]) -> Any:
    """Open: the picked run becomes the one this browser watches (the Train & mine tab attaches)."""
    return run_id or gr.skip()


def load_settings(fields: Components, tab: Components, path: Optional[str]) -> dict[Any, Any]:
    """Fill the Data, Small models and Large model tabs (`fields`, keyed as `form.KEYS`) from a
    settings file; any bad file is a message, never a traceback."""
    if not path:
        return gr.skip()
    try:
        cfg = read_settings(path)
    except Exception as err:  # noqa: BLE001  (whatever the file holds)
        return {tab["settings_msg"]: note(error_message(err), "error")}
    values = form_from_config(cfg)
    warning = upload_note(cfg)
    return {**{fields[k]: values[k] for k in KEYS},
            tab["settings_msg"]: note(warning or "Settings loaded into the Data, Small models and Large model tabs.",
                                      "warn" if warning else "ok")}
