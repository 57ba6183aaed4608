"""Train & mine tab: Run, Cancel, Resume, and the monitor of the run in progress.

The run itself is a worker process (`ea_core.runs`); this tab only starts it and watches its
folder: a `gr.Timer` reads new events every second and redraws what changed. The run id lives in
the browser (`gr.BrowserState`), so closing or reloading the page does not stop the run, and the
reopened page shows everything so far (the events are replayed from the run's event log).
"""

from __future__ import annotations

import html
import time
from typing import Any, Optional, Sequence

import gradio as gr

from ea_core.errors import EAError
from ea_core.llm import is_local_url
from ea_core.monitor import STEP_TITLES, RunProgress
from ea_core.pipeline import step_names
from ea_core.runconfig import RunConfig
from ea_core.runfolder import read_json
from ea_core.runs import RunStatus
from pages import plots
from pages.session import Studio, Watch
from pages.ui import as_plot, error_message, note, pct, seconds, usd

TICK_S = 1.0


def build() -> dict[str, Any]:
    c: dict[str, Any] = {}
    with gr.Row():
        c["run"] = gr.Button("▶ Run", variant="primary", scale=2, elem_id="run-button")
        c["cancel"] = gr.Button("■ Cancel", variant="stop", scale=1, interactive=False, elem_id="cancel-button")
        c["resume"] = gr.Button("↻ Resume", scale=1, visible=False, elem_id="resume-button")
    c["status"] = gr.HTML(note("Press Run to adapt the LM with the settings of the Data, Small models and Large "
                               "model tabs (the offline demo works as it is).", "info"), elem_id="run-status")
    c["stepper"] = gr.HTML("", elem_id="run-stepper")
    with gr.Row(equal_height=False):
        with gr.Column(scale=5, min_width=320):
            c["bars"] = gr.HTML("", elem_id="run-bars")
            c["counters"] = gr.HTML("", elem_id="run-counters")
            c["models"] = gr.Dataframe(headers=["small model", "val acc", "test acc", "train time"], interactive=False,
                                       label="Trained small models", elem_id="run-models", max_height=220)
        with gr.Column(scale=7, min_width=360):
            c["curves"] = gr.Plot(as_plot(plots.training_curves(RunProgress())), show_label=False,
                                  elem_id="run-curves")
    c["log"] = gr.Textbox(label="Event log", lines=10, max_lines=10, autoscroll=True, interactive=False,
                          elem_id="run-log")
    c["timer"] = gr.Timer(TICK_S, active=False)
    return c


# -- rendering ----------------------------------------------------------------------------------

def stepper_html(progress: RunProgress) -> str:
    items = []
    for name in progress.steps:
        state = progress.step_state(name)
        mark = {"done": "✓", "running": "●", "failed": "✗", "stopped": "■"}.get(state, "○")
        items.append(f"<span class='ea-step {state}'>{mark} {html.escape(STEP_TITLES.get(name, name))}</span>")
    return f"<div class='ea-stepper'>{''.join(items)}</div>"


def bars_html(progress: RunProgress) -> str:
    rows = []
    for bar in progress.active_bars():
        eta = f" · ETA {seconds(bar.eta_s)}" if bar.eta_s and bar.step < bar.total else ""
        rows.append(f"<div class='ea-bar'>{html.escape(bar.stage)} — {bar.step}/{bar.total}{eta}"
                    f"{' · ' + html.escape(bar.message) if bar.message else ''}"
                    f"<div class='track'><div class='fill' style='width:{100 * bar.fraction:.1f}%'></div></div></div>")
    return "".join(rows)


