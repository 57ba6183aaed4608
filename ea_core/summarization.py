"""Easy Adaptation for summarization, end to end: small summarizers, the LM, mining (Eq. 5 for
generation), the augmented layer, routing and the results table in the shape of the paper's Table 2.

The cascade is the classification one with quality = ROUGE-L F1: every stage gives a summary and a
confidence (calibrated to expected ROUGE-L out of fold), the router thresholds the confidence, and
tuning, the honest operating-point rule and the bootstrap intervals all work on (confidence,
quality) arrays (`ea_core.router.StageOutput.graded`). The engine never shows the router a model.
"""

from __future__ import annotations

import copy
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional, Sequence

import numpy as np

from ea_core.calibration import apply_quality_map, fit_quality_map, quality_calibration
from ea_core.data.summaries import SummarySplit, SummaryTask
from ea_core.errors import ConfigError
from ea_core.events import EventKind, ProgressCallback, ProgressEvent
from ea_core.llm.summarize import SummaryLM
from ea_core.metrics import bootstrap_ci
from ea_core.models.memory import EmbeddingMemory
from ea_core.models.summarizers import ExtractiveSummarizer, LeadSummarizer, Summaries
from ea_core.operating_point import HONEST_DEFAULT, choose_operating_point
from ea_core.report import format_table
from ea_core.resources import ResourceMeter
from ea_core.rouge import ROUGE_KEYS, RougeScores, rouge
from ea_core.router import StageOutput, StageStack
from ea_core.tuning import pareto_front

#: The small summarizers a run trains by default. ``finetune:MODEL`` (seq2seq) and ``causal:smollm2``
#: (the packaged SmolLM2 with LoRA) are opt-in: on 2 CPU cores the causal one takes tens of minutes
#: on demo:aclsum (docs/SUMMARY_CONFIDENCE.md), past the demo's 10-minute budget.
SUMMARY_SSMS = ("extractive", "lead")



@dataclass
class StageRun:
    """One stage's outputs on validation and test: summaries, raw and calibrated confidence, ROUGE."""

    name: str
    kind: str  # "ssm", "assm", "lm"
    val_texts: list[str]
    test_texts: list[str]
    val_raw: np.ndarray
    test_raw: np.ndarray
    val_rouge: RougeScores
    test_rouge: RougeScores
    val_conf: np.ndarray = field(default_factory=lambda: np.zeros(0))
    test_conf: np.ndarray = field(default_factory=lambda: np.zeros(0))
    test_cost: Optional[np.ndarray] = None
    val_cost: Optional[np.ndarray] = None
    #: The raw-confidence -> expected ROUGE-L map fitted on all of validation (what a bundle applies).
    quality_map: tuple[list[float], list[float]] = ([0.0, 1.0], [0.0, 1.0])
    #: Mean |confidence - ROUGE-L| on validation with maps fitted out of fold (how far to trust it).
    calibration_mae: float = float("nan")

    def stage(self, split: str) -> StageOutput:
        """The router's view: confidence and ROUGE-L quality, nothing else."""
        conf = self.val_conf if split == "val" else self.test_conf
        q = (self.val_rouge if split == "val" else self.test_rouge).rougeL
        cost = self.val_cost if split == "val" else self.test_cost
        return StageOutput.graded(self.name, conf, q, is_lm=self.kind == "lm", cost_usd=cost)


@dataclass
class SummarizationResult:
    """A finished run: results rows (Table 2 shape), per-stage time and memory, mining counters."""

    rows: list[dict[str, Any]]
    timings: list[dict[str, Any]]
    mining: dict[str, Any]
    stages: list[StageRun]
    lm: str
    warnings: list[str]
    task_kind: str = "summarization"
    #: The trained small and augmented summarizers by stage name (for a bundle; not in results.json).
    models: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {"task_kind": self.task_kind, "rows": self.rows, "timings": self.timings, "mining": self.mining,
                "lm": self.lm, "warnings": self.warnings}


