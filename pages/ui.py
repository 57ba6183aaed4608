"""Small UI helpers shared by the tabs: messages a person reads, number formats, the error wrapper,
binding handlers to the app's state and a tab's components."""

from __future__ import annotations

import functools
import html
import inspect
import json
import typing
from typing import Any, Callable, Optional

from ea_core.errors import EAError

NONE = "(none)"  # dropdown value for "no column"


def note(text: str, kind: str = "info") -> str:
    """A one-paragraph message box (kind: info, ok, warn, error) as HTML for gr.HTML / gr.Markdown."""
    icon = {"info": "i", "ok": "✓", "warn": "!", "error": "×"}[kind]
    return f'<div class="ea-note ea-{kind}"><span class="ea-icon">{icon}</span>{html.escape(text)}</div>'


def error_message(err: BaseException) -> str:
    """What the user reads for an error: the message of a user-facing error, a short line otherwise."""
    if isinstance(err, EAError):
        return str(err)
    if isinstance(err, OSError):
        where = f" ({err.filename})" if getattr(err, "filename", None) else ""
        return f"{err.strerror or err}{where}"
    return f"Unexpected error ({type(err).__name__}): {err}"


#: A tab's components by name, as its `build()` returns them; handlers key their updates by them.
Components = dict[str, Any]


def pick(tab: Components, *names: str) -> list[Any]:
    """Components of a tab by name, in order (an event's inputs or outputs)."""
    return [tab[name] for name in names]


def friendly(into: Optional[str] = None, kind: str = "error", prefix: str = "") -> Callable[[Callable], Callable]:
    """The one error wrapper of the tabs' handlers: an error a user can act on (`EAError`, `OSError`)
    becomes a note (`kind`) instead of a traceback, in the handler's tab component `into`
    (``{tab[into]: note}``; the handler takes its tab as the parameter ``tab``), or, without
    `into`, as the value of a handler with a single output."""

    def wrap(fn: Callable[..., Any]) -> Callable[..., Any]:
        position = list(inspect.signature(fn).parameters).index("tab") if into else None

        @functools.wraps(fn)
        def handler(*args: Any, **kwargs: Any) -> Any:
            try:
                return fn(*args, **kwargs)
            except (EAError, OSError) as err:
                shown = note(prefix + error_message(err), kind)
                if into is None:
                    return shown
                tab = kwargs["tab"] if "tab" in kwargs else args[position]
                return {tab[into]: shown}

        return handler

    return wrap


def bind(fn: Callable[..., Any], *fixed: Any) -> Callable[..., Any]:
    """`fn` with its first arguments fixed (the app's Studio, a tab's components), as a plain
    function Gradio can inspect.

    functools.partial would hide the type hints Gradio reads to pass `gr.Request` / `gr.SelectData`;
    this keeps the signature and the resolved hints, minus the bound parameters.
    """
    sig = inspect.signature(fn)
    params = list(sig.parameters.values())
    hints = typing.get_type_hints(fn)
    bound = {p.name for p in params[:len(fixed)]}

    if inspect.isgeneratorfunction(fn):  # Gradio streams a generator function's yields: keep it one
        @functools.wraps(fn)
        def handler(*args: Any, **kwargs: Any) -> Any:
            yield from fn(*fixed, *args, **kwargs)
    else:
        @functools.wraps(fn)
        def handler(*args: Any, **kwargs: Any) -> Any:
            return fn(*fixed, *args, **kwargs)

    handler.__signature__ = sig.replace(parameters=params[len(fixed):])  # type: ignore[attr-defined]
    handler.__annotations__ = {k: v for k, v in hints.items() if k not in bound}
    del handler.__wrapped__  # inspect.signature must not look through to `fn`
    return handler


def fit_widths(frame: Any, total: int = 100) -> list[str]:
    """Column widths (percent of the table, as `gr.Dataframe(column_widths=...)` takes them) that keep
    every column of `frame` in view: short columns get what their longest cell needs, the long-text
    columns share the rest and wrap (``wrap=True``). For tables whose columns are known only at
    run time; a fixed table lists its widths."""
    need = []
    for c in frame.columns:
        cells = [len(str(v)) for v in frame[c].tolist()] + [len(str(c))]
        need.append(max(cells))
    short = [min(max(n, 4), 14) + 2 for n in need]  # + 2: the cell's padding, in characters
    long_cols = [i for i, n in enumerate(need) if n > 14]
    if not long_cols:
        return [f"{total / len(need):.1f}%" for _ in need]
    fixed = sum(short[i] for i in range(len(need)) if i not in long_cols)
    fixed_pct = min(100 * fixed / (fixed + 30 * len(long_cols)), 62)
    widths = []
    for i, n in enumerate(need):
        if i in long_cols:
            widths.append((total - fixed_pct) / len(long_cols))
        else:
            widths.append(fixed_pct * short[i] / max(fixed, 1))
    return [f"{w:.1f}%" for w in widths]


