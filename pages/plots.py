"""Plotly figures of the app, built from plain data that ea_core computed (no gradio here).

Figures are plain plotly JSON (``{"data": [...], "layout": {...}}``), not `plotly.graph_objects`,
which validate every property on every slider move; the browser's Plotly draws the same thing.
Each has a title, axis titles with units, a legend, and a constant `uirevision` so a user's zoom
survives the redraws that follow a slider.
"""

from __future__ import annotations

import math
from typing import Any, Optional, Sequence

import numpy as np

from ea_core.monitor import RunProgress
from ea_core.router import RoutingMetrics

Figure = dict[str, Any]

COLORS = ["#4C78A8", "#F58518", "#54A24B", "#B279A2", "#E45756", "#72B7B2", "#EECA3B", "#9D755D"]
LM_COLOR = "#E45756"
REF_COLORS = {"LM alone": LM_COLOR, "best SSM": "#B279A2", "Specific Layer": "#54A24B",
              "LM budget on the least sure": "#E45756"}
OTHER_FRONT_COLORS = ["#F58518", "#72B7B2"]  # other routers' fronts (the cascade's beside the learned one's)
FONT = {"family": "system-ui, -apple-system, Segoe UI, sans-serif", "size": 12}


def _axis(title: str, **kw: Any) -> dict[str, Any]:
    return {"title": {"text": title}, "gridcolor": "#eee", "zerolinecolor": "#ddd", **kw}


def _figure(data: list[dict[str, Any]], title: str, height: int = 340, **layout: Any) -> Figure:
    base = {"title": {"text": title, "x": 0.01, "font": {"size": 14}}, "height": height,
            "margin": {"l": 55, "r": 15, "t": 45, "b": 80}, "font": FONT, "uirevision": "keep",
            "plot_bgcolor": "white", "paper_bgcolor": "white",
            "legend": {"orientation": "h", "yanchor": "top", "y": -0.28, "x": 0}}
    base.update(layout)
    return {"data": data, "layout": base}


def empty(title: str, note: str, height: int = 300) -> Figure:
    """A titled placeholder that says why there is nothing to plot yet."""
    return _figure([], title, height, xaxis={"visible": False}, yaxis={"visible": False},
                   annotations=[{"text": note, "showarrow": False, "x": 0.5, "y": 0.5, "xref": "paper",
                                 "yref": "paper", "font": {"size": 13, "color": "#666"}}])


def class_counts(describe: dict[str, Any]) -> Figure:
    """Examples per label in each split (grouped bars), from `ea_core.data.describe`."""
    labels = describe["labels"]
    data = []
    for k, (part, name) in enumerate((("train", "train"), ("val", "validation"), ("test", "test"))):
        counts = describe["splits"][part]["label_counts"]
        data.append({"type": "bar", "x": labels, "y": [counts[lab] for lab in labels],
                     "name": f"{name} ({describe['sizes'][part]:,})", "marker": {"color": COLORS[k]}})
    return _figure(data, "Class counts per split (x: label)", 300, barmode="group",
                   xaxis=_axis(""), yaxis=_axis("examples"))


def _pct(x: Optional[float]) -> Optional[float]:
    return None if x is None else 100 * x


#: A validation-accuracy axis spans at least this many points: a 1-point wobble is not drawn as a cliff.
MIN_ACCURACY_SPAN = 10.0


def _integer_axis(title: str, steps: Sequence[float], **kw: Any) -> dict[str, Any]:
    """An x axis of epochs (or steps): whole numbers only, from 0, about ten ticks at most."""
    top = max(steps) if steps else 1
    return _axis(title, tickformat="d", tick0=0, dtick=max(1, math.ceil(top / 10)), range=[0, top + 0.5], **kw)


