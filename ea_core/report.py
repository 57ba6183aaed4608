"""The results table of a run, in the shape of the paper's Tables 1, 3 and 4.

Rows: each SSM alone (named by its SPEC), the LM alone (``lm``), the Specific Layer with the
LM behind it (``specific_layer``), EA with both layers (``ea``), EA(Full) (``ea_full``) when
run, the alternative order LM-before-ASSM (``ea_lm_first``) when the LM gives confidences, and
the ``oracle`` (right if any EA stage is right). Thresholds are tuned on validation for the
run's LM budget; every ``test_*`` number is on the test split, ``val_accuracy`` beside it shows
when tuning overfits, and ``val_accuracy_ci`` / ``test_accuracy_ci`` are 95% bootstrap intervals.
A routed row's ``val_accuracy_crossfit`` is its accuracy on validation folds its thresholds were
not tuned on: a less optimistic reading than ``val_accuracy``.

The reported operating point of each routed system is chosen by `ea_core.operating_point`'s rule
(the run's ``operating_point``); each routed row says which system the rule kept, why, and what every
candidate the rule weighed scored on validation (``candidates``; cross-fitted for tuned thresholds,
never test). bench/bench_honest.py prints what each rule gives on test.

Imbalanced labels: every row with predictions carries ``val_macro_f1`` / ``macro_f1`` (test) and
``val_recall`` / ``test_recall`` (per-class recall, label -> share of that class's examples
answered right; scikit-learn's ``recall_score``), so a system that always answers the majority
shows a 0 there whatever its accuracy. Thresholds are tuned for the run's selection metric
(`RunConfig.metric_for`: accuracy, or macro-F1 on imbalanced labels; recorded in tuning.json).
"""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any, Optional, Sequence

import numpy as np

from ea_core.events import ProgressCallback, ProgressEvent
from ea_core.llm.base import FAILED, UNPARSEABLE
from ea_core.metrics import bootstrap_ci, macro_f1
from ea_core.operating_point import HONEST_DEFAULT, SYSTEM_WORDS, choose_operating_point
from ea_core.router import StageOutput, evaluate, route
from ea_core.runfolder import write_json
from ea_core.runstate import RunState, StageRecord
from ea_core.tuning import pareto_front

# Printed columns: (key, header, format)
TABLE_COLUMNS = (
    ("system", "system", "{}"),
    ("val_accuracy", "val acc", "{:.2%}"),
    ("test_accuracy", "test acc", "{:.2%}"),
    ("val_macro_f1", "val macro-F1", "{:.3f}"),
    ("macro_f1", "test macro-F1", "{:.3f}"),
    ("lm_call_rate", "LM calls %", "{:.1%}"),
    ("train_time_s", "train s", "{:.1f}"),
    ("peak_rss_mb", "peak MB", "{:.0f}"),
    ("peak_gpu_mb", "GPU MB", "{:.0f}"),  # only when a small model trained on a GPU
    ("lm_calls", "LM calls", "{}"),
    ("lm_cost_usd", "LM $", "{:.4f}"),
)


def ssm_rows(records: Sequence[StageRecord], y_test: np.ndarray) -> list[dict[str, Any]]:
    """One row per small model alone (the Specific Layer's members, in rank order)."""
    rows = []
    for rec in records:
        pred = rec.outputs()["test"].argmax(1)
        m = evaluate([StageOutput(rec.name, pred, np.ones(len(pred)))], [0.0], y_test)
        rows.append({
            "system": rec.name, "val_accuracy": rec.val_accuracy, "test_accuracy": rec.test_accuracy,
            "macro_f1": m.macro_f1, "lm_call_rate": 0.0, "train_time_s": rec.train_time_s,
            "peak_rss_mb": rec.peak_rss_mb, "lm_calls": 0, "lm_tokens": 0, "lm_cost_usd": 0.0,
            **({"peak_gpu_mb": rec.peak_gpu_mb} if rec.peak_gpu_mb is not None else {}),
        })
    return rows


