"""Try it tab: route one input through the real models at the current sliders, and see why.

Thin: the adapted system is the opened run's (`ea_core.opened`) or a loaded bundle's; its
`route_one` trace says, stage by stage, the confidence against the threshold and who answered.
Models load once per routing order and calibration; moving a slider only changes thresholds. The
LM stage needs the run's LM: a local model loads in this process, an API LM needs the key typed
in the Large model tab. An image task takes an uploaded image instead of text.
"""

from __future__ import annotations

import html
import shutil
import time
from pathlib import Path
from typing import Any, Iterator, Optional

import gradio as gr

from ea_core.archives import bundle_zip_limits, extract_zip
from ea_core.bundle import bundle_lm_is_local, load_bundle, read_bundle_meta
from ea_core.errors import ConfigError, EAError
from ea_core.explore import is_never
from ea_core.imaging import open_image
from ea_core.opened import BatchPrediction, read_batch_inputs
from ea_core.splits import ImageInput
from ea_core.system import RouteTrace
from pages.session import Session, Studio
from pages.ui import Components, error_message, friendly, note, pct, seconds, usd

EXAMPLE_HEADERS = ["text", "gold", "routed answer", "answered by", "right?"]
EXAMPLE_WIDTHS = ["40%", "15%", "16%", "19%", "10%"]
BATCH_TYPES = [".csv", ".tsv", ".jsonl", ".json", ".parquet", ".txt", ".zip"]
PREVIEW_HEADERS = ["input", "prediction", "answered by", "confidence", "route (stage confidence)"]


def build() -> Components:
    c: Components = {}
    c["intro"] = gr.HTML(note("Open a finished run to try inputs, or load an exported bundle below.", "info"),
                         elem_id="try-intro")
    with gr.Row(equal_height=False):
        with gr.Column(scale=5, min_width=320):
            c["text"] = gr.Textbox(label="Input text", lines=3, elem_id="try-text")
            c["pair"] = gr.Textbox(label="Second text (pair tasks)", lines=2, visible=False, elem_id="try-pair")
            c["image"] = gr.Image(type="filepath", label="Input image", visible=False, height=220,
                                  sources=["upload", "clipboard"], elem_id="try-image")
            c["use_lm"] = gr.Checkbox(True, label="Call the LM stage if the input reaches it")
            c["route"] = gr.Button("Route this input", variant="primary", elem_id="try-route")
            c["trace"] = gr.HTML("", elem_id="try-trace")
        with gr.Column(scale=6, min_width=340):
            c["examples"] = gr.Dataframe(headers=EXAMPLE_HEADERS, interactive=False, wrap=True, max_height=360,
                                         column_widths=EXAMPLE_WIDTHS,  # every column in view, the text wrapped
                                         label="Test examples at these thresholds (click one to route it)",
                                         elem_id="try-examples")
            with gr.Accordion("Load an exported bundle instead", open=False):
                c["bundle"] = gr.File(label="bundle .zip", file_types=[".zip"], height=100)
                c["bundle_msg"] = gr.HTML("")
                c["unload_bundle"] = gr.Button("Back to the opened run", size="sm")
    with gr.Group(elem_id="batch"):
        gr.Markdown("### Predict a file of inputs\nEvery row through the system at the current sliders (or the "
                    "loaded bundle): its answer, who answered, at which stage, with what confidence, and the route "
                    "(each stage reached with its confidence). A label column, if the file has one, is scored. The "
                    "LM stage uses the key typed in the Large model tab (never stored).")
        with gr.Row(equal_height=False):
            c["batch_file"] = gr.File(label="Inputs: CSV, TSV, JSONL, JSON, Parquet or TXT (a ZIP of images for an "
                                            "image task)", file_types=BATCH_TYPES, height=120, scale=3,
                                      elem_id="batch-file")
            with gr.Column(scale=2, min_width=220):
                c["batch_run"] = gr.Button("Predict the file", variant="primary", elem_id="batch-run")
                c["batch_cancel"] = gr.Button("Cancel", interactive=False, elem_id="batch-cancel")
                c["batch_download"] = gr.DownloadButton("predictions.csv", value=None, interactive=False,
                                                        elem_id="batch-download")
        c["batch_progress"] = gr.HTML("", elem_id="batch-progress")
        c["batch_preview"] = gr.Dataframe(headers=PREVIEW_HEADERS, interactive=False, wrap=True, max_height=320,
                                          label="First rows (the file holds every row)", elem_id="batch-preview",
                                          column_widths=["38%", "12%", "14%", "10%", "26%"])
    c["batch_path"] = gr.State(None)  # the uploaded file, moved into the session's own folder
    c["batch_job"] = gr.State(None)  # the prediction in progress (ea_core.opened.BatchPrediction)
    return c


