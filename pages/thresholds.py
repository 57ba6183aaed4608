"""Thresholds tab: one slider per routing stage; accuracy, LM share and money follow while dragging.

Thin: routing, scoring, the Pareto front, auto-tune and reliability bins are the opened run's
`Explorer`'s (`ea_core.opened`), built once per routing order and calibration. The slider handler
is registered with ``concurrency_limit=None`` so it never waits behind a slow event of any session.

The routing figure is drawn by `plot_host`, not `gr.Plot`: Gradio 6's Plot re-creates its Plotly div
on every new value (a keyed block) after one `Plotly.react` on the div it is about to drop, then
calls ``Plots.resize`` (a relayout 100 ms later): two full draws and a relayout per slider move
(seen in Chromium's profiler). The host keeps one div and calls `Plotly.react` once per move.

The sliders' values are remembered per run, routing order and calibration (the tab's ``memory``
state), so an auto-tuned point survives a look at another order.
"""

from __future__ import annotations

import html
import json
from pathlib import Path
from typing import Any, Optional, Sequence

import gradio as gr

from ea_core.errors import ConfigError
from ea_core.explore import ORDERS, Explorer, Headroom, is_never, threshold_to_slider
from ea_core.router import RoutingMetrics
from pages import plots
from pages.session import Studio
from pages.ui import Components, json_scalar, as_plot, friendly, note, pct, usd

MAX_SLIDERS = 8
KIND_TITLES = {"ssm": "SSM", "assm": "augmented SSM", "assm_full": "EA(Full) augmented SSM",
               "learned": "learned router (1 − its deferral score)", "lm": "LM (its confidence)"}
BUDGETS = [("LM calls (% of inputs)", "calls"), ("USD per 1,000 inputs", "usd")]
CONNECT = "Connect a real LM → Large model tab"


def _plotly_chunk() -> str:
    """The file name of Gradio's Plotly bundle (it sets ``window.Plotly``), for a page that has not
    loaded it through a gr.Plot yet; "" if this Gradio has none by that name."""
    folder = Path(gr.__file__).parent / "templates" / "frontend" / "assets"
    found = sorted(folder.glob("PlotlyPlot-*.js"))
    return found[0].name if found else ""


#: The routing figure's host (runs once in the page): one Plotly div, redrawn with `Plotly.react`
#: when the value (the figure's JSON) changes; drawn when first visible and resized with its column.
PLOT_JS = r"""
const host = element.querySelector('.ea-plot-host');
const gd = document.createElement('div');
host.appendChild(gd);
let stale = true, width = 0, queued = false, busy = Promise.resolve();
async function plotly() {
  for (let i = 0; i < 60 && !window.Plotly; i++) await new Promise(r => setTimeout(r, 50));
  if (!window.Plotly && props.plotly_chunk) {
    const ref = [...document.querySelectorAll('script[src],link[href]')].map(e => e.src || e.href)
      .find(u => u.includes('/assets/'));
    if (ref) { try { await import(ref.replace(/[^/]*$/, props.plotly_chunk)); } catch (e) { console.error(e); } }
  }
  return window.Plotly;
}
async function draw() {
  if (!props.value) return;
  if (host.clientWidth === 0) { stale = true; return; }  // a hidden tab: drawn once it shows
  const P = window.Plotly || await plotly();
  if (!P) return;
  const fig = JSON.parse(props.value);
  fig.layout.autosize = true;
  fig.layout.margin = Object.assign({}, fig.layout.margin, {autoexpand: true});
  stale = false;
  width = host.clientWidth;
  await P.react(gd, fig.data, fig.layout, Object.assign({responsive: true}, fig.config || {}));
}
function redraw() {  // one draw at a time, of the latest value; values that came meanwhile are skipped
  if (queued) return;
  queued = true;
  busy = busy.then(() => { queued = false; return draw(); }).catch(e => console.error(e));
}
watch('value', redraw);
new ResizeObserver(() => {
  if (host.clientWidth === 0) return;
  if (stale) redraw();
  else if (host.clientWidth !== width && window.Plotly) { width = host.clientWidth; window.Plotly.Plots.resize(gd); }
}).observe(host);
redraw();
"""


