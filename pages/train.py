"""Train & mine tab: Run, Cancel, Resume, and the monitor of the run in progress.

The run is a worker process (`ea_core.runs`); this tab starts it and watches it through
`ea_core.opened`: a `gr.Timer` folds new events in every second and redraws what changed. The run
id lives in the browser (`gr.BrowserState`), so a closed or reloaded page does not stop the run,
and the reopened page replays its event log.
"""

from __future__ import annotations

import html
import time
from typing import Any, Optional, Sequence

import gradio as gr

from ea_core.errors import EAError
from ea_core.llm.spec import IN_PROCESS, Price
from ea_core.monitor import STEP_TITLES, RunProgress
from ea_core.opened import ModelRow, OpenedRun
from ea_core.runs import RunStatus
from pages import plots
from pages.session import Studio, Watch
from pages.ui import Components, as_plot, friendly, note, pct, seconds, usd

TICK_S = 1.0
#: Lines of the event log shown (the newest; the box scrolls to the last one).
LOG_SHOWN = 200
#: Runs in the browser whenever the log changes: scroll it to its newest line, unless the person
#: scrolled up to read (following resumes when they scroll back to the bottom).
FOLLOW_LOG_JS = """() => {
  const t = document.querySelector('#run-log textarea');
  if (!t) return;
  if (!t.dataset.follow) {
    t.dataset.follow = '1';
    t.addEventListener('scroll', () => {
      t.dataset.pinned = t.scrollHeight - t.clientHeight - t.scrollTop < 40 ? '1' : '0';
    });
  }
  if (t.dataset.pinned !== '0') requestAnimationFrame(() => { t.scrollTop = t.scrollHeight; });
}"""


def build(current: Any, opened: Any) -> Components:
    """The tab's components; `current` (the run this browser watches) and `opened` (the finished run
    the other tabs show) are the page's states this tab sets."""
    c: Components = {"current": current, "opened": opened}
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


def spent_text(price: Optional[Price], cost_usd: float) -> str:
    """Money spent as the LM's price case says it: "free (local)", "free (self-hosted)", dollars, or
    "price unknown" (an endpoint with no price: its calls are not counted as free)."""
    if price is not None and price.free:
        return "free (local)" if price.source == IN_PROCESS else "free (self-hosted)"
    if price is not None and not price.known:
        return "price unknown"
    return usd(cost_usd)


def counters_html(progress: RunProgress, price: Optional[Price] = None) -> str:
    """The LM's counters; `price`: the run's LM's (`LMSpec.price`), which says whether money counts."""
    if not progress.lm:
        return ""
    t = progress.lm_totals()
    cards = [("LM calls", f"{t.calls:,}"), ("cache hits", f"{t.cache_hits:,}"), ("failures", f"{t.failures:,}"),
             ("named no label", f"{t.unparsed:,}"), ("tokens", f"{t.tokens:,}"),
             ("spent", spent_text(price, t.cost_usd)),
             ("ETA", seconds(t.eta_s) if t.eta_s else "-")]
    body = "".join(f"<div class='ea-card'><div class='v'>{v}</div><div class='k'>{k}</div></div>" for k, v in cards)
    return f"<div><b>Large model</b> ({t.done:,}/{t.total:,} inputs answered)</div><div class='ea-cards'>{body}</div>"


def models_rows(rows: Sequence[ModelRow]) -> list[list[Any]]:
    return [[r.name, pct(r.val_accuracy), pct(r.test_accuracy), seconds(r.train_time_s)] for r in rows]


def status_html(status: RunStatus, notes: Sequence[str] = (), why: Optional[str] = None,
                blocker: Optional[str] = None) -> str:
    """The run's status line; `why`: what the finished run kept, in plain words; `blocker`: why a
    failed run cannot be resumed."""
    title = html.escape(status.title or status.run_id)
    took = f" · {seconds(status.elapsed_s)}" if status.elapsed_s is not None else ""
    if status.state == "done":
        kept = f" EA {why}." if why else ""
        return (note(f"Run finished{took}: see Thresholds, Try it and Results.{kept} ({title})", "ok")
                + "".join(note(n, "warn") for n in notes))
    if status.state == "failed":
        again = (f" Resume would fail the same way ({blocker}): change the setup and press Run." if blocker
                 else " Resume continues where it stopped.")
        return note(f"Run failed: {status.message.rstrip('.')}.{again}", "error")
    if status.state == "cancelled":
        return note(f"Run cancelled{took}. What was done is kept: Resume continues from there.", "warn")
    if status.state == "interrupted":
        return note(f"Run interrupted: {status.message}", "warn")
    if status.state == "queued" and status.message.startswith("queued"):  # waiting its turn: place and wait
        return note(f"{html.escape(status.message[0].upper() + status.message[1:])} · this server runs a limited "
                    "number of runs at once, first come first served; you can close this page, the run starts in its "
                    f"turn, and Cancel takes it out of the queue. ({title})", "info")
    if status.state == "queued":
        return note(f"Starting the run… ({title})", "info")
    beat = time.time() - (status.heartbeat or time.time())
    stale = f" · no heartbeat for {beat:.0f} s" if beat > 15 else ""
    return note(f"Running{took}{stale} · you can close this page: the run goes on, and reopening the page shows it. "
                f"({title})", "info")


# -- watching ------------------------------------------------------------------------------------

def watch(studio: Studio, run: OpenedRun, request: Optional[gr.Request]) -> Watch:
    """The session's monitor of `run` (a new one replays the event log from the start)."""
    session = studio.session(request)
    if session.watch is None or session.watch.run_id != run.run_id:
        session.watch = Watch(run.run_id, run.feed(), local_lm=run.lm_is_local(), price=run.lm_price())
    return session.watch


