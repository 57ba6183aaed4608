"""Summaries tab: EA on a summarization task in the app (issue 18), in one tab for now: the data
(source / summary / instruction pickers and a preview), the small summarizers, the LM (the packaged
local stand-in or an OpenAI-compatible endpoint this server allows) with its prompt previewed and a
test call, a run with progress, the results in the shape of the paper's Table 2 with the ROUGE-L vs
LM-calls plot and the files to download (results, bundle.zip), and Try it (each stage's summary and
confidence against its threshold, which one answered, the LM's reply and cost). After a run, the
adapted system summarises an uploaded file (summary, stage, confidence per row, to download) and can
be served on 127.0.0.1 (OpenAI-compatible) until Stop or the page closes; the LM key stays in memory.

Thin: a run is a background worker under the server's run queue, like a classification run
(`ea_core.runs`: queued within the server's limits, cancellable, at a lower CPU priority than the
page), with its own run folder; this browser's run id is kept in its storage, so a reload or a
return re-attaches and the owner's past summarization runs can be opened again. The page reads a
run through `ea_core.summary_opened` only.
"""

from __future__ import annotations

import hashlib
import html
import queue
import secrets
import threading
import time
from pathlib import Path
from typing import Any, Iterator, Optional

import gradio as gr
import pandas as pd

from ea_core.data.summaries import summary_columns
from ea_core.errors import Cancelled, EAError
from ea_core.events import CancelToken
from ea_core.llm.summarize import DEFAULT_SUMMARY_PROMPT, LocalSummaryLM, OpenAISummaryLM, render_prompt
from ea_core.llm.spec import LMSpec
from ea_core.runs import RunStatus
from ea_core.summary_bundle import load_summary_cascade, trace_summary
from ea_core.summary_config import DEMO_ACLSUM, SummaryRunConfig
from ea_core.summary_explore import SummaryExplorer, SummaryPoint
from ea_core.monitor import RunProgress
from ea_core.summary_opened import OpenedSummaryRun, summary_runs
from ea_core.summary_run import load_summary_task
from pages.session import Studio
from pages import plots, train
from pages.ui import NONE, Components, as_plot, col, error_message, friendly, note

TICK_S = 1.0
RESUMABLE = ("cancelled", "failed", "interrupted")
LOG_LINES = 40
MAX_SLIDERS = 4  # thresholds shown for the routed system's stages (all but the last)
SSM_CHOICES = [("extractive: sentence scorer over frozen MiniLM (seconds on CPU)", "extractive"),
               ("lead: the first sentence (instant)", "lead"),
               ("causal:smollm2: the packaged SmolLM2-135M fine-tuned with LoRA (best ROUGE-L here; ~2.5 s per "
                "training example and ~1.4 s per summary on 2 CPU cores, ~6 GB; fast on a GPU)", "causal:smollm2")]
RUN_KEYS = ("source", "file", "source_col", "summary_col", "instruction_col", "ssm", "lm_kind", "lm_url", "lm_model",
            "lm_key", "price_in", "price_out", "budget", "max_lm_rate", "gamma", "max_val", "max_test", "template")
TABLE_COLUMNS = ["system", "val_rouge1", "val_rouge2", "val_rougeL", "test_rouge1", "test_rouge2", "test_rougeL",
                 "test_lm_call_rate", "seconds", "peak_rss_mb", "lm_calls", "lm_cost_usd", "chosen"]


