"""Which validation signal should pick the augmented SSM's (ASSM's) epoch?

The pipeline fine-tunes the top SSM on the mined underfit set X_U (SSMs and LM wrong) and keeps
the epoch with the best accuracy on *all* of validation. An ASSM is only ever asked about inputs
the Specific Layer (SL) did not take, so that signal mostly measures how little the ASSM has
drifted from its source, and favours doing little. Compared here, each as the epoch chosen from
the same training trajectory (one warm-start run of the library's own loop, every epoch's head
recorded; ties broken by lower loss, as `BestWeights` does):

* ``all_val``   accuracy on all of validation (the library today);
* ``ssm_wrong`` accuracy on the validation inputs the source SSM gets wrong;
* ``sl_missed`` accuracy on the validation inputs the SL misses (source SSM wrong and LM wrong:
  the validation twin of X_U, what the ASSM was trained to fix);
* ``routed``    the routed EA system's validation accuracy (SSM -> ASSM -> LM, thresholds tuned
  in-sample within the run's LM budget, the ASSM temperature-scaled at that epoch);
* ``last``      no selection: the final epoch (reference).

For each signal, EA is scored as the pipeline scores it: the ASSM temperature-scaled on
validation, the reported point chosen by the run's honest rule (`choose_operating_point`,
default ``crossfit_guarded``) and, to see the ASSM even where that rule keeps the simpler
system, the full cascade tuned in-sample (``insample``). Printed per setting and signal (means
over seeds): EA test accuracy and its gap to the best small model on test, validation accuracy
of the reported point, optimism (validation - test), how often the rule kept the full EA, the
ASSM's test accuracy on the test inputs the SL misses, and the epoch chosen.

    .venv/bin/python bench/bench_assm_signal.py [--seeds 5] [--lms chance,better_on_some]

Runs (head:minilm SSM, scripted LM, out-of-fold mining) are cached under --runs; a rerun only
rescores. See the figures in the final report of issue 9's ASSM item.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_honest import LMS, ScriptedLM  # noqa: E402

SIGNALS = ("all_val", "ssm_wrong", "sl_missed", "routed", "last")
SSM = "head:minilm"


def make_run(folder: Path, seed: int, lm: str, sizes: tuple[int, int, int]) -> Any:
    """One EA run with the library's default ASSM selection (cached in `folder`), opened from disk."""
    from ea_core.data import load_dataset
    from ea_core.pipeline import Pipeline
    from ea_core.runconfig import RunConfig
    from ea_core.runstate import is_run_folder, open_run

    n_train, n_val, n_test = sizes
    if not (is_run_folder(folder) and (folder / "results.json").is_file()):
        task = load_dataset("demo:tweets", seed=seed, max_train=n_train, max_val=n_val, max_test=n_test)
        truth = {t: int(y) for sp in (task.train, task.val, task.test) for t, y in zip(sp.texts, sp.labels)}
        cfg = RunConfig(data="demo:tweets", ssm=[SSM], seed=seed, max_train=n_train, max_val=n_val,
                        max_test=n_test, lm="openai", lm_model=f"scripted-{lm}", oof_folds=3,
                        cache=str(folder / "answers.sqlite"))
        Pipeline(cfg, folder, provider=ScriptedLM(truth, len(task.labels), LMS[lm], lm)).run()
    return open_run(folder)


class _Recorder:
    """Stands in for `ea_core.models.common.BestWeights` during one fit: keeps every evaluated
    epoch's weights and never stops early (the ASSM's 10 warm-start epochs < its patience anyway)."""

    epochs: list[dict] = []

    def __init__(self, patience: int) -> None:
        self.patience = patience
        _Recorder.epochs = []

    def update(self, module, val_accuracy: float, val_loss: float) -> bool:
        _Recorder.epochs.append({k: v.detach().to("cpu", copy=True) for k, v in module.state_dict().items()})
        return False

    def restore(self, module) -> None:
        return None


