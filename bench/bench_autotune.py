"""How fast and how well thresholds are auto-tuned, against the FrugalGPT-style brute force.

Why: the user sets a budget (share of inputs sent to the LM) and expects the thresholds at once.
Targets: 6 stages on 10,000 validation examples in <= 1 s; for 3 stages at a 20% LM budget,
validation accuracy >= `brute_force_tune` (scipy.optimize.brute, 40 points per threshold) in
<= 1/20 of its time, both measured in this run. Thresholds are chosen on validation; test
accuracy (another 10,000 synthetic examples from the same generator) is printed alongside.

Run: ``.venv/bin/python bench/bench_autotune.py [--n 10000] [--budget 0.2] [--repeats 3]``
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from ea_core.router import StageStack, evaluate, synthetic_stages  # noqa: E402
from ea_core.tuning import autotune, brute_force_tune, pareto_front  # noqa: E402


def timed(fn, repeats: int):
    """(result of the last run, median seconds over `repeats` runs)."""
    times, out = [], None
    for _ in range(repeats):
        t = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t)
    return out, float(np.median(times))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=10_000)
    ap.add_argument("--budget", type=float, default=0.2, help="max LM call rate")
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()

    val, y_val = synthetic_stages(args.n, 6, seed=0)
    test, y_test = synthetic_stages(args.n, 6, seed=1)
    B = args.budget
    print(f"auto-tune benchmark: {args.n:,} validation + {args.n:,} test examples, LM budget {B:.0%}")

    # ---- 6 stages ---------------------------------------------------------------------------
    names = [s.name for s in val]
    p6, t6 = timed(lambda: autotune(val, y_val, max_lm_rate=B), args.repeats)  # cold: stacks and searches
    stack = StageStack(val, y_val)
    autotune(stack, y_val, max_lm_rate=B)
    budgets = np.linspace(0.05, 0.5, 10)
    t = time.perf_counter()
    for b in budgets:
        autotune(stack, y_val, max_lm_rate=float(b))
    t_slider = (time.perf_counter() - t) / len(budgets)
    front, t_front = timed(lambda: pareto_front(val, y_val), 1)
    m6 = evaluate(test, p6.thresholds, y_test)
    print(f"\n6 stages ({', '.join(names)}):")
    print(f"  autotune (cold, from stage outputs)   {t6 * 1e3:8.1f} ms median of {args.repeats}   "
          f"[target <= 1 s: {'OK' if t6 <= 1 else 'MISSED'}]   method: {p6.method}")
    print(f"  autotune, budget slider on a cached stack {t_slider * 1e3:6.1f} ms per budget")
    print(f"  pareto_front                          {t_front * 1e3:8.1f} ms, {len(front)} points")
    print(f"  val accuracy {p6.accuracy:.4f} at LM rate {p6.lm_call_rate:.1%} (${p6.cost_per_1k_usd:.4f}/1k);"
          f"  test accuracy {m6.accuracy:.4f} at LM rate {m6.lm_call_rate:.1%}")
    print(f"  thresholds {[round(x, 4) for x in p6.thresholds]}")
    lm_only = evaluate(val, [1.01] * 5 + [0.0], y_val).accuracy
    print(f"  (LM alone: val accuracy {lm_only:.4f} at 100% LM calls)")

    # ---- 3 stages vs brute force ---------------------------------------------------------------
    sub = [val[0], val[4], val[5]]  # ssm1, assm1, lm
    sub_test = [test[0], test[4], test[5]]
    ours, t_ours = timed(lambda: autotune(sub, y_val, max_lm_rate=B), max(args.repeats, 5))
    exact, t_exact = timed(lambda: autotune(sub, y_val, max_lm_rate=B, polish=False), max(args.repeats, 5))
    brute, t_brute = timed(lambda: brute_force_tune(sub, y_val, B, grid=40), 1)
    print(f"\n3 stages ({', '.join(s.name for s in sub)}), LM budget {B:.0%}:")
    rows = [
        ("autotune (exact grid + polish)", ours, t_ours),
        ("autotune, no polish (exact grid)", exact, t_exact),
        ("brute_force_tune (scipy brute 40^2)", brute, t_brute),
    ]
    for label, p, secs in rows:
        mt = evaluate(sub_test, p.thresholds, y_test)
        print(f"  {label:38s} val acc {p.accuracy:.4f}  LM {p.lm_call_rate:6.1%}  | test acc {mt.accuracy:.4f}  "
              f"LM {mt.lm_call_rate:6.1%}  | {secs * 1e3:8.1f} ms")
    print(f"  accuracy (val) autotune - brute force: {ours.accuracy - brute.accuracy:+.4f}   "
          f"[target >= 0: {'OK' if ours.accuracy >= brute.accuracy else 'MISSED'}]")
    print(f"  time ratio brute force / autotune:     {t_brute / t_ours:8.1f}x   "
          f"[target >= 20x: {'OK' if t_brute / t_ours >= 20 else 'MISSED'}]")
    print(f"  time ratio brute force / no-polish:    {t_brute / t_exact:8.1f}x")


if __name__ == "__main__":
    main()
