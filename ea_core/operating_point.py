"""Which operating point a run reports: rules that choose a cascade's thresholds on validation
without reading luck as gain, and without throwing a real LM gain away.

Validation also chose early stopping, the ranking and the temperatures, so the thresholds with the
best validation accuracy are partly picked for their luck; yet re-tuning thresholds on folds of a
few hundred examples is too noisy to see the gain of an LM that is better where the small models
are unsure. The default, ``budget_guarded``, starts from a point that reads no label: the LM budget
spent on the inputs the best small model is least sure of. bench/bench_honest.py measures the rules.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional, Sequence

import numpy as np

from ea_core.errors import ConfigError
from ea_core.metrics import bootstrap_means, check_labels
from ea_core.router import StageOutput, as_stack
from ea_core.tuning import EPS_COST, NEVER_TAKES, autotune, metric_weights

#: Operating-point rules `choose_operating_point` knows, the default first.
HONEST_RULES = ("budget_guarded", "crossfit_guarded", "crossfit_keep_simpler", "crossfit", "insample",
                "bootstrap_keep_simpler", "shrink", "budget_quantile")
#: The rule a run's tune stage uses unless told otherwise.
HONEST_DEFAULT = "budget_guarded"

#: One-sided level of the budget-quantile point's guard. Milder than the tuned candidates' 5%: the
#: point reads no label, and a false alarm costs little, since the guard rarely passes where the LM
#: is worse than the small model on the inputs it would get (bench/bench_honest.py).
BUDGET_QUANTILE_LEVEL = 0.25

#: Plain words for each system a rule can choose (the `HonestChoice.system` names).
SYSTEM_WORDS = {
    "ssm": "the best small model alone",
    "lm": "the LM alone",
    "budget_quantile": "the best small model, with the LM budget spent on the inputs it is least sure of",
    "specific_layer": "the Specific Layer (small models, then the LM) with tuned thresholds",
    "full": "the whole cascade with tuned thresholds",
}


@dataclass
class HonestChoice:
    """An operating point chosen by a rule: the cascade's thresholds, which candidate system they
    realise, their (in-sample) validation accuracy, an estimate of it made without tuning on the
    same examples (cross-fitted, or in-sample for a point that read no label; nan when not made),
    and ``detail["why"]``: the reason in plain words."""

    rule: str
    system: str
    thresholds: list[float]
    val_accuracy: float
    crossfit_accuracy: float
    lm_call_rate: float
    detail: dict[str, Any]


def subset_stages(stages: Sequence[StageOutput], index: np.ndarray) -> list[StageOutput]:
    """The same stages restricted to the examples `index` (a fold of validation)."""
    return [StageOutput(s.name, s.pred[index], s.conf[index], s.is_lm,
                        None if s.cost_usd is None else s.cost_usd[index],
                        None if s.quality is None else s.quality[index]) for s in stages]


def _tune_kept(stages: Sequence[StageOutput], y: np.ndarray, keep: Sequence[int], max_lm_rate: Optional[float],
               max_cost_per_1k: Optional[float], metric: str = "accuracy") -> list[float]:
    """Thresholds of the full cascade with only the stages `keep` switched on, tuned on (stages, y)."""
    keep = sorted(keep)
    sub = [stages[i] for i in keep]
    has_paid = any(s.is_lm or s.cost_usd is not None for s in sub)
    point = autotune(sub, y, max_lm_rate=max_lm_rate if has_paid else None,
                     max_cost_per_1k=max_cost_per_1k if has_paid and any(s.cost_usd is not None for s in sub) else None,
                     metric=metric)
    thr = [NEVER_TAKES] * len(stages)
    for i, t in zip(keep, point.thresholds):
        thr[i] = float(t)
    thr[keep[-1]] = 0.0  # the last switched-on stage answers everything that reaches it
    thr[-1] = 0.0
    return thr


def _correct(stages: Sequence[StageOutput], thresholds: Sequence[float], y: np.ndarray) -> np.ndarray:
    """Per example, the quality of the routed answer: right/wrong for labels, e.g. ROUGE-L for graded stages."""
    stack = as_stack(stages)
    if stack.graded:
        return stack.answer_quality(list(thresholds))
    return stack.route(list(thresholds)).pred == y


def stratified_folds(y: np.ndarray, k: int, seed: int) -> list[np.ndarray]:
    """Held-out index sets of `k` stratified folds (fewer when a class is too small to split)."""
    from sklearn.model_selection import KFold, StratifiedKFold

    y = np.asarray(y)
    k = int(max(2, min(k, len(y))))
    counts = np.bincount(y) if y.size else np.zeros(0, int)
    if counts[counts > 0].min(initial=k) >= k:
        splitter: Any = StratifiedKFold(k, shuffle=True, random_state=seed)
    else:
        splitter = KFold(k, shuffle=True, random_state=seed)
    return [test for _, test in splitter.split(np.zeros(len(y)), y)]


def crossfit_correct(stages: Sequence[StageOutput], y: np.ndarray, keep: Sequence[int], *,
                     folds: Sequence[np.ndarray], max_lm_rate: Optional[float] = None,
                     max_cost_per_1k: Optional[float] = None, metric: str = "accuracy") -> np.ndarray:
    """Per validation example: is it right under thresholds tuned on the *other* folds? The mean is
    an estimate of the tuned system's accuracy on new data (up to the other uses of validation)."""
    y = np.asarray(y)
    out = np.zeros(len(y), dtype=np.float64 if stages[0].quality is not None else bool)
    all_idx = np.arange(len(y))
    for held in folds:
        fit = np.setdiff1d(all_idx, held)
        try:
            thr = _tune_kept(subset_stages(stages, fit), y[fit], keep, max_lm_rate, max_cost_per_1k, metric)
        except ConfigError:  # the budget cannot be met on this fold: count the fold as missed
            continue
        out[held] = _correct(subset_stages(stages, held), thr, y[held])
    return out