def assm_trajectory(state) -> list[dict[str, np.ndarray]]:
    """The ASSM's probabilities on val and test after each warm-start epoch (the library's loop)."""
    from ea_core.models import head, load_model

    src = state.ssms[0]
    model = load_model(src.folder / "model")
    train = state.task.train.subset(state.mining.underfit)
    saved = head.BestWeights
    head.BestWeights = _Recorder
    try:
        model.fit(train, state.task.val, state.task.labels, warm_start=True)
    finally:
        head.BestWeights = saved
    out = []
    for weights in _Recorder.epochs:
        model.head_.load_state_dict(weights)
        out.append({s: model.predict_proba(state.task.split(s)) for s in ("val", "test")})
    return out


def _score(proba: np.ndarray, y: np.ndarray, rows: np.ndarray) -> tuple[float, float]:
    """(accuracy, -loss) on `rows`: the key `BestWeights` maximises."""
    if len(rows) == 0:
        return 0.0, 0.0
    p = proba[rows]
    acc = float((p.argmax(1) == y[rows]).mean())
    loss = float(-np.log(np.clip(p[np.arange(len(rows)), y[rows]], 1e-12, None)).mean())
    return acc, -loss


def ea_stages(state, assm: dict[str, np.ndarray], split: str, temperature: float):
    from ea_core.router import StageOutput
    from ea_core.runstate import lm_stage_output
    from ea_core.calibration import apply_temperature

    src = state.ssms[0]
    ssm = StageOutput.from_proba(src.name, apply_temperature(src.outputs()[split], state.temperatures[src.name]))
    a = StageOutput.from_proba("assm", apply_temperature(assm[split], temperature))
    return [ssm, a, lm_stage_output(state.lm_answers[split])]


def score_signals(state) -> dict[str, dict[str, float]]:
    from ea_core.report import ea_candidates
    from ea_core.router import evaluate
    from ea_core.operating_point import choose_operating_point
    from ea_core.calibration import Calibration
    from ea_core.tuning import autotune

    cfg = state.config
    y_val, y_test = state.task.val.labels, state.task.test.labels
    src = state.ssms[0]
    lm_val, lm_test = state.lm_answers["val"]["label"], state.lm_answers["test"]["label"]
    ssm_wrong_val = np.flatnonzero(src.outputs()["val"].argmax(1) != y_val)
    sl_missed_val = np.flatnonzero((src.outputs()["val"].argmax(1) != y_val) & (lm_val != y_val))
    sl_missed_test = np.flatnonzero((src.outputs()["test"].argmax(1) != y_test) & (lm_test != y_test))
    traj = assm_trajectory(state)
    temps = [Calibration.fit(t["val"], y_val).temperature for t in traj]
    all_rows = np.arange(len(y_val))

    def routed(e: int) -> tuple[float, float]:
        stages = ea_stages(state, traj[e], "val", temps[e])
        point = autotune(stages, y_val, max_lm_rate=cfg.max_lm_rate)
        return float(evaluate(stages, point.thresholds, y_val).accuracy), 0.0

    keys = {
        "all_val": [_score(t["val"], y_val, all_rows) for t in traj],
        "ssm_wrong": [_score(t["val"], y_val, ssm_wrong_val) for t in traj],
        "sl_missed": [_score(t["val"], y_val, sl_missed_val) for t in traj],
        "routed": [routed(e) for e in range(len(traj))],
        "last": [(float(e), 0.0) for e in range(len(traj))],
    }
    cands = ea_candidates(state)
    best_ssm_test = src.test_accuracy
    out = {}
    for sig in SIGNALS:
        e = max(range(len(traj)), key=lambda i: (keys[sig][i], -i))  # ties: the earlier epoch
        val_st, test_st = ea_stages(state, traj[e], "val", temps[e]), ea_stages(state, traj[e], "test", temps[e])
        c = choose_operating_point(val_st, y_val, cands, rule=cfg.operating_point, max_lm_rate=cfg.max_lm_rate,
                                   seed=cfg.seed)
        full = choose_operating_point(val_st, y_val, cands, rule="insample", max_lm_rate=cfg.max_lm_rate,
                                      seed=cfg.seed)
        t, tf = evaluate(test_st, c.thresholds, y_test), evaluate(test_st, full.thresholds, y_test)
        out[sig] = {"epoch": e + 1, "test": 100 * t.accuracy, "gap": 100 * (t.accuracy - best_ssm_test),
                    "val": 100 * c.val_accuracy, "full_kept": float(c.system == "full"),
                    "ins_test": 100 * tf.accuracy, "ins_val": 100 * full.val_accuracy,
                    "assm_missed": 100 * float((traj[e]["test"].argmax(1)[sl_missed_test]
                                                == y_test[sl_missed_test]).mean()) if len(sl_missed_test) else np.nan,
                    "assm_all": 100 * float((traj[e]["test"].argmax(1) == y_test).mean())}
    out["_meta"] = {"underfit": len(state.mining.underfit), "val_missed": len(sl_missed_val),
                    "ssm_test": 100 * best_ssm_test}
    return out