def figure_json(figure: dict[str, Any]) -> str:
    """A plotly JSON figure as the routing host's value (``<`` escaped: never markup in the page)."""
    return json.dumps(figure, default=json_scalar, separators=(",", ":")).replace("<", "\\u003c")


def plot_host(figure: dict[str, Any], elem_id: str) -> Any:
    """A Plotly figure in a gr.HTML that keeps its div between values (see `PLOT_JS`)."""
    return gr.HTML(figure_json(figure), html_template="<div class='ea-plot-host' style='min-height:560px'></div>",
                   js_on_load=PLOT_JS, plotly_chunk=_plotly_chunk(), apply_default_css=False, container=False,
                   padding=False, elem_id=elem_id)


def build() -> Components:
    c: Components = {}
    c["intro"] = gr.HTML(note("Open a finished run (Train & mine, or Results → past runs) to tune its thresholds.",
                              "info"), elem_id="thr-intro")
    c["headroom"] = gr.HTML("", visible=False, elem_id="thr-headroom")
    with gr.Row():
        c["connect"] = gr.Button(CONNECT, visible=False, variant="primary", scale=0, min_width=380,
                                 elem_id="thr-connect")
    c["memory"] = gr.State({})  # "run|order|calibrated" -> the sliders' values there
    with gr.Row(equal_height=False):
        with gr.Column(scale=4, min_width=300):
            c["order"] = gr.Radio([(ORDERS["ea"][0], "ea")], value="ea", label="Router order", elem_id="thr-order")
            c["calibrated"] = gr.Checkbox(True, label="Calibrated confidences (temperature scaling)",
                                          elem_id="thr-calibrated")
            c["sliders"] = [gr.Slider(0, 1, value=0.5, step=0.001, visible=False, label=f"stage {k + 1}",
                                      elem_id=f"thr-slider-{k}", elem_classes=["ea-threshold"])
                            for k in range(MAX_SLIDERS)]
            c["last"] = gr.HTML("", elem_id="thr-route")
            with gr.Group():
                with gr.Row():
                    c["budget_kind"] = gr.Radio(BUDGETS, value="calls", label="Auto-tune for a budget", min_width=160)
                    c["budget"] = gr.Number(30, label="at most", minimum=0, min_width=80)
                c["autotune"] = gr.Button("Auto-tune on validation", elem_id="thr-autotune")
            c["tune_msg"] = gr.HTML("", elem_id="thr-tune-msg")
        with gr.Column(scale=7, min_width=380):
            c["routing"] = plot_host(plots.empty("Accuracy vs LM calls · who answers", "No run opened.", 600),
                                     "thr-routing")
            c["metrics"] = gr.HTML("", elem_id="thr-metrics")
    with gr.Accordion("Calibration: reliability per small model", open=False):
        with gr.Row():
            c["rel_model"] = gr.Dropdown([], label="Small model", scale=1)
            c["reliability"] = gr.Plot(as_plot(plots.empty("Reliability", "No run opened.")), show_label=False,
                                       scale=3)
    return c


def outputs_of(c: Components) -> list[Any]:
    """Every component a full redraw of the tab may set (`open_views`' outputs)."""
    return [c["intro"], c["order"], c["calibrated"], *c["sliders"], c["last"], c["routing"], c["metrics"],
            c["rel_model"], c["reliability"], c["tune_msg"], c["headroom"], c["connect"], c["memory"]]


def slider_outputs(c: Components) -> list[Any]:
    """What a slider move redraws (`on_slider`'s outputs)."""
    return [c["routing"], c["metrics"], c["last"], c["memory"]]


# -- rendering ----------------------------------------------------------------------------------

METRIC_HEADERS = ("metric", "validation (tuning data)", "test (held out)")