def routed_row(
    system: str,
    val_stages: list[StageOutput],
    test_stages: list[StageOutput],
    y_val: np.ndarray,
    y_test: np.ndarray,
    thresholds: Sequence[float],
    records: Sequence[StageRecord],
    lm_tokens: Optional[np.ndarray] = None,
) -> dict[str, Any]:
    """The cascade at `thresholds` (chosen on validation), scored on validation and test."""
    thresholds = list(thresholds)
    val = evaluate(val_stages, thresholds, y_val)
    test = evaluate(test_stages, thresholds, y_test)
    n = len(y_test)
    lm_calls, tokens = 0, 0
    if any(s.is_lm for s in test_stages):
        reached = lm_reached(route(test_stages, thresholds).answered_by, test_stages)
        lm_calls = int(reached.sum())
        tokens = int(lm_tokens[reached].sum()) if lm_tokens is not None else 0
    return {
        "system": system,
        "val_accuracy": val.accuracy,
        "test_accuracy": test.accuracy,
        "macro_f1": test.macro_f1,
        "lm_call_rate": test.lm_call_rate,
        "val_lm_call_rate": val.lm_call_rate,
        "stage_shares": {s.name: share for s, share in zip(test_stages, test.shares)},
        "stage_accuracy": {s.name: acc for s, acc in zip(test_stages, test.stage_accuracy)},
        "thresholds": {s.name: t for s, t in zip(test_stages, thresholds)},
        "oracle_accuracy": test.oracle_accuracy,
        "train_time_s": float(sum(r.train_time_s for r in records)),
        "peak_rss_mb": float(max((r.peak_rss_mb for r in records), default=0.0)),
        **({"peak_gpu_mb": float(max(r.peak_gpu_mb for r in records if r.peak_gpu_mb is not None))}
           if any(r.peak_gpu_mb is not None for r in records) else {}),
        "lm_calls": lm_calls,
        "lm_tokens": tokens,
        "lm_cost_usd": test.cost_per_1k_usd * n / 1000.0,
        "cost_per_1k_usd": test.cost_per_1k_usd,
    }


def lm_reached(answered_by: np.ndarray, stages: Sequence[StageOutput]) -> np.ndarray:
    """Inputs for which the LM was called: those that reached the first LM stage."""
    first_lm = next(i for i, s in enumerate(stages) if s.is_lm)
    return answered_by >= first_lm


#: Routed systems: name -> stage layers in routing order (see `RunState.stage_outputs`).
SYSTEM_LAYERS: dict[str, tuple[str, ...]] = {
    "specific_layer": ("ssm", "lm"),
    "ea": ("ssm", "assm", "lm"),
    "ea_lm_first": ("ssm", "lm", "assm"),
    "ea_full": ("ssm", "assm_full", "lm"),
    "ea_learned": ("learned", "lm"),  # the learned deferral router (RunConfig.router "learned")
}


def routed_systems(state: RunState) -> dict[str, tuple[str, ...]]:
    """The routed systems this run can score (which depends on what it trained and what the LM gives)."""
    if not state.lm_answers:
        return {}
    out = {"specific_layer": SYSTEM_LAYERS["specific_layer"], "ea": SYSTEM_LAYERS["ea"]}
    if state.assms and state.lm_gives_confidence:
        out["ea_lm_first"] = SYSTEM_LAYERS["ea_lm_first"]
    if state.assm_full:
        out["ea_full"] = SYSTEM_LAYERS["ea_full"]
    if state.learned:
        out["ea_learned"] = SYSTEM_LAYERS["ea_learned"]
    return out


def system_candidates(state: RunState, layers: tuple[str, ...]) -> dict[str, list[int]]:
    """Simpler systems inside a routed system's cascade, simplest first, as the stage indices each
    switches on: the best small model alone, the Specific Layer (SSMs + LM), then all stages."""
    names = state.stage_names(layers)
    kinds = [layer for layer in layers for _ in state.stage_names((layer,))]
    ssm = [i for i, k in enumerate(kinds) if k in ("ssm", "learned")]  # the learned stage answers as the best SSM
    out: dict[str, list[int]] = {"ssm": ssm[:1]}
    if "lm" in kinds and len(names) > len(ssm) + 1:
        out["specific_layer"] = ssm + [kinds.index("lm")]
    out["full"] = list(range(len(names)))
    return out


def ea_candidates(state: RunState) -> dict[str, list[int]]:
    """`system_candidates` of EA (SSMs -> ASSMs -> LM)."""
    return system_candidates(state, SYSTEM_LAYERS["ea"])


def candidate_estimates(detail: dict[str, Any]) -> Optional[dict[str, float]]:
    """What each system an operating-point rule weighed scored on validation (cross-fitted for tuned
    thresholds, in-sample for points that read no label), by name; None when the rule made none."""
    est = detail.get("estimates") or detail.get("crossfit_accuracy")
    return None if est is None else {k: float(v) for k, v in est.items()}