def build() -> Components:
    c: Components = {}
    gr.Markdown("Summaries: source texts with reference summaries. Quality is ROUGE-L F1; the router sends a text "
                "to the LM only when the small models' confidence (their expected ROUGE-L) is below its threshold.")
    with gr.Row(equal_height=False):
        with gr.Column(scale=5, min_width=320):
            c["source"] = gr.Radio([("ACLSum demo (offline)", "demo"), ("my file", "file")], value="demo",
                                   label="Data", elem_id="sum-source")
            c["file"] = gr.File(label="CSV, TSV, JSON lines or Parquet", file_types=[".csv", ".tsv", ".jsonl", ".parquet"],
                                type="filepath", visible=True)
            with gr.Row():
                c["source_col"] = gr.Dropdown([], label="Source text column", allow_custom_value=True)
                c["summary_col"] = gr.Dropdown([], label="Reference summary column", allow_custom_value=True)
                c["instruction_col"] = gr.Dropdown([], label="Instruction column (optional)", allow_custom_value=True)
            with gr.Row():
                c["max_val"] = gr.Number(DEMO_ACLSUM["max_val"], precision=0, label="Validation examples (max)")
                c["max_test"] = gr.Number(DEMO_ACLSUM["max_test"], precision=0, label="Test examples (max)")
            c["preview_btn"] = gr.Button("Preview", elem_id="sum-preview-btn")
            c["data_note"] = gr.HTML()
            c["preview"] = gr.Dataframe(interactive=False, wrap=True, max_height=260)
        with gr.Column(scale=5, min_width=320):
            c["ssm"] = gr.CheckboxGroup(SSM_CHOICES, value=["extractive", "lead"], label="Small summarizers")
            c["lm_kind"] = gr.Radio([("local stand-in (SmolLM2-135M, weak, slow on CPU)", "local"),
                                     ("OpenAI-compatible endpoint", "openai")], value="local", label="Large model")
            with gr.Row():
                c["lm_url"] = gr.Textbox(label="Base URL", placeholder="https://api.openai.com/v1")
                c["lm_model"] = gr.Textbox(label="Model", placeholder="gpt-4o-mini")
            c["lm_key"] = gr.Textbox(label="API key (kept in this session only)", type="password")
            with gr.Row():
                c["price_in"] = gr.Number(0.0, label="USD / 1M prompt tokens")
                c["price_out"] = gr.Number(0.0, label="USD / 1M output tokens")
                c["budget"] = gr.Number(None, label="Budget USD (empty: none)")
            with gr.Row():
                c["max_lm_rate"] = gr.Slider(0, 1, value=0.3, step=0.05, label="LM budget: share of inputs")
                c["gamma"] = gr.Number(None, label="Underfit gamma (ROUGE-L; empty or 0: median)")
            c["template"] = gr.Textbox(DEFAULT_SUMMARY_PROMPT, lines=4, label="Prompt ({source}, {instruction})")
            c["prompt_preview"] = gr.Textbox(label="The prompt of the first example", lines=5, interactive=False)
            c["test_lm_btn"] = gr.Button("Test the LM on the first example", elem_id="sum-test-lm")
            c["lm_reply"] = gr.Markdown(elem_id="sum-lm-reply")
    with gr.Row(equal_height=True):
        c["run"] = gr.Button("Run EA on summaries", variant="primary", elem_id="sum-run", scale=2)
        c["cancel"] = gr.Button("Cancel", interactive=False, elem_id="sum-cancel", scale=1)
        c["resume"] = gr.Button("Resume (the LM answers it paid for are reused)", visible=False,
                                elem_id="sum-resume", scale=2)
        c["runs"] = gr.Dropdown([], value=None, label="Your summarization runs (pick one to open it)", scale=4,
                                elem_id="sum-runs")
    c["status"] = gr.HTML(elem_id="sum-status")
    c["log"] = gr.Textbox(label="Progress", lines=6, interactive=False, elem_id="sum-log")
    c["curves"] = gr.Plot(as_plot(plots.training_curves(RunProgress())), show_label=False, elem_id="sum-curves")
    c["timer"] = gr.Timer(TICK_S, active=False)
    c["results"] = gr.Dataframe(interactive=False, label="Results in the shape of the paper's Table 2 (ROUGE F1 "
                                "in points, validation and test; 95% intervals in results.json)", elem_id="sum-results")
    c["plot"] = gr.Plot(as_plot(plots.rouge_tradeoff([])), show_label=False, elem_id="sum-plot")
    c["thr_note"] = gr.Markdown(visible=False, value=(
        "**Thresholds**: a stage answers when its confidence (its expected ROUGE-L) reaches its threshold; the "
        "rest go on down the cascade (1: the stage never answers). Drag to see validation and test move; the star "
        "on the plot is this point."))
    with gr.Row():
        for k in range(MAX_SLIDERS):
            c[f"thr{k}"] = gr.Slider(0, 1, value=0.5, step=0.001, label=f"stage {k + 1}", visible=False,
                                     elem_id=f"sum-thr{k}")
    c["point"] = gr.Markdown(elem_id="sum-point")
    c["use_point"] = gr.Button("Use these thresholds (Try it, a file and the server use them; a bundle to download)",
                               visible=False, elem_id="sum-use-point")
    c["mining"] = gr.Markdown()
    c["downloads"] = gr.File(label="Download: results (JSON, CSV), the summaries, the adapted system (bundle.zip: "
                                   "unzip, then python -m ea_core predict --bundle FOLDER --input texts.csv)",
                             file_count="multiple", interactive=False, elem_id="sum-downloads")
    with gr.Accordion("Try it", open=True):
        with gr.Row():
            c["try_text"] = gr.Textbox(label="Text to summarise", lines=5, scale=4)
            c["try_instruction"] = gr.Textbox(label="Instruction (e.g. challenge)", scale=1)
        c["try_btn"] = gr.Button("Summarise")
        c["trace"] = gr.Dataframe(interactive=False, wrap=True, label="Each stage: summary, confidence, threshold")
    with gr.Accordion("Summarise a file with this system", open=False):
        c["batch_file"] = gr.File(label="Texts to summarise: CSV, TSV, JSON lines or Parquet",
                                  file_types=[".csv", ".tsv", ".jsonl", ".parquet"], type="filepath",
                                  elem_id="sum-batch-file")
        with gr.Row():
            c["batch_text_col"] = gr.Dropdown([], label="Text column", allow_custom_value=True)
            c["batch_instruction_col"] = gr.Dropdown([], label="Instruction column (optional)", allow_custom_value=True)
            c["batch_lm"] = gr.Checkbox(True, label="Call the LM stage (with the API key above)")
        with gr.Row():
            c["batch_btn"] = gr.Button("Summarise the file", elem_id="sum-batch-btn")
            c["batch_stop"] = gr.Button("Stop", elem_id="sum-batch-stop")
        c["batch_status"] = gr.HTML(elem_id="sum-batch-status")
        c["batch_preview"] = gr.Dataframe(interactive=False, wrap=True, max_height=300,
                                          label="The first rows: summary, stage that answered, confidence")
        c["batch_download"] = gr.File(label="Download: the input rows with summary, stage and confidence",
                                      interactive=False, elem_id="sum-batch-download")
    with gr.Accordion("Serve this system (OpenAI-compatible, on this machine)", open=False):
        gr.Markdown("One local server per browser: starting this one stops one started in Results & export.")
        with gr.Row():
            c["serve_port"] = gr.Number(0, precision=0, minimum=0, maximum=65535,
                                        label="port on 127.0.0.1 (0: any free port)")
            c["serve_lm"] = gr.Checkbox(True, label="Call the LM stage (with the API key above)")
            c["serve_start"] = gr.Button("Start a local server", variant="primary", elem_id="sum-serve-start")
            c["serve_stop"] = gr.Button("Stop it", elem_id="sum-serve-stop")
        c["serve_status"] = gr.Markdown(elem_id="sum-serve-status")
    c["state"] = gr.State(None)
    return c


def _check_size(file: Any, limit: Optional[int]) -> None:
    """A shared server's upload quota holds for this tab's file too (it is read where Gradio left it)."""
    if limit is not None and Path(str(file)).is_file() and Path(str(file)).stat().st_size > limit:
        raise EAError(f"This file is larger than this server's upload limit ({limit / 2**20:.0f} MB); "
                      "use a smaller sample of it.")


