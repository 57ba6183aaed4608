"""Single-input routing latency for an input answered by a small model: p50 / p95.

Target (issue 4): p50 <= 15 ms for the frozen-encoder (head:minilm) and TF-IDF kinds on CPU.
Each system is the trained SSM with threshold 0 in front of an LM stage that is never reached
(so the LM is not loaded); `route_one` runs the real model on one raw text each time.

    .venv/bin/python bench/bench_route_one.py
"""

from __future__ import annotations

import os
import tempfile
import time

import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

os.environ.setdefault("HF_HUB_OFFLINE", "1")


class _NeverCalled:
    """Stands in for the LM: the benchmark's inputs never reach it."""

    gives_confidence = False

    def classify(self, *a, **k):  # pragma: no cover - would be a routing bug
        raise AssertionError("the LM should not be reached")


def main() -> None:

    from ea_core.data import load_dataset
    from ea_core.models import make_model
    from ea_core.process import configure_process
    from ea_core.system import AdaptedSystem, SystemStage

    configure_process(2)  # what every entry point does before model work
    task = load_dataset("demo:tweets", max_train=1000, max_val=200, max_test=300)
    with tempfile.TemporaryDirectory() as tmp:
        os.environ["EA_CACHE_DIR"] = tmp
        for spec in ("tfidf", "head:minilm"):
            model = make_model(spec, task.labels)
            model.fit(task.train, task.val, task.labels)
            system = AdaptedSystem(task.labels, [SystemStage(spec, 0.0, model), SystemStage("lm", 0.0)],
                                   provider=_NeverCalled())
            texts = task.test.texts
            for t in texts[:10]:  # warm-up
                system.route_one(t)
            times = []
            for t in texts[10:210]:
                t0 = time.perf_counter()
                trace = system.route_one(t)
                times.append(time.perf_counter() - t0)
                assert trace.answered_by == spec
            ms = np.array(times) * 1000
            print(f"{spec:<12} route_one over {len(ms)} inputs: p50 {np.percentile(ms, 50):.2f} ms, "
                  f"p95 {np.percentile(ms, 95):.2f} ms (target p50 <= 15 ms)")


if __name__ == "__main__":
    main()
