"""The Small models tab's CPU time estimates against measured times, per catalog entry.

For every catalog entry that works offline on the demos (``tfidf`` and ``head:minilm`` on the
tweets, ``finetune:minilm`` on a smaller sample so that it fits a few minutes, the image entries
on the digits), this trains the model as a run does (`ea_core.pipeline`): fit with validation
scored, predict the train, validation and test splits, then the out-of-fold refits of mining
(3 folds, the app's default), each with a cold embedding cache. It prints, next to each, what the
app's checklist estimates for the same data and settings (`ea_core.models.estimate`), and the
ratio measured / estimate: the target is within 2x either way.

    .venv/bin/python bench/bench_estimates.py [--skip-finetune] [--only SPEC ...] [--oof-folds 3]

About 4-6 minutes on a 2-core CPU (the machine's load average is printed: a busy machine makes
every measured time longer).
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # as run workers do (ea_core.process.PASSIVE_WAIT)

#: (spec, data, size caps train/val/test (None: the demo's), settings): what each line measures.
#: finetune:minilm runs on a 400-example sample, one epoch, so that it fits a few minutes.
CASES: list[tuple[str, str, Any, dict[str, Any]]] = [
    ("tfidf", "demo:tweets", (2000, 500, 500), {}),
    ("head:minilm", "demo:tweets", (2000, 500, 500), {}),
    ("finetune:minilm", "demo:tweets", (400, 200, 200), {"epochs": 1}),
    ("head:efficientnet_lite0", "demo:digits", None, {}),
    ("finetune:tiny_cnn", "demo:digits", None, {}),
    ("head:mobilenet_v3_small", "demo:digits", None, {}),
    ("head:squeezenet1_0", "demo:digits", None, {}),
]
#: Within this factor either way is on target.
TARGET = 2.0


def load_avg() -> str:
    try:
        return " / ".join(f"{x:.1f}" for x in os.getloadavg())
    except OSError:
        return "?"


def measure(spec: str, task: Any, settings: dict[str, Any], oof_folds: int, seed: int = 0) -> dict[str, float]:
    """Seconds of what a run does with `spec`: fit, predict every split, out-of-fold refits."""
    from ea_core.mining import kfold_indices
    from ea_core.models import make_model
    from ea_core.models.memory import EmbeddingMemory

    import numpy as np

    memory = EmbeddingMemory()
    t0 = time.perf_counter()
    model = make_model(spec, task.labels, memory=memory, **settings)
    model.fit(task.train, task.val, task.labels)
    fit_s = time.perf_counter() - t0
    for split in (task.train, task.val, task.test):
        model.predict_proba(split)
    predict_s = time.perf_counter() - t0 - fit_s
    t1 = time.perf_counter()
    if oof_folds >= 2:
        for held in kfold_indices(task.train.labels, oof_folds, seed):
            keep = np.setdiff1d(np.arange(len(task.train)), held)
            fold = make_model(spec, task.labels, memory=memory, **settings)
            fold.fit(task.train.subset(keep), task.val, task.labels)
            fold.predict_proba(task.train.subset(held))
    oof_s = time.perf_counter() - t1
    return {"fit": fit_s, "predict": predict_s, "oof": oof_s, "total": time.perf_counter() - t0}


def estimate(spec: str, task: Any, settings: dict[str, Any], oof_folds: int) -> Any:
    """What the Small models tab shows for this data (the same call as pages.models.checklist)."""
    from ea_core.models.estimate import estimate_seconds

    sample = task.train.texts[:500]
    mean_chars = None if task.is_image else sum(map(len, sample)) / max(len(sample), 1)
    return estimate_seconds(spec, len(task.train), len(task.val) + len(task.test), oof_folds=oof_folds,
                            settings=settings, mean_chars=mean_chars, n_val=len(task.val))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--only", nargs="*", help="only these specs")
    ap.add_argument("--skip-finetune", action="store_true", help="skip finetune:minilm (the slowest line)")
    ap.add_argument("--oof-folds", type=int, default=3, help="out-of-fold mining folds, as the app's default (3)")
    args = ap.parse_args()

    from ea_core.data import load_dataset
    from ea_core.models.estimate import format_estimate, format_seconds
    from ea_core.process import configure_process

    configure_process()
    import torch

    print(f"estimate vs measured on this machine: {torch.get_num_threads()} torch threads, load average "
          f"{load_avg()}, {args.oof_folds}-fold out-of-fold mining", flush=True)
    header = (f"{'spec':<26} {'data (train/val/test)':<24} {'estimate':>12} {'central':>8} {'measured':>9} "
              f"{'(fit':>7} {'predict':>7} {'oof)':>7} {'ratio':>6}  on target")
    print(header)
    print("-" * len(header))
    ratios = []
    with tempfile.TemporaryDirectory() as cache:
        os.environ["EA_CACHE_DIR"] = cache  # a cold embedding cache, as on a first run
        tasks: dict[Any, Any] = {}
        for spec, data, caps, settings in CASES:
            if args.only and spec not in args.only or args.skip_finetune and spec.startswith("finetune:minilm"):
                continue
            key = (data, caps)
            if key not in tasks:
                mt, mv, ms = caps or (None, None, None)
                tasks[key] = load_dataset(data, seed=0, max_train=mt, max_val=mv, max_test=ms)
            task = tasks[key]
            est = estimate(spec, task, settings, args.oof_folds)
            got = measure(spec, task, settings, args.oof_folds)
            ratio = got["total"] / est.seconds
            ratios.append(ratio)
            ok = 1 / TARGET <= ratio <= TARGET
            sizes = f"{len(task.train)}/{len(task.val)}/{len(task.test)}"
            print(f"{spec:<26} {data + ' ' + sizes:<24} {format_estimate(est):>12} {format_seconds(est.seconds):>8} "
                  f"{got['total']:>8.1f}s {got['fit']:>6.1f}s {got['predict']:>6.1f}s {got['oof']:>6.1f}s "
                  f"{ratio:>6.2f}  {'yes' if ok else 'NO'}", flush=True)
    if ratios:
        print(f"ratios measured / estimate: {min(ratios):.2f}-{max(ratios):.2f} "
              f"(target {1 / TARGET:.1f}-{TARGET:.1f}); load average now {load_avg()}")
    return 0 if all(1 / TARGET <= r <= TARGET for r in ratios) else 1


if __name__ == "__main__":
    sys.exit(main())