def paired_bootstrap(a: np.ndarray, b: np.ndarray, *, n_boot: int = 1000, seed: int = 0) -> np.ndarray:
    """Bootstrap distribution of mean(a) - mean(b) over paired examples (a, b: per-example scores)."""
    return bootstrap_means(np.asarray(a, dtype=np.float64) - np.asarray(b, dtype=np.float64), n_boot=n_boot, seed=seed)


def lm_stage_index(stages: Sequence[StageOutput]) -> Optional[int]:
    """Index of the first LM stage (None when the cascade has none)."""
    return next((i for i, s in enumerate(stages) if s.is_lm), None)


def _within_budget(stages: Sequence[StageOutput], thresholds: Sequence[float], max_lm_rate: Optional[float],
                   max_cost_per_1k: Optional[float]) -> bool:
    """Does routing at `thresholds` keep LM calls and money within the caps (on these inputs)?"""
    answered_by = as_stack(stages).route(list(thresholds)).answered_by
    n = len(answered_by)
    lm = lm_stage_index(stages)
    calls = 0 if lm is None else int((answered_by >= lm).sum())
    if max_lm_rate is not None and calls > np.floor(max_lm_rate * n + 1e-9) + 0.5:
        return False
    if max_cost_per_1k is None or n == 0:
        return True
    spent = sum(float(s.cost_usd[answered_by >= k].sum()) for k, s in enumerate(stages) if s.cost_usd is not None)
    return 1000.0 * spent / n <= max_cost_per_1k * (1 + EPS_COST) + 1e-12


