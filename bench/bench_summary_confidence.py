"""Confidence signals for generated summaries (issue 18), printed figures and a JSON file.

On demo:aclsum, the small summarizers are trained once (extractive over MiniLM on all of train;
``causal:smollm2``, the packaged SmolLM2-135M-Instruct with LoRA, on the first `--causal-train`
training examples for one epoch; optionally ``finetune:MODEL`` with `--seq2seq MODEL` when a seq2seq
model is at hand) and summarise the first `--val` validation and `--test` test examples. For each
model and each candidate confidence signal it prints, per split:

* Spearman correlation of the signal with the summary's ROUGE-L F1;
* AUC of the signal for "ROUGE-L >= the split's median ROUGE-L of that model";
* kept@70%: test mean ROUGE-L of the 70% of inputs the signal is surest of (the other 30% would go
  to the LM at a 30% LM budget), against the mean over all inputs;
* routing: "this model when the signal >= t, else the other small model", t tuned on validation
  (best mean ROUGE-L), test mean ROUGE-L, against each model alone and the per-input oracle;
* LM@30%: the inputs below the signal's 30% validation quantile go to the LM (the packaged SmolLM2
  zero-shot, the offline stand-in; `--no-lm` skips it), test mean ROUGE-L;
* a 95% bootstrap interval of the test Spearman correlation (1,000 resamples of the inputs).

Signals for a generator: mean token log-prob (what the engine keeps), min token log-prob, the 10%
quantile of token log-probs, length in tokens (and its negation), agreement (ROUGE-L between its
summary and the other small models'), and the rank average of mean log-prob and agreement with the
extractive summary. For the extractive scorer: its kept margin, length and agreement.

    python bench/bench_summary_confidence.py [--causal-train 120] [--val 60] [--test 90] [--reuse]

`--reuse` reads the generated outputs saved by an earlier run (``--out``/outputs.json) and only
recomputes the analysis.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from ea_core.data.summaries import load_aclsum  # noqa: E402
from ea_core.process import configure_process  # noqa: E402
from ea_core.rouge import rouge, rouge_l  # noqa: E402


def generate(args: argparse.Namespace) -> dict[str, Any]:
    """Train the small models, summarise validation and test; per model and split: texts, ROUGE-L,
    raw confidence, token log-probs (generators), and the seconds it took."""
    from ea_core.models.causal_summarizer import CausalSummarizer
    from ea_core.models.memory import EmbeddingMemory
    from ea_core.models.summarizers import ExtractiveSummarizer, LeadSummarizer

    task = load_aclsum(max_val=args.val, max_test=args.test)
    splits = {"val": task.val, "test": task.test}
    out: dict[str, Any] = {"sizes": {"train": len(task.train), "val": len(task.val), "test": len(task.test)},
                           "models": {}}
    models: list[tuple[str, Any, Any]] = [
        ("lead", LeadSummarizer(), task.train),
        ("extractive", ExtractiveSummarizer(memory=EmbeddingMemory()), task.train),
        ("causal:smollm2", CausalSummarizer("smollm2", lora=True, epochs=1, batch_size=args.batch_size,
                                            device=args.device), task.train.subset(range(min(args.causal_train, len(task.train))))),
    ]
    if args.seq2seq:
        from ea_core.models.seq2seq import Seq2SeqSummarizer

        models.append((f"finetune:{args.seq2seq}", Seq2SeqSummarizer(args.seq2seq, epochs=1), task.train))
    for name, model, train in models:
        t0 = time.perf_counter()
        model.fit(train, task.val)
        fit_s = time.perf_counter() - t0
        rec: dict[str, Any] = {"fit_seconds": fit_s, "fit_examples": len(train),
                               "steps": getattr(model, "steps_", None), "losses": getattr(model, "losses_", None)}
        for sp, split in splits.items():
            t0 = time.perf_counter()
            s = model.summarize(split)
            rec[f"{sp}_predict_seconds"] = time.perf_counter() - t0
            rec[sp] = {"texts": s.texts, "raw": [float(x) for x in s.raw_conf],
                       "rougeL": [float(x) for x in rouge(s.texts, split.references).rougeL]}
            if hasattr(model, "token_logprobs_"):
                rec[sp]["token_logprobs"] = [[float(v) for v in x] for x in model.token_logprobs_]
        out["models"][name] = rec
        print(f"  {name:<18} fit {fit_s:7.1f} s on {len(train)} examples ({fit_s / max(len(train), 1):.2f} s/example); "
              f"predict {rec['val_predict_seconds'] + rec['test_predict_seconds']:7.1f} s on "
              f"{len(task.val) + len(task.test)} ({(rec['val_predict_seconds'] + rec['test_predict_seconds']) / (len(task.val) + len(task.test)):.2f} s/example); "
              f"test ROUGE-L {np.mean(rec['test']['rougeL']):.4f}", flush=True)
    return out


def generate_lm(data: dict[str, Any], args: argparse.Namespace) -> None:
    """The packaged SmolLM2 zero-shot (the offline LM stand-in) on the same validation and test inputs."""
    from ea_core.llm.summarize import LocalSummaryLM

    task = load_aclsum(max_val=args.val, max_test=args.test)
    lm = LocalSummaryLM(cache_path=None)
    rec: dict[str, Any] = {}
    t0 = time.perf_counter()
    for sp, split in (("val", task.val), ("test", task.test)):
        g = lm.summarize(split.sources, split.instructions, batch_size=8)
        rec[sp] = {"texts": g.texts, "rougeL": [float(x) for x in rouge(g.texts, split.references).rougeL]}
    rec["seconds"] = time.perf_counter() - t0
    data["lm"] = rec
    print(f"  LM (SmolLM2 zero-shot) {rec['seconds']:7.1f} s on {len(task.val) + len(task.test)}; "
          f"test ROUGE-L {np.mean(rec['test']['rougeL']):.4f}", flush=True)


def signals(name: str, data: dict[str, Any], sp: str) -> dict[str, np.ndarray]:
    """Every candidate signal of model `name` on split `sp` (higher = surer)."""
    rec = data["models"][name][sp]
    sig: dict[str, np.ndarray] = {}
    if "token_logprobs" in rec:
        lps = [np.asarray(x) if len(x) else np.array([-20.0]) for x in rec["token_logprobs"]]
        sig["mean token log-prob (kept)"] = np.array([x.mean() for x in lps])
        sig["min token log-prob"] = np.array([x.min() for x in lps])
        sig["10% quantile token log-prob"] = np.array([np.quantile(x, 0.1) for x in lps])
        sig["length (tokens)"] = np.array([float(len(x)) for x in lps])
        sig["-length (tokens)"] = -sig["length (tokens)"]
    else:
        sig["raw confidence (kept)"] = np.asarray(rec["raw"])
        sig["length (words)"] = np.array([float(len(t.split())) for t in rec["texts"]])
    for other in data["models"]:
        if other != name:
            sig[f"agreement with {other}"] = rouge_l(rec["texts"], data["models"][other][sp]["texts"])
    if "mean token log-prob (kept)" in sig and "agreement with extractive" in sig:  # rank average, nothing fitted
        from scipy.stats import rankdata

        sig["mean log-prob + agreement (ranks)"] = (rankdata(sig["mean token log-prob (kept)"])
                                                    + rankdata(sig["agreement with extractive"]))
    return sig


def auc(score: np.ndarray, positive: np.ndarray) -> float:
    from sklearn.metrics import roc_auc_score

    return float(roc_auc_score(positive, score)) if 0 < positive.sum() < positive.size else float("nan")


def spearman(a: np.ndarray, b: np.ndarray) -> float:
    from scipy.stats import spearmanr

    return float(spearmanr(a, b).statistic) if np.std(a) > 0 and np.std(b) > 0 else float("nan")


def routed(sig_v: np.ndarray, sig_t: np.ndarray, q: dict[str, np.ndarray], other: dict[str, np.ndarray]) -> float:
    """Test mean ROUGE-L of "this model when signal >= t, else the other", t best on validation."""
    cands = np.unique(np.concatenate([sig_v, [np.inf]]))
    vals = [np.where(sig_v >= t, q["val"], other["val"]).mean() for t in cands]
    t = cands[int(np.argmax(vals))]
    return float(np.where(sig_t >= t, q["test"], other["test"]).mean())


def spearman_ci(a: np.ndarray, b: np.ndarray, n_boot: int = 1000, seed: int = 0) -> tuple[float, float]:
    """95% percentile bootstrap interval of the Spearman correlation (inputs resampled)."""
    from scipy.stats import rankdata

    rng = np.random.default_rng(seed)
    vals = []
    for _ in range(n_boot):
        i = rng.integers(0, len(a), len(a))
        ra, rb = rankdata(a[i]), rankdata(b[i])
        if np.std(ra) > 0 and np.std(rb) > 0:
            vals.append(np.corrcoef(ra, rb)[0, 1])
    return float(np.percentile(vals, 2.5)), float(np.percentile(vals, 97.5))


def lm_routed(sig_v: np.ndarray, sig_t: np.ndarray, q_t: np.ndarray, lm_t: np.ndarray, rate: float = 0.3) -> float:
    """Test mean ROUGE-L when inputs below the validation `rate` quantile of the signal go to the LM."""
    t = np.quantile(sig_v, rate)
    return float(np.where(sig_t >= t, q_t, lm_t).mean())


def analyse(data: dict[str, Any]) -> list[dict[str, Any]]:
    names = list(data["models"])
    q = {n: {sp: np.asarray(data["models"][n][sp]["rougeL"]) for sp in ("val", "test")} for n in names}
    rows = []
    print("\n== ROUGE-L (mean) ==")
    for n in names:
        print(f"  {n:<18} val {q[n]['val'].mean():.4f}  test {q[n]['test'].mean():.4f}")
    lm = {sp: np.asarray(data["lm"][sp]["rougeL"]) for sp in ("val", "test")} if "lm" in data else None
    if lm is not None:
        print(f"  {'LM (SmolLM2 0-shot)':<18} val {lm['val'].mean():.4f}  test {lm['test'].mean():.4f}")
    for n in names:
        if n == "lead":
            continue
        fallback = max((m for m in names if m != n), key=lambda m: q[m]["val"].mean())
        sv, st = signals(n, data, "val"), signals(n, data, "test")
        oracle = np.maximum(q[n]["test"], q[fallback]["test"]).mean()
        print(f"\n== {n}: signals (routing falls back to {fallback}: alone test {q[fallback]['test'].mean():.4f}, "
              f"{n} alone {q[n]['test'].mean():.4f}, oracle of the two {oracle:.4f}) ==")
        if lm is not None:
            print(f"  LM@30%: the 30% least sure (validation quantile) go to the LM; random 30% would give "
                  f"{0.7 * q[n]['test'].mean() + 0.3 * lm['test'].mean():.4f}, the per-input oracle of the two "
                  f"{np.maximum(q[n]['test'], lm['test']).mean():.4f}")
        print(f"  {'signal':<36} {'Spearman val':>12} {'test':>7} {'test 95% CI':>14} {'AUC val':>8} {'test':>7} "
              f"{'kept@70% test':>14} {'routed test':>12} {'LM@30% test':>12}")
        for key in sv:
            row = {"model": n, "signal": key, "fallback": fallback}
            for sp, s in (("val", sv[key]), ("test", st[key])):
                row[f"spearman_{sp}"] = spearman(s, q[n][sp])
                row[f"auc_{sp}"] = auc(s, q[n][sp] >= np.median(q[n][sp]))
            keep = np.argsort(-st[key], kind="stable")[: int(round(0.7 * len(st[key])))]
            row["kept70_test"] = float(q[n]["test"][keep].mean())
            row["all_test"] = float(q[n]["test"].mean())
            row["routed_test"] = routed(sv[key], st[key], q[n], q[fallback])
            row["spearman_test_ci"] = spearman_ci(st[key], q[n]["test"])
            row["lm30_test"] = lm_routed(sv[key], st[key], q[n]["test"], lm["test"]) if lm is not None else float("nan")
            rows.append(row)
            ci = f"[{row['spearman_test_ci'][0]:.2f}, {row['spearman_test_ci'][1]:.2f}]"
            print(f"  {key:<36} {row['spearman_val']:>12.3f} {row['spearman_test']:>7.3f} {ci:>14} {row['auc_val']:>8.3f} "
                  f"{row['auc_test']:>7.3f} {row['kept70_test']:>14.4f} {row['routed_test']:>12.4f} {row['lm30_test']:>12.4f}")
        print(f"  (kept@70% with no signal = the mean, {q[n]['test'].mean():.4f})")
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--causal-train", type=int, default=120, help="training examples for causal:smollm2 (1 epoch)")
    ap.add_argument("--val", type=int, default=60)
    ap.add_argument("--test", type=int, default=90)
    ap.add_argument("--batch-size", type=int, default=4)
    ap.add_argument("--device", default="auto")
    ap.add_argument("--seq2seq", default="", help="also finetune:MODEL (a seq2seq model; needs it at hand)")
    ap.add_argument("--out", default="runs/bench-summary-confidence")
    ap.add_argument("--reuse", action="store_true", help="analyse the outputs saved by an earlier run")
    ap.add_argument("--no-lm", dest="lm", action="store_false",
                    help="skip the packaged SmolLM2 zero-shot (the LM the LM@30%% column routes to)")
    args = ap.parse_args()
    configure_process()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    if args.reuse:
        data = json.loads((out / "outputs.json").read_text())
    else:
        print(f"== training and generating (causal train {args.causal_train}, val {args.val}, test {args.test}) ==")
        data = generate(args)
    if args.lm and "lm" not in data:
        generate_lm(data, args)
    (out / "outputs.json").write_text(json.dumps(data))
    rows = analyse(data)
    (out / "signals.json").write_text(json.dumps(rows, indent=1))
    print(f"\nwrote {out / 'outputs.json'} and {out / 'signals.json'}")


if __name__ == "__main__":
    main()