def as_plot(figure: dict[str, Any]) -> Any:
    """A plotly JSON figure (see pages.plots) as gr.Plot's value, serialised once, without graph objects."""
    from gradio.components.plot import PlotData

    return PlotData(type="plotly", plot=json.dumps(figure, default=json_scalar))


def json_scalar(value: Any) -> Any:
    """A numpy scalar as the plain number it holds (json.dumps' ``default`` for figures)."""
    if hasattr(value, "item"):  # numpy scalars
        return value.item()
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")


def col(value: Any) -> Any:
    """A column dropdown's value as a setting (None for "(none)" or empty)."""
    return None if value in (None, "", NONE) else value


def cap(value: Any) -> Any:
    """A size cap box as a setting: empty or 0 means no cap."""
    if value in (None, "") or int(value) <= 0:
        return None
    return int(value)


def pct(x: Any, digits: int = 1) -> str:
    return "-" if x is None or x != x else f"{100 * float(x):.{digits}f}%"


def usd(x: Any, digits: int = 4) -> str:
    return "-" if x is None or x != x else f"${float(x):,.{digits}f}"


def seconds(x: Any) -> str:
    if x is None or x != x:
        return "-"
    x = float(x)
    if x < 90:
        return f"{x:.0f} s" if x >= 10 else f"{x:.1f} s"
    if x < 3600:
        return f"{x / 60:.1f} min"
    return f"{x / 3600:.1f} h"


CSS = """
.ea-note { padding: 8px 12px; border-radius: 8px; margin: 4px 0; font-size: 0.95em; }
.ea-icon { display: inline-block; width: 1.3em; height: 1.3em; line-height: 1.3em; text-align: center;
           border-radius: 50%; margin-right: 6px; font-weight: 700; font-size: 0.85em; color: #fff; background: #4C78A8; }
.ea-ok .ea-icon { background: #2e7d32; } .ea-warn .ea-icon { background: #b26a00; }
.ea-error .ea-icon { background: #c62828; }
.ea-info { background: #eef4fb; border: 1px solid #c9dcf2; }
.ea-ok { background: #eef8ee; border: 1px solid #c4e3c4; }
.ea-warn { background: #fff7e6; border: 1px solid #f5d9a0; }
.ea-error { background: #fdecec; border: 1px solid #f2b8b8; }
.ea-stepper { display: flex; flex-wrap: wrap; gap: 6px; margin: 4px 0 8px; }
.ea-step { padding: 4px 10px; border-radius: 14px; font-size: 0.9em; border: 1px solid #ddd; background: #f7f7f7; }
.ea-step.done { background: #e6f4ea; border-color: #9fd3ae; }
.ea-step.running { background: #e8f0fe; border-color: #8ab4f8; font-weight: 600; }
.ea-step.failed, .ea-step.stopped { background: #fdecec; border-color: #f2b8b8; }
.ea-bar { margin: 3px 0; font-size: 0.88em; }
.ea-bar .track { background: #eee; border-radius: 4px; height: 8px; overflow: hidden; }
.ea-bar .fill { background: #4C78A8; height: 8px; }
.ea-cards { display: flex; flex-wrap: wrap; gap: 8px; }
.ea-card { border: 1px solid #e3e3e3; border-radius: 8px; padding: 6px 12px; min-width: 92px; }
.ea-card .v { font-size: 1.15em; font-weight: 600; }
.ea-card .k { font-size: 0.8em; color: #666; }
.ea-trace td, .ea-trace th { padding: 4px 8px; font-size: 0.92em; }
.ea-metrics { width: 100%; border-collapse: collapse; } .ea-metrics td, .ea-metrics th { border-bottom: 1px solid #eee; text-align: left; }
.ea-trace tr.took { background: #eef8ee; }
.ea-threshold input[type=number] { min-width: 5.2em; font-variant-numeric: tabular-nums; }
.ea-route { font-size: 0.9em; margin: 2px 0 6px; } .ea-route ol { margin: 2px 0 0 1.2em; padding: 0; }
.ea-route li { margin: 1px 0; }
"""