def _accuracy_axis(title: str, values: Sequence[Optional[float]], **kw: Any) -> dict[str, Any]:
    """A y axis of accuracies (%) at least `MIN_ACCURACY_SPAN` points tall, within 0-100."""
    shown = [v for v in values if v is not None]
    if not shown:
        return _axis(title, **kw)
    lo, hi = min(shown), max(shown)
    pad = max(MIN_ACCURACY_SPAN - (hi - lo), 0.0) / 2 + 1.0
    lo, hi = lo - pad, hi + pad
    if lo < 0:
        lo, hi = 0.0, min(100.0, hi - lo)
    if hi > 100:
        lo, hi = max(0.0, lo - (hi - 100)), 100.0
    return _axis(title, range=[lo, hi], **kw)


def training_curves(progress: RunProgress) -> Figure:
    """Loss (left) and validation accuracy (right) per small model, per epoch or step: whole-number
    x axes, a loss axis from 0 and an accuracy axis at least `MIN_ACCURACY_SPAN` points tall."""
    curves = progress.curves
    if not curves:
        return empty("Training curves", "Curves appear when the first small model trains.")
    with_loss = any(p["loss"] is not None for pts in curves.values() for p in pts)
    data = []
    all_steps: list[float] = []
    accuracies: list[Optional[float]] = []
    for k, (model, points) in enumerate(curves.items()):
        line = {"color": COLORS[k % len(COLORS)]}
        mode = "lines+markers" if len(points) < 30 else "lines"
        steps = [p["step"] for p in points]
        all_steps += steps
        has_loss = with_loss and any(p["loss"] is not None for p in points)
        if has_loss:
            data.append({"type": "scatter", "x": steps, "y": [p["loss"] for p in points], "name": model, "mode": mode,
                         "line": line, "legendgroup": model})
        if any(p["val_accuracy"] is not None for p in points):
            acc = [_pct(p["val_accuracy"]) for p in points]
            accuracies += acc
            data.append({"type": "scatter", "x": steps, "y": acc, "name": model,
                         "mode": mode, "line": line, "legendgroup": model, "showlegend": not has_loss,
                         **({"xaxis": "x2", "yaxis": "y2"} if with_loss else {})})
    if not with_loss:  # e.g. TF-IDF only: accuracy per regularisation setting, no loss
        return _figure(data, "Small models: validation accuracy while training", 360,
                       xaxis=_integer_axis("step (TF-IDF: regularisation setting tried)", all_steps),
                       yaxis=_accuracy_axis("validation accuracy (%)", accuracies))
    return _figure(data, "Small models: training loss (left) and validation accuracy (right)", 360,
                   xaxis=_integer_axis("epoch (or step)", all_steps, domain=[0, 0.44]),
                   yaxis=_axis("training loss (cross-entropy)", rangemode="tozero"),
                   xaxis2=_integer_axis("epoch (or step)", all_steps, domain=[0.56, 1], anchor="y2"),
                   yaxis2=_accuracy_axis("validation accuracy (%)", accuracies, anchor="x2"))


#: Where a reference point's label goes, in pixels from the point, when that many labelled points
#: are already near it (mirrored left of points on the right-hand side of the plot).
LABEL_OFFSETS = [(46, -30), (46, 30), (74, -54), (74, 54), (100, -78), (100, 78)]


def _point_labels(points: Sequence[tuple[str, float, float, str]], occupied: Sequence[tuple[float, float]],
                  y_span: float) -> list[dict[str, Any]]:
    """Arrow annotations naming each (label, x %, y %, colour) point, each placed away from the
    points already there (the current point, earlier labels), so no two labels sit on each other."""
    placed = list(occupied)
    out = []
    tol_y = max(0.05 * y_span, 0.3)
    for label, x, y, color in points:
        near = sum(1 for px, py in placed if abs(px - x) < 9 and abs(py - y) < tol_y)
        ax, ay = LABEL_OFFSETS[min(near, len(LABEL_OFFSETS) - 1)]
        if x > 60:
            ax = -ax
        # the text starts at the arrow's tail, away from the point (never back over the axis)
        out.append({"x": x, "y": y, "xref": "x", "yref": "y", "text": label, "showarrow": True, "arrowhead": 0,
                    "xanchor": "left" if ax > 0 else "right",
                    "arrowwidth": 1, "arrowcolor": color, "ax": ax, "ay": ay, "standoff": 6,
                    "font": {"size": 11, "color": color}, "bgcolor": "rgba(255,255,255,0.9)", "borderpad": 2})
        placed.append((x, y))
    return out