def metrics_rows(ex: Explorer, val: RoutingMetrics, test: RoutingMetrics) -> list[list[str]]:
    rows = [["accuracy", pct(val.accuracy, 2), pct(test.accuracy, 2)],
            ["macro-F1", f"{val.macro_f1:.3f}", f"{test.macro_f1:.3f}"],
            ["inputs sent to the LM", pct(val.lm_call_rate), pct(test.lm_call_rate)],
            ["LM money per 1,000 inputs", usd(val.cost_per_1k_usd), usd(test.cost_per_1k_usd)],
            ["examples", f"{val.n:,}", f"{test.n:,}"]]
    for k, name in enumerate(ex.names):
        rows.append([f"answered by {name} (accuracy there)",
                     f"{pct(val.shares[k])} ({pct(val.stage_accuracy[k])})",
                     f"{pct(test.shares[k])} ({pct(test.stage_accuracy[k])})"])
    return rows


def metrics_html(rows: list[list[str]]) -> str:
    """The metrics as a plain HTML table (a Dataframe re-render cost more than the figures)."""
    head = "".join(f"<th>{h}</th>" for h in METRIC_HEADERS)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(v)}</td>" for v in row) + "</tr>" for row in rows)
    return f"<table class='ea-trace ea-metrics'><tr>{head}</tr>{body}</table>"


def figures(ex: Explorer, thresholds: Sequence[float]) -> tuple[str, str]:
    """(routing figure as `plot_host`'s JSON, metrics table) at `thresholds`: what a slider move redraws."""
    val, test = ex.evaluate(thresholds)
    return (figure_json(plots.routing(ex.front, ex.references, ex.names, (val, test), ex.other_fronts)),
            metrics_html(metrics_rows(ex, val, test)))


def route_html(ex: Explorer, thresholds: Sequence[float]) -> str:
    """The route at `thresholds` in words, stage by stage: "answers at confidence ≥ 0.612", "never
    answers" (a slider at 1), and the last stage answering the rest."""
    steps = []
    for k, (name, t) in enumerate(zip(ex.names, thresholds)):
        if k == ex.n_stages - 1:
            rule = "answers whatever reaches it"
        elif is_never(t):
            rule = "<b>never</b> answers (passes every input on)"
        else:
            rule = f"answers at confidence ≥ {threshold_to_slider(t):.3f}"
        steps.append(f"<li><b>{html.escape(name)}</b> {rule}</li>")
    return f"<div class='ea-route'><b>Route now</b><ol>{''.join(steps)}</ol></div>"


def redraw(tab: Components, ex: Explorer, thresholds: Sequence[float]) -> dict[Any, Any]:
    figure, table = figures(ex, thresholds)
    return {tab["routing"]: figure, tab["metrics"]: table, tab["last"]: route_html(ex, thresholds)}


def slider_updates(tab: Components, ex: Explorer, thresholds: Sequence[float]) -> dict[Any, Any]:
    """One slider per stage but the last, at `thresholds` (rounded down to 3 decimals; 1 = never);
    the other sliders hidden."""
    ups = {}
    for k, slider in enumerate(tab["sliders"]):
        if k < ex.n_stages - 1:
            kind = KIND_TITLES.get(ex.kinds[k], ex.kinds[k])
            ups[slider] = gr.update(visible=True, value=threshold_to_slider(thresholds[k]),
                                    label=f"{k + 1}. {ex.names[k]} · {kind}",
                                    info="answers an input when its confidence ≥ this (1 = never answers)")
        else:
            ups[slider] = gr.update(visible=False)
    return ups


def memory_key(run_id: str, order: str, calibrated: bool) -> str:
    return f"{run_id}|{order}|{int(bool(calibrated))}"


def remember(memory: Optional[dict], run_id: str, order: str, calibrated: bool, ex: Explorer,
             sliders: Sequence[float]) -> dict:
    """The tab's memory with the sliders of (run, order, calibration) set to `sliders`."""
    memory = dict(memory or {})
    memory[memory_key(run_id, order, calibrated)] = [float(v) for v in list(sliders)[: ex.n_stages - 1]]
    return memory