def _task(values: dict[str, Any], limit: Optional[int] = None) -> Any:
    """The task the form describes; a file over `limit` bytes (the server's upload quota) is refused."""
    demo = values["source"] == "demo"
    if not demo and not values.get("file"):
        raise EAError("Upload a file, or pick the ACLSum demo.")
    if not demo:
        _check_size(values["file"], limit)
    caps = {"max_val": int(values["max_val"]) if values.get("max_val") else None,
            "max_test": int(values["max_test"]) if values.get("max_test") else None}
    if demo:
        return load_summary_task(SummaryRunConfig.demo(**caps))
    return load_summary_task(SummaryRunConfig(data=str(values["file"]), source_column=col(values.get("source_col")),
                                              summary_column=col(values.get("summary_col")),
                                              instruction_column=col(values.get("instruction_col")), **caps))


def _keyed(tab: Components, updates: dict[str, Any]) -> dict[Any, Any]:
    """Updates by component (what Gradio takes) from updates by name."""
    return {tab[k]: v for k, v in updates.items()}


def preview(studio: Studio, tab: Components, source: str, file: Optional[str], source_col: str, summary_col: str,
            instruction_col: str, max_val: Any, max_test: Any, template: str) -> dict[Any, Any]:
    """The first rows as the run will read them, the columns to pick from, and the prompt."""
    return _keyed(tab, _preview(source, file, source_col, summary_col, instruction_col, max_val, max_test, template,
                                studio.limits.quota_bytes))


def _preview(source: str, file: Optional[str], source_col: str, summary_col: str, instruction_col: str,
             max_val: Any, max_test: Any, template: str, limit: Optional[int] = None) -> dict[str, Any]:
    values = {"source": source, "file": file, "source_col": source_col, "summary_col": summary_col,
              "instruction_col": instruction_col, "max_val": max_val, "max_test": max_test}
    try:
        if source == "file" and file:
            _check_size(file, limit)
        pickers = _pickers(source, file, source_col, summary_col, instruction_col)
    except EAError as err:
        return {"preview": pd.DataFrame(), "prompt_preview": "", "data_note": note(_named(error_message(err), file),
                                                                                  "error")}
    if source == "file" and file:  # the run reads the columns the pickers show
        values.update(source_col=pickers["source_col"]["value"], summary_col=pickers["summary_col"]["value"],
                      instruction_col=pickers["instruction_col"]["value"])
    try:
        task = _task(values, limit)
        split = task.train
        frame = pd.DataFrame({"source": [s[:300] for s in split.sources[:5]], "instruction": split.instructions[:5],
                              "reference": split.references[:5]})
        prompt = render_prompt(split.sources[0], split.instructions[0], template or DEFAULT_SUMMARY_PROMPT)
        words = f"{len(task.train)} / {len(task.val)} / {len(task.test)} examples (train / validation / test)."
        return {**pickers, "preview": frame, "prompt_preview": prompt,
                "data_note": note(" ".join([words] + task.warnings), "warn" if task.warnings else "info")}
    except EAError as err:
        hint = " Pick the columns above and press Preview." if source == "file" else ""
        return {**pickers, "preview": pd.DataFrame(), "prompt_preview": "",
                "data_note": note(_named(error_message(err), file) + hint, "error")}


def _named(message: str, file: Optional[str]) -> str:
    """A message about an uploaded file names it as the user knows it, not by Gradio's cache path."""
    return message.replace(str(file), Path(str(file)).name) if file else message


def _pickers(source: str, file: Optional[str], source_col: str, summary_col: str,
             instruction_col: str) -> dict[str, Any]:
    """The column pickers filled from the file: its columns, the user's pick kept, else the detected one."""
    if source == "demo" or not file:
        return {k: gr.update(choices=[], value=None) for k in ("source_col", "summary_col", "instruction_col")}
    found = summary_columns(str(file))
    names = found["columns"]

    def keep(value: Optional[str], detected: Optional[str]) -> Optional[str]:
        return value if value in names else detected
    return {"source_col": gr.update(choices=names, value=keep(col(source_col), found["source"])),
            "summary_col": gr.update(choices=names, value=keep(col(summary_col), found["summary"])),
            "instruction_col": gr.update(choices=[NONE] + names,
                                         value=keep(col(instruction_col), found["instruction"]) or NONE)}


def uploaded(studio: Studio, tab: Components, file: Optional[str], max_val: Any, max_test: Any,
             template: str) -> dict[Any, Any]:
    """A file was uploaded: use it (not the demo), detect its columns, preview it."""
    if not file:
        return _keyed(tab, {"source": "demo", **_preview("demo", None, "", "", "", max_val, max_test, template)})
    found = _preview("file", file, "", "", "", max_val, max_test, template, studio.limits.quota_bytes)
    return _keyed(tab, {"source": "file", **found})


def _lm(studio: Studio, values: dict[str, Any]) -> Any:
    common = {"budget_usd": float(values["budget"]) if values.get("budget") else None,
              "prompt_template": values.get("template") or DEFAULT_SUMMARY_PROMPT}
    if values["lm_kind"] == "local":
        return LocalSummaryLM(**common)
    if not values.get("lm_url") or not values.get("lm_model"):
        raise EAError("An OpenAI-compatible LM needs its base URL and model name.")
    return OpenAISummaryLM(values["lm_url"], values["lm_model"], api_key=values.get("lm_key") or None,
                           price_in_per_1m=float(values.get("price_in") or 0), endpoint_policy=studio.manager.endpoints,
                           price_out_per_1m=float(values.get("price_out") or 0), **common)


def test_lm(studio: Studio, tab: Components, *args: Any) -> dict[Any, Any]:
    """Test connection: the LM summarises the first training example with the prompt shown; its
    reply, confidence, tokens and cost (one call, counted like any other)."""
    return _keyed(tab, _test_lm(studio, dict(zip(RUN_KEYS, args))))


