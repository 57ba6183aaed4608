"""Thresholds tab: one slider per routing stage; accuracy, LM share and money follow while dragging.

Thin: routing, scoring, the Pareto front, auto-tune and reliability bins are
`ea_core.explore.Explorer`'s, computed from the run's cached stage outputs; an explorer is built
once per (run, order, calibration) and kept in the session. The slider handler is registered
with ``concurrency_limit=None`` so it never waits behind a slow event of any session.
"""

from __future__ import annotations

import html
from typing import Any, Optional, Sequence

import gradio as gr

from ea_core.errors import ConfigError, EAError
from ea_core.explore import ORDERS, Explorer, threshold_to_slider
from ea_core.report import routed_note
from ea_core.router import RoutingMetrics
from ea_core.runstate import RunState, open_run
from pages import plots
from pages.session import Session, Studio
from pages.ui import as_plot, error_message, note, pct, usd

MAX_SLIDERS = 8
KIND_TITLES = {"ssm": "SSM", "assm": "augmented SSM", "lm": "LM (its confidence)"}
BUDGETS = [("LM calls (% of inputs)", "calls"), ("USD per 1,000 inputs", "usd")]


def build() -> dict[str, Any]:
    c: dict[str, Any] = {}
    c["intro"] = gr.HTML(note("Open a finished run (Train & mine, or Results → past runs) to tune its thresholds.",
                              "info"), elem_id="thr-intro")
    with gr.Row(equal_height=False):
        with gr.Column(scale=4, min_width=300):
            c["order"] = gr.Radio([(ORDERS["ea"][0], "ea")], value="ea", label="Router order", elem_id="thr-order")
            c["calibrated"] = gr.Checkbox(True, label="Calibrated confidences (temperature scaling)",
                                          elem_id="thr-calibrated")
            c["sliders"] = [gr.Slider(0, 1, value=0.5, step=0.001, visible=False, label=f"stage {k + 1}",
                                      elem_id=f"thr-slider-{k}") for k in range(MAX_SLIDERS)]
            c["last"] = gr.Markdown("")
            with gr.Group():
                with gr.Row():
                    c["budget_kind"] = gr.Radio(BUDGETS, value="calls", label="Auto-tune for a budget", min_width=160)
                    c["budget"] = gr.Number(30, label="at most", minimum=0, min_width=80)
                c["autotune"] = gr.Button("Auto-tune on validation", elem_id="thr-autotune")
            c["tune_msg"] = gr.HTML("")
        with gr.Column(scale=7, min_width=380):
            c["routing"] = gr.Plot(as_plot(plots.empty("Accuracy vs LM calls · who answers", "No run opened.", 600)),
                                   show_label=False, elem_id="thr-routing")
            c["metrics"] = gr.HTML("", elem_id="thr-metrics")
    with gr.Accordion("Calibration: reliability per small model", open=False):
        with gr.Row():
            c["rel_model"] = gr.Dropdown([], label="Small model", scale=1)
            c["reliability"] = gr.Plot(as_plot(plots.empty("Reliability", "No run opened.")), show_label=False,
                                       scale=3)
    return c


def outputs_of(c: dict[str, Any]) -> list[Any]:
    """What a full redraw of the tab sets, in `open_views`' order."""
    return [c["intro"], c["order"], c["calibrated"], *c["sliders"], c["last"], c["routing"], c["metrics"],
            c["rel_model"], c["reliability"], c["tune_msg"]]


# -- engine objects, kept per session -----------------------------------------------------------

def run_state(studio: Studio, session: Session, run_id: str) -> RunState:
    return session.cached(("state", run_id), lambda: open_run(studio.manager.folder(run_id)))


def explorer(studio: Studio, session: Session, run_id: str, order: str, calibrated: bool) -> Explorer:
    state = run_state(studio, session, run_id)
    return session.cached(("explorer", run_id, order, bool(calibrated)),
                          lambda: Explorer.build(state, order, bool(calibrated)))


def owned(studio: Studio, owner: Optional[str], run_id: Optional[str]) -> bool:
    return bool(run_id and owner and studio.manager.owns(run_id, owner))


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


def figures(ex: Explorer, thresholds: Sequence[float]) -> tuple[Any, str]:
    """(routing figure, metrics table) at `thresholds`: what a slider move redraws."""
    val, test = ex.evaluate(thresholds)
    return (as_plot(plots.routing(ex.front, ex.references, ex.names, (val, test))),
            metrics_html(metrics_rows(ex, val, test)))


def slider_updates(ex: Explorer, thresholds: Sequence[float]) -> list[Any]:
    ups = []
    for k in range(MAX_SLIDERS):
        if k < ex.n_stages - 1:
            kind = KIND_TITLES.get(ex.kinds[k], ex.kinds[k])
            ups.append(gr.update(visible=True, value=threshold_to_slider(thresholds[k]),
                                 label=f"{k + 1}. {ex.names[k]} · {kind}",
                                 info="answers an input when its confidence ≥ this (1 = never)"))
        else:
            ups.append(gr.update(visible=False))
    return ups