def headroom_html(h: Headroom, lm_title: str = "the LM") -> str:
    """What a better LM would change, in numbers from the run's validation split (the first run on
    the offline default keeps its best small model alone: its stand-in LM is at chance)."""
    n = h.n_val
    lm = f" ({pct(h.lm_val)} alone on validation)" if h.lm_val is not None else ""
    parts = [f"<b>This run kept the best small model alone</b> ({html.escape(h.best)}, {pct(h.best_val)} on "
             f"validation): its LM, {html.escape(lm_title)}{lm}, was not right more often than it, even where it "
             "is least sure, so nothing is routed. That is honest, and it is what the offline stand-in does.",
             f"<b>With a real LM</b>: the small model is wrong on {h.wrong:,} of the {n:,} validation inputs "
             f"({pct(h.wrong / n if n else None)}; every small model is wrong on {h.all_wrong:,}). "
             f"{h.unsure_wrong:,} of those are among the {h.unsure:,} inputs it is least sure of "
             f"({pct(h.budget_share, 0)} of inputs, the LM budget), which EA would send to the LM: an LM right on "
             f"them would lift validation accuracy toward {pct(h.reachable)} at {pct(h.budget_share, 0)} LM calls."]
    if h.oracle_val is not None:
        parts.append(f"The ceiling of routing (right if any stage is right) is {pct(h.oracle_val)} on validation"
                     + (f", {pct(h.oracle_test)} on test." if h.oracle_test is not None else "."))
    return (f"<div class='ea-note ea-warn'><span class='ea-icon'>!</span>{' '.join(parts[:1])}"
            f"<br>{' '.join(parts[1:])}</div>")


def headroom_updates(tab: Components, h: Optional[Headroom], lm_title: str = "the LM") -> dict[Any, Any]:
    """The "what a real LM would change" note and its button: shown only when the run kept its best
    small model alone."""
    if h is None:
        return {tab["headroom"]: gr.update(value="", visible=False), tab["connect"]: gr.update(visible=False)}
    return {tab["headroom"]: gr.update(value=headroom_html(h, lm_title), visible=True),
            tab["connect"]: gr.update(visible=True)}


def reliability_plot(ex: Explorer, name: str) -> Any:
    return as_plot(plots.reliability(name, ex.reliability(name), ex.calibrated))


# -- handlers -----------------------------------------------------------------------------------

@friendly(into="intro")
def open_views(studio: Studio, tab: Components, owner: Optional[str], run_id: Optional[str], request: gr.Request,
               order: Optional[str] = None, calibrated: bool = True, memory: Optional[dict] = None) -> dict[Any, Any]:
    """Everything the tab shows for a run: at the sliders it last had in this order and calibration
    (`memory`), else at the run's own tuned thresholds. No `order`: the one the run exported."""
    run = studio.opened(request, owner, run_id)
    if run is None:
        return gr.skip()
    order = order or run.exported_order()
    orders = run.orders()
    if order not in orders:
        order = "ea"
    ex = run.explorer(order, calibrated)
    state = run.state()
    remembered = (memory or {}).get(memory_key(run.run_id, order, calibrated))
    restored = bool(remembered) and len(remembered) == ex.n_stages - 1
    thresholds = ex.thresholds(remembered) if restored else ex.tuned_thresholds()
    small = [n for n, k in zip(ex.names, ex.kinds) if k in ("ssm", "assm", "assm_full")]
    why = run.tuned_note(order)
    room = run.headroom()  # the run kept its small model alone: the note below says why, and what an LM would change
    kept = f" The run {why}; drag the sliders to try other points." if why and room is None else ""
    start = ("The sliders are where you left them in this order" if restored else
             "Thresholds start where the run tuned them on validation")
    intro = note(f"Run {state.task.name}: {', '.join(ex.names)}. {start} (LM budget "
                 f"{pct(state.config.max_lm_rate, 0)} of inputs).{kept} Test figures are shown, never used to choose.",
                 "info")
    shown = ex.sliders(thresholds)
    return {tab["intro"]: intro,
            tab["order"]: gr.update(choices=[(ORDERS[o][0], o) for o in orders], value=order),
            tab["calibrated"]: gr.update(value=bool(calibrated)),
            **slider_updates(tab, ex, thresholds),
            **redraw(tab, ex, thresholds),
            tab["rel_model"]: gr.update(choices=small, value=small[0] if small else None),
            tab["reliability"]: reliability_plot(ex, small[0]) if small else as_plot(
                plots.empty("Reliability", "No small model.")),
            tab["tune_msg"]: "",
            **headroom_updates(tab, room, run.lm_title()),
            tab["memory"]: remember(memory, run.run_id, order, calibrated, ex, shown)}