def probe_pairs(state: RunState) -> Optional[dict[str, np.ndarray]]:
    """The probed training inputs (`RunConfig.probe_lm`) as `choose_operating_point` takes them."""
    if state.probe is None:
        return None
    return {"y": state.task.train.labels[state.probe["index"]], "ssm_label": state.probe["ssm_label"],
            "lm_label": state.probe["lm_label"]}


def tune_systems(state: RunState, callback: Optional[ProgressCallback] = None,
                 rule: Optional[str] = None) -> dict[str, dict[str, Any]]:
    """Thresholds for every routed system within the run's LM budget, chosen on validation by
    `rule` (default: the config's ``operating_point`` if it has one, else `HONEST_DEFAULT`; see the
    module docstring for why; ``insample`` is the old: best validation accuracy)."""
    cfg, y_val = state.config, state.task.val.labels
    rule = rule or getattr(cfg, "operating_point", None) or HONEST_DEFAULT
    metric = cfg.metric_for(state.task)
    systems = routed_systems(state)
    out: dict[str, dict[str, Any]] = {}
    for i, (system, layers) in enumerate(systems.items()):
        stages = state.stage_outputs("val", layers)
        c = choose_operating_point(stages, y_val, system_candidates(state, layers), rule=rule,
                                   max_lm_rate=cfg.max_lm_rate, max_cost_per_1k=cfg.max_cost_per_1k, seed=cfg.seed,
                                   metric=metric, probe=probe_pairs(state))
        m = evaluate(stages, c.thresholds, y_val)
        val = {"thresholds": c.thresholds, "accuracy": m.accuracy, "lm_call_rate": m.lm_call_rate,
               "cost_per_1k_usd": m.cost_per_1k_usd, "method": f"rule {rule}: {c.system}"}
        out[system] = {"layers": list(layers), "stages": [s.name for s in stages], "thresholds": c.thresholds,
                       "val": val, "rule": rule, "chosen": c.system, "selection_metric": metric,
                       "crossfit_accuracy": None if np.isnan(c.crossfit_accuracy) else c.crossfit_accuracy,
                       "candidates_crossfit_accuracy": c.detail.get("crossfit_accuracy"),
                       "candidates": candidate_estimates(c.detail), "why": c.detail.get("why")}
        if callback is not None:
            callback(ProgressEvent(stage="tune", step=i + 1, total=len(systems), val_accuracy=m.accuracy,
                                   message=f"{system}: val acc {m.accuracy:.1%}, LM calls {m.lm_call_rate:.1%}: "
                                           f"{SYSTEM_WORDS.get(c.system, c.system)}"))
    return out


def routed_note(chosen: str) -> Optional[str]:
    """The plain-words note of a routed row whose tuning predates the rules' own reasons."""
    if chosen == "full":
        return None
    kept = "the best small model alone" if chosen == "ssm" else "the Specific Layer"
    return f"kept {kept}: the other stages gained nothing beyond noise on validation"