def make_summarizer(spec: str, *, seed: int, memory: EmbeddingMemory) -> Any:
    """A small summarizer from its spec: ``extractive``, ``lead``, ``finetune:MODEL`` (seq2seq),
    ``causal:MODEL`` (a causal LM with LoRA; ``causal`` alone or ``causal:smollm2`` is the packaged
    SmolLM2-135M-Instruct) or ``causal-full:MODEL`` (full fine-tuning). GPU when present, else CPU."""
    if spec == "lead":
        return LeadSummarizer()
    if spec == "extractive" or spec.startswith("extractive:"):
        enc = spec.split(":", 1)[1] if ":" in spec else "minilm"
        return ExtractiveSummarizer(enc, seed=seed, memory=memory, name=spec)
    if spec.startswith("finetune:"):
        from ea_core.models.seq2seq import Seq2SeqSummarizer

        return Seq2SeqSummarizer(spec.split(":", 1)[1], seed=seed)
    if spec in ("causal", "causal-full") or spec.startswith(("causal:", "causal-full:")):
        from ea_core.models.causal_summarizer import PACKAGED, CausalSummarizer

        kind, _, model = spec.partition(":")
        return CausalSummarizer(model or PACKAGED, seed=seed, lora=kind == "causal", name=spec)
    raise ConfigError(f"Unknown summarization model {spec!r}; choose extractive, lead, finetune:MODEL, "
                      "causal:MODEL (LoRA) or causal-full:MODEL.")


def _scores(out: Summaries, split: SummarySplit) -> RougeScores:
    return rouge(out.texts, split.references)


def _row(name: str, system: str, val_q: RougeScores, test_q: RougeScores, seed: int, **extra: Any) -> dict[str, Any]:
    row: dict[str, Any] = {"system": name, "kind": system}
    for split, q in (("val", val_q), ("test", test_q)):
        for key, value in q.means().items():
            row[f"{split}_{key}"] = value
        for key in ROUGE_KEYS:  # 95% percentile bootstrap intervals of each mean
            row[f"{split}_{key}_ci"] = bootstrap_ci(getattr(q, key), seed=seed)
    row.update(extra)
    return row


def _routed(stages: Sequence[StageRun], thresholds: Sequence[float], split: str) -> tuple[RoutingPick, np.ndarray]:
    stack = StageStack([s.stage(split) for s in stages])
    ans = stack.answered_by(list(thresholds))
    q = [(s.val_rouge if split == "val" else s.test_rouge) for s in stages]
    cols = np.arange(len(ans))
    picked = RougeScores(*[np.stack([getattr(x, k) for x in q])[ans, cols] for k in ROUGE_KEYS])
    return RoutingPick(picked, stack.evaluate(list(thresholds))), ans


@dataclass
class RoutingPick:
    scores: RougeScores
    metrics: Any