def tradeoff(front: Sequence[Any], references: Sequence[Any], current: tuple[RoutingMetrics, RoutingMetrics],
             title: str = "Accuracy vs LM calls", others: Optional[dict[str, Sequence[Any]]] = None) -> Figure:
    """Accuracy (%) against the share of inputs sent to the LM (%): the validation Pareto front (a
    line with a marker per operating point), the current thresholds on validation and on test, and
    reference systems, each named on the plot beside its marker (dashed lines for the LM alone and
    the best small model, named with their accuracy in the legend, as RouteLLM draws them). References are drawn over the current
    point and their labels placed apart, so a reference where the current point is stays visible.
    `others`: other routers' validation fronts by name, dotted (the learned router beside the cascade)."""
    val, test = current
    data: list[dict[str, Any]] = [
        {"type": "scatter", "x": [100 * val.lm_call_rate], "y": [100 * val.accuracy], "mode": "markers",
         "name": "current (validation)", "marker": {"color": "#1f4e9c", "size": 16, "symbol": "circle",
                                                    "opacity": 0.85},
         "hovertemplate": "current, validation<br>LM calls %{x:.1f}%<br>acc %{y:.2f}%<extra></extra>"},
        {"type": "scatter", "x": [100 * test.lm_call_rate], "y": [100 * test.accuracy], "mode": "markers",
         "name": "current (test)",
         "marker": {"color": "#1f4e9c", "size": 13, "symbol": "circle-open", "line": {"width": 2.5}},
         "hovertemplate": "current, test<br>LM calls %{x:.1f}%<br>acc %{y:.2f}%<extra></extra>"}]
    if front:
        data.append({"type": "scatter", "x": [100 * p.lm_call_rate for p in front],
                     "y": [100 * p.accuracy for p in front], "mode": "lines+markers",
                     "name": "best thresholds (validation front)", "line": {"color": "#555", "shape": "hv", "width": 2},
                     "marker": {"size": 7, "color": "#555", "symbol": "circle"},
                     "hovertemplate": "front: LM calls %{x:.1f}%<br>val acc %{y:.2f}%<extra></extra>"})
    for k, (name, other) in enumerate((others or {}).items()):
        color = OTHER_FRONT_COLORS[k % len(OTHER_FRONT_COLORS)]
        data.append({"type": "scatter", "x": [100 * p.lm_call_rate for p in other],
                     "y": [100 * p.accuracy for p in other], "mode": "lines+markers",
                     "name": f"{name} (validation front)", "line": {"color": color, "shape": "hv", "width": 1.5,
                                                                   "dash": "dot"},
                     "marker": {"size": 5, "color": color, "symbol": "square"},
                     "hovertemplate": f"{name} front: LM calls %{{x:.1f}}%<br>val acc %{{y:.2f}}%<extra></extra>"})
    ys = [100 * val.accuracy, 100 * test.accuracy] + [100 * r.val_accuracy for r in references] + [
        100 * p.accuracy for p in front]
    y_span = (max(ys) - min(ys)) if ys else 1.0
    points = []
    for ref in references:
        color = REF_COLORS.get(ref.name.split(" (")[0], "#888")
        x, y = 100 * ref.lm_call_rate, 100 * ref.val_accuracy
        on_line = ref.name == "LM alone" or ref.name.startswith("best SSM")
        if on_line:  # a dashed line across, named in the legend (as RouteLLM draws them): no text on the plot
            data.append({"type": "scatter", "x": [-3, 103], "y": [y, y], "mode": "lines", "legendgroup": ref.name,
                         "name": f"{ref.name}: {y:.1f}% on validation", "hoverinfo": "skip",
                         "line": {"color": color, "dash": "dash", "width": 1}})
        data.append({"type": "scatter", "x": [x], "y": [y], "mode": "markers", "name": ref.name,
                     "legendgroup": ref.name, "showlegend": not on_line,
                     "marker": {"color": color, "size": 11, "symbol": "diamond", "line": {"color": "white", "width": 1.5}},
                     "hovertemplate": (f"{ref.name}<br>LM calls %{{x:.1f}}%<br>val acc %{{y:.2f}}%"
                                       f"<br>test acc {100 * ref.test_accuracy:.2f}%<extra></extra>")})
        points.append((ref.name, x, y, color))
    annotations = _point_labels(points, [(100 * val.lm_call_rate, 100 * val.accuracy)], y_span)
    return _figure(data, title, 380, annotations=annotations,
                   xaxis=_axis("inputs sent to the LM (%)", range=[-3, 103]), yaxis=_axis("accuracy (%)"))


