"""A finished run's operating points, for threshold sliders: route, score, auto-tune, compare.

`Explorer` stacks the run's cached stage outputs once per routing order and calibration, so a
slider move re-routes arrays (no model runs, nothing is paid). Thresholds are chosen on
validation; test figures are computed beside them, never used to choose.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Optional, Sequence

import numpy as np

from ea_core.errors import ConfigError
from ea_core.operating_point import budget_quantile_thresholds
from ea_core.router import RoutingMetrics, StageStack
from ea_core.runstate import RunState
from ea_core.tuning import NEVER_TAKES, OperatingPoint, apply_temperature, autotune, pareto_front, reliability_bins

#: Routing orders a user can pick: name -> (title, stage layers).
ORDERS: dict[str, tuple[str, tuple[str, ...]]] = {
    "ea": ("SSMs → ASSMs → LM", ("ssm", "assm", "lm")),
    "ea_lm_first": ("SSMs → LM → ASSMs (LM confidence decides)", ("ssm", "lm", "assm")),
}


def slider_to_threshold(value: float) -> float:
    """A slider value in [0, 1] as a routing threshold: 1 means "this stage never answers"."""
    return NEVER_TAKES if value >= 1.0 else max(float(value), 0.0)


def threshold_to_slider(threshold: float) -> float:
    return min(max(float(threshold), 0.0), 1.0)


@dataclass
class Reference:
    """A point to compare against: a simple system's validation and test figures."""

    name: str
    lm_call_rate: float
    val_accuracy: float
    test_accuracy: float