def refresh(studio: Studio, tab: Components, owner: Optional[str], run_id: Optional[str],
            request: Optional[gr.Request], force: bool = False) -> dict[Any, Any]:
    """One tick: new events folded in, what changed redrawn; the timer stops when the run ends, and
    a finished run's id goes to the tab's ``opened`` state (the Thresholds, Try it and Results tabs
    follow it)."""
    run = studio.opened(request, owner, run_id)
    if run is None:
        return {tab["timer"]: gr.Timer(active=False)}
    w = watch(studio, run, request)
    status = run.status()  # first: a run whose worker died gets its terminal event now, and this poll reads it
    changed = w.feed.poll() or force
    out = {tab["timer"]: gr.Timer(active=status.active), tab["status"]: status_html(status)}
    if not changed and status.active:
        return out
    p = w.progress
    if force:
        w.shown.clear()
    # Redraw only what changed: during LM stages events come ten times a second, and a plot or a
    # table redrawn every tick costs the browser (and the worker sharing its CPU) for nothing.
    if status.state == "done":
        out[tab["status"]] = status_html(status, run.notes(), why=_kept(run))
        out[tab["opened"]] = run.run_id
    elif status.state == "failed":
        out[tab["status"]] = status_html(status, blocker=run.resume_blocker(status))
    if w.changed("stepper", (sorted(p.done_steps), p.current_step, p.final)):
        out[tab["stepper"]] = stepper_html(p)
    out[tab["bars"]] = bars_html(p)
    out[tab["counters"]] = counters_html(p, w.price)
    if w.changed("models", len(p.models)):
        out[tab["models"]] = models_rows(run.model_rows(p))
    if w.changed("curves", sum(len(points) for points in p.curves.values())):
        out[tab["curves"]] = as_plot(plots.training_curves(p))
    if w.changed("log", p.logged):
        out[tab["log"]] = "\n".join(p.log[-LOG_SHOWN:])
    out[tab["cancel"]] = gr.update(interactive=status.active)
    out[tab["resume"]] = gr.update(visible=run.can_resume(status))
    return out


def _kept(run: OpenedRun) -> Optional[str]:
    """What the finished run's EA kept and why, in plain words (None when unknown)."""
    try:
        return run.tuned_note("ea")
    except (EAError, OSError, KeyError, ValueError):
        return None


def attach(studio: Studio, tab: Components, owner: Optional[str], run_id: Optional[str],
           request: gr.Request) -> dict[Any, Any]:
    """Show the run this browser is on (a reload re-attaches: the monitor replays its event log)."""
    if run_id:
        studio.session(request).watch = None
    return refresh(studio, tab, owner, run_id, request, force=True)


def tick(studio: Studio, tab: Components, owner: Optional[str], run_id: Optional[str],
         request: gr.Request) -> dict[Any, Any]:
    return refresh(studio, tab, owner, run_id, request)


@friendly(into="status")
def cancel(studio: Studio, tab: Components, owner: Optional[str], run_id: Optional[str]) -> dict[Any, Any]:
    """Cancel: ask the worker to stop. The timer is switched on again, since a tick may have seen
    the run end (and stopped) before this answer reached the page; the next tick then shows the
    final state."""
    if not run_id or not owner:
        return {tab["status"]: note("No run to cancel.", "info")}
    status = studio.manager.cancel(run_id, owner)
    shown = (note("Cancelling: the run stops at its next step and keeps what it has done…", "warn")
             if status.active else status_html(status))
    return {tab["status"]: shown, tab["timer"]: gr.Timer(active=True)}


@friendly(into="status")
def start(studio: Studio, tab: Components, owner: Optional[str], api_key: Optional[str], request: gr.Request,
          *values: Any) -> dict[Any, Any]:
    """Run: build the settings from the three form tabs, start a worker, watch it (its id goes to
    the browser's ``current`` state)."""
    from pages import form, lm

    session = studio.session(request)
    values_by_key = dict(zip(form.KEYS, values))
    if not owner:
        raise EAError("The page is still starting: try again in a second.")
    cfg = form.config_from_form(studio.store(owner), values_by_key)  # what the tabs show, an upload the owner's file
    if cfg.lm:
        lm.check_key(values_by_key, api_key)
    data_file = cfg.data if values_by_key["source"] == "file" else None
    run_id = studio.manager.launch(cfg, owner, (api_key or "").strip() or None,
                                   title=form.title_of(cfg, values_by_key), data_file=data_file)
    session.watch = None
    return {tab["current"]: run_id, tab["timer"]: gr.Timer(active=True),
            tab["status"]: note("Starting the run…", "info"), tab["cancel"]: gr.update(interactive=True),
            tab["resume"]: gr.update(visible=False)}


@friendly(into="status")
def resume(studio: Studio, tab: Components, owner: Optional[str], run_id: Optional[str],
           api_key: Optional[str]) -> dict[Any, Any]:
    """Resume a cancelled, failed or interrupted run where it stopped (finished stages are kept)."""
    run = OpenedRun.of_owner(studio.manager, run_id, owner)
    if run is None:
        raise EAError("No run to resume.")
    if run.lm_needs_key() and not (api_key or "").strip():
        raise EAError("This run calls an API model: paste its key in the Large model tab, then Resume.")
    run.resume(owner, api_key)
    return {tab["timer"]: gr.Timer(active=True), tab["status"]: note("Resuming…", "info"),
            tab["cancel"]: gr.update(interactive=True), tab["resume"]: gr.update(visible=False)}