def budget_quantile_thresholds(stages: Sequence[StageOutput], *, max_lm_rate: Optional[float],
                               max_cost_per_1k: Optional[float] = None, first: int = 0) -> list[float]:
    """Thresholds that send the least confident inputs of stage `first` (the best small model) to
    the LM, as many as the budget allows (share of inputs and/or money), and let that small model
    answer the rest; every other stage is switched off. No label is read: on validation its
    accuracy is an unbiased estimate, so its gain can be tested with the power of every example.
    RouteLLM calibrates its threshold the same way (the confidence quantile of the budgeted share)."""
    lm = lm_stage_index(stages)
    if lm is None:
        raise ConfigError("The budget-quantile point needs an LM stage.")
    conf = stages[first].conf
    n = len(conf)
    sorted_conf = np.sort(conf)

    def thresholds(k: int) -> list[float]:
        thr = [NEVER_TAKES] * len(stages)
        # Inputs with conf < tau go on: at most k of them (ties at tau stay with the small model).
        thr[first] = 0.0 if k <= 0 else (NEVER_TAKES if k >= n else float(sorted_conf[k]))
        thr[lm] = 0.0
        thr[-1] = 0.0
        return thr

    k = n if max_lm_rate is None else int(np.floor(max_lm_rate * n + 1e-9))
    while k > 0 and not _within_budget(stages, thresholds(k), max_lm_rate, max_cost_per_1k):
        k = int(k * 0.9)  # money caps: shrink the share until the spend fits
    return thresholds(k)


def _best_single(stages: Sequence[StageOutput], y: np.ndarray, w: np.ndarray, max_lm_rate: Optional[float],
                 max_cost_per_1k: Optional[float]) -> tuple[str, list[float]]:
    """The best single system within the budget, by validation score: the best small model alone,
    or the LM alone when the budget allows sending it every input."""
    n_st = len(stages)
    ssm = [0.0] * n_st
    lm = lm_stage_index(stages)
    if lm is None:
        return "ssm", ssm
    lm_alone = [NEVER_TAKES] * n_st
    lm_alone[lm] = 0.0
    lm_alone[-1] = 0.0
    if not _within_budget(stages, lm_alone, max_lm_rate, max_cost_per_1k):
        return "ssm", ssm
    if float((_correct(stages, lm_alone, y) * w).mean()) > float((_correct(stages, ssm, y) * w).mean()):
        return "lm", lm_alone
    return "ssm", ssm


def plain_why(rule: str, system: str, simplest: str = "ssm") -> str:
    """Why `rule` kept `system`, in plain words (every rule's choice says why, never its name)."""
    words = SYSTEM_WORDS.get(system.split(" ")[0], system)
    held_out = "on validation folds its thresholds were not tuned on"
    if system == simplest and rule in ("crossfit", "crossfit_keep_simpler", "crossfit_guarded"):
        return f"kept {words}: the other systems' gains {held_out.replace('its', 'their')} were within noise"
    if system == simplest and rule == "bootstrap_keep_simpler":
        return f"kept {words}: the cascade's gain on validation was within noise"
    return {
        "insample": f"kept {words}: the best validation accuracy within the LM budget (its thresholds were tuned and "
                    "scored on the same validation inputs, so that figure is optimistic)",
        "budget_quantile": f"kept {words}: the LM budget spent on the inputs the best small model is least sure of",
        "crossfit": f"kept {words}: it scored best {held_out}",
        "crossfit_keep_simpler": f"kept {words}: it gained beyond noise over simpler systems {held_out}",
        "crossfit_guarded": f"kept {words}: it gained beyond noise {held_out}",
        "bootstrap_keep_simpler": f"kept {words}: its gain on validation was beyond noise",
        "shrink": f"kept {words}, with thresholds moved part of the way towards the simplest system's",
    }.get(rule, f"kept {words}")