def _test_lm(studio: Studio, values: dict[str, Any]) -> dict[str, Any]:
    try:
        task, lm = _task({**values, "max_val": 1, "max_test": 1}, studio.limits.quota_bytes), _lm(studio, values)
        gen = lm.summarize(task.train.sources[:1], task.train.instructions[:1])
    except EAError as err:
        return {"lm_reply": note(error_message(err), "error")}
    reference = task.train.references[0]
    return {"lm_reply": (f"**The LM's summary**: {gen.texts[0] or '(empty)'}\n\n**Reference**: {reference}\n\n"
                         f"Confidence (mean token probability) {float(gen.confidence[0]):.3f}; "
                         f"{gen.prompt_tokens} prompt and {gen.completion_tokens} output tokens; "
                         f"${gen.cost_usd:.5f}{' (from the cache)' if gen.cached else ''}. LM: {lm.describe()}.")}


def results_frame(rows: list[dict[str, Any]]) -> pd.DataFrame:
    """The results rows as the table shows them (ROUGE in points, as the paper's Table 2)."""
    frame = pd.DataFrame([{k: r.get(k) for k in TABLE_COLUMNS} for r in rows])
    for k in TABLE_COLUMNS[1:7]:
        frame[k] = (frame[k] * 100).round(2)
    frame["test_lm_call_rate"] = (frame["test_lm_call_rate"].astype(float) * 100).round(1)
    # short headers, as the CLI's, so all 12 columns fit at 1280 px
    return frame.rename(columns={"val_rouge1": "val R-1", "val_rouge2": "val R-2", "val_rougeL": "val R-L",
                                 "test_rouge1": "test R-1", "test_rouge2": "test R-2", "test_rougeL": "test R-L",
                                 "test_lm_call_rate": "test LM %", "seconds": "time s",
                                 "peak_rss_mb": "peak MB", "lm_calls": "LM calls", "lm_cost_usd": "LM $"})


def _gamma(value: Any) -> Optional[float]:
    """The gamma box: empty or 0 means the median (what its label says)."""
    return float(value) if value not in (None, "") and float(value) > 0 else None


def config_from_form(values: dict[str, Any]) -> SummaryRunConfig:
    """The run's settings as the tab shows them (never the key: it goes to the worker through a pipe)."""
    demo = values["source"] == "demo"
    if not demo and not values.get("file"):
        raise EAError("Upload a file, or pick the ACLSum demo.")
    if not values.get("ssm"):
        raise EAError("Tick at least one small summarizer.")
    openai = values["lm_kind"] == "openai"
    if openai and not (values.get("lm_url") and values.get("lm_model")):
        raise EAError("An OpenAI-compatible LM needs its base URL and model name.")
    template = values.get("template") or DEFAULT_SUMMARY_PROMPT
    common: dict[str, Any] = {
        "ssm": list(values["ssm"]), "lm": "openai" if openai else "local",
        "lm_base_url": str(values["lm_url"]).strip() if openai else None,
        "lm_model": str(values["lm_model"]).strip() if openai else None,
        "price_in": float(values.get("price_in") or 0), "price_out": float(values.get("price_out") or 0),
        "budget_usd": float(values["budget"]) if values.get("budget") else None,
        "prompt_template": None if template == DEFAULT_SUMMARY_PROMPT else template,
        "gamma": _gamma(values.get("gamma")), "max_lm_rate": float(values["max_lm_rate"]),
        "max_val": int(values["max_val"]) if values.get("max_val") else None,
        "max_test": int(values["max_test"]) if values.get("max_test") else None}
    if demo:
        return SummaryRunConfig.demo(**common)
    return SummaryRunConfig(data=str(values["file"]), source_column=col(values.get("source_col")),
                            summary_column=col(values.get("summary_col")),
                            instruction_column=col(values.get("instruction_col")), **common)


def _title(cfg: SummaryRunConfig, values: dict[str, Any]) -> str:
    """The run's one-line title for lists: data · small summarizers · LM."""
    data = "ACLSum demo" if values["source"] == "demo" else Path(str(values.get("file"))).name
    lm_name = "local stand-in LM" if cfg.lm == "local" else str(cfg.lm_model)
    return f"{data} · {' + '.join(cfg.ssm)} · {lm_name}"


def run_choices(studio: Studio, owner: Optional[str]) -> list[tuple[str, str]]:
    """The owner's summarization runs for the picker: title, state and when."""
    return [(f"{s.title or s.run_id} · {s.state} · {time.strftime('%d %b %H:%M', time.localtime(s.created))}",
             s.run_id) for s in summary_runs(studio.manager, owner)]


@friendly(into="status")
def start(studio: Studio, tab: Components, owner: Optional[str], *args: Any) -> dict[Any, Any]:
    """Run: the settings the tab shows go to a background worker under the server's run queue (the
    key through a pipe); the run's id goes to this browser's ``current`` (a reload re-attaches)."""
    values = dict(zip(RUN_KEYS, args))
    if not owner:
        raise EAError("The page is still starting: try again in a second.")
    cfg = config_from_form(values)
    from_file = values["source"] == "file"
    if from_file:
        _check_size(values["file"], studio.limits.quota_bytes)
    try:
        load_summary_task(cfg)  # bad data is a message now, not a failed run a minute later
    except EAError as err:
        raise EAError(_named(error_message(err), values.get("file"))) from None
    run_id = studio.manager.launch(cfg, owner, (values.get("lm_key") or "").strip() or None,
                                   title=_title(cfg, values), data_file=values["file"] if from_file else None)
    return _keyed(tab, {"current": run_id, "timer": gr.Timer(active=True), "status": note("Starting the run…", "info"),
                        "cancel": gr.update(interactive=True), "resume": gr.update(visible=False), "log": "",
                        "results": pd.DataFrame(),
                        "plot": as_plot(plots.rouge_tradeoff([])), "mining": "", "downloads": None, "state": None,
                        "runs": gr.update(choices=run_choices(studio, owner), value=run_id), **_sliders(None)})