def on_open(studio: Studio, tab: Components, owner: Optional[str], run_id: Optional[str], memory: Optional[dict],
            request: gr.Request) -> dict[Any, Any]:
    """A run opened: the tab in the order the run exported, at the sliders it last had there in this page."""
    return open_views(studio, tab, owner, run_id, request, memory=memory)


def on_order(studio: Studio, tab: Components, owner: Optional[str], run_id: Optional[str], order: str,
             calibrated: bool, memory: Optional[dict], request: gr.Request) -> dict[Any, Any]:
    """The routing order or the calibration changed: the whole tab at the sliders it last had there
    (auto-tuned or moved), else at that order's tuned point."""
    return open_views(studio, tab, owner, run_id, request, order=order, calibrated=calibrated, memory=memory)


def on_slider(studio: Studio, tab: Components, owner: Optional[str], run_id: Optional[str], order: str,
              calibrated: bool, memory: Optional[dict], request: gr.Request, *sliders: float) -> dict[Any, Any]:
    """A slider moved: re-route the cached outputs and redraw (the hot path); remember the sliders."""
    run = studio.opened(request, owner, run_id)
    if run is None:
        return gr.skip()
    ex = run.explorer(order, calibrated)
    return {**redraw(tab, ex, ex.thresholds(sliders)),
            tab["memory"]: remember(memory, run.run_id, order, calibrated, ex, sliders)}


@friendly(into="tune_msg", kind="warn")
def on_autotune(studio: Studio, tab: Components, owner: Optional[str], run_id: Optional[str], order: str,
                calibrated: bool, kind: str, budget: Any, memory: Optional[dict],
                request: gr.Request) -> dict[Any, Any]:
    """Set every slider to the thresholds with the best validation accuracy within the budget."""
    run = studio.opened(request, owner, run_id)
    if run is None:
        return {tab["tune_msg"]: note("Open a finished run first.", "info")}
    ex = run.explorer(order, calibrated)
    if budget is None or float(budget) < 0:
        raise ConfigError("Give a budget of 0 or more.")
    if kind == "calls":
        tuned = ex.autotune(max_lm_rate=min(float(budget), 100.0) / 100.0)
    else:
        tuned = ex.autotune(max_cost_per_1k=float(budget))
    shown = ex.sliders(tuned)  # rounded down: never more LM calls than the tuned point
    thresholds = ex.thresholds(shown)
    val, _ = ex.evaluate(thresholds)
    msg = note(f"Auto-tuned on validation: accuracy {pct(val.accuracy, 2)} with {pct(val.lm_call_rate)} of inputs "
               "sent to the LM.", "ok")
    return {**slider_updates(tab, ex, thresholds), **redraw(tab, ex, thresholds),
            tab["memory"]: remember(memory, run.run_id, order, calibrated, ex, shown), tab["tune_msg"]: msg}


def on_reliability(studio: Studio, owner: Optional[str], run_id: Optional[str], order: str, calibrated: bool,
                   name: Optional[str], request: gr.Request) -> Any:
    run = studio.opened(request, owner, run_id)
    if run is None or not name:
        return gr.skip()
    return reliability_plot(run.explorer(order, calibrated), name)