def choose_operating_point(
    stages: Sequence[StageOutput],
    y: Optional[np.ndarray],
    candidates: dict[str, Sequence[int]],
    *,
    rule: str = HONEST_DEFAULT,
    max_lm_rate: Optional[float] = None,
    max_cost_per_1k: Optional[float] = None,
    k_folds: int = 5,
    n_boot: int = 1000,
    quantile: float = 0.05,
    budget_quantile_level: float = BUDGET_QUANTILE_LEVEL,
    probe: Optional[dict[str, np.ndarray]] = None,
    shrink: float = 0.5,
    seed: int = 0,
    metric: str = "accuracy",
) -> HonestChoice:
    """The reported operating point of a cascade, by one of `HONEST_RULES`.

    `candidates` maps system names to the stage indices they switch on, simplest first, the full
    system last (e.g. ``{"ssm": [0], "specific_layer": [0, 1, 3], "full": [0, 1, 2, 3]}``).

    * ``budget_guarded`` (default): the baseline is the best single system within the budget (the
      small model alone, or the LM alone when the budget allows 100%). The ``budget_quantile``
      point (below) replaces it when the paired bootstrap of its per-example gain (non-zero only on
      the inputs it sends to the LM) has its `budget_quantile_level` point above 0. A tuned candidate
      (cross-fitted as in ``crossfit_guarded``) replaces the result only when its cross-fitted
      per-example gain over it is beyond noise in the same test.
    * ``budget_quantile``: the LM budget spent on the best small model's least confident inputs,
      unguarded (`budget_quantile_thresholds`).
    * ``insample``: the full system tuned on all of validation (issue 9's "old" behaviour).
    * ``crossfit``: every candidate's thresholds are tuned on k-1 stratified folds and scored on
      the held-out fold; the best cross-fitted accuracy wins (ties: simpler), refitted on all of
      validation.
    * ``crossfit_keep_simpler``: as ``crossfit``, but a more complex candidate replaces a simpler
      one only when its cross-fitted gain is beyond noise (the bootstrap test above).
    * ``crossfit_guarded``: candidates whose cross-fitted gain over the simplest is beyond noise are
      eligible; the best cross-fitted one wins (ties: simpler).
    * ``bootstrap_keep_simpler``: the full system tuned on all of validation, kept only if its
      in-sample gain over the simplest is beyond noise.
    * ``shrink``: the full system's thresholds moved a share `shrink` of the way towards the
      simplest candidate's (within the budget, else the simplest).

    `probe` (``budget_guarded`` only): training inputs from the region the budget-quantile point
    sends to the LM, drawn at random, with their labels (``y``), the best small model's out-of-fold
    answers (``ssm_label``) and the LM's (``lm_label``): their paired differences join the
    validation inputs that point sends to the LM in its guard (`RunConfig.probe_lm`).

    ``metric="macro_f1"``: thresholds maximise balanced accuracy and every score and gain compares
    balanced-weighted per-example correctness. `HonestChoice`'s accuracies stay plain accuracy.

    Graded stages (`StageOutput.graded`, e.g. summaries scored by ROUGE-L): `y` may be None; every
    score, gain and bootstrap is over per-example quality instead of correctness, the rules unchanged.
    """
    if rule not in HONEST_RULES:
        raise ConfigError(f"Unknown operating-point rule {rule!r}; choose one of {', '.join(HONEST_RULES)}.")
    if y is None and as_stack(stages).graded:  # graded stages: no labels, plain folds
        y = np.zeros(len(stages[0]), dtype=np.int64)
        metric, probe = "accuracy", None
    y = check_labels(y, n=len(stages[0]))
    names = list(candidates)
    full, simplest = names[-1], names[0]
    stack = as_stack(stages, y)
    w = metric_weights(y, metric)
    w = np.ones(len(y)) if w is None else w

    def finish(system: str, thr: list[float], estimate: float, detail: dict[str, Any]) -> HonestChoice:
        m = stack.evaluate(thr)
        detail.setdefault("why", plain_why(rule, system, simplest))
        return HonestChoice(rule, system, [float(t) for t in thr], m.accuracy, estimate, m.lm_call_rate, detail)

    def fitted(system: str) -> list[float]:
        return _tune_kept(stages, y, candidates[system], max_lm_rate, max_cost_per_1k, metric)

    def gain_lo(a: np.ndarray, b: np.ndarray, level: float = quantile) -> float:
        """The `level` point of the bootstrap of mean(a - b): > 0 means a gain beyond noise."""
        return float(np.quantile(paired_bootstrap(a, b, n_boot=n_boot, seed=seed), level))

    if rule == "insample":
        return finish(full, fitted(full), float("nan"), {})
    if rule in ("budget_quantile", "budget_guarded"):
        q_thr = budget_quantile_thresholds(stages, max_lm_rate=max_lm_rate, max_cost_per_1k=max_cost_per_1k,
                                           first=candidates[simplest][0])
        if rule == "budget_quantile":
            return finish("budget_quantile", q_thr, stack.evaluate(q_thr).accuracy, {})
        return _budget_guarded(stages, y, w, candidates, q_thr, finish, gain_lo, max_lm_rate=max_lm_rate,
                               max_cost_per_1k=max_cost_per_1k, k_folds=k_folds, seed=seed, metric=metric,
                               level=budget_quantile_level, probe=probe)
    if rule in ("bootstrap_keep_simpler", "shrink"):
        thr_full, thr_simple = fitted(full), fitted(simplest)
        if rule == "bootstrap_keep_simpler":
            lo = gain_lo(_correct(stages, thr_full, y) * w, _correct(stages, thr_simple, y) * w)
            return finish(full if lo > 0 else simplest, thr_full if lo > 0 else thr_simple, float("nan"),
                          {"gain_quantile": lo})
        # Interpolate between routing-equivalent thresholds inside each stage's observed
        # confidences ("takes all" = its lowest, "takes none" = just above its highest), so that
        # halfway means halfway in what the stage takes, not halfway to 0.
        def inside(t: float, conf: np.ndarray) -> float:
            return float(min(max(t, conf.min()), conf.max() + 1e-9))

        thr = [float(inside(s_, st.conf) + shrink * (inside(f, st.conf) - inside(s_, st.conf)))
               for f, s_, st in zip(thr_full, thr_simple, stages)]
        thr[-1] = 0.0
        if not _within_budget(stages, thr, max_lm_rate, max_cost_per_1k):
            return finish(simplest, thr_simple, float("nan"), {"over_budget": True})
        return finish(f"{full} (shrunk {shrink:g})", thr, float("nan"), {})
    folds = stratified_folds(y, k_folds, seed)
    hits = {s: crossfit_correct(stages, y, candidates[s], folds=folds, max_lm_rate=max_lm_rate,
                                max_cost_per_1k=max_cost_per_1k, metric=metric) for s in names}
    correct = {s: h * w for s, h in hits.items()}
    scores = {s: float(c.mean()) for s, c in correct.items()}
    best = simplest
    if rule == "crossfit_guarded":
        eligible = [simplest] + [s for s in names[1:] if gain_lo(correct[s], correct[simplest]) > 0]
        best = max(eligible, key=lambda s: (scores[s], -names.index(s)))
    for s in names[1:] if rule != "crossfit_guarded" else []:
        if rule == "crossfit":
            if scores[s] > scores[best] + 1e-12:
                best = s
        elif gain_lo(correct[s], correct[best]) > 0:
            best = s
    accuracies = {s: float(h.mean()) for s, h in hits.items()}
    return finish(best, fitted(best), accuracies[best], {"crossfit_accuracy": accuracies, "crossfit_score": scores,
                                                         "metric": metric})