def routing(front: Sequence[Any], references: Sequence[Any], names: Sequence[str],
            current: tuple[RoutingMetrics, RoutingMetrics],
            others: Optional[dict[str, Sequence[Any]]] = None) -> Figure:
    """What a threshold move redraws, as ONE figure (one Plotly redraw per move, not two): the
    accuracy / LM-calls trade-off on top, each stage's share of inputs below. Bar labels are left
    to the hover and the metrics table: text inside bars doubled the redraw time."""
    top = tradeoff(front, references, current, "Accuracy vs LM calls (top) · who answers (bottom)", others)
    bars = stage_shares(names, current)["data"]
    for bar in bars:
        bar.update(xaxis="x2", yaxis="y2", legendgroup="stages", legendgrouptitle={"text": "stages"})
        bar.pop("text", None)
    layout = top["layout"]
    layout.update(height=560, barmode="stack", legend={"orientation": "v", "yanchor": "top", "y": 1.0, "x": 1.02,
                                                       "traceorder": "normal",
                                                       "font": {"size": 11}},
                  margin={"l": 70, "r": 10, "t": 45, "b": 45})
    layout["yaxis"] = dict(layout["yaxis"], domain=[0.45, 1.0])
    layout["xaxis2"] = _axis("share of inputs answered (%)", range=[0, 100], anchor="y2")
    layout["yaxis2"] = {"autorange": "reversed", "domain": [0.0, 0.22], "anchor": "x2"}
    return {"data": top["data"] + bars, "layout": layout}


def stage_shares(names: Sequence[str], current: tuple[RoutingMetrics, RoutingMetrics]) -> Figure:
    """Share of inputs each stage answers (stacked, %), with its accuracy there, on validation and
    test: the paper's Table 3 as a picture."""
    splits = ["validation", "test"]
    data = []
    for k, name in enumerate(names):
        color = LM_COLOR if name == "lm" else COLORS[k % len(COLORS)]
        shares = [100 * m.shares[k] for m in current]
        accs = [m.stage_accuracy[k] for m in current]
        known = [not math.isnan(a) for a in accs]
        data.append({"type": "bar", "orientation": "h", "y": splits, "x": shares, "name": name,
                     "marker": {"color": color}, "textposition": "inside", "insidetextanchor": "middle",
                     "text": [f"{s:.0f}% · acc {100 * a:.0f}%" if s >= 6 and ok else "" for s, a, ok in
                              zip(shares, accs, known)],
                     "customdata": [f"{100 * a:.1f}%" if ok else "-" for a, ok in zip(accs, known)],
                     "hovertemplate": f"{name}<br>%{{y}}: %{{x:.1f}}% of inputs<br>accuracy there %{{customdata}}"
                                      "<extra></extra>"})
    return _figure(data, "Who answers: share of inputs per stage, and its accuracy there", 250, barmode="stack",
                   xaxis=_axis("share of inputs answered (%)", range=[0, 100]), yaxis={"autorange": "reversed"},
                   margin={"l": 70, "r": 15, "t": 60, "b": 45},
                   legend={"orientation": "h", "yanchor": "bottom", "y": 1.0, "x": 1, "xanchor": "right",
                           "traceorder": "normal"})


