"""How close the OpenAI-compatible provider gets to ideal throughput against a slow endpoint.

A scripted OpenAI-compatible server (tests/scripted_server.py) answers every request after a fixed
latency (300 ms by default), in its own process so it does not share the client's GIL. For each
concurrency C the ideal rate is C / latency; the provider should reach >= 90% of it up to C=16.
A second run of the same inputs must make 0 calls (all answers from the cache).

    .venv/bin/python bench/bench_lm_throughput.py [--latency 0.3] [--inproc]
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from ea_core.llm import AnswerCache, OpenAIProvider  # noqa: E402

LABELS = ["positive", "negative", "neutral"]
PLAN = [(1, 64), (4, 64), (16, 128), (64, 256)]


def start_server(latency: float, inproc: bool):
    if inproc:
        from tests.scripted_server import ScriptedServer

        srv = ScriptedServer(answer_fn=lambda req: "neutral", latency_s=latency).start()
        return srv.url, srv.close
    proc = subprocess.Popen(
        [sys.executable, "-m", "tests.scripted_server", "--port", "0", "--latency", str(latency), "--answer", "neutral"],
        cwd=REPO,
        stdout=subprocess.PIPE,
        text=True,
    )
    line = proc.stdout.readline()  # "scripted OpenAI-compatible server on URL (...)"
    url = line.split(" on ", 1)[1].split(" ", 1)[0]
    return url, proc.kill


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--latency", type=float, default=0.3)
    ap.add_argument("--inproc", action="store_true", help="run the server in this process (shares the GIL)")
    args = ap.parse_args()
    url, stop = start_server(args.latency, args.inproc)
    try:
        with tempfile.TemporaryDirectory() as tmp:
            warm = OpenAIProvider("bench-model", base_url=url, cache=AnswerCache(Path(tmp) / "warm.sqlite"))
            warm.classify([("warm-up", None)], LABELS)  # settle structured-output/logprobs support once
            print(f"endpoint latency {args.latency * 1000:.0f} ms, server {'in-process' if args.inproc else 'in a subprocess'}")
            print(f"{'concurrency':>11} {'calls':>6} {'wall s':>7} {'calls/s':>8} {'ideal/s':>8} {'ratio':>6}")
            last = None
            for conc, n in PLAN:
                inputs = [(f"benchmark input {conc}-{i}", None) for i in range(n)]
                cache = AnswerCache(Path(tmp) / f"c{conc}.sqlite")
                p = OpenAIProvider("bench-model", base_url=url, cache=cache, concurrency=conc)
                t0 = time.perf_counter()
                answers, usage = p.classify(inputs, LABELS)
                wall = time.perf_counter() - t0
                assert usage.calls == n and all(a.ok for a in answers), usage
                rate, ideal = n / wall, conc / args.latency
                print(f"{conc:>11} {n:>6} {wall:>7.2f} {rate:>8.1f} {ideal:>8.1f} {rate / ideal:>6.0%}")
                last = (p, inputs)
            p, inputs = last
            t0 = time.perf_counter()
            answers, usage = p.classify(inputs, LABELS)
            wall = time.perf_counter() - t0
            print(f"rerun of the last {len(inputs)} inputs: {usage.calls} calls, {usage.cache_hits} cache hits, "
                  f"{wall * 1000:.0f} ms wall")
    finally:
        stop()


if __name__ == "__main__":
    main()
