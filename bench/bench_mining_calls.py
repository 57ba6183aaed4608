"""LM calls made by EA's underfit mining vs the EA(Full) ablation, on the demo tweets.

Target (issue 3): EA <= 25% of EA(Full)'s calls. Both are counted at a scripted OpenAI-compatible
server on 127.0.0.1 (it answers the gold label; accuracy does not matter for the count), with the
real SSMs (tfidf + head:minilm) trained on the demo data. Mining is measured in-sample (SSMs
scored on their own training data, the paper's setting) and out-of-fold (3 folds).

    .venv/bin/python bench/bench_mining_calls.py [--max-train 2000]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

from ea_core.data import load_dataset  # noqa: E402
from ea_core.pipeline import Pipeline  # noqa: E402
from ea_core.runconfig import RunConfig  # noqa: E402
from tests.scripted_server import ScriptedServer  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--max-train", type=int, default=2000)
    args = ap.parse_args()
    sizes = dict(max_train=args.max_train, max_val=300, max_test=300)
    task = load_dataset("demo:tweets", **sizes)
    gold = {t: task.labels[y] for s in (task.train, task.val, task.test) for t, y in zip(s.texts, s.labels)}
    os.environ["EA_BENCH_KEY"] = "sk-bench-local"
    with tempfile.TemporaryDirectory() as tmp, ScriptedServer(gold, labels=task.labels) as srv:
        os.environ.setdefault("EA_CACHE_DIR", str(Path(tmp) / "emb"))
        print(f"demo tweets: {len(task.train)} training examples; SSMs tfidf + head:minilm; rule 'all'")
        for oof in (0, 3):
            cfg = RunConfig(data="demo:tweets", ssm=["tfidf", "head:minilm"], lm="openai", lm_model="bench",
                            lm_base_url=srv.url, lm_key_env="EA_BENCH_KEY", oof_folds=oof, ea_full=True,
                            cache=str(Path(tmp) / f"cache{oof}.sqlite"), **sizes)
            state = Pipeline(cfg, Path(tmp) / f"run{oof}").run()
            ea = state.lm_usage["mine"]["calls"]
            full = ea + state.lm_usage["train_full"]["calls"]  # EA(Full) re-uses nothing it did not pay for
            print(f"  {'out-of-fold (3)' if oof else 'in-sample':<16} EA mining calls {ea:5d}   EA(Full) calls "
                  f"{full:5d}   ratio {ea / full:.1%} (target <= 25%)   underfit {len(state.mining.underfit)}")


if __name__ == "__main__":
    main()