def reliability(name: str, bins: dict[str, dict[str, np.ndarray]], calibrated: bool) -> Figure:
    """Reliability diagram: accuracy against mean confidence per confidence bin, validation and test."""
    data: list[dict[str, Any]] = [{"type": "scatter", "x": [0, 100], "y": [0, 100], "mode": "lines",
                                   "name": "perfect calibration", "line": {"color": "#bbb", "dash": "dot"}}]
    for k, (split, label) in enumerate((("val", "validation"), ("test", "test"))):
        b = bins[split]
        ok = b["count"] > 0
        data.append({"type": "scatter", "x": (100 * b["confidence"][ok]).tolist(),
                     "y": (100 * b["accuracy"][ok]).tolist(), "mode": "lines+markers", "name": label,
                     "marker": {"size": np.clip(4 + np.sqrt(b["count"][ok]), 5, 18).tolist(), "color": COLORS[k]},
                     "customdata": b["count"][ok].tolist(),
                     "hovertemplate": "confidence %{x:.1f}%<br>accuracy %{y:.1f}%<br>%{customdata} inputs<extra></extra>"})
    state = "calibrated (temperature scaling)" if calibrated else "uncalibrated"
    return _figure(data, f"Reliability of {name}, {state}", 340, xaxis=_axis("mean confidence in bin (%)",
                                                                             range=[0, 100]),
                   yaxis=_axis("accuracy in bin (%)", range=[0, 100]))


def rouge_tradeoff(rows: Sequence[dict[str, Any]]) -> Figure:
    """Summaries: validation ROUGE-L (points) against the share of inputs sent to the LM (%), the
    validation front of each routed system as a line, every system's chosen point on validation
    (filled) and test (open), as the results rows of `ea_core.summarization` carry them."""
    data: list[dict[str, Any]] = []
    for k, row in enumerate(r for r in rows if r.get("val_front")):
        color = COLORS[k % len(COLORS)]
        front = sorted(row["val_front"])
        data.append({"type": "scatter", "x": [100 * x for x, _ in front], "y": [100 * y for _, y in front],
                     "mode": "lines+markers", "name": f"{row['system']}: validation front",
                     "line": {"color": color, "shape": "hv", "width": 1.5}, "marker": {"size": 5, "color": color},
                     "hovertemplate": "LM calls %{x:.1f}%<br>val ROUGE-L %{y:.2f}<extra></extra>"})
    for k, row in enumerate(rows):
        if row.get("kind") == "oracle" or row.get("val_lm_call_rate") is None:
            continue
        color = LM_COLOR if row["system"] == "lm" else COLORS[(k + 3) % len(COLORS)]
        for split, symbol in (("val", "diamond"), ("test", "diamond-open")):
            data.append({"type": "scatter", "x": [100 * float(row[f"{split}_lm_call_rate"])],
                         "y": [100 * float(row[f"{split}_rougeL"])], "mode": "markers",
                         "name": f"{row['system']} ({'validation' if split == 'val' else 'test'})",
                         "marker": {"color": color, "size": 11, "symbol": symbol, "line": {"width": 2}},
                         "hovertemplate": f"{row['system']}, {split}<br>LM calls %{{x:.1f}}%"
                                          f"<br>ROUGE-L %{{y:.2f}}<extra></extra>"})
    if not data:
        return empty("ROUGE-L vs LM calls", "Run EA on summaries to see the trade-off.")
    return _figure(data, "ROUGE-L vs LM calls (validation front; systems on validation and test)", 420,
                   xaxis=_axis("inputs sent to the LM (%)", range=[-3, 103]), yaxis=_axis("ROUGE-L F1 (points)"),
                   legend={"orientation": "v", "yanchor": "top", "y": 1.0, "x": 1.02, "font": {"size": 11}},
                   margin={"l": 60, "r": 10, "t": 45, "b": 50})
