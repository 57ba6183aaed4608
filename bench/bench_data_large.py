"""Benchmark: load and split a 1,000,000-row CSV with `ea_core.data.load_dataset`.

Checks that loading stays cheap in memory: the peak resident-memory growth during
`load_dataset` should be a small multiple (about 3x or less) of the file size, because the file
is read with pyarrow and split as numpy index arrays; only the capped splits become Python lists.

Usage:  python bench/bench_data_large.py [--rows 1000000] [--max-train 2000] [--keep DIR]

The CSV is written in chunks (constant memory) to a temp dir, then loading is measured in a
fresh child process so that generating the file does not pollute the memory figures.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

WORDS = (
    "the a movie film plot actor great terrible boring fun slow fast story ending music scene "
    "love hate loved hated brilliant awful average fine ok really very quite not never always "
    "character dialogue camera script director sequel long short funny sad dark bright"
).split()
LABELS = ("negative", "neutral", "positive")


def write_csv(path: Path, rows: int, seed: int = 0, chunk: int = 100_000) -> None:
    """Write `rows` rows of (text ~60-100 chars, label in 3 classes), chunk by chunk."""
    rng = np.random.default_rng(seed)
    words = np.array(WORDS)
    with open(path, "w", encoding="utf-8", newline="") as fh:
        fh.write("text,label\n")
        for start in range(0, rows, chunk):
            n = min(chunk, rows - start)
            labels = rng.integers(0, 3, size=n)
            picks = words[rng.integers(0, len(words), size=(n, 20))]
            lines = []
            for i in range(n):
                text = " ".join(picks[i])
                cut = int(rng.integers(60, 101))
                text = text[:cut].rstrip()
                lines.append(f"{text},{LABELS[labels[i]]}\n")
            fh.write("".join(lines))


def measure(path: str, max_train: int, max_val: int, max_test: int) -> dict:
    """Run in a fresh process: load + split `path` and report time and peak RSS growth."""
    import resource

    import psutil

    from ea_core.data import describe, load_dataset

    rss_cold = psutil.Process().memory_info().rss
    # Warm up on a tiny file: the first pyarrow.compute call maps ~45 MB of kernel code and
    # registries once per process, whatever the data size. Measure the data-driven growth.
    with tempfile.TemporaryDirectory() as tmp:
        small = Path(tmp) / "small.csv"
        write_csv(small, 300)
        load_dataset(str(small))
    rss_before = psutil.Process().memory_info().rss
    start = time.perf_counter()
    task = load_dataset(path, max_train=max_train, max_val=max_val, max_test=max_test, seed=0)
    elapsed = time.perf_counter() - start
    peak_after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    info = describe(task)
    return {
        "load_s": elapsed,
        "peak_rss_delta_mb": (peak_after - rss_before) / 2**20,
        "peak_rss_delta_cold_mb": (peak_after - rss_cold) / 2**20,
        "rss_before_mb": rss_before / 2**20,
        "sizes": info["sizes"],
        "labels": info["labels"],
        "warnings": len(info["warnings"]),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--max-train", type=int, default=2000)
    parser.add_argument("--max-val", type=int, default=500)
    parser.add_argument("--max-test", type=int, default=500)
    parser.add_argument("--keep", help="write the CSV into this folder and keep it")
    parser.add_argument("--measure", help=argparse.SUPPRESS)  # child-process mode
    args = parser.parse_args()

    if args.measure:
        print(json.dumps(measure(args.measure, args.max_train, args.max_val, args.max_test)))
        return

    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(args.keep) if args.keep else Path(tmp)
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / f"large_{args.rows}.csv"
        t0 = time.perf_counter()
        write_csv(path, args.rows)
        gen_s = time.perf_counter() - t0
        size_mb = path.stat().st_size / 2**20
        repo = Path(__file__).resolve().parents[1]
        env = dict(os.environ, PYTHONPATH=str(repo) + os.pathsep + os.environ.get("PYTHONPATH", ""))
        out = subprocess.run(
            [sys.executable, __file__, "--measure", str(path), "--max-train", str(args.max_train),
             "--max-val", str(args.max_val), "--max-test", str(args.max_test)],
            check=True, capture_output=True, text=True, env=env,
        )
        res = json.loads(out.stdout.strip().splitlines()[-1])

    ratio = res["peak_rss_delta_mb"] / size_mb
    print(f"rows:                  {args.rows:,}")
    print(f"file size:             {size_mb:.1f} MB   (generated in {gen_s:.1f} s)")
    print(f"load + split time:     {res['load_s']:.2f} s")
    print(f"peak RSS delta:        {res['peak_rss_delta_mb']:.1f} MB   (RSS before load {res['rss_before_mb']:.0f} MB; "
          f"{res['peak_rss_delta_cold_mb']:.1f} MB counting pyarrow's one-time warm-up)")
    cold = res["peak_rss_delta_cold_mb"] / size_mb
    print(f"peak RSS / file size:  {ratio:.2f}x   ({cold:.2f}x with the warm-up; target <= ~3x)")
    print(f"split sizes:           {res['sizes']}   labels: {res['labels']}")


if __name__ == "__main__":
    main()