def main() -> None:
    from ea_core.process import configure_process

    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--seeds", type=int, default=5)
    ap.add_argument("--lms", default="chance,better_on_some")
    ap.add_argument("--sizes", default="600,300,400", help="train,val,test")
    ap.add_argument("--runs", default="/tmp/ea_assm_signal_runs")
    args = ap.parse_args()
    configure_process(2)
    sizes = tuple(int(x) for x in args.sizes.split(","))
    t0 = time.perf_counter()
    print(f"ASSM selection signal: demo:tweets {sizes[0]}/{sizes[1]}/{sizes[2]}, SSM {SSM}, scripted LM, "
          f"{args.seeds} seeds; means over seeds (accuracy in %, gap and optimism in points)")
    print(f"{'setting':<16} {'signal':<10} {'EA test':>7} {'gap':>6} {'worst':>6} {'EA val':>6} {'optim.':>6} "
          f"{'full kept':>9} {'insamp test':>11} {'optim.':>6} {'ASSM@missed':>11} {'ASSM all':>8} {'epoch':>5}")
    for lm in args.lms.split(","):
        res = []
        for seed in range(args.seeds):
            state = make_run(Path(args.runs) / f"{lm}-{seed}", seed, lm, sizes)
            if not state.assms or state.mining is None:
                print(f"  {lm} seed {seed}: no ASSM trained (underfit set too small); skipped")
                continue
            res.append(score_signals(state))
        meta = [r["_meta"] for r in res]
        for sig in SIGNALS:
            def m(k: str) -> float:
                return float(np.nanmean([r[sig][k] for r in res]))

            gaps = [r[sig]["gap"] for r in res]
            print(f"{lm:<16} {sig:<10} {m('test'):7.2f} {m('gap'):+6.2f} {min(gaps):+6.2f} {m('val'):6.2f} "
                  f"{m('val') - m('test'):+6.2f} {m('full_kept'):9.2f} {m('ins_test'):11.2f} "
                  f"{m('ins_val') - m('ins_test'):+6.2f} {m('assm_missed'):11.2f} {m('assm_all'):8.2f} {m('epoch'):5.1f}")
        print(f"{'':<16} (best SSM test {np.mean([x['ssm_test'] for x in meta]):.2f}; |X_U| "
              f"{np.mean([x['underfit'] for x in meta]):.0f}; val inputs the SL misses "
              f"{np.mean([x['val_missed'] for x in meta]):.0f}; {len(res)} seeds)")
        sys.stdout.flush()
    print(f"({time.perf_counter() - t0:.0f} s)")


if __name__ == "__main__":
    main()
