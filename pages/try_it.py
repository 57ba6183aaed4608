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
from pathlib import Path
from typing import Any, Optional

import gradio as gr

from ea_core.archives import bundle_zip_limits, extract_zip
from ea_core.bundle import bundle_lm_is_local, load_bundle, read_bundle_meta
from ea_core.errors import ConfigError
from ea_core.imaging import open_image
from ea_core.splits import ImageInput
from ea_core.system import RouteTrace
from pages.session import Session, Studio
from pages.ui import Components, friendly, note, seconds, usd

EXAMPLE_HEADERS = ["text", "gold", "routed answer", "answered by", "right?"]


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
                                         label="Test examples at these thresholds (click one to route it)",
                                         elem_id="try-examples")
            with gr.Accordion("Load an exported bundle instead", open=False):
                c["bundle"] = gr.File(label="bundle .zip", file_types=[".zip"], height=100)
                c["bundle_msg"] = gr.HTML("")
                c["unload_bundle"] = gr.Button("Back to the opened run", size="sm")
    return c


def trace_html(trace: RouteTrace, labels_note: str = "") -> str:
    rows = []
    for st in trace.stages:
        conf = "-" if st.confidence is None else f"{st.confidence:.3f}"
        thr = "answers the rest" if st.took and st is trace.stages[-1] and st.threshold <= 0 else f"≥ {st.threshold:.3f}"
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