@dataclass
class Explorer:
    """One run's stages in one routing order (calibrated or not), stacked for fast routing."""

    state: RunState
    order: str
    calibrated: bool
    names: list[str]
    kinds: list[str]  # "ssm" / "assm" / "lm" per stage
    val: StageStack
    test: StageStack
    front: list[OperatingPoint] = field(default_factory=list)
    references: list[Reference] = field(default_factory=list)

    @classmethod
    def build(cls, state: RunState, order: str = "ea", calibrated: bool = True) -> "Explorer":
        """Stack the run's cached outputs; compute its validation Pareto front and reference points."""
        if order not in ORDERS:
            raise ConfigError(f"Unknown routing order {order!r}; known: {', '.join(ORDERS)}.")
        if not state.ssms:
            raise ConfigError("This run has no trained small model yet: nothing to route.")
        layers = ORDERS[order][1]
        if order == "ea_lm_first" and not (state.assms and state.lm_gives_confidence):
            raise ConfigError("The LM-first order needs augmented models and an LM that gives confidences.")
        kinds: list[str] = []
        for layer in layers:
            if layer != "lm":
                kinds += [layer] * len(state.layer_records(layer))
            elif state.lm_answers:
                kinds.append("lm")
        val = StageStack(state.stage_outputs("val", layers, calibrated), state.task.val.labels,
                         state.task.n_labels)
        test = StageStack(state.stage_outputs("test", layers, calibrated), state.task.test.labels,
                          state.task.n_labels)
        ex = cls(state, order, calibrated, list(val.names), kinds, val, test)
        if len(state.task.val):
            ex.front = pareto_front(val, state.task.val.labels) if val.n_stages > 1 else []
            ex.references = ex._references()
        return ex

    # -- the sliders -------------------------------------------------------------------
    @property
    def n_stages(self) -> int:
        return len(self.names)

    def tuned_thresholds(self) -> list[float]:
        """The run's own thresholds for this order (tuned on validation), or 0.5s if it has none."""
        tuned = self.state.tuning.get(self.order)
        if tuned and tuned.get("stages") == self.names and self.calibrated:
            return [float(t) for t in tuned["thresholds"]]
        if self.calibrated or not len(self.state.task.val):
            return [0.5] * (self.n_stages - 1) + [0.0]
        return self.autotune(max_lm_rate=self.state.config.max_lm_rate)

    def thresholds(self, sliders: Sequence[float]) -> list[float]:
        """Slider values (one per stage but the last) as routing thresholds."""
        values = list(sliders)[: self.n_stages - 1]
        if len(values) != self.n_stages - 1:
            raise ConfigError(f"{self.n_stages - 1} threshold(s) needed for {', '.join(self.names)}.")
        return [slider_to_threshold(v) for v in values] + [0.0]

    def evaluate(self, thresholds: Sequence[float]) -> tuple[RoutingMetrics, RoutingMetrics]:
        """(validation, test) metrics of the routing at `thresholds`."""
        return self.val.evaluate(thresholds), self.test.evaluate(thresholds)

    def autotune(self, max_lm_rate: Optional[float] = None, max_cost_per_1k: Optional[float] = None) -> list[float]:
        """Thresholds maximising the run's selection metric on validation (accuracy, or mean per-class
        recall for macro-F1) within the budget (`ConfigError` if none meets it)."""
        point = autotune(self.val, self.state.task.val.labels, max_lm_rate=max_lm_rate,
                         max_cost_per_1k=max_cost_per_1k, metric=self.state.config.metric_for(self.state.task))
        return [float(t) for t in point.thresholds]

    # -- what to compare with ----------------------------------------------------------
    def _references(self) -> list[Reference]:
        refs = []
        y_val, y_test = self.state.task.val.labels, self.state.task.test.labels
        if "lm" in self.kinds:
            k = self.kinds.index("lm")
            refs.append(Reference("LM alone", 1.0, float(self.val.correct[k].mean()),
                                  float(self.test.correct[k].mean()) if len(y_test) else float("nan")))
        best = self.state.ssms[0]
        refs.append(Reference(f"best SSM ({best.name})", 0.0, best.val_accuracy, best.test_accuracy))
        if "lm" in self.kinds and "specific_layer" in self.state.tuning:
            tuned = self.state.tuning["specific_layer"]
            sl_val = StageStack(self.state.stage_outputs("val", tuple(tuned["layers"]), self.calibrated), y_val,
                                self.state.task.n_labels).evaluate(tuned["thresholds"])
            sl_test = StageStack(self.state.stage_outputs("test", tuple(tuned["layers"]), self.calibrated), y_test,
                                 self.state.task.n_labels).evaluate(tuned["thresholds"])
            refs.append(Reference("Specific Layer", sl_val.lm_call_rate, sl_val.accuracy, sl_test.accuracy))
        cfg = self.state.config
        if "lm" in self.kinds and len(y_val):
            thr = budget_quantile_thresholds(self.state.stage_outputs("val", ORDERS[self.order][1], self.calibrated),
                                             max_lm_rate=cfg.max_lm_rate, max_cost_per_1k=cfg.max_cost_per_1k)
            v, t = self.evaluate(thr)
            refs.append(Reference("LM budget on the least sure", v.lm_call_rate, v.accuracy, t.accuracy))
        return refs

    def reliability(self, name: str, n_bins: int = 10) -> dict[str, dict[str, np.ndarray]]:
        """Reliability bins of one small model on validation and test (as routed: calibrated or not)."""
        if name not in self.state.records():
            raise ConfigError(f"No small model called {name!r} in this run.")
        rec = self.state.records()[name]
        t = self.state.temperatures.get(name, 1.0) if self.calibrated else 1.0
        out = {}
        for split in ("val", "test"):
            proba = apply_temperature(rec.outputs()[split], t)
            out[split] = reliability_bins(proba, self.state.task.split(split).labels, n_bins)
        return out

    def examples(self, thresholds: Sequence[float], split: str = "test", k: int = 8) -> list[dict[str, Any]]:
        """Up to `k` right and `k` wrong inputs of `split` under this routing (for "try it")."""
        stack = self.test if split == "test" else self.val
        data = self.state.task.split(split)
        routed = stack.route(thresholds)
        right = routed.pred == data.labels
        rows = []
        for want in (True, False):
            for i in np.flatnonzero(right == want)[:k]:
                pred = int(routed.pred[i])
                rows.append({"index": int(i), "text": data.texts[i], "pair": data.pairs[i] if data.pairs else None,
                             "gold": self.state.task.labels[int(data.labels[i])],
                             "predicted": self.state.task.labels[pred] if pred >= 0 else "(no answer)",
                             "answered_by": self.names[int(routed.answered_by[i])], "right": bool(want)})
        return rows