def trace_html(trace: RouteTrace, labels_note: str = "") -> str:
    rows = []
    for st in trace.stages:
        conf = "-" if st.confidence is None else f"{st.confidence:.3f}"
        if st.threshold <= 0:
            thr = "0: answers every input that reaches it"
        elif is_never(st.threshold):
            thr = "never (passes every input on)"
        else:
            thr = f"≥ {st.threshold:.3f}"
        verdict = "answers" if st.took else "passes on"
        cost = f" · {usd(st.cost_usd, 6)}" if st.cost_usd else ""
        rows.append(f"<tr class='{'took' if st.took else ''}'><td>{html.escape(st.stage)}</td><td>{conf}</td>"
                    f"<td>{html.escape(thr)}</td><td>{html.escape(str(st.answer))}</td><td>{verdict}</td>"
                    f"<td>{seconds(st.latency_s)}{cost}</td></tr>")
    head = ("<tr><th>stage</th><th>confidence</th><th>threshold</th><th>its answer</th><th></th>"
            "<th>time</th></tr>")
    answer = trace.prediction if trace.prediction is not None else "(no usable answer)"
    top = note(f"Answer: {answer} — by {trace.answered_by}, in {seconds(trace.latency_s)}.", "ok")
    return f"{top}<table class='ea-trace'>{head}{''.join(rows)}</table>{labels_note}"


def _lm_detail(trace: RouteTrace) -> str:
    """The LM's raw reply, latency and cost, when the input reached it."""
    lm = next((st for st in trace.stages if st.raw is not None), None)
    if lm is None:
        return ""
    cost = f", cost {usd(lm.cost_usd, 6)}" if lm.cost_usd else " (no charge: cached or free)"
    return (f"<div class='ea-note ea-info'><b>LM reply</b> in {seconds(lm.latency_s)}{cost}:"
            f"<pre style='white-space:pre-wrap;margin:4px 0'>{html.escape(lm.raw or '(label scores, no text)')}</pre></div>")


def _image_input(image: Optional[str]) -> ImageInput:
    """The uploaded image as a model input (its bytes; the file name for people only)."""
    path = Path(image)
    data = path.read_bytes()
    open_image(data, path.name)  # a readable image, or a DataError that names it
    return ImageInput(data, path.name)


@friendly()
def route(studio: Studio, owner: Optional[str], run_id: Optional[str], order: str, calibrated: bool,
          use_lm: bool, api_key: Optional[str], text: str, pair: Optional[str], image: Optional[str],
          request: gr.Request, *sliders: float) -> str:
    """Route one input (the text, or the image for an image task) at the current sliders and explain the route."""
    session = studio.session(request)
    if not (text or "").strip() and not image:
        return note("Type an input (or upload an image, for an image task) first.", "info")
    if session.bundle_dir is not None:
        return _route_bundle(session, use_lm, text, pair, image)
    run = studio.opened(request, owner, run_id)
    if run is None:
        return note("Open a finished run first (Train & mine, or Results → past runs).", "info")
    if use_lm and run.lm_needs_key() and not (api_key or "").strip():
        raise ConfigError("This run's LM is an API model: paste the API key in the Large model tab to call it, "
                          "or untick 'Call the LM stage'.")
    task = run.state().task
    pair_value = pair if (pair or "").strip() else None
    if task.is_image and not image:
        return note("This task classifies images: upload one, or click a test example.", "info")
    if not task.is_image and not (text or "").strip():
        return note("Type an input first.", "info")
    if task.is_pair and not task.is_image and pair_value is None:
        return note("This task classifies text pairs: give the second text too.", "warn")
    system = run.system(order, calibrated, sliders, use_lm=use_lm, api_key=api_key)
    trace = system.route_one(_image_input(image)) if task.is_image else system.route_one(text, pair_value)
    skipped = "" if use_lm else note("The LM stage was skipped: the last small model answered.", "info")
    return trace_html(trace, _lm_detail(trace) + skipped)