def _status_html(status: RunStatus) -> str:
    took = f" in {status.elapsed_s:.0f} s" if status.elapsed_s is not None else ""
    if status.state == "done":
        return note(f"Run finished{took}: the table, the plot and Try it below use it. ({html.escape(status.title)})",
                    "ok")
    if status.state == "cancelled":
        return note("Run cancelled. The LM's answers it paid for are cached: Resume asks only the rest.", "warn")
    if status.state == "failed":
        return note(f"Run failed: {html.escape(status.message)}", "error")
    return train.status_html(status)


def _finished(run: OpenedSummaryRun) -> dict[str, Any]:
    """A finished run's table, plot, mining line, downloads and the state Try it and a batch use."""
    data = run.results() or {"rows": []}
    rows, m = data["rows"], data.get("mining") or {}
    mining = (f"**Mining** (gamma = {m.get('gamma', 0):.3f} ROUGE-L): {m.get('ssms_missed')} of {m.get('train')} "
              f"training texts missed by every small model, {m.get('lm_asked')} asked to the LM, {m.get('underfit')} "
              f"underfit. LM calls {m.get('lm_calls')}, output tokens {m.get('lm_output_tokens')}, "
              f"${float(m.get('lm_cost_usd') or 0):.4f}." if m else "")
    ea = next((r for r in rows if r.get("system") == "ea"), {})
    why = f"\n\n**EA**: {ea['why']}" if ea.get("why") else ""
    warned = "".join(f"\n\n*warning*: {w}" for w in data.get("warnings") or [])
    bundle = run.bundle()
    picked = run.picked_bundle()
    explorer = run.explorer()
    downloads = [str(f) for f in run.downloads()] + ([str(picked) + ".zip"] if picked else [])
    out = {"results": results_frame(rows), "mining": mining + why + warned, "plot": as_plot(plots.rouge_tradeoff(rows)),
           "downloads": downloads or None,
           "state": {"run_id": run.run_id, "bundle": str(picked or bundle) if bundle else None}, **_sliders(explorer)}
    if explorer is not None:
        at = (run.picked_thresholds() or explorer.chosen)[:len(explorer.sliders)]
        point = explorer.evaluate(at)
        out.update(_sliders(explorer, at), point=_point_text(point, picked is not None), plot=_plot(rows, point))
    return out


def _sliders(explorer: Optional[SummaryExplorer], at: Optional[list[float]] = None) -> dict[str, Any]:
    """One slider per stage a threshold decides, at `at` (default: the run's chosen thresholds;
    none: hidden)."""
    names = explorer.sliders if explorer is not None else []
    at = at if at is not None else (explorer.chosen if explorer is not None else [])
    out: dict[str, Any] = {"thr_note": gr.update(visible=bool(names)), "use_point": gr.update(visible=bool(names))}
    for k in range(MAX_SLIDERS):
        if k < len(names) and explorer is not None:
            out[f"thr{k}"] = gr.update(visible=True, value=round(float(at[k]), 3),
                                       label=f"{names[k]} answers at expected ROUGE-L >=")
        else:
            out[f"thr{k}"] = gr.update(visible=False)
    if not names:
        out["point"] = ""
    return out


def _point_text(point: SummaryPoint, picked: bool = False) -> str:
    used = (" Try it, a file and the server use the thresholds last picked with *Use these thresholds*."
            if picked else "")
    return point.describe() + used


def _plot(rows: list[dict[str, Any]], point: SummaryPoint) -> Any:
    """The trade-off plot with the sliders' point (validation filled, test open) as a star."""
    figure = plots.rouge_tradeoff(rows)
    for split, m, symbol in (("validation", point.val, "star"), ("test", point.test, "star-open")):
        figure["data"].append({"type": "scatter", "x": [100 * m.lm_call_rate], "y": [100 * m.accuracy],
                               "mode": "markers", "name": f"the sliders ({split})",
                               "marker": {"color": "#111111", "size": 16, "symbol": symbol, "line": {"width": 2}},
                               "hovertemplate": f"the sliders, {split}<br>LM calls %{{x:.1f}}%"
                                                f"<br>ROUGE-L %{{y:.2f}}<extra></extra>"})
    return as_plot(figure)


def _explorer(studio: Studio, state: Optional[dict[str, Any]], request: Optional[gr.Request]) -> Any:
    """The run's explorer and results rows, loaded once per session (the state holds a run this
    session was shown, after its owner was checked)."""
    if not state or not state.get("run_id"):
        raise EAError("Run EA on summaries first (or pick a finished run above).")
    run = OpenedSummaryRun(studio.manager, state["run_id"])
    return run, studio.session(request).cached(("summary-explorer", run.run_id),
                                               lambda: (run.explorer(), (run.results() or {}).get("rows", [])), keep=4)


def move(studio: Studio, tab: Components, state: Optional[dict[str, Any]], thr0: float, thr1: float, thr2: float,
         thr3: float, request: gr.Request) -> dict[Any, Any]:
    """A slider moved: validation and test at these thresholds, and the star on the plot."""
    values = (thr0, thr1, thr2, thr3)[:MAX_SLIDERS]
    try:
        _, (explorer, rows) = _explorer(studio, state, request)
        if explorer is None:
            return {}
        point = explorer.evaluate([float(v) for v in values[:len(explorer.sliders)]])
    except EAError as err:
        return {tab["point"]: note(error_message(err), "error")}
    return {tab["point"]: _point_text(point), tab["plot"]: _plot(rows, point)}


