"""Before a big job, what it will take: rows, LM calls, money and CPU time, before anything is spent.

For a bundle and an input file (`plan_bundle`): the rows (Parquet's footer, else a count of line
ends), each stage's share of them (the bundle's tuned operating point, as measured on its run's
test split, or measured on the first rows of this very file with `sample`), the LM calls that
share means, their tokens (the bundle's prompt rendered for sampled rows) and USD (the bundle's
LM model and the price table; "unknown" when the price is not known; beside it, for an endpoint,
the same calls at the Batch API's price, `predict --lm-batch`), and CPU time per stage
from the measured rates of `ea_core.models.estimate` (or, with `sample`, timed on this machine).
Nothing here calls the LM. For a run's settings (`plan_run`): the data loaded and split, each
small model's training time estimate and the LM's calls and money (`ea_core.llm.planning`), with
the total when mining goes through the Batch API (`run --lm-batch`).
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Optional

import numpy as np

from ea_core.bundle import BUNDLE_JSON, bundle_path, load_bundle, read_bundle_meta
from ea_core.cascade import stage_answers
from ea_core.data.stream import open_table_stream
from ea_core.errors import ConfigError
from ea_core.inputs import as_texts, input_columns
from ea_core.learned_router import ROUTER_JSON
from ea_core.llm.batch_api import BATCH_PRICE_FACTOR
from ea_core.llm.cost import estimate_tokens, message_tokens
from ea_core.llm.planning import tokens as tokens_text
from ea_core.llm.prompt import PromptTemplate, example_from_json
from ea_core.llm.spec import LMSpec
from ea_core.models.base import read_json_file
from ea_core.models.estimate import TimeEstimate, estimate_predict_seconds, format_estimate, format_seconds
from ea_core.runconfig import RunConfig, prompt_template
from ea_core.splits import Split

#: Rows whose prompts are rendered to count the LM's tokens per call.
TOKEN_SAMPLE = 200
#: Seconds per call of the packaged offline LM (SmolLM2-135M, label scoring) on 2 CPU cores
#: (docs: ENVIRONMENT.md, ~0.3 s with single-token labels to ~0.4 s).
PACKAGED_LM_S_PER_CALL = (0.3, 0.4)


@dataclass
class StagePlan:
    """One stage of the cascade on the job's rows."""

    name: str
    spec: str  # the small model's SPEC, or the LM's model
    reach: Optional[float]  # share of rows that reach this stage (None: unknown)
    rows: Optional[int]
    estimate: Optional[TimeEstimate] = None  # CPU time from the measured rates (small models)
    measured_s: Optional[float] = None  # CPU time from timing the sample on this machine
    is_lm: bool = False


@dataclass
class BundlePlan:
    """What predicting a file with a bundle will take (see the module docstring)."""

    bundle: str
    input: str
    rows: int
    rows_exact: bool
    stages: list[StagePlan]
    share_source: str
    lm_calls: Optional[int] = None
    prompt_tokens: float = 0.0  # per call
    answer_tokens: float = 0.0
    price: str = ""
    usd: Optional[float] = None  # None: unknown (or no LM)
    usd_batch: Optional[float] = None  # the same calls at the Batch API's price; None: unknown or in process
    notes: list[str] = field(default_factory=list)

    @property
    def cpu_seconds(self) -> tuple[float, float, float]:
        """(low, central, high) CPU seconds of the small models: timed when sampled, else estimated."""
        low = mid = high = 0.0
        for st in self.stages:
            if st.measured_s is not None:
                low, mid, high = low + 0.8 * st.measured_s, mid + st.measured_s, high + 1.25 * st.measured_s
            elif st.estimate is not None:
                low, mid, high = low + st.estimate.low, mid + st.estimate.seconds, high + st.estimate.high
        return low, mid, high

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["cpu_seconds"] = dict(zip(("low", "central", "high"), self.cpu_seconds))
        return out

    def lines(self) -> list[str]:
        about = "" if self.rows_exact else "~"
        out = [f"Input: {self.input}: {about}{self.rows:,} rows", f"Shares: {self.share_source}"]
        for st in self.stages:
            share = "unknown share" if st.reach is None else f"{st.reach:.1%} of rows reach it ({st.rows:,})"
            if st.is_lm:
                out.append(f"  {st.name} (LM {st.spec}): {share}")
                continue
            cpu = (f"{format_seconds(st.measured_s)} (timed on the sample)" if st.measured_s is not None else
                   format_estimate(st.estimate) if st.estimate is not None else "unknown")
            out.append(f"  {st.name} ({st.spec}): {share}; CPU {cpu}")
        low, mid, high = self.cpu_seconds
        out.append(f"Small models' CPU time: {_span(low, high)} (central {format_seconds(mid)}), one process")
        if any(st.is_lm for st in self.stages):
            calls = "unknown (measure with --sample N)" if self.lm_calls is None else f"{self.lm_calls:,}"
            out.append(f"LM calls: {calls}; ~{self.prompt_tokens:.0f} prompt + {self.answer_tokens:.0f} answer "
                       f"tokens per call" + ("" if self.lm_calls is None else
                                             f" (~{tokens_text(self.lm_calls * (self.prompt_tokens + self.answer_tokens))} "
                                             "tokens in all)"))
            out.append(f"LM cost: {_usd(self.usd)} at {self.price}" + (
                "" if self.usd_batch is None else f"; {_usd(self.usd_batch)} with --lm-batch (the Batch API, "
                f"{BATCH_PRICE_FACTOR:.0%} of the price, answers within 24 h)")
                + "; answers already in the cache cost nothing")
        out += [f"note: {n}" for n in self.notes]
        return out