def _route_bundle(session: Session, use_lm: bool, text: str, pair: Optional[str], image: Optional[str]) -> str:
    """Route with the session's loaded bundle: its own thresholds; its LM stage only if local."""
    meta = read_bundle_meta(session.bundle_dir)
    # A local LM runs in this process; an API LM is never called from a bundle here (a bundle
    # never chooses an endpoint or a key).
    local_lm = bundle_lm_is_local(meta)
    with_lm = bool(use_lm) and local_lm
    system = session.cached(("bundle", str(session.bundle_dir), with_lm),
                            lambda: load_bundle(session.bundle_dir, use_lm=with_lm))
    image_task = meta.get("task", {}).get("modality") == "image"
    if image_task and not image:
        return note("This bundle classifies images: upload one.", "info")
    trace = system.route_one(_image_input(image) if image_task else text, pair or None)
    said = ("its local LM stage runs here" if with_lm else "it has no LM stage" if not meta.get("lm") else
            "its LM stage is skipped, as asked" if local_lm else
            "its LM stage is skipped: an API LM is not called from a loaded bundle (a bundle never chooses "
            "an endpoint or a key; use `python -m ea_core predict` with --lm-base-url)")
    return trace_html(trace, note(f"Loaded bundle: routed with its own thresholds; {said}.", "info"))


def examples(studio: Studio, owner: Optional[str], run_id: Optional[str], order: str, calibrated: bool,
             request: gr.Request, *sliders: float) -> Any:
    """Right and wrong test inputs at the current thresholds (from the cached outputs)."""
    import pandas as pd

    run = studio.opened(request, owner, run_id)
    if run is None:
        return gr.skip()
    rows = run.examples(order, calibrated, sliders, k=10)
    return pd.DataFrame([[r["text"] if r["pair"] is None else f"{r['text']} ‖ {r['pair']}", r["gold"], r["predicted"],
                          r["answered_by"], "✓" if r["right"] else "✗"] for r in rows], columns=EXAMPLE_HEADERS)


def pick_example(studio: Studio, tab: Components, owner: Optional[str], run_id: Optional[str], evt: gr.SelectData,
                 request: gr.Request) -> dict[Any, Any]:
    """Clicking an example row puts its input in the boxes (its image, for an image task)."""
    run = studio.opened(request, owner, run_id)
    if run is None or evt is None:
        return gr.skip()
    value = str(evt.row_value[0] if getattr(evt, "row_value", None) else evt.value)
    if run.state().task.is_image:
        found = run.test_image(value)
        return {tab["image"]: open_image(*found)} if found else gr.skip()
    text, _, pair = value.partition(" ‖ ")
    return {tab["text"]: text, tab["pair"]: pair}


def intro(studio: Studio, tab: Components, owner: Optional[str], run_id: Optional[str],
          request: gr.Request) -> dict[Any, Any]:
    """The tab's inputs follow the opened run's task: a text (and a second one for pairs) or an image."""
    run = studio.opened(request, owner, run_id)
    if run is None:
        return gr.skip()
    task = run.state().task
    what = "images (upload one, or click a test example)" if task.is_image else "inputs"
    return {tab["intro"]: note(f"Route {what} through this run's system at the Thresholds tab's sliders. Labels: "
                               f"{', '.join(task.labels)}.", "info"),
            tab["pair"]: gr.update(visible=task.is_pair), tab["text"]: gr.update(visible=not task.is_image),
            tab["image"]: gr.update(visible=task.is_image)}


