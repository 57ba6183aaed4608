"""How fast the router answers a threshold slider: vectorised routing vs a per-example Python loop.

Why: the UI recomputes routing and all its metrics on every slider move, from cached per-stage
outputs. The target is <= 2 ms per change for 10,000 examples x 6 stages, and >= 100x a plain
per-example Python cascade measured in the same run.

Run: ``.venv/bin/python bench/bench_routing.py [--n 10000] [--stages 6]``
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from ea_core.router import StageStack, evaluate, synthetic_stages  # noqa: E402


def python_cascade(conf, pred, is_lm, cost, y, thr, n_labels):
    """The same routing and metrics, one example at a time in plain Python (lists, no numpy)."""
    S, n = len(conf), len(y)
    first_lm = next((k for k in range(S) if is_lm[k]), None)
    counts = [0] * S
    right_by_stage = [0] * S
    tp = [0] * n_labels
    support = [0] * n_labels
    predicted = [0] * n_labels
    right = calls = 0
    money = 0.0
    for i in range(n):
        for k in range(S):
            if k == S - 1 or conf[k][i] >= thr[k]:
                break
        p, t = pred[k][i], y[i]
        counts[k] += 1
        support[t] += 1
        if 0 <= p < n_labels:
            predicted[p] += 1
        if p == t:
            right += 1
            right_by_stage[k] += 1
            tp[t] += 1
        if first_lm is not None and k >= first_lm:
            calls += 1
        for s in range(k + 1):
            if cost[s] is not None:
                money += cost[s][i]
    f1 = [2 * tp[c] / (support[c] + predicted[c]) for c in range(n_labels) if support[c] + predicted[c]]
    return {
        "accuracy": right / n,
        "macro_f1": sum(f1) / len(f1),
        "lm_call_rate": calls / n,
        "cost_per_1k_usd": money / n * 1000,
        "shares": [c / n for c in counts],
        "stage_accuracy": [r / c if c else float("nan") for r, c in zip(right_by_stage, counts)],
    }


def numpy_cascade(stages, y, thr):
    """The per-example loop as naive code writes it, straight over the cached numpy arrays."""
    S, n = len(stages), len(y)
    right = calls = 0
    money = 0.0
    first_lm = next((k for k in range(S) if stages[k].is_lm), None)
    for i in range(n):
        for k in range(S):
            if k == S - 1 or stages[k].conf[i] >= thr[k]:
                break
        right += int(stages[k].pred[i] == y[i])
        calls += int(first_lm is not None and k >= first_lm)
        money += sum(float(stages[s].cost_usd[i]) for s in range(k + 1) if stages[s].cost_usd is not None)
    return right / n, calls / n, money / n * 1000


def time_per_change(fn, settings) -> np.ndarray:
    times = []
    for thr in settings:
        t = time.perf_counter()
        fn(thr)
        times.append(time.perf_counter() - t)
    return np.array(times) * 1e3


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=10_000)
    ap.add_argument("--stages", type=int, default=6)
    ap.add_argument("--changes", type=int, default=2000, help="threshold changes timed for the vectorised router")
    ap.add_argument("--loop-changes", type=int, default=10, help="threshold changes timed for the Python loop")
    args = ap.parse_args()

    stages, y = synthetic_stages(args.n, args.stages, seed=0)
    n_labels = int(y.max()) + 1
    rng = np.random.default_rng(1)
    # Two slider regimes: anywhere in [0, 1], and around tuned operating points (thresholds of
    # 0.5 to 1, where inputs travel further down the cascade and the Python loop does more work).
    # Third regime, what a UI slider does: one stage's threshold moves at a time (to a random
    # value in [0.5, 1]); StageStack.evaluate then re-routes only the inputs in between.
    one = np.empty((args.changes, args.stages))
    cur = rng.uniform(0.5, 1.0, size=args.stages)
    for i in range(args.changes):
        cur = cur.copy()
        cur[rng.integers(0, args.stages - 1)] = rng.uniform(0.5, 1.0)
        one[i] = cur
    # Fourth: dragging a slider, i.e. one threshold moving in steps of 0.005 across [0.5, 1].
    drag = np.empty((args.changes, args.stages))
    cur = rng.uniform(0.5, 1.0, size=args.stages)
    k, step = 0, 0.005
    for i in range(args.changes):
        cur = cur.copy()
        if not 0.5 <= cur[k] + step <= 1.0:
            k, step = int(rng.integers(0, args.stages - 1)), -step
        cur[k] = min(max(cur[k] + step, 0.5), 1.0)
        drag[i] = cur
    regimes = {
        "all thresholds change, in [0, 1]  ": rng.uniform(0.0, 1.0, size=(args.changes, args.stages)),
        "all thresholds change, in [0.5, 1]": rng.uniform(0.5, 1.0, size=(args.changes, args.stages)),
        "one slider jumps, in [0.5, 1]     ": one,
        "one slider dragged, 0.005 steps   ": drag,
    }

    t0 = time.perf_counter()
    stack = StageStack(stages, y)
    build_ms = (time.perf_counter() - t0) * 1e3
    conf = [s.conf.tolist() for s in stages]
    pred = [s.pred.tolist() for s in stages]
    cost = [None if s.cost_usd is None else s.cost_usd.tolist() for s in stages]
    is_lm = [s.is_lm for s in stages]
    ylist = y.tolist()

    # Same numbers from both.
    some = np.array([0.9] * (args.stages - 1) + [0.0])
    m = stack.evaluate(some)
    ref = python_cascade(conf, pred, is_lm, cost, ylist, some.tolist(), n_labels)
    assert abs(m.accuracy - ref["accuracy"]) < 1e-12 and abs(m.macro_f1 - ref["macro_f1"]) < 1e-12
    assert abs(m.lm_call_rate - ref["lm_call_rate"]) < 1e-12
    assert abs(m.cost_per_1k_usd - ref["cost_per_1k_usd"]) < 1e-9

    print(f"routing benchmark: {args.n:,} examples x {args.stages} stages ({', '.join(stack.names)})")
    print(f"  StageStack build (once per split)                  {build_ms:8.3f} ms")
    ok = True
    for label, settings in regimes.items():
        for thr in settings[:50]:  # warm-up
            StageStack(stages, y).evaluate(thr)
        stack.evaluate(settings[-1])
        ev_ms = time_per_change(stack.evaluate, settings)
        route_ms = time_per_change(stack.route, settings)
        oneshot_ms = time_per_change(lambda t: evaluate(stages, t, y), settings[:200])
        loop_ms = time_per_change(
            lambda t: python_cascade(conf, pred, is_lm, cost, ylist, t.tolist(), n_labels),
            settings[: args.loop_changes],
        )
        np_ms = time_per_change(lambda t: numpy_cascade(stages, y, t), settings[:3])
        med, loop_med, np_med = float(np.median(ev_ms)), float(np.median(loop_ms)), float(np.median(np_ms))
        ratio = loop_med / med
        ok &= med <= 2
        print(f"  [{label}]")
        print(f"    route only                                       {np.median(route_ms):8.3f} ms median")
        print(
            f"    route + all metrics (StageStack.evaluate)        {med:8.3f} ms median, "
            f"{np.percentile(ev_ms, 95):.3f} ms p95 over {len(settings)} changes   "
            f"[target <= 2 ms: {'OK' if med <= 2 else 'MISSED'}]"
        )
        print(f"    one-shot evaluate(stages, thr, y) (restacks)     {np.median(oneshot_ms):8.3f} ms median")
        print(
            f"    per-example Python cascade, lists + metrics      {loop_med:8.3f} ms median "
            f"over {len(loop_ms)} changes"
        )
        print(f"    per-example loop over the numpy arrays           {np_med:8.3f} ms median over {len(np_ms)} changes")
        print(
            f"    speed-up vs Python lists loop                    {ratio:8.0f}x   "
            f"[target >= 100x: {'OK' if ratio >= 100 else 'MISSED'}]"
        )
        print(f"    speed-up vs numpy-indexing loop                  {np_med / med:8.0f}x")
    print(
        f"  sample: accuracy {m.accuracy:.4f}, macro-F1 {m.macro_f1:.4f}, LM calls {m.lm_call_rate:.1%}, "
        f"${m.cost_per_1k_usd:.4f} per 1k, shares {[round(s, 3) for s in m.shares]}"
    )
    print(f"  <= 2 ms per change in every regime: {ok}")


if __name__ == "__main__":
    main()