@friendly(into="point")
def use_point(studio: Studio, tab: Components, state: Optional[dict[str, Any]], thr0: float, thr1: float,
              thr2: float, thr3: float, request: gr.Request) -> dict[Any, Any]:
    """Export the system at the sliders' thresholds: Try it, a file and the local server use it from
    now on, and its bundle.zip joins the downloads."""
    values = (thr0, thr1, thr2, thr3)[:MAX_SLIDERS]
    run, (explorer, _) = _explorer(studio, state, request)
    if explorer is None:
        raise EAError("This run saved no stage arrays to pick thresholds from (run it again).")
    point = explorer.evaluate([float(v) for v in values[:len(explorer.sliders)]])
    metrics = {"val_rougeL": point.val.accuracy, "test_rougeL": point.test.accuracy,
               "val_lm_call_rate": point.val.lm_call_rate, "test_lm_call_rate": point.test.lm_call_rate}
    archive = run.export_thresholds(point.thresholds, metrics)
    downloads = [str(f) for f in run.downloads()] + [str(archive)]
    return {tab["state"]: {**state, "bundle": str(archive.with_suffix(""))}, tab["downloads"]: downloads,
            tab["point"]: _point_text(point, picked=True)}


def refresh(studio: Studio, tab: Components, owner: Optional[str], run_id: Optional[str],
            request: Optional[gr.Request], force: bool = False) -> dict[Any, Any]:
    """One tick: the new progress lines, the status, and once the run is done its results (once)."""
    return _keyed(tab, _refresh(studio, owner, run_id, request, force))


def _refresh(studio: Studio, owner: Optional[str], run_id: Optional[str], request: Optional[gr.Request],
             force: bool = False) -> dict[str, Any]:
    run = OpenedSummaryRun.of_owner(studio.manager, run_id, owner)
    if run is None:
        # Nothing to show; the timer is left as it is: it is only ever switched on with a run of this
        # owner's, and a tick can arrive before the browser has stored the id Run just returned.
        return {}
    status = run.status()
    watched = studio.session(request).cached(("summary-feed", run.run_id), lambda: {"shown": False})
    if force or "feed" not in watched:
        watched.update(feed=run.feed(), shown=False, state=None, points=-1)
    feed = watched["feed"]
    new = feed.poll()
    out: dict[str, Any] = {"timer": gr.Timer(active=status.active), "status": _status_html(status),
                           "cancel": gr.update(interactive=status.active),
                           "resume": gr.update(visible=status.state in RESUMABLE)}
    if new or force:
        out["log"] = "\n".join(feed.lines[-LOG_LINES:])
    if feed.n_points != watched["points"]:  # the training curves, redrawn only when they grew
        watched["points"] = feed.n_points
        out["curves"] = as_plot(plots.training_curves(feed.progress))
    if watched.get("state") != status.state:  # the list of runs says where each one stands
        watched["state"] = status.state
        out["runs"] = gr.update(choices=run_choices(studio, owner), value=run.run_id)
    if status.state == "done" and not watched["shown"]:
        watched["shown"] = True
        try:
            out.update(_finished(run))
        except EAError as err:
            out["status"] = note(error_message(err), "error")
    elif force and status.state != "done":
        out.update({"results": pd.DataFrame(), "plot": as_plot(plots.rouge_tradeoff([])), "mining": "",
                    "downloads": None, "state": None, **_sliders(None)})
    return out


def attach(studio: Studio, tab: Components, owner: Optional[str], run_id: Optional[str],
           request: gr.Request) -> dict[Any, Any]:
    """Show the run this browser is on (a reload re-attaches), and the list of its runs."""
    out = refresh(studio, tab, owner, run_id, request, force=True)
    if tab["runs"] not in out:  # no run of this owner's on this browser: the list alone
        out[tab["runs"]] = gr.update(choices=run_choices(studio, owner), value=None)
    return out


def tick(studio: Studio, tab: Components, owner: Optional[str], run_id: Optional[str],
         request: gr.Request) -> dict[Any, Any]:
    return refresh(studio, tab, owner, run_id, request)


def pick_run(run_id: Optional[str]) -> Optional[str]:
    """A run picked in the list becomes the one this browser is on (then `attach` shows it)."""
    return run_id or None


@friendly(into="status")
def cancel(studio: Studio, tab: Components, owner: Optional[str], run_id: Optional[str]) -> dict[Any, Any]:
    """Cancel: the worker stops at its next step (a queued run leaves the queue)."""
    if not run_id or not owner or OpenedSummaryRun.of_owner(studio.manager, run_id, owner) is None:
        return {tab["status"]: note("No run to cancel.", "info")}
    status = studio.manager.cancel(run_id, owner)
    shown = note("Cancelling: the run stops at its next step…", "warn") if status.active else _status_html(status)
    return {tab["status"]: shown, tab["timer"]: gr.Timer(active=True)}


@friendly(into="status")
def resume(studio: Studio, tab: Components, owner: Optional[str], run_id: Optional[str],
           lm_key: Optional[str]) -> dict[Any, Any]:
    """Resume a cancelled, failed or interrupted run in its own folder: the worker runs it again,
    and every LM answer the run already paid for comes from the owner's answer cache."""
    run = OpenedSummaryRun.of_owner(studio.manager, run_id, owner)
    if run is None or run.status().state not in RESUMABLE:
        raise EAError("No stopped summarization run to resume.")
    config = run.config()
    if config is not None and LMSpec.from_config(config, environ={}).needs_key and not (lm_key or "").strip():
        raise EAError("This run calls an API model: paste its key above, then Resume.")
    studio.manager.start(run.run_id, owner or "", (lm_key or "").strip() or None)
    return {tab["timer"]: gr.Timer(active=True), tab["status"]: note("Resuming…", "info"),
            tab["cancel"]: gr.update(interactive=True), tab["resume"]: gr.update(visible=False)}


def try_text(studio: Studio, tab: Components, state: Optional[dict[str, Any]], text: str, instruction: str,
             lm_key: Optional[str], request: gr.Request) -> dict[Any, Any]:
    """Each stage's summary of a pasted text, its confidence against its threshold, who answered."""
    return _keyed(tab, _try_text(studio, state, text, instruction, lm_key, request))