def counters_html(progress: RunProgress, free: bool = False) -> str:
    """The LM's counters; `free`: an in-process model, which costs no money."""
    if not progress.lm:
        return ""
    t = progress.lm_totals()
    cards = [("LM calls", f"{t.calls:,}"), ("cache hits", f"{t.cache_hits:,}"), ("failures", f"{t.failures:,}"),
             ("named no label", f"{t.unparsed:,}"), ("tokens", f"{t.tokens:,}"),
             ("spent", "free (local)" if free else usd(t.cost_usd)),
             ("ETA", seconds(t.eta_s) if t.eta_s else "-")]
    body = "".join(f"<div class='ea-card'><div class='v'>{v}</div><div class='k'>{k}</div></div>" for k, v in cards)
    return f"<div><b>Large model</b> ({t.done:,}/{t.total:,} inputs answered)</div><div class='ea-cards'>{body}</div>"


def models_rows(progress: RunProgress, folder: Any) -> list[list[Any]]:
    rows = []
    for name, m in progress.models.items():
        test = "-"
        for info in folder.glob("*/*/info.json"):
            data = read_json(info)
            if data.get("name") == name:
                test = pct(data.get("test_accuracy"))
        rows.append([name, pct(m.get("val_accuracy")), test, seconds(m.get("train_time_s"))])
    return rows


def status_html(status: RunStatus, notes: Sequence[str] = ()) -> str:
    title = html.escape(status.title or status.run_id)
    took = f" · {seconds(status.elapsed_s)}" if status.elapsed_s is not None else ""
    if status.state == "done":
        return (note(f"Run finished{took}: see Thresholds, Try it and Results. ({title})", "ok")
                + "".join(note(n, "warn") for n in notes))
    if status.state == "failed":
        return note(f"Run failed: {status.message}", "error")
    if status.state == "cancelled":
        return note(f"Run cancelled{took}. What was done is kept: Resume continues from there.", "warn")
    if status.state == "interrupted":
        return note(f"Run interrupted: {status.message}", "warn")
    if status.state == "queued":
        return note(f"Starting the run… ({title})", "info")
    beat = time.time() - (status.heartbeat or time.time())
    stale = f" · no heartbeat for {beat:.0f} s" if beat > 15 else ""
    return note(f"Running{took}{stale} · you can close this page: the run goes on, and reopening the page shows it. "
                f"({title})", "info")


def run_notes(folder: Any) -> list[str]:
    """What a finished run wants the user to know (failed LM calls, an exhausted budget ...)."""
    path = folder / "summary.json"
    try:
        return list(read_json(path).get("notes", [])) if path.is_file() else []
    except (OSError, ValueError):
        return []


# -- watching ------------------------------------------------------------------------------------

def watch(studio: Studio, run_id: str, request: Optional[gr.Request]) -> Watch:
    """The session's monitor of `run_id` (a new one replays the event log from the start)."""
    session = studio.session(request)
    if session.watch is None or session.watch.run_id != run_id:
        folder = studio.manager.folder(run_id)
        try:
            cfg = RunConfig.from_dict(read_json(folder / "config.json"))
            steps, local = step_names(cfg), bool(cfg.lm and cfg.lm.startswith("local"))
        except (EAError, OSError, ValueError):
            steps, local = [], False
        session.watch = Watch(run_id, RunProgress(steps=steps), local_lm=local)
    return session.watch