def _order_choices(state: RunState) -> list[tuple[str, str]]:
    out = [(ORDERS["ea"][0], "ea")]
    if state.assms and state.lm_gives_confidence:
        out.append((ORDERS["ea_lm_first"][0], "ea_lm_first"))
    return out


# -- handlers -----------------------------------------------------------------------------------

def open_views(studio: Studio, owner: Optional[str], run_id: Optional[str], request: gr.Request,
               order: str = "ea", calibrated: bool = True) -> tuple[Any, ...]:
    """Everything the tab shows for a run, at the run's own tuned thresholds."""
    n_out = 3 + MAX_SLIDERS + 6
    if not owned(studio, owner, run_id):
        return (gr.skip(),) * n_out
    session = studio.session(request)
    try:
        state = run_state(studio, session, run_id)
        choices = _order_choices(state)
        if order not in dict((v, t) for t, v in choices):
            order = "ea"
        ex = explorer(studio, session, run_id, order, calibrated)
    except (EAError, OSError) as err:
        return (note(error_message(err), "error"),) + (gr.skip(),) * (n_out - 1)
    thresholds = ex.tuned_thresholds()
    figure, table = figures(ex, thresholds)
    small = [n for n, k in zip(ex.names, ex.kinds) if k != "lm"]
    tuned = state.tuning.get(order, {})
    why = tuned.get("why") or routed_note(tuned.get("chosen", "full"))
    kept = f" The run {why}; drag the sliders to try other points." if why else ""
    intro = note(f"Run {state.task.name}: {', '.join(ex.names)}. Thresholds start where the run tuned them on "
                 f"validation (LM budget {pct(state.config.max_lm_rate, 0)} of inputs).{kept} Test figures are shown, "
                 "never used to choose.", "info")
    last = f"**Last stage: {ex.names[-1]}** answers whatever reaches it (no threshold)."
    rel = reliability_plot(ex, small[0]) if small else as_plot(plots.empty("Reliability", "No small model."))
    return (intro, gr.update(choices=choices, value=order), gr.update(value=bool(calibrated)),
            *slider_updates(ex, thresholds), last, figure, table,
            gr.update(choices=small, value=small[0] if small else None), rel, "")


def on_slider(studio: Studio, owner: Optional[str], run_id: Optional[str], order: str, calibrated: bool,
              request: gr.Request, *sliders: float) -> tuple[Any, ...]:
    """A slider moved: re-route the cached outputs and redraw (the hot path)."""
    if not owned(studio, owner, run_id):
        return gr.skip(), gr.skip()
    ex = explorer(studio, studio.session(request), run_id, order, calibrated)
    return figures(ex, ex.thresholds(sliders))


def on_autotune(studio: Studio, owner: Optional[str], run_id: Optional[str], order: str, calibrated: bool,
                kind: str, budget: Any, request: gr.Request) -> tuple[Any, ...]:
    """Set every slider to the thresholds with the best validation accuracy within the budget."""
    n_out = MAX_SLIDERS + 3
    if not owned(studio, owner, run_id):
        return (gr.skip(),) * (n_out - 1) + (note("Open a finished run first.", "info"),)
    ex = explorer(studio, studio.session(request), run_id, order, calibrated)
    try:
        if budget is None or float(budget) < 0:
            raise ConfigError("Give a budget of 0 or more.")
        if kind == "calls":
            thresholds = ex.autotune(max_lm_rate=min(float(budget), 100.0) / 100.0)
        else:
            thresholds = ex.autotune(max_cost_per_1k=float(budget))
    except EAError as err:
        return (gr.skip(),) * (n_out - 1) + (note(error_message(err), "warn"),)
    figure, table = figures(ex, thresholds)
    val, _ = ex.evaluate(thresholds)
    msg = note(f"Auto-tuned on validation: accuracy {pct(val.accuracy, 2)} with {pct(val.lm_call_rate)} of inputs "
               "sent to the LM.", "ok")
    return (*slider_updates(ex, thresholds), figure, table, msg)


def reliability_plot(ex: Explorer, name: str) -> Any:
    return as_plot(plots.reliability(name, ex.reliability(name), ex.calibrated))


def on_reliability(studio: Studio, owner: Optional[str], run_id: Optional[str], order: str, calibrated: bool,
                   name: Optional[str], request: gr.Request) -> Any:
    if not owned(studio, owner, run_id) or not name:
        return gr.skip()
    ex = explorer(studio, studio.session(request), run_id, order, calibrated)
    return reliability_plot(ex, name)


def current_thresholds(studio: Studio, session: Session, run_id: str, order: str, calibrated: bool,
                       sliders: Sequence[float]) -> tuple[Explorer, list[float]]:
    """The explorer and the routing thresholds the sliders show (for Try it and the export)."""
    ex = explorer(studio, session, run_id, order, calibrated)
    return ex, ex.thresholds(sliders)
