"""Threshold sliders for a finished summarization run: route its saved per-stage (confidence,
quality, cost) arrays again at any thresholds and say what that gives on validation and test
(mean ROUGE-L, share of inputs sent to the LM, money, who answers), fast enough for every move.

The summarization counterpart of `ea_core.explore` for classification runs: it never sees a model,
only the arrays `ea_core.summarization.stage_arrays` wrote (stages.json) and the routed system's
stage order and chosen thresholds from results.json.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Optional, Sequence

import numpy as np

from ea_core.errors import EAError
from ea_core.router import RoutingMetrics, StageOutput, StageStack


@dataclass
class SummaryPoint:
    """What one set of thresholds gives: validation and test metrics (accuracy = mean ROUGE-L)."""

    thresholds: list[float]
    val: RoutingMetrics
    test: RoutingMetrics

    def describe(self) -> str:
        """One paragraph a person reads beside the sliders."""
        def part(name: str, m: RoutingMetrics) -> str:
            who = ", ".join(f"{s} {100 * x:.0f}%" for s, x in zip(m.names, m.shares))
            money = f", ${m.cost_per_1k_usd:.4f} per 1,000 inputs" if math.isfinite(m.cost_per_1k_usd) else ""
            return (f"**{name}**: ROUGE-L {100 * m.accuracy:.2f}, LM calls {100 * m.lm_call_rate:.1f}%{money} "
                    f"(answered by {who})")
        return part("Validation", self.val) + "  \n" + part("Test", self.test)


def _numbers(stage: dict[str, Any], key: str, n: Optional[int], required: bool = True) -> Optional[np.ndarray]:
    values = stage.get(key)
    if values is None and not required:
        return None
    if not isinstance(values, list) or not all(isinstance(v, (int, float)) and math.isfinite(v) for v in values):
        raise EAError(f"stages.json: stage {stage.get('name')!r} has no list of numbers {key!r}.")
    if n is not None and len(values) != n:
        raise EAError(f"stages.json: stage {stage.get('name')!r} has {len(values)} values in {key!r}, not {n}.")
    return np.asarray(values, float)


class SummaryExplorer:
    """The routed system's cascade over saved arrays: `evaluate(thresholds)` for a slider."""

    def __init__(self, stages: Sequence[dict[str, Any]], order: Sequence[str], chosen: Sequence[float]) -> None:
        by_name = {s.get("name"): s for s in stages if isinstance(s, dict)}
        missing = [name for name in order if name not in by_name]
        if not order or missing:
            raise EAError(f"stages.json has no arrays for the stage(s) {', '.join(missing) or '(none)'}.")
        self.names = list(order)
        self.chosen = [float(t) for t in chosen]
        if len(self.chosen) != len(self.names):
            raise EAError("results.json: the routed system's thresholds do not match its stages.")
        stacks = {}
        for split in ("val", "test"):
            outs = []
            n: Optional[int] = None
            for name in self.names:
                s = by_name[name]
                conf = _numbers(s, f"{split}_confidence", n)
                n = len(conf) if conf is not None else n
                outs.append(StageOutput.graded(name, conf, _numbers(s, f"{split}_quality", n),
                                               is_lm=s.get("kind") == "lm",
                                               cost_usd=_numbers(s, f"{split}_cost", n, required=False)))
            stacks[split] = StageStack(outs)
        self.val_stack, self.test_stack = stacks["val"], stacks["test"]

    @property
    def sliders(self) -> list[str]:
        """The stages a threshold decides (all but the last, which answers whatever reaches it)."""
        return self.names[:-1]

    def evaluate(self, thresholds: Sequence[Optional[float]]) -> SummaryPoint:
        """Route validation and test at `thresholds` (one per slider; the last stage's is ignored)."""
        thr = [float(t) if t is not None else c for t, c in zip(list(thresholds) + self.chosen[len(thresholds):],
                                                                self.chosen)]
        thr[-1] = self.chosen[-1]
        return SummaryPoint(thr, self.val_stack.evaluate(thr), self.test_stack.evaluate(thr))


def explorer_from(stage_data: Any, rows: Sequence[dict[str, Any]], system: str = "ea") -> SummaryExplorer:
    """The explorer of `system`'s row (its stages and chosen thresholds) over stages.json's arrays."""
    row = next((r for r in rows if isinstance(r, dict) and r.get("system") == system and r.get("stages")), None)
    if row is None:
        raise EAError(f"This run has no routed system {system!r}.")
    stages = stage_data.get("stages") if isinstance(stage_data, dict) else None
    if not isinstance(stages, list):
        raise EAError("stages.json has no 'stages' list.")
    return SummaryExplorer(stages, [str(s) for s in row["stages"]], row.get("thresholds") or [])


__all__ = ["SummaryExplorer", "SummaryPoint", "explorer_from"]