@friendly(prefix="Cannot use this bundle: ")
def load_bundle_zip(studio: Studio, file: Optional[str], request: gr.Request) -> str:
    """Unpack an uploaded bundle into the session's folder (refusing paths that escape it) and check it."""
    session = studio.session(request)
    if not file:
        return ""
    session.bundle_dir = None
    target = session.upload_dir / "bundle"
    shutil.rmtree(target, ignore_errors=True)
    target.mkdir(parents=True)
    try:
        extract_zip(Path(file), target, bundle_zip_limits(), source="The uploaded zip")
        root = next((p.parent for p in target.rglob("bundle.json")), None)
        if root is None:
            raise ConfigError("This zip holds no bundle.json: export a bundle from Results & export.")
        meta = read_bundle_meta(root)
        load_bundle(root, use_lm=False)  # every model loads, or the message says which does not
    except BaseException:
        shutil.rmtree(target, ignore_errors=True)
        raise
    finally:
        Path(file).unlink(missing_ok=True)
    session.bundle_dir = root
    stages = ", ".join(s["name"] for s in meta["stages"])
    lm = meta.get("lm") or {}
    endpoint = f" Its LM was {lm.get('model') or lm.get('spec')} at {lm.get('base_url') or 'the default endpoint'}" \
        f" (shown, not used)." if lm else ""
    return note(f"Bundle loaded: labels {', '.join(meta['labels'])}; stages {stages}.{endpoint}", "ok")


def unload_bundle(studio: Studio, request: gr.Request) -> str:
    session = studio.session(request)
    if session.bundle_dir is not None:
        shutil.rmtree(session.upload_dir / "bundle", ignore_errors=True)
        session.bundle_dir = None
    return note("Back to the opened run.", "info")


# -- a file of inputs ---------------------------------------------------------------------------

@friendly(into="batch_progress")
def batch_upload(studio: Studio, tab: Components, file: Optional[str], request: gr.Request) -> dict[Any, Any]:
    """Move an uploaded file of inputs out of Gradio's shared cache into the session's own folder."""
    if not file:
        return gr.skip()
    session = studio.session(request)
    target = session.upload_dir / "batch"
    shutil.rmtree(target, ignore_errors=True)
    target.mkdir(parents=True)
    src = Path(file)
    dst = target / ("inputs" + src.suffix.lower())
    shutil.move(str(src), dst)
    return {tab["batch_path"]: str(dst), tab["batch_file"]: None,  # the box is free for another file
            tab["batch_progress"]: note(f"{src.name} is ready: press Predict the file.", "info")}


def _bundle_job(session: Session, use_lm: bool, path: str) -> tuple[Any, Any, str, list[str]]:
    """(system, inputs, source, warnings) for the session's loaded bundle (its own thresholds; its
    LM stage only if local: a bundle never chooses an endpoint or a key)."""
    meta = read_bundle_meta(session.bundle_dir)
    with_lm = bool(use_lm) and bundle_lm_is_local(meta)
    task = meta.get("task") or {}
    inputs, warnings = read_batch_inputs(path, labels=meta["labels"], image=task.get("modality") == "image",
                                         pair=bool(task.get("pair")), text_col=task.get("text_col"),
                                         pair_col=task.get("pair_col"))
    system = session.cached(("bundle", str(session.bundle_dir), with_lm),
                            lambda: load_bundle(session.bundle_dir, use_lm=with_lm))
    return system, inputs, "the loaded bundle", warnings


@friendly(into="batch_progress")
def batch_start(studio: Studio, tab: Components, owner: Optional[str], run_id: Optional[str], order: str,
                calibrated: bool, use_lm: bool, api_key: Optional[str], path: Optional[str], request: gr.Request,
                *sliders: float) -> dict[Any, Any]:
    """Read the file (a bad one is a message here, before any model loads) and set up its prediction
    with the system at the current sliders; `batch_stream` then runs it."""
    session = studio.session(request)
    if not path or not Path(path).is_file():
        return {tab["batch_progress"]: note("Upload a file of inputs first.", "info")}
    if session.bundle_dir is not None:
        system, inputs, source, warnings = _bundle_job(session, use_lm, path)
    else:
        run = studio.opened(request, owner, run_id)
        if run is None:
            return {tab["batch_progress"]: note("Open a finished run first (Train & mine, or Results → your runs), "
                                                "or load a bundle.", "info")}
        if use_lm and run.lm_needs_key() and not (api_key or "").strip():
            raise ConfigError("This run's LM is an API model: paste the API key in the Large model tab to call it, "
                              "or untick 'Call the LM stage'.")
        task = run.state().task
        inputs, warnings = read_batch_inputs(path, labels=task.labels, image=task.is_image, pair=task.is_pair,
                                             text_col=task.text_col, pair_col=task.pair_col)
        system = run.system(order, calibrated, sliders, use_lm=use_lm, api_key=api_key, own=True)
        source = f"run {task.name} at the current sliders"
    out = session.upload_dir / "predictions" / f"predictions-{time.strftime('%Y%m%d-%H%M%S')}.csv"
    job = BatchPrediction(system, inputs, out, source=source)
    said = "".join(note(w, "warn") for w in warnings[:5])
    return {tab["batch_job"]: job, tab["batch_progress"]: batch_progress_html(job) + said,
            tab["batch_preview"]: _preview(job), tab["batch_run"]: gr.update(interactive=False),
            tab["batch_cancel"]: gr.update(interactive=True),
            tab["batch_download"]: gr.update(value=None, interactive=False)}


