"""A finished run's operating points, for threshold sliders: route, score, auto-tune, compare.

`Explorer` stacks the run's cached stage outputs once per routing order and calibration, so a
slider move re-routes arrays (no model runs, nothing is paid). Thresholds are chosen on
validation; test figures are computed beside them, never used to choose.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Optional, Sequence

import numpy as np

from ea_core.errors import ConfigError
from ea_core.operating_point import budget_quantile_thresholds
from ea_core.router import RoutingMetrics, StageStack
from ea_core.runstate import RunState
from ea_core.calibration import apply_temperature, reliability_bins
from ea_core.tuning import NEVER_TAKES, OperatingPoint, autotune, pareto_front

#: Routing orders a user can pick: name -> (title, stage layers). A run offers those it can route
#: (`available_orders`): LM-first needs augmented models and LM confidences, EA(Full) its own
#: augmented models, the learned router its scores.
ORDERS: dict[str, tuple[str, tuple[str, ...]]] = {
    "ea": ("SSMs → ASSMs → LM", ("ssm", "assm", "lm")),
    "ea_lm_first": ("SSMs → LM → ASSMs (LM confidence decides)", ("ssm", "lm", "assm")),
    "ea_full": ("EA(Full): SSMs → ASSMs trained on every LM answer → LM", ("ssm", "assm_full", "lm")),
    "ea_learned": ("Learned router → LM (a classifier decides what to defer)", ("learned", "lm")),
}

#: Decimals a slider shows (and a threshold set from code is rounded down to).
SLIDER_DECIMALS = 3


def available_orders(state: RunState) -> list[str]:
    """The routing orders `state` can show, in `ORDERS`' order ("ea" always first)."""
    out = ["ea"]
    if state.assms and state.lm_gives_confidence and state.lm_answers:
        out.append("ea_lm_first")
    if state.assm_full:
        out.append("ea_full")
    if state.learned and state.lm_answers:
        out.append("ea_learned")
    return out


def slider_to_threshold(value: float) -> float:
    """A slider value in [0, 1] as a routing threshold: 1 means "this stage never answers"."""
    return NEVER_TAKES if value >= 1.0 else max(float(value), 0.0)


def threshold_to_slider(threshold: float) -> float:
    """A threshold as a slider shows it: in [0, 1], rounded DOWN to `SLIDER_DECIMALS` (a lower
    threshold only keeps more inputs before the LM, so a rounded tuned point never spends more LM
    calls than the tuned one); 1 for "never"."""
    t = min(max(float(threshold), 0.0), 1.0)
    scale = 10 ** SLIDER_DECIMALS
    return 1.0 if t >= 1.0 else math.floor(t * scale + 1e-9) / scale


def is_never(threshold: float) -> bool:
    """Whether a stage at `threshold` never answers (a slider at 1)."""
    return float(threshold) > 1.0


@dataclass
class Reference:
    """A point to compare against: a simple system's validation and test figures."""

    name: str
    lm_call_rate: float
    val_accuracy: float
    test_accuracy: float


@dataclass
class Headroom:
    """What a better LM could change in a run whose EA kept the best small model alone (the
    offline stand-in LM is at chance): validation counts, read from the run's cached outputs."""

    best: str  # the best small model
    n_val: int
    best_val: float  # its validation accuracy
    lm_val: Optional[float]  # the run's LM alone on validation
    wrong: int  # validation inputs the best small model gets wrong
    all_wrong: int  # ... that every small model gets wrong
    unsure: int  # the inputs it is least sure of, as many as the LM budget allows
    unsure_wrong: int  # of those, the ones it gets wrong
    oracle_val: Optional[float]  # right if any stage is right (the results table's oracle row)
    oracle_test: Optional[float]

    @property
    def budget_share(self) -> float:
        return self.unsure / self.n_val if self.n_val else 0.0

    @property
    def reachable(self) -> float:
        """Validation accuracy at the budget point with an LM right on every input it is asked."""
        return self.best_val + (self.unsure_wrong / self.n_val if self.n_val else 0.0)