def _try_text(studio: Studio, state: Optional[dict[str, Any]], text: str, instruction: str,
              lm_key: Optional[str] = None, request: Optional[gr.Request] = None) -> dict[str, Any]:
    try:
        bundle = _run_bundle(state)
        key = (lm_key or "").strip() or None
        mark = hashlib.sha256((key or "").encode()).hexdigest()[:12]  # a new key loads the LM stage again
        cascade = studio.session(request).cached(
            ("summary-cascade", str(bundle), mark),
            lambda: load_summary_cascade(bundle, api_key=key, trust_endpoint=True), keep=4)
        steps = trace_summary(cascade, text or "", instruction or "")
    except EAError as err:
        return {"trace": pd.DataFrame([{"stage": "", "summary": error_message(err)}])}
    return {"trace": pd.DataFrame([{**s, "confidence": None if s["confidence"] is None else round(s["confidence"], 3),
                                    "threshold": None if s["threshold"] is None else round(s["threshold"], 3),
                                    "answered": "answered" if s["answered"] else ""} for s in steps])}


# -- Summarise a file, serve the system: the run's bundle (kept in the session state) -------------

BATCH_PREVIEW_ROWS = 20
BATCH_STOP = "summary-batch-stop"  # the session's cancel token of the file being summarised


def _run_bundle(state: Optional[dict[str, Any]]) -> Path:
    """The bundle folder of the run this browser is on; an EAError when no finished run is shown."""
    if not state or not state.get("bundle") or not Path(state["bundle"]).is_dir():
        raise EAError("Run EA on summaries first (or pick a finished run above): the adapted system it exports "
                      "is what answers here.")
    return Path(state["bundle"])


def batch_uploaded(studio: Studio, tab: Components, file: Optional[str]) -> dict[Any, Any]:
    """A file of texts was uploaded: its columns in the pickers, the detected ones picked."""
    from ea_core.summary_bundle import summary_input_columns

    empty = {"batch_text_col": gr.update(choices=[], value=None),
             "batch_instruction_col": gr.update(choices=[], value=None), "batch_status": ""}
    if not file:
        return _keyed(tab, empty)
    try:
        _check_size(file, studio.limits.quota_bytes)
        found = summary_input_columns(str(file))
    except EAError as err:
        return _keyed(tab, {**empty, "batch_status": note(_named(error_message(err), file), "error")})
    names = found["columns"]
    status = ("" if found["source"] else
              note(f"No text column found by its name ({', '.join(names)}): pick the text column.", "warn"))
    return _keyed(tab, {"batch_text_col": gr.update(choices=names, value=found["source"]),
                        "batch_instruction_col": gr.update(choices=[NONE] + names, value=found["instruction"] or NONE),
                        "batch_status": status})


def batch_predict(studio: Studio, tab: Components, state: Optional[dict[str, Any]], file: Optional[str],
                  text_col: Optional[str], instruction_col: Optional[str], use_lm: bool, lm_key: Optional[str],
                  request: gr.Request) -> Iterator[dict[Any, Any]]:
    """Summarise every row of the uploaded file with the run's system, streaming how many are done;
    then a preview and the file to download (the input rows with summary, stage, confidence)."""
    for updates in _batch_predict(studio, state, file, text_col, instruction_col, use_lm, lm_key, request):
        yield _keyed(tab, updates)


def _batch_predict(studio: Studio, state: Optional[dict[str, Any]], file: Optional[str], text_col: Optional[str],
                   instruction_col: Optional[str], use_lm: bool, lm_key: Optional[str],
                   request: Optional[gr.Request]) -> Iterator[dict[str, Any]]:
    from ea_core.summary_bundle import (predict_summaries_in_chunks, read_summary_inputs,
                                        write_summary_predictions)

    try:
        bundle = _run_bundle(state)
        if not file:
            raise EAError("Upload a CSV, TSV, JSON lines or Parquet file of texts first.")
        _check_size(file, studio.limits.quota_bytes)
        table, split = read_summary_inputs(str(file), col(text_col), col(instruction_col),
                                           how_to_name="pick the text column")
    except EAError as err:
        yield {"batch_status": note(_named(error_message(err), file), "error"), "batch_preview": pd.DataFrame(),
               "batch_download": None}
        return
    events: "queue.Queue[Any]" = queue.Queue()
    box: dict[str, Any] = {}
    stop = CancelToken()
    session = studio.session(request)
    with session.lock:
        session.cache[BATCH_STOP] = stop  # Stop (this browser's) reaches this batch

    def work() -> None:
        try:
            box["preds"] = predict_summaries_in_chunks(bundle, split, progress=events.put, use_lm=bool(use_lm),
                                                       api_key=(lm_key or "").strip() or None, trust_endpoint=True,
                                                       cancel=stop)
        except Cancelled:
            box["error"] = (f"Stopped at your request after {box.get('done', 0)} of {len(split)} texts; nothing was "
                            "written. Press the button again to summarise the file.")
        except EAError as err:
            box["error"] = error_message(err)
        finally:
            events.put(None)

    threading.Thread(target=work, daemon=True).start()
    yield {"batch_status": note(f"Summarising {len(split)} texts...", "info"), "batch_preview": pd.DataFrame(),
           "batch_download": None}
    done = False
    while not done:
        ev = events.get()
        if ev is None:
            break
        while True:  # only the latest count is shown
            try:
                nxt = events.get(timeout=0.3)
            except queue.Empty:
                break
            if nxt is None:
                done = True
                break
            ev = nxt
        box["done"] = ev.step
        yield {"batch_status": note(f"Summarised {ev.step} / {ev.total} texts...", "info")}
    if "error" in box:
        hint = (" If the LM needs a key, paste it in 'API key' above, or untick 'Call the LM stage'."
                if use_lm and not (lm_key or "").strip() and not stop.cancelled else "")
        yield {"batch_status": note(box["error"] + hint, "error"), "batch_download": None}
        return
    preds = box["preds"]
    name = Path(str(file)).stem + (".summaries.jsonl" if str(file).lower().endswith(".jsonl") else ".summaries.csv")
    out = studio.session(request).upload_dir / "summary-batch" / secrets.token_hex(8) / name
    try:
        out.parent.mkdir(parents=True, mode=0o700)
        write_summary_predictions(table, preds, str(out))
    except OSError as err:
        yield {"batch_status": note(f"Could not write the output file: {error_message(err)}", "error"),
               "batch_download": None}
        return
    counts = pd.Series(preds.stage).value_counts()
    who = ", ".join(f"{stage} {n}" for stage, n in counts.items())
    k = min(len(split), BATCH_PREVIEW_ROWS)
    preview = pd.DataFrame({"text": [t[:200] for t in split.sources[:k]], "summary": preds.summaries[:k],
                            "stage": preds.stage[:k], "confidence": [round(float(c), 3) for c in preds.confidence[:k]]})
    yield {"batch_status": note(f"Summarised {len(split)} texts (who answered: {who}).", "ok"),
           "batch_preview": preview, "batch_download": str(out)}