def _budget_guarded(stages: Sequence[StageOutput], y: np.ndarray, w: np.ndarray, candidates: dict[str, Sequence[int]],
                    q_thr: list[float], finish: Any, gain_lo: Any, *, max_lm_rate: Optional[float],
                    max_cost_per_1k: Optional[float], k_folds: int, seed: int, metric: str,
                    level: float, probe: Optional[dict[str, np.ndarray]] = None) -> HonestChoice:
    """The ``budget_guarded`` rule (see `choose_operating_point`); `finish` and `gain_lo` are its
    helpers (the choice as a `HonestChoice`; the bootstrap's lower point of a paired gain)."""
    names = list(candidates)
    base_name, base_thr = _best_single(stages, y, w, max_lm_rate, max_cost_per_1k)
    hits = {names[0]: _correct(stages, [0.0] * len(stages), y), base_name: _correct(stages, base_thr, y),
            "budget_quantile": _correct(stages, q_thr, y)}
    gain = (hits["budget_quantile"].astype(float) - hits[base_name]) * w
    evidence = ""
    if probe is not None and len(probe["y"]) and base_name == names[0]:
        # Pool the paired differences on the inputs the point sends to the LM (elsewhere it is the
        # small model alone): validation's and the probed training inputs' (out of fold).
        sent = as_stack(stages).route(q_thr).answered_by >= lm_stage_index(stages)
        class_w = np.zeros(int(max(y.max(initial=0), probe["y"].max(initial=0))) + 1)
        class_w[y] = w
        py = np.asarray(probe["y"])
        probe_gain = ((probe["lm_label"] == py).astype(float) - (probe["ssm_label"] == py)) * class_w[py]
        gain = np.concatenate([gain[sent], probe_gain])
        evidence = f" and {len(py)} probed training inputs"
    q_lo = gain_lo(gain, np.zeros_like(gain), level)
    cur = "budget_quantile" if q_lo > 0 else base_name
    # Tuned candidates, cross-fitted (the simplest, the small model alone, is the baseline's twin).
    folds = stratified_folds(y, k_folds, seed)
    tuned = [s for s in names[1:] if s not in hits]
    for s in tuned:
        hits[s] = crossfit_correct(stages, y, candidates[s], folds=folds, max_lm_rate=max_lm_rate,
                                   max_cost_per_1k=max_cost_per_1k, metric=metric)
    scores = {s: float((h * w).mean()) for s, h in hits.items()}
    tuned_lo = {s: gain_lo(hits[s] * w, hits[cur] * w) for s in tuned}
    if cur == "lm":  # the LM alone: a cascade that scores as well calls it less, so it wins ties
        winners = [s for s in tuned if scores[s] >= scores["lm"] - 1e-12]
    else:
        winners = [s for s in tuned if tuned_lo[s] > 0]
    detail: dict[str, Any] = {"estimates": {s: float(h.mean()) for s, h in hits.items()}, "crossfit_score": scores,
                              "baseline": base_name, "budget_quantile_gain_lo": q_lo, "tuned_gain_lo": tuned_lo,
                              "metric": metric, "crossfit_accuracy": {s: float(hits[s].mean()) for s in tuned},
                              "probe_pairs": 0 if probe is None else int(len(probe["y"]))}
    if winners:
        best = max(winners, key=lambda s: (scores[s], -names.index(s)))
        how = "scored as well as the LM alone with fewer LM calls" if cur == "lm" else \
            f"beat {SYSTEM_WORDS[cur]} beyond noise"
        detail["why"] = (f"kept {SYSTEM_WORDS.get(best, best)}: on validation folds its thresholds were not tuned "
                         f"on, it {how}")
        return finish(best, _tune_kept(stages, y, candidates[best], max_lm_rate, max_cost_per_1k, metric),
                      detail["estimates"][best], detail)
    if cur == "budget_quantile":
        detail["why"] = (f"kept {SYSTEM_WORDS[cur]}: where it is unsure the LM was right more often than it, beyond "
                         f"noise on validation{evidence}; tuned thresholds gained nothing beyond noise over that")
        return finish(cur, q_thr, detail["estimates"][cur], detail)
    detail["why"] = (f"kept {SYSTEM_WORDS[cur]}: neither the LM on the inputs it is least sure of nor a tuned cascade "
                     f"gained beyond noise on validation{evidence}")
    return finish(cur, base_thr, detail["estimates"][cur], detail)