def _usd(usd: Optional[float]) -> str:
    return "unknown" if usd is None else f"${usd:,.2f}" if usd >= 1 else f"${usd:.4f}"


def _span(low: float, high: float) -> str:
    a, b = format_seconds(low), format_seconds(high)
    return a if a == b else f"{a} to {b}"


def _stage_specs(root: Path, entry: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    """The SPEC and saved settings of each model a bundle stage runs: one, or for a learned router
    every small model it reads (``ssm/NN``, counted in its router.json)."""
    folder = bundle_path(root, entry["folder"], root / BUNDLE_JSON, f"stage {entry['name']!r} folder")
    if not entry.get("router"):
        return [_stage_spec(folder)]
    meta = read_json_file(folder / ROUTER_JSON)
    n = meta.get("models") if isinstance(meta, dict) else None
    if isinstance(n, bool) or not isinstance(n, int) or not 1 <= n <= 99:
        raise ConfigError(f"{folder / ROUTER_JSON}: not a learned router. Export the bundle again.")
    return [_stage_spec(folder / "ssm" / f"{i:02d}") for i in range(n)]


def _spec_name(specs: list[tuple[str, dict[str, Any]]], entry: dict[str, Any]) -> str:
    return f"learned router over {' + '.join(s for s, _ in specs)}" if entry.get("router") else specs[0][0]


def _estimate(specs: list[tuple[str, dict[str, Any]]], rows: int, mean_chars: Optional[float]) -> TimeEstimate:
    """Predicting `rows` with every model of a stage (a learned router runs them all)."""
    parts = [estimate_predict_seconds(spec, rows, settings=config, mean_chars=mean_chars) for spec, config in specs]
    if len(parts) == 1:
        return parts[0]
    return TimeEstimate(" + ".join(e.spec for e in parts), sum(e.seconds for e in parts), sum(e.low for e in parts),
                        sum(e.high for e in parts), "; ".join(e.basis for e in parts))


def _stage_spec(folder: Path) -> tuple[str, dict[str, Any]]:
    """A saved model's SPEC and settings, from its model.json (no weights read)."""
    meta = read_json_file(folder / "model.json")
    if not isinstance(meta, dict) or not isinstance(meta.get("config"), dict):
        raise ConfigError(f"{folder / 'model.json'}: not a saved model. Export the bundle again.")
    config = meta["config"]
    spec = meta.get("spec")
    if not isinstance(spec, str) or not spec:
        kind = {"image_head": "head", "image_finetune": "finetune"}.get(meta.get("kind"), meta.get("kind"))
        spec = "tfidf" if kind == "tfidf" else f"{kind}:{config.get('model')}"
    return spec, config


def _lm_tokens(lm: dict[str, Any], split: Split, labels: list[str], model: str) -> tuple[float, float]:
    """(prompt tokens, answer tokens) per call: the bundle's prompt rendered for up to
    `TOKEN_SAMPLE` rows of `split`, ~4 characters a token."""
    template = prompt_template(lm.get("prompt")) or PromptTemplate()
    if lm.get("few_shot_examples"):
        template = template.with_examples([example_from_json(x) for x in lm["few_shot_examples"]])
    idx = range(0, len(split), max(1, len(split) // TOKEN_SAMPLE))
    prompt = float(np.mean([sum(message_tokens(m, model) for m in template.render(*split.input(i), labels))
                            for i in idx])) if len(split) else 0.0
    return prompt, sum(estimate_tokens(lab) for lab in labels) / max(len(labels), 1) + 1


def plan_bundle(bundle: str, input_path: str, *, text_col: Optional[str] = None, pair_col: Optional[str] = None,
                sample: int = 0, use_lm: bool = True, price_in: Optional[float] = None,
                price_out: Optional[float] = None) -> BundlePlan:
    """What predicting `input_path` with `bundle` will take; `sample` > 0 routes the first `sample`
    rows through the small models (never the LM) to measure the shares and the time on this file."""
    meta = read_bundle_meta(bundle)
    root = Path(bundle).resolve()
    task = meta.get("task") or {}
    if task.get("modality") == "image":
        raise ConfigError("plan reads tables of texts; this bundle classifies images.")
    labels = list(meta["labels"])
    stream = open_table_stream(input_path)
    text, pair, _ = input_columns(stream.columns, input_path, text_col=text_col or task.get("text_col"),
                                  pair_col=pair_col or task.get("pair_col"), pair_task=task.get("pair"))
    if stream.fmt == "txt":
        pair = None
    rows, exact = stream.count_rows()
    first = next(stream.chunks([c for c in (text, pair) if c], max(int(sample), TOKEN_SAMPLE, 1)), {text: []})
    head = Split.from_texts(as_texts(first[text]), as_texts(first[pair]) if pair else None)
    mean_chars = float(np.mean([len(t) for t in head.texts])) if len(head) else None
    entries = [e for e in meta["stages"] if use_lm or not e.get("lm")]
    lm = meta.get("lm") or {}
    lm_model = str(lm.get("model") or lm.get("spec") or "")
    stages = [StagePlan(e["name"], lm_model if e.get("lm") else _spec_name(_stage_specs(root, e), e), None, None,
                        is_lm=bool(e.get("lm"))) for e in entries]
    notes: list[str] = []
    shares = (meta.get("metrics") or {}).get("stage_shares")
    if sample > 0:
        source = _measure(bundle, entries, stages, head.subset(range(min(int(sample), len(head)))), rows)
    elif isinstance(shares, dict) and all(e["name"] in shares for e in entries):
        reach = 1.0
        for st in stages:
            st.reach, st.rows = reach, int(round(rows * reach))
            reach = max(reach - float(shares[st.name] or 0.0), 0.0)
        source = ("the bundle's tuned operating point (the share of its run's test split each stage answered); "
                  "your data may differ: --sample N measures it on this file")
    else:
        source = "unknown: this bundle records no measured shares (thresholds set by hand); --sample N measures them"
        stages[0].reach, stages[0].rows = 1.0, rows
    for st, e in zip(stages, entries):
        if not st.is_lm and st.measured_s is None:
            n = rows if st.rows is None else st.rows
            st.estimate = _estimate(_stage_specs(root, e), n, mean_chars)
            if st.rows is None:
                notes.append(f"{st.name}: its share is unknown; its time is for every row (an upper bound)")
    plan = BundlePlan(str(bundle), str(input_path), rows, exact, stages, source, notes=notes)
    lm_stage = next((st for st in stages if st.is_lm), None)
    if lm_stage is not None:
        spec = LMSpec.parse(str(lm.get("spec")), model=lm.get("model"), prices=lm.get("prices"),
                            price_in=price_in, price_out=price_out, key_env="", environ={})
        plan.price = spec.price.label()
        plan.prompt_tokens, plan.answer_tokens = _lm_tokens(lm, head, labels, lm_model)
        if lm_stage.rows is not None:
            plan.lm_calls = lm_stage.rows
            if spec.price.known:
                plan.usd = spec.price.cost(int(round(plan.lm_calls * plan.prompt_tokens)),
                                           int(round(plan.lm_calls * plan.answer_tokens)))
                if not spec.is_local and not spec.price.free:  # an endpoint: predict --lm-batch applies
                    plan.usd_batch = plan.usd * BATCH_PRICE_FACTOR
        if not spec.price.known:
            notes.append("give the LM's prices (--price-in, --price-out, USD per 1M tokens) to count money")
        if spec.is_local and plan.lm_calls is not None:
            notes.append(_local_lm_time(spec, plan.lm_calls))
    if any(not st.is_lm and st.spec.startswith(("head:", "finetune:")) for st in stages):
        notes.append("a GPU (picked automatically when present) is much faster for head: and finetune: models; "
                     "the CPU figures are upper bounds there")
    return plan


def _measure(bundle: str, entries: list[dict[str, Any]], stages: list[StagePlan], sample: Split,
             rows: int) -> str:
    """Route `sample` through the small stages (never the LM): each stage's reach and seconds per row."""
    system = load_bundle(bundle, use_lm=False)
    models = iter(range(len(system.stages)))
    open_idx = np.arange(len(sample))
    n = max(len(sample), 1)
    lm_seen = False
    for st, e in zip(stages, entries):
        if st.is_lm or lm_seen:
            lm_seen = True
            if st.is_lm:
                st.reach, st.rows = len(open_idx) / n, int(round(rows * len(open_idx) / n))
            continue
        k = next(models)
        st.reach, st.rows = len(open_idx) / n, int(round(rows * len(open_idx) / n))
        if not len(open_idx):
            st.measured_s = 0.0
            continue
        part = sample.subset(open_idx)
        stage_answers(system, k, part.subset([0]))  # loads the model: not counted per row
        t0 = time.perf_counter()
        pred, conf = stage_answers(system, k, part)
        st.measured_s = (time.perf_counter() - t0) / len(part) * st.rows
        last = e is entries[-1]
        open_idx = open_idx[np.zeros(len(open_idx), bool) if last else conf < e["threshold"]]
    after = " (stages after the LM: unknown without calling it)" if any(
        not st.is_lm and st.reach is None for st in stages) else ""
    return (f"measured on the first {len(sample):,} rows of this file, small models only (a file sorted by "
            f"anything the models see biases it){after}")


# ---------------------------------------------------------------------------- a run's settings


def plan_run(cfg: RunConfig) -> list[str]:
    """What a run with these settings will take: the data's splits, each small model's CPU time
    (training and predicting its splits, out-of-fold refits included) and the LM's calls and money."""
    from ea_core.data import load_dataset
    from ea_core.llm.planning import estimate_run_cost
    from ea_core.models.estimate import estimate_seconds

    cfg.validate()
    task = load_dataset(cfg.data, text_col=cfg.text_col, text_pair_col=cfg.text_pair_col, label_col=cfg.label_col,
                        split_col=cfg.split_col, val_source=cfg.val_source, test_source=cfg.test_source,
                        val_frac=cfg.val_frac, test_frac=cfg.test_frac, seed=cfg.seed, max_train=cfg.max_train,
                        max_val=cfg.max_val, max_test=cfg.max_test)
    n_train, n_val, n_test = len(task.train), len(task.val), len(task.test)
    mean_chars = None if task.is_image else float(np.mean([len(t) for t in task.train.texts])) if n_train else None
    lines = [f"Data: {task.name}: {n_train:,} train / {n_val:,} validation / {n_test:,} test, "
             f"{len(task.labels)} labels"]
    oof = cfg.oof_folds if cfg.lm else 0
    total = [0.0, 0.0, 0.0]
    for spec in cfg.ssm:
        est = estimate_seconds(spec, n_train, n_val + n_test, oof_folds=oof, settings=cfg.model_settings(spec),
                               n_val=n_val, mean_chars=mean_chars)
        factor = 2 if cfg.lm else 1  # an augmented model (ASSM) per SSM at most (--assm each), usually one
        total = [total[0] + est.low, total[1] + est.seconds, total[2] + est.high * factor]
        lines.append(f"  {spec}: {format_estimate(est)} CPU ({est.basis})")
    lines.append(f"Small models' CPU time: {_span(total[0], total[2])} (the high end counts an augmented model each)")
    if cfg.lm:
        spec = cfg.lm_spec(environ={})
        est = estimate_run_cost(task, cfg.lm_model or "local", template=prompt_template(cfg.prompt),
                                ea_full=cfg.ea_full, local=spec.is_local, price=spec.price,
                                probe=cfg.probe_lm + (cfg.router_labels if cfg.router == "learned" else 0))
        money = (f"${est.usd_low:,.4f}-${est.usd_high:,.4f}" if est.price_known and not spec.price.free
                 else spec.price.label())
        if est.price_known and not spec.price.free and not spec.is_local:
            # --lm-batch: the training-split calls at the batch price, validation and test as usual.
            evals = estimate_run_cost(task, cfg.lm_model or "local", template=prompt_template(cfg.prompt),
                                      local=False, price=spec.price, mining_share=(0.0, 0.0)).usd_low
            money += (f" (with --lm-batch: ${evals + (est.usd_low - evals) * BATCH_PRICE_FACTOR:,.4f}-"
                      f"${evals + (est.usd_high - evals) * BATCH_PRICE_FACTOR:,.4f})")
        lines.append(f"LM ({cfg.lm}{' ' + cfg.lm_model if cfg.lm_model else ''}): {est.calls_low:,}-"
                     f"{est.calls_high:,} calls, ~{tokens_text(est.tokens_low)}-{tokens_text(est.tokens_high)} "
                     f"tokens, {money}")
        lines += [f"  {line}" for line in est.lines]
        if spec.is_local:
            lines.append(_local_lm_time(spec, est.calls_low, est.calls_high))
    return lines


def _local_lm_time(spec: LMSpec, calls: int, calls_high: Optional[int] = None) -> str:
    """The in-process LM's time, when it is the packaged default (other local models: unmeasured)."""
    if spec.model is not None or spec.spec not in ("local", "local:"):
        return f"the in-process LM {spec.model or spec.spec}: its time per call is not measured here"
    low, high = PACKAGED_LM_S_PER_CALL
    return (f"the packaged LM in process: ~{low:g}-{high:g} s per call on 2 CPU cores, "
            f"{_span(calls * low, (calls_high or calls) * high)} for these calls")


__all__ = ["BundlePlan", "StagePlan", "plan_bundle", "plan_run"]