def batch_stop(studio: Studio, tab: Components, request: gr.Request) -> dict[Any, Any]:
    """Stop this browser's file being summarised: no chunk (and no LM call) starts after this."""
    stop = studio.session(request).cache.get(BATCH_STOP)
    if stop is None or stop.cancelled:
        return {tab["batch_status"]: note("No file is being summarised.", "info")}
    stop.cancel()
    return {tab["batch_status"]: note("Stopping after the texts being summarised now…", "warn")}


def serve_text(server: Any) -> str:
    """The running server: its URL, its key, and how to call it (curl and the openai SDK)."""
    body = '{"model": "ea", "messages": [{"role": "user", "content": "The text to summarise."}]}'
    return (f"{server.describe()} It stops when you press Stop, close this page or the app closes.\n\n"
            f"Key (clients send it as the API key, in memory only): `{server.key}`\n\n"
            "```bash\n"
            f"export EA_SERVE_KEY={server.key}\n"
            f"curl {server.url}/chat/completions -H \"Authorization: Bearer $EA_SERVE_KEY\" \\\n"
            f"  -H 'Content-Type: application/json' -d '{body}'\n"
            "```\n\n"
            "```python\n"
            "import os\nfrom openai import OpenAI\n\n"
            f"client = OpenAI(base_url=\"{server.url}\", api_key=os.environ[\"EA_SERVE_KEY\"])\n"
            "reply = client.chat.completions.create(model=\"ea\", messages=[{\"role\": \"user\", "
            "\"content\": \"The text to summarise.\"}])\n"
            "print(reply.choices[0].message.content)\n"
            "```")


@friendly(into="serve_status")
def serve_start(studio: Studio, tab: Components, owner: Optional[str], state: Optional[dict[str, Any]],
                use_lm: bool, lm_key: Optional[str], port: Optional[float],
                request: gr.Request) -> dict[Any, Any]:
    """Serve this session's run's system on 127.0.0.1 in the app (one server per browser: it replaces
    one started in Results); the LM key stays in memory."""
    bundle = _run_bundle(state)
    server = studio.servers.start(owner or "", bundle, port=int(port or 0), use_lm=bool(use_lm),
                                  lm_api_key=(lm_key or "").strip() or None,
                                  session=getattr(request, "session_hash", None))  # its end (the page closed) stops it
    return {tab["serve_status"]: serve_text(server)}


def serve_stop(studio: Studio, tab: Components, owner: Optional[str]) -> dict[Any, Any]:
    """Stop this browser's local server."""
    stopped = studio.servers.stop(owner)
    return {tab["serve_status"]: note("The local server stopped." if stopped else "No local server runs.", "info")}


PREVIEW_KEYS = ("source", "file", "source_col", "summary_col", "instruction_col", "max_val", "max_test", "template")
PREVIEW_OUT = ("preview", "prompt_preview", "data_note", "source_col", "summary_col", "instruction_col")
UPLOAD_KEYS = ("file", "max_val", "max_test", "template")
UPLOAD_OUT = ("source",) + PREVIEW_OUT
TICK_OUT = ("timer", "status", "cancel", "log", "results", "plot", "mining", "downloads", "state", "thr_note",
            "use_point", "point", "runs", "curves", "resume") + tuple(f"thr{k}" for k in range(MAX_SLIDERS))
RUN_OUT = ("current",) + TICK_OUT  # what Run sets (after the browser's owner token: start's inputs)
ATTACH_OUT = TICK_OUT
CANCEL_OUT = ("status", "timer")
RESUME_OUT = ("timer", "status", "cancel", "resume")
TRY_KEYS = ("state", "try_text", "try_instruction", "lm_key")
SLIDER_KEYS = tuple(f"thr{k}" for k in range(MAX_SLIDERS))
SLIDERS_OUT = ("thr_note", "use_point", "point") + SLIDER_KEYS
TEST_LM_OUT = ("lm_reply",)
BATCH_UPLOAD_OUT = ("batch_text_col", "batch_instruction_col", "batch_status")
BATCH_KEYS = ("state", "batch_file", "batch_text_col", "batch_instruction_col", "batch_lm", "lm_key")
BATCH_OUT = ("batch_status", "batch_preview", "batch_download")
SERVE_KEYS = ("state", "serve_lm", "lm_key", "serve_port")  # after the browser's owner token

__all__ = ["ATTACH_OUT", "BATCH_KEYS", "BATCH_OUT", "BATCH_UPLOAD_OUT", "CANCEL_OUT", "PREVIEW_KEYS", "PREVIEW_OUT",
           "RESUME_OUT", "RUN_KEYS", "RUN_OUT", "SERVE_KEYS", "SLIDERS_OUT", "SLIDER_KEYS", "TEST_LM_OUT",
           "TICK_OUT", "TRY_KEYS", "UPLOAD_KEYS", "UPLOAD_OUT", "attach", "batch_predict", "batch_stop",
           "batch_uploaded", "build", "cancel", "config_from_form", "move", "pick_run", "preview", "results_frame",
           "resume", "run_choices", "serve_start", "serve_stop", "start", "test_lm", "tick", "try_text", "uploaded",
           "use_point"]