def run_summarization(
    task: SummaryTask,
    lm: SummaryLM,
    *,
    ssms: Sequence[str] = SUMMARY_SSMS,
    max_lm_rate: float = 0.3,
    gamma: Optional[float] = None,
    rule: str = HONEST_DEFAULT,
    seed: int = 0,
    oof_folds: int = 2,
    mine_lm_max: Optional[int] = None,
    full: bool = True,
    progress: Optional[ProgressCallback] = None,
) -> SummarizationResult:
    """The whole EA run on a summarization task (see the module docstring); nothing is written.
    `progress` receives typed events: a message per stage, LM steps (`lm_stage` val/test/mine)."""

    def say(stage: str, message: str) -> None:
        if progress is not None:
            progress(ProgressEvent(stage, 0, 0, message=f"{stage}: {message}"))
    if not ssms:
        raise ConfigError("Give at least one small summarization model (extractive, lead, finetune:MODEL).")
    timings: list[dict[str, Any]] = []
    memory = EmbeddingMemory()

    def timed(name: str, fn: Callable[[], Any]) -> Any:
        say(name, "started")
        with ResourceMeter() as meter:
            out = fn()
        timings.append({"stage": name, "seconds": round(meter.elapsed_s, 2), "peak_rss_mb": round(meter.peak_rss_mb, 1)})
        say(name, f"done in {meter.elapsed_s:.1f} s, peak {meter.peak_rss_mb:.0f} MB")
        return out

    # -- Specific Layer: small models ------------------------------------------------------
    models: dict[str, Any] = {}
    runs: list[StageRun] = []
    for spec in ssms:
        model = make_summarizer(spec, seed=seed, memory=memory)
        timed(f"train {spec}", lambda: model.fit(task.train, task.val, callback=progress))
        val_out, test_out = timed(f"predict {spec}", lambda: (model.summarize(task.val), model.summarize(task.test)))
        runs.append(StageRun(spec, "ssm", val_out.texts, test_out.texts, val_out.raw_conf, test_out.raw_conf,
                             _scores(val_out, task.val), _scores(test_out, task.test)))
        models[spec] = model
    runs.sort(key=lambda r: -r.val_rouge.rougeL.mean())  # rank by validation ROUGE-L (Eq. 7-8)
    # gamma: the small models' median validation ROUGE-L (pooled over models and examples).
    g = float(np.median(np.concatenate([r.val_rouge.rougeL for r in runs]))) if gamma is None else float(gamma)
    if not 0.0 <= g <= 1.0:
        raise ConfigError(f"gamma is a ROUGE-L F1 in [0, 1], got {g}.")

    # -- the LM on validation and test -----------------------------------------------------
    def lm_on(split: SummarySplit, what: str) -> Any:
        def step(done: int, total: int) -> None:
            if progress is not None:
                progress(ProgressEvent(f"lm:{what}", done, total, kind=EventKind.LM, lm_stage=what))

        return lm.summarize(split.sources, split.instructions, progress=step, batch_size=8)

    lm_val = timed("LM validation", lambda: lm_on(task.val, "val"))
    lm_test = timed("LM test", lambda: lm_on(task.test, "test"))
    lm_run = StageRun("lm", "lm", lm_val.texts, lm_test.texts, lm_val.confidence, lm_test.confidence,
                      rouge(lm_val.texts, task.val.references), rouge(lm_test.texts, task.test.references),
                      val_cost=lm_val.cost_per_example, test_cost=lm_test.cost_per_example)

    # -- mining (Eq. 5 for generation), out of fold ----------------------------------------
    def oof_train_quality() -> np.ndarray:
        n = len(task.train)
        q = np.zeros((len(runs), n))
        rng = np.random.default_rng(seed)
        fold = rng.permutation(n) % max(oof_folds, 2)
        for k, r in enumerate(runs):
            model = models[r.name]
            if isinstance(model, LeadSummarizer):
                q[k] = rouge(model.summarize(task.train).texts, task.train.references).rougeL
                continue
            for f in range(max(oof_folds, 2)):
                held, fit = np.flatnonzero(fold == f), np.flatnonzero(fold != f)
                m = make_summarizer(r.name, seed=seed, memory=memory).fit(task.train.subset(fit), task.val)
                part = task.train.subset(held)
                q[k, held] = rouge(m.summarize(part).texts, part.references).rougeL
        return q

    train_q = timed("mining: small models out of fold", oof_train_quality)
    missed = np.flatnonzero((train_q < g).all(axis=0))  # every SSM below gamma
    ask = missed if mine_lm_max is None else np.random.default_rng(seed).permutation(missed)[:mine_lm_max]
    ask = np.sort(ask)
    lm_train = timed("mining: LM on the missed", lambda: lm_on(task.train.subset(ask), "mine"))
    lm_train_q = rouge(lm_train.texts, task.train.subset(ask).references).rougeL if len(ask) else np.zeros(0)
    underfit = ask[lm_train_q < g]
    mining = {"gamma": g, "train": len(task.train), "ssms_missed": int(missed.size), "lm_asked": int(ask.size),
              "underfit": int(underfit.size), "lm_fixed": int((lm_train_q >= g).sum()),
              "lm_calls": lm_val.calls + lm_test.calls + lm_train.calls,
              "lm_cost_usd": lm_val.cost_usd + lm_test.cost_usd + lm_train.cost_usd,
              "lm_output_tokens": lm_val.completion_tokens + lm_test.completion_tokens + lm_train.completion_tokens}
    say("mining", f"gamma {g:.3f}: {missed.size} missed by every small model, {ask.size} asked to the LM, "
        f"{underfit.size} underfit")

    # -- Augmented Layer: the best trainable SSM, warm-started on the underfit set ----------
    base = next((r for r in runs if hasattr(models[r.name], "head_") or hasattr(models[r.name], "model_")), None)
    aug_runs: dict[str, StageRun] = {}

    def augmented(name: str, index: np.ndarray) -> Optional[StageRun]:
        if base is None or index.size == 0:
            return None
        model = copy.deepcopy(models[base.name], memo={id(memory): memory})
        model.name = name
        try:
            model.fit(task.train.subset(index), task.val, warm_start=True)
        except Exception as exc:  # noqa: BLE001 - e.g. oracle labels of one class on a tiny set
            say(name, f"skipped: {exc}")
            return None
        v, t = model.summarize(task.val), model.summarize(task.test)
        models[name] = model
        return StageRun(name, "assm", v.texts, t.texts, v.raw_conf, t.raw_conf, _scores(v, task.val),
                        _scores(t, task.test))

    assm = timed("train augmented (underfit)", lambda: augmented(f"assm:{base.name}" if base else "assm", underfit))
    if assm is not None:
        aug_runs["ea"] = assm
    if full:
        assm_full = timed("train augmented (EA(Full): all missed)",
                          lambda: augmented(f"assm_full:{base.name}" if base else "assm_full", missed))
        if assm_full is not None:
            aug_runs["ea_full"] = assm_full

    # -- every stage's confidence mapped to expected ROUGE-L ---------------------------------
    # The router sees the map fitted on all of validation, on both splits: it is monotone (ties
    # broken by the raw value), so validation is routed as the raw confidences would be and a
    # threshold chosen there routes test the same way (per-fold maps would not). The out-of-fold
    # maps measure how well the map predicts quality on inputs it was not fitted on.
    for r in runs + [lm_run] + list(aug_runs.values()):
        oof, _ = quality_calibration(r.val_raw, r.val_rouge.rougeL, np.zeros(0), seed=seed)
        r.calibration_mae = float(np.mean(np.abs(oof - r.val_rouge.rougeL))) if len(oof) else float("nan")
        r.quality_map = fit_quality_map(r.val_raw, r.val_rouge.rougeL)
        r.val_conf = apply_quality_map(*r.quality_map, r.val_raw)
        r.test_conf = apply_quality_map(*r.quality_map, r.test_raw)

    # -- routing, the honest operating point, the table ------------------------------------
    def tuned(stages: list[StageRun], layers: dict[str, list[int]]) -> tuple[dict[str, Any], Any]:
        val_stages = [s.stage("val") for s in stages]
        choice = choose_operating_point(val_stages, None, layers, rule=rule, max_lm_rate=max_lm_rate, seed=seed)
        val_pick, _ = _routed(stages, choice.thresholds, "val")
        test_pick, _ = _routed(stages, choice.thresholds, "test")
        extra = {"chosen": choice.system, "why": choice.detail.get("why", ""),
                 "thresholds": [float(t) for t in choice.thresholds], "stages": [s.name for s in stages],
                 "val_lm_call_rate": val_pick.metrics.lm_call_rate, "test_lm_call_rate": test_pick.metrics.lm_call_rate,
                 "test_cost_per_1k_usd": test_pick.metrics.cost_per_1k_usd,
                 "test_shares": [round(x, 4) for x in test_pick.metrics.shares],
                 # Validation ROUGE-L against the LM call rate: the non-dominated thresholds (the app's plot).
                 "val_front": [[p.lm_call_rate, p.accuracy] for p in pareto_front(val_stages, None)]}
        return extra, (val_pick.scores, test_pick.scores)

    def spent(*stages: str) -> dict[str, Any]:
        """What building a system took (Table 2's time and memory): its stages' seconds added up,
        the highest peak RSS among them; the LM's calls and money during those stages."""
        picked = [t for t in timings if t["stage"] in stages]
        lm_parts = {"LM validation": lm_val, "LM test": lm_test, "mining: LM on the missed": lm_train}
        gens = [lm_parts[n] for n in stages if n in lm_parts]
        return {"seconds": round(sum(t["seconds"] for t in picked), 2),
                "peak_rss_mb": max((t["peak_rss_mb"] for t in picked), default=None),
                "lm_calls": sum(g.calls for g in gens), "lm_cost_usd": sum(g.cost_usd for g in gens)}

    small_stages = [f"{verb} {r.name}" for r in runs for verb in ("train", "predict")]
    lm_stages = ["LM validation", "LM test"]
    mine_stages = ["mining: small models out of fold", "mining: LM on the missed"]
    aug_stage = {"ea": "train augmented (underfit)", "ea_full": "train augmented (EA(Full): all missed)"}

    def report() -> list[dict[str, Any]]:
        rows = [_row("lm", "lm", lm_run.val_rouge, lm_run.test_rouge, seed, val_lm_call_rate=1.0,
                     test_lm_call_rate=1.0, calibration_mae=lm_run.calibration_mae, **spent(*lm_stages))]
        for r in runs:
            rows.append(_row(r.name, "ssm", r.val_rouge, r.test_rouge, seed, val_lm_call_rate=0.0,
                             test_lm_call_rate=0.0, calibration_mae=r.calibration_mae,
                             **spent(f"train {r.name}", f"predict {r.name}")))
        for key, r in aug_runs.items():
            rows.append(_row(r.name, "assm", r.val_rouge, r.test_rouge, seed, val_lm_call_rate=0.0,
                             test_lm_call_rate=0.0, calibration_mae=r.calibration_mae, **spent(aug_stage[key])))
        sl = runs + [lm_run]
        ssm_idx = list(range(len(runs)))
        extra, (vq, tq) = tuned(sl, {"ssm": [0], "specific_layer": ssm_idx + [len(runs)]})
        rows.append(_row("specific_layer", "routed", vq, tq, seed, **extra, **spent(*small_stages, *lm_stages)))
        for key in ("ea", "ea_full"):
            if key not in aug_runs:
                continue
            stages = runs + [aug_runs[key], lm_run]
            layers = {"ssm": [0], "specific_layer": ssm_idx + [len(runs) + 1], "full": list(range(len(stages)))}
            extra, (vq, tq) = tuned(stages, layers)
            rows.append(_row(key, "routed", vq, tq, seed, **extra,
                             **spent(*small_stages, *lm_stages, *mine_stages, aug_stage[key])))
        if "ea" not in aug_runs:  # no augmented layer (nothing underfit): EA is the Specific Layer
            layer = next(r for r in rows if r["system"] == "specific_layer")
            rows.append(dict(layer, system="ea", note="no augmented model (nothing underfit, or no trainable "
                             "small model): EA = the Specific Layer, after mining",
                             **spent(*small_stages, *lm_stages, *mine_stages)))
        everyone = runs + [lm_run] + list(aug_runs.values())
        best = [np.argmax(np.stack([getattr(s, f"{sp}_rouge").rougeL for s in everyone]), axis=0)
                for sp in ("val", "test")]
        oracle = [RougeScores(*[np.stack([getattr(getattr(s, f"{sp}_rouge"), k) for s in everyone])[b, np.arange(b.size)]
                                for k in ROUGE_KEYS]) for sp, b in zip(("val", "test"), best)]
        rows.append(_row("oracle", "oracle", oracle[0], oracle[1], seed,
                         note="the best stage's summary per input (an upper bound, not a system)"))
        return rows

    rows = timed("tune and report", report)
    return SummarizationResult(rows, timings, mining, runs + list(aug_runs.values()) + [lm_run], lm.describe(),
                               list(task.warnings), models=models)