def refresh(studio: Studio, owner: Optional[str], run_id: Optional[str], request: Optional[gr.Request],
            force: bool = False) -> tuple[Any, ...]:
    """One tick: new events folded in, what changed redrawn; the timer stops when the run ends.

    Returns (timer, status, stepper, bars, counters, models, curves, log, cancel, resume, finished run id)."""
    skip = gr.skip()
    if not run_id or not owner or not studio.manager.owns(run_id, owner):
        return (gr.Timer(active=False),) + (skip,) * 10
    w = watch(studio, run_id, request)
    events, w.offset = studio.manager.read_events(run_id, w.offset)
    changed = w.progress.update(events) or force
    status = studio.manager.status(run_id)
    active = status.active
    if not changed and active:
        return (gr.Timer(active=True), status_html(status)) + (skip,) * 9
    folder = studio.manager.folder(run_id)
    p = w.progress
    if force:
        w.shown.clear()
    # Redraw only what changed: during LM stages events come ten times a second, and a plot or a
    # table redrawn every tick costs the browser (and the worker sharing its CPU) for nothing.
    curves = sum(len(points) for points in p.curves.values())
    return (
        gr.Timer(active=active),
        status_html(status, run_notes(folder) if status.state == "done" else ()),
        stepper_html(p) if w.changed("stepper", (sorted(p.done_steps), p.current_step, p.final)) else skip,
        bars_html(p),
        counters_html(p, free=w.local_lm),
        models_rows(p, folder) if w.changed("models", len(p.models)) else skip,
        as_plot(plots.training_curves(p)) if w.changed("curves", curves) else skip,
        "\n".join(p.log[-200:]) if w.changed("log", p.logged) else skip,
        gr.update(interactive=active),
        gr.update(visible=status.state in ("cancelled", "interrupted", "failed")),
        run_id if status.state == "done" else skip,
    )


def cancel(studio: Studio, owner: Optional[str], run_id: Optional[str]) -> tuple[str, Any]:
    """Cancel: ask the worker to stop. Returns (status, timer): the timer is switched on again, since
    a tick may have seen the run end (and stopped) before this answer reached the page; the next
    tick then shows the final state."""
    if not run_id or not owner:
        return note("No run to cancel.", "info"), gr.skip()
    try:
        status = studio.manager.cancel(run_id, owner)
    except EAError as err:
        return note(error_message(err), "error"), gr.skip()
    if status.active:
        return (note("Cancelling: the run stops at its next step and keeps what it has done…", "warn"),
                gr.Timer(active=True))
    return status_html(status), gr.Timer(active=True)


def start(studio: Studio, owner: Optional[str], api_key: Optional[str], request: gr.Request,
          *values: Any) -> tuple[Any, ...]:
    """Run: build the settings from the three form tabs, start a worker, watch it.

    Returns (run id for the browser, timer, status, cancel button, resume button)."""
    from pages import form, lm

    session = studio.session(request)
    values_by_key = dict(zip(form.KEYS, values))
    try:
        if not owner:
            raise EAError("The page is still starting: try again in a second.")
        cfg = form.config_from_form(session, values_by_key)
        if cfg.lm:
            lm.check_key(values_by_key, api_key)
        data_file = session.data_file if cfg.data == str(session.data_file) else None
        run_id = studio.manager.launch(cfg, owner, (api_key or "").strip() or None, title=form.title_of(cfg, session),
                                       data_file=data_file)
    except (EAError, OSError) as err:
        return gr.skip(), gr.skip(), note(error_message(err), "error"), gr.skip(), gr.skip()
    session.watch = None
    return (run_id, gr.Timer(active=True), note("Starting the run…", "info"), gr.update(interactive=True),
            gr.update(visible=False))


def resume(studio: Studio, owner: Optional[str], run_id: Optional[str], api_key: Optional[str]) -> tuple[Any, ...]:
    """Resume a cancelled, failed or interrupted run where it stopped (finished stages are kept)."""
    try:
        if not run_id or not owner:
            raise EAError("No run to resume.")
        cfg = read_json(studio.manager.check_owner(run_id, owner) / "config.json")
        api = cfg.get("lm") and not str(cfg["lm"]).startswith("local") and not is_local_url(cfg.get("lm_base_url"))
        if api and not (api_key or "").strip():
            raise EAError("This run calls an API model: paste its key in the Large model tab, then Resume.")
        studio.manager.start(run_id, owner, (api_key or "").strip() or None)
    except (EAError, OSError) as err:
        return gr.skip(), note(error_message(err), "error"), gr.skip(), gr.skip()
    return gr.Timer(active=True), note("Resuming…", "info"), gr.update(interactive=True), gr.update(visible=False)
