"""`python -m ea_core demo` end to end: wall time per stage, total, peak RSS, test accuracies.

Targets (issue 4): total <= 10 min on 2 cores (later 5), peak RSS <= 3 GB; with --data demo:digits
(issue 10, the offline image default) total <= 3 min. Runs the demo in a fresh run folder and LM
cache (nothing reused), in a child process so its peak RSS is its own.

    .venv/bin/python bench/bench_demo.py [--data demo:digits] [--max-train N --max-val N --max-test N]
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", choices=("demo:tweets", "demo:digits"), default="demo:tweets")
    ap.add_argument("--max-train", type=int)
    ap.add_argument("--max-val", type=int)
    ap.add_argument("--max-test", type=int)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "demo"
        cmd = [sys.executable, "-m", "ea_core", "demo", "--data", args.data, "--out", str(out)]
        for flag in ("max_train", "max_val", "max_test"):
            if getattr(args, flag):
                cmd += [f"--{flag.replace('_', '-')}", str(getattr(args, flag))]
        env_cache = Path(tmp) / "emb"
        t0 = time.perf_counter()
        proc = subprocess.run(cmd, capture_output=True, text=True,
                              env={**__import__("os").environ, "EA_CACHE_DIR": str(env_cache)})
        wall = time.perf_counter() - t0
        peak_mb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
        if proc.returncode != 0:
            print(proc.stdout, proc.stderr, sep="\n")
            raise SystemExit(f"demo failed with exit code {proc.returncode}")
        events = [json.loads(line) for line in (out / "events.jsonl").read_text().splitlines()]
        marks = [e for e in events if e["stage"] == "run"]
        target = "180 s" if args.data == "demo:digits" else "600 s, later 300 s"
        print(f"demo {args.data} end to end: {wall:.1f} s wall (target <= {target}), peak RSS {peak_mb:.0f} MB "
              f"(target <= 3072 MB)")
        print("time per stage:")
        for a, b in zip(marks, marks[1:]):
            print(f"  {a['message']:<10} {b['time'] - a['time']:7.1f} s")
        rows = json.loads((out / "results.json").read_text())["rows"]
        print("test accuracy per system (train time of each small model):")
        for r in rows:
            rate = r.get("lm_call_rate")
            took = f"   trained in {r['train_time_s']:.1f} s" if r.get("train_time_s") and ":" in r["system"] else ""
            print(f"  {r['system']:<24} {r['test_accuracy']:.2%}" + (f"   LM calls {rate:.1%}" if rate is not None else "")
                  + took)
        print((out / "mining.json").read_text() if (out / "mining.json").is_file() else "")


if __name__ == "__main__":
    main()