#: Columns of the CLI table: (key, header, format).
SUMMARY_TABLE = (("system", "system", "{}"), ("val_rouge1", "val R-1", "{:.4f}"), ("val_rouge2", "val R-2", "{:.4f}"),
                 ("val_rougeL", "val R-L", "{:.4f}"), ("test_rouge1", "test R-1", "{:.4f}"),
                 ("test_rouge2", "test R-2", "{:.4f}"), ("test_rougeL", "test R-L", "{:.4f}"),
                 ("test_lm_call_rate", "test LM calls", "{:.1%}"), ("seconds", "time s", "{:.1f}"),
                 ("peak_rss_mb", "peak MB", "{:.0f}"), ("lm_cost_usd", "LM $", "{:.4f}"))


def format_summary_table(rows: Sequence[dict[str, Any]]) -> str:
    """The results rows as a plain-text table (what the CLI prints)."""
    return format_table(rows, SUMMARY_TABLE)


def write_summarization(result: SummarizationResult, out_dir: Path) -> Path:
    """results.json (rows, timings, mining, task kind), results.csv and the run's summaries."""
    import csv

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "results.json").write_text(json.dumps(result.to_dict(), indent=2, default=float))
    keys: list[str] = []
    for row in result.rows:
        keys += [k for k in row if k not in keys]
    with open(out_dir / "results.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=keys)
        w.writeheader()
        for row in result.rows:
            w.writerow({k: json.dumps(v) if isinstance(v, (dict, list)) else v for k, v in row.items()})
    summaries = {s.name: {"test": s.test_texts, "test_confidence": [float(c) for c in s.test_conf]}
                 for s in result.stages}
    (out_dir / "summaries.json").write_text(json.dumps(summaries, indent=1))
    (out_dir / STAGES_JSON).write_text(json.dumps(stage_arrays(result)))
    return out_dir / "results.json"


#: Every stage's per-input confidence, quality and cost on validation and test: what threshold
#: sliders route again (`ea_core.summary_explore`), without the models.
STAGES_JSON = "stages.json"


def stage_arrays(result: SummarizationResult) -> dict[str, Any]:
    """The router's view of every stage, as plain numbers (cost in USD per input). Not rounded: a
    chosen threshold often equals some input's confidence, and routing again must give the same."""
    def numbers(values: Optional[np.ndarray]) -> Optional[list[float]]:
        return None if values is None else [float(v) for v in np.asarray(values, float)]
    return {"stages": [{"name": s.name, "kind": s.kind,
                        "val_confidence": numbers(s.val_conf), "test_confidence": numbers(s.test_conf),
                        "val_quality": numbers(s.val_rouge.rougeL), "test_quality": numbers(s.test_rouge.rougeL),
                        "val_cost": numbers(s.val_cost), "test_cost": numbers(s.test_cost)} for s in result.stages]}


__all__ = ["SUMMARY_SSMS", "SummarizationResult", "format_summary_table", "make_summarizer",
           "STAGES_JSON", "run_summarization", "stage_arrays", "write_summarization"]