def build_rows(state: RunState, tuning: Optional[dict[str, dict[str, Any]]] = None) -> list[dict[str, Any]]:
    """Every row of the results table for a finished (or partial) run.

    Routed systems use `tuning` (default: the run's, else tuned now on validation)."""
    task = state.task
    y_val, y_test = task.val.labels, task.test.labels
    rows = ssm_rows(state.ssms, y_test)
    if not state.lm_answers:
        return add_accuracy_cis(state, rows, {})
    tuning = tuning or state.tuning or tune_systems(state)
    lm_val, lm_test = state.stage_outputs("val", ("lm",)), state.stage_outputs("test", ("lm",))
    lm_m_val = evaluate(lm_val, [0.0], y_val)
    lm_m_test = evaluate(lm_test, [0.0], y_test)
    tokens = state.lm_answers["test"]["tokens"]
    rows.append({
        "system": "lm", "val_accuracy": lm_m_val.accuracy, "test_accuracy": lm_m_test.accuracy,
        "macro_f1": lm_m_test.macro_f1, "lm_call_rate": 1.0, "train_time_s": 0.0, "peak_rss_mb": 0.0,
        "lm_calls": len(y_test), "lm_tokens": int(tokens.sum()),
        "lm_cost_usd": float(state.lm_answers["test"]["cost_usd"].sum()),
        "lm_unparseable_rate": float(np.mean(state.lm_answers["test"]["label"] == UNPARSEABLE)),
        "lm_failed_rate": float(np.mean(state.lm_answers["test"]["label"] == FAILED)),
    })
    records = {layer: state.layer_records(layer) for layer in ("ssm", "assm", "assm_full", "learned")}
    for system, layers in routed_systems(state).items():
        used = [r for layer in layers if layer != "lm" for r in records[layer]]
        row = routed_row(system, state.stage_outputs("val", layers), state.stage_outputs("test", layers),
                         y_val, y_test, tuning[system]["thresholds"], used, tokens)
        if system == "ea" and not state.assms:
            row["note"] = "no augmented SSM was trained (too few underfit examples): EA = the Specific Layer"
        if tuning[system].get("crossfit_accuracy") is not None:
            row["val_accuracy_crossfit"] = tuning[system]["crossfit_accuracy"]  # on folds not tuned on
        why = tuning[system].get("why") or routed_note(tuning[system].get("chosen", "full"))
        if why:
            row["note"] = ((row["note"] + "; ") if "note" in row else "") + why
        for key in ("chosen", "candidates"):
            if tuning[system].get(key) is not None:
                row[key] = tuning[system][key]
        rows.append(row)
    ea = next(r for r in rows if r["system"] == "ea")
    learned = next((r for r in rows if r["system"] == "ea_learned"), None)
    if learned is not None:
        learned.update(learned_vs_cascade(state, tuning))
        evidence = learned["versus_cascade"]["evidence"]
        learned["note"] = ((learned["note"] + "; ") if learned.get("note") else "") + (
            f"level with or ahead of the cascade (ea) on {evidence}: the run exports this row" if learned["beats_cascade"]
            else f"below the cascade (ea) on {evidence}: the run exports ea")
    oracle = {}
    for split, y in (("val", y_val), ("test", y_test)):
        stages = state.stage_outputs(split)
        oracle[split] = evaluate(stages, [0.0] * len(stages), y).oracle_accuracy
    rows.append({"system": "oracle", "val_accuracy": oracle["val"], "test_accuracy": oracle["test"],
                 "lm_call_rate": 1.0, "train_time_s": ea["train_time_s"],
                 "note": "right if any EA stage is right: the ceiling of routing"})
    return add_accuracy_cis(state, rows, tuning)