def batch_progress_html(job: BatchPrediction) -> str:
    """Where a file's prediction stands: a bar, rows done, who answered, accuracy where labelled."""
    frac = job.done / job.total if job.total else 0.0
    answered = ", ".join(f"{name} {n:,}" for name, n in job.shares().items() if n) or "-"
    scored = (f" · accuracy on the {job.known:,} labelled rows: {pct(job.correct / job.known, 1)}"
              if job.known else "")
    if job.state == "done":
        head = f"Done: {job.total:,} inputs predicted with {job.source} in {seconds(job.elapsed_s)}"
    elif job.state == "cancelled":
        head = (f"Cancelled after {job.done:,} of {job.total:,} inputs: the file holds those rows "
                "(LM answers already paid for are kept in the answer cache)")
    elif job.state == "failed":
        head = f"Stopped after {job.done:,} of {job.total:,} inputs: {job.error}"
    else:
        eta = job.eta_s()
        head = (f"Predicting {job.total:,} inputs with {job.source}: {job.done:,} done ({pct(frac, 0)})"
                + (f", about {seconds(eta)} left" if eta is not None else ""))
    kind = {"done": "ok", "cancelled": "warn", "failed": "error"}.get(job.state, "info")
    bar = (f"<div class='ea-bar' id='batch-bar'><div class='track'><div class='fill' style='width:{100 * frac:.1f}%'>"
           "</div></div></div>")
    return note(f"{head}. Answered by: {answered}{scored}.", kind) + bar


def _preview(job: BatchPrediction) -> Any:
    import pandas as pd

    return pd.DataFrame([[r.input, r.prediction, r.answered_by, "-" if r.confidence is None else f"{r.confidence:.3f}",
                          r.route] for r in job.preview], columns=PREVIEW_HEADERS)


def _batch_done(tab: Components, job: BatchPrediction) -> dict[Any, Any]:
    """The buttons back, and the file to download (the rows done, when stopped early)."""
    has_rows = job.done > 0 and job.out.is_file()
    return {tab["batch_progress"]: batch_progress_html(job), tab["batch_preview"]: _preview(job),
            tab["batch_download"]: gr.update(value=str(job.out) if has_rows else None, interactive=has_rows),
            tab["batch_run"]: gr.update(interactive=True), tab["batch_cancel"]: gr.update(interactive=False)}


def batch_stream(studio: Studio, tab: Components, job: Any) -> Iterator[dict[Any, Any]]:
    """Run the prepared prediction chunk by chunk, streaming its progress (a generator event: Cancel
    ends it with ``cancels=``, after `batch_cancel` has stopped the work)."""
    if not isinstance(job, BatchPrediction) or job.state != "ready":
        yield {tab["batch_run"]: gr.update(interactive=True)}
        return
    shown = -1
    try:
        for _ in job.chunks():
            update = {tab["batch_progress"]: batch_progress_html(job)}
            if len(job.preview) != shown:
                shown = len(job.preview)
                update[tab["batch_preview"]] = _preview(job)
            yield update
    except (EAError, OSError) as err:
        job.state, job.error = "failed", error_message(err)
    yield _batch_done(tab, job)


def batch_cancel(studio: Studio, tab: Components, job: Any) -> dict[Any, Any]:
    """Stop the prediction in progress; the rows done are the file to download."""
    if not isinstance(job, BatchPrediction):
        return {tab["batch_cancel"]: gr.update(interactive=False), tab["batch_run"]: gr.update(interactive=True)}
    job.cancel()
    return _batch_done(tab, job)