def headroom(state: RunState) -> Optional[Headroom]:
    """`Headroom` of a run whose EA answers every input with a small model (no LM call); None when
    its EA routes to the LM, or it has no LM or no validation split."""
    ea = next((r for r in state.rows if r.get("system") == "ea"), None)
    y = state.task.val.labels
    if ea is None or not state.ssms or not len(y) or "val" not in state.lm_answers:
        return None
    if ea.get("chosen") != "ssm" and (ea.get("lm_call_rate") or 0.0) > 0.0:
        return None
    stages = state.stage_outputs("val", ("ssm", "lm"))
    best = stages[0]
    wrong = best.pred != y
    all_wrong = np.all([s.pred != y for s in stages if not s.is_lm], axis=0)
    cfg = state.config
    thr = budget_quantile_thresholds(stages, max_lm_rate=cfg.max_lm_rate, max_cost_per_1k=cfg.max_cost_per_1k)
    unsure = best.conf < thr[0]
    oracle = next((r for r in state.rows if r.get("system") == "oracle"), {})
    lm = next((r for r in state.rows if r.get("system") == "lm"), {})
    return Headroom(best=best.name, n_val=len(y), best_val=float(np.mean(~wrong)), lm_val=lm.get("val_accuracy"),
                    wrong=int(wrong.sum()), all_wrong=int(all_wrong.sum()), unsure=int(unsure.sum()),
                    unsure_wrong=int((unsure & wrong).sum()), oracle_val=oracle.get("val_accuracy"),
                    oracle_test=oracle.get("test_accuracy"))


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
    #: Other routing orders' validation fronts drawn beside this one's, by title: the learned
    #: router's order shows the paper's cascade's front, so the two routers compare at every LM share.
    other_fronts: dict[str, list[OperatingPoint]] = field(default_factory=dict)
    _tuned: Optional[list[float]] = field(default=None, repr=False)

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
        if order == "ea_full" and not state.assm_full:
            raise ConfigError("This run trained no EA(Full) models (tick EA(Full) in Small models to compare it).")
        if order == "ea_learned" and not (state.learned and state.lm_answers):
            raise ConfigError("This run has no learned router (run with the learned router to route with it).")
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
            if order == "ea_learned":
                cascade = StageStack(state.stage_outputs("val", ORDERS["ea"][1], calibrated), state.task.val.labels,
                                     state.task.n_labels)
                ex.other_fronts = {"EA cascade": pareto_front(cascade, state.task.val.labels)}
        return ex

    # -- the sliders -------------------------------------------------------------------
    @property
    def n_stages(self) -> int:
        return len(self.names)

    def tuned_thresholds(self) -> list[float]:
        """The run's own thresholds for this order (tuned on validation), or 0.5s if it has none."""
        if self._tuned is None:
            tuned = self.state.tuning.get(self.order)
            if tuned and tuned.get("stages") == self.names and self.calibrated:
                self._tuned = [float(t) for t in tuned["thresholds"]]
            elif self.calibrated or not len(self.state.task.val):
                self._tuned = [0.5] * (self.n_stages - 1) + [0.0]
            else:
                self._tuned = self.autotune(max_lm_rate=self.state.config.max_lm_rate)
        return list(self._tuned)

    def sliders(self, thresholds: Sequence[float]) -> list[float]:
        """Thresholds (one per stage) as the sliders show them (one per stage but the last)."""
        return [threshold_to_slider(t) for t in list(thresholds)[: self.n_stages - 1]]

    def thresholds(self, sliders: Sequence[float]) -> list[float]:
        """Slider values (one per stage but the last) as routing thresholds. A slider showing the
        run's tuned threshold (rounded for display) routes at the tuned threshold itself, so the
        opened run's point is exactly the results table's."""
        values = list(sliders)[: self.n_stages - 1]
        if len(values) != self.n_stages - 1:
            raise ConfigError(f"{self.n_stages - 1} threshold(s) needed for {', '.join(self.names)}.")
        tuned = self.tuned_thresholds()
        return [t if float(v) == threshold_to_slider(t) else slider_to_threshold(v)
                for v, t in zip(values, tuned)] + [0.0]

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
            refs.append(Reference("LM alone", 1.0, float(self.val.quality[k].mean()),
                                  float(self.test.quality[k].mean()) if len(y_test) else float("nan")))
        best = self.state.ssms[0]
        refs.append(Reference(f"best SSM ({best.name})", 0.0, best.val_accuracy, best.test_accuracy))
        if "lm" in self.kinds and "specific_layer" in self.state.tuning:
            tuned = self.state.tuning["specific_layer"]
            sl_val = StageStack(self.state.stage_outputs("val", tuple(tuned["layers"]), self.calibrated), y_val,
                                self.state.task.n_labels).evaluate(tuned["thresholds"])
            sl_test = StageStack(self.state.stage_outputs("test", tuple(tuned["layers"]), self.calibrated), y_test,
                                 self.state.task.n_labels).evaluate(tuned["thresholds"])
            refs.append(Reference("Specific Layer", sl_val.lm_call_rate, sl_val.accuracy, sl_test.accuracy))
        ea_row = next((r for r in self.state.rows or [] if r.get("system") == "ea"), None)
        if self.order == "ea_learned" and ea_row is not None:  # the paper's cascade to beat: its results row
            refs.append(Reference("EA cascade (its results row)", float(ea_row.get("val_lm_call_rate", np.nan)),
                                  float(ea_row["val_accuracy"]), float(ea_row["test_accuracy"])))
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