def learned_vs_cascade(state: RunState, tuning: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """Which of the learned router (``ea_learned``) and the cascade (``ea``) a run exports, each at
    its tuned thresholds: the learned one unless it is behind on validation's inputs pooled with the
    router-label training inputs (`learned_router.paired_vs_cascade`, out of fold; none without
    `--router-labels`). Test decides nothing. One validation split of a few hundred inputs let a
    learned router that loses a point on test through (bench_learned_router.py: drug reviews, an LM
    better on two classes); the pooled evidence keeps such a run on the cascade."""
    val = row_hits(state, "ea_learned", "val", tuning).astype(np.int64) - \
        row_hits(state, "ea", "val", tuning).astype(np.int64)
    train = np.asarray(tuning["ea_learned"].get("train_vs_cascade", []), dtype=np.int64)
    pooled = np.concatenate([val, train])
    diff = float(pooled.mean()) if len(pooled) else 0.0
    evidence = f"validation ({len(val)} inputs)"
    if len(train):
        evidence += f" and {len(train)} router-label training inputs"
    return {"beats_cascade_on_val": bool(val.mean() >= 0) if len(val) else True,
            "beats_cascade": diff >= 0.0,
            "versus_cascade": {"accuracy_diff": diff, "val_inputs": int(len(val)), "train_inputs": int(len(train)),
                               "evidence": evidence}}


def row_pred(state: RunState, system: str, split: str, tuning: dict[str, dict[str, Any]]) -> Optional[np.ndarray]:
    """Per-example answers of a results row's system on a split (None for the oracle, which has
    no single answer, or an unknown system). Negative answers (LM failures) count as misses."""
    records = state.records()
    if system in records:
        return records[system].outputs()[split].argmax(1)
    if system == "lm":
        return state.lm_answers[split]["label"]
    if system in tuning and system != "oracle":
        return route(state.stage_outputs(split, tuple(tuning[system]["layers"])), tuning[system]["thresholds"]).pred
    return None


def row_hits(state: RunState, system: str, split: str, tuning: dict[str, dict[str, Any]]) -> Optional[np.ndarray]:
    """Per-example correctness of a results row's system on a split (None for an unknown system)."""
    y = state.task.split(split).labels
    if system == "oracle":
        stages = state.stage_outputs(split)
        return np.any([s.pred == y for s in stages], axis=0)
    pred = row_pred(state, system, split, tuning)
    return None if pred is None else pred == y


def class_recall(y: np.ndarray, hits: np.ndarray, labels: Sequence[str]) -> dict[str, Optional[float]]:
    """Recall of each label (None for a label with no example in `y`), from per-example hits."""
    from sklearn.metrics import recall_score

    y = np.asarray(y)
    counts = np.bincount(y, minlength=len(labels))
    pred = np.where(hits, y, -1)  # a miss is an answer that is no label: recall only sees hits
    rec = recall_score(y, pred, labels=list(range(len(labels))), average=None, zero_division=0.0) if y.size \
        else np.zeros(len(labels))
    return {name: (float(r) if counts[i] else None) for i, (name, r) in enumerate(zip(labels, rec))}


def add_accuracy_cis(state: RunState, rows: list[dict[str, Any]], tuning: dict[str, dict[str, Any]],
                     n_boot: int = 1000) -> list[dict[str, Any]]:
    """``val_accuracy_ci`` / ``test_accuracy_ci``: 95% bootstrap intervals [lo, hi] of each row's
    accuracy (seeded by the run's seed), so a gap within noise reads as one; and beside them each
    row's per-class recall (``val_recall`` / ``test_recall``) and validation macro-F1."""
    labels = state.task.labels
    for row in rows:
        for split in ("val", "test"):
            hits = row_hits(state, row["system"], split, tuning)
            if hits is not None:
                row[f"{split}_accuracy_ci"] = bootstrap_ci(hits, n_boot=n_boot, seed=state.config.seed)
                row[f"{split}_recall"] = class_recall(state.task.split(split).labels, hits, labels)
        pred = row_pred(state, row["system"], "val", tuning)
        if pred is not None:
            row["val_macro_f1"] = macro_f1(state.task.val.labels, pred, len(labels))
    return rows


def pareto_table(state: RunState, layers: tuple[str, ...] = ("ssm", "assm", "lm")) -> list[dict[str, Any]]:
    """The validation Pareto front (accuracy vs LM calls) with each point's test figures beside it."""
    val, test = state.stage_outputs("val", layers), state.stage_outputs("test", layers)
    out = []
    for p in pareto_front(val, state.task.val.labels):
        t = evaluate(test, list(p.thresholds), state.task.test.labels)
        out.append({"thresholds": list(map(float, p.thresholds)), "val_accuracy": p.accuracy,
                    "val_lm_call_rate": p.lm_call_rate, "test_accuracy": t.accuracy,
                    "test_lm_call_rate": t.lm_call_rate})
    return out


def write_results(rows: list[dict[str, Any]], out_dir: Path) -> None:
    """results.json (``{"rows": [...]}``) and results.csv (nested columns as JSON text)."""
    write_json(out_dir / "results.json", {"rows": rows})
    keys: list[str] = []
    for row in rows:
        keys += [k for k in row if k not in keys]
    with open(out_dir / "results.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=keys)
        w.writeheader()
        for row in rows:
            w.writerow({k: json.dumps(v) if isinstance(v, (dict, list)) else v for k, v in row.items()})


def format_table(rows: Sequence[dict[str, Any]], columns: Sequence[tuple[str, str, str]] = TABLE_COLUMNS) -> str:
    """A plain-text table of `columns` ((key, header, format); by default the main ones), those that
    some row has (what the CLI prints)."""
    cols = [c for c in columns if any(c[0] in r for r in rows)]
    cells = [[h for _, h, _ in cols]]
    for r in rows:
        cells.append([fmt.format(r[k]) if r.get(k) is not None else "-" for k, _, fmt in cols])
    widths = [max(len(row[i]) for row in cells) for i in range(len(cols))]
    lines = ["  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(row, widths)))
             for row in cells]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def write_report(state: RunState) -> list[dict[str, Any]]:
    """results.json/.csv and, with an LM, the validation Pareto front (pareto.json); returns the rows."""
    rows = build_rows(state)
    out_dir = state.folder.root
    write_results(rows, out_dir)
    if state.lm_answers:
        write_json(out_dir / "pareto.json", {"stages": [s.name for s in state.stage_outputs("val")],
                                             "points": pareto_table(state)})
    return rows
