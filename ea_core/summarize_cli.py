"""The command line of summarization runs: ``summarize`` (any data, any LM) and what ``demo --data
demo:aclsum`` runs (the offline default). Kept apart from `ea_core.cli` so that the classification
commands stay as they are; the engine is imported inside the command (start-up time).
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
from pathlib import Path
from typing import Any, Optional

from ea_core.errors import ConfigError
from ea_core.events import ProgressCallback

#: The demo's defaults (the offline LM is slow on CPU: a small validation and test sample).
DEMO_ACLSUM = {"max_train": None, "max_val": 45, "max_test": 60, "mine_lm_max": 24}


def add_summary_args(p: argparse.ArgumentParser, *, demo: bool = False) -> None:
    """The flags of a summarization run (the demo takes the same, with its own defaults)."""
    if not demo:
        p.add_argument("--data", required=True, metavar="PATH",
                       help="CSV, TSV, JSONL or Parquet file with a source and a reference-summary column, "
                            "or demo:aclsum (offline)")
        p.add_argument("--source-column", default=None, metavar="COL", help="source text column (detected if absent)")
        p.add_argument("--summary-column", default=None, metavar="COL", help="reference summary column (detected)")
        p.add_argument("--instruction-column", default=None, metavar="COL", help="optional instruction column")
        p.add_argument("--out", default="runs/summarize", metavar="DIR", help="run folder (default runs/summarize)")
    p.add_argument("--summary-ssm", action="append", metavar="SPEC", dest="summary_ssm",
                   help="small summarizer: extractive (sentence scorer over MiniLM), lead, finetune:MODEL "
                        "(seq2seq); repeat for several (default extractive and lead)")
    p.add_argument("--summary-lm", default="local", metavar="LM", dest="summary_lm",
                   help="'local' (the packaged SmolLM2, a weak offline stand-in) or the base URL of an "
                        "OpenAI-compatible endpoint (with --summary-lm-model)")
    p.add_argument("--summary-lm-model", default=None, metavar="NAME", dest="summary_lm_model")
    p.add_argument("--summary-lm-key-env", default="OPENAI_API_KEY", metavar="VAR", dest="summary_lm_key_env",
                   help="environment variable holding the API key (default OPENAI_API_KEY)")
    p.add_argument("--summary-shots", type=int, default=0, metavar="K", dest="summary_shots",
                   help="k-shot prompt: the first K training examples as worked examples (default 0; every call "
                        "then pays for their tokens)")
    p.add_argument("--price-in", type=float, default=0.0, metavar="USD", help="USD per 1M prompt tokens")
    p.add_argument("--price-out", type=float, default=0.0, metavar="USD", help="USD per 1M output tokens")
    p.add_argument("--budget-usd", type=float, default=None, metavar="USD", help="stop before spending more")
    p.add_argument("--gamma", type=float, default=None, metavar="G",
                   help="underfit threshold on ROUGE-L F1 (default: the small models' median validation ROUGE-L)")
    p.add_argument("--mine-lm-max", type=int, default=None, metavar="N",
                   help="at most N missed training examples asked to the LM while mining (default all; demo 24)")
    p.add_argument("--max-source-words", type=int, default=400, metavar="N",
                   help="truncate longer sources (counted and warned)")
    p.add_argument("--cache", default=None, metavar="FILE", help="LM answer cache (default DIR/lm_cache.sqlite)")


def _lm(args: argparse.Namespace, out: Path, task: Any = None) -> Any:
    from ea_core.llm.summarize import LocalSummaryLM, OpenAISummaryLM

    cache = args.cache or str(out / "lm_cache.sqlite")
    k = int(getattr(args, "summary_shots", 0) or 0)
    if k < 0 or (k and task is not None and k >= len(task.train) - 1):
        raise ConfigError(f"--summary-shots is 0 or more and leaves at least two training examples, not {k}.")
    shots = [] if not k or task is None else [
        (task.train.sources[i], task.train.instructions[i], task.train.references[i]) for i in range(k)]
    if args.summary_lm == "local":
        return LocalSummaryLM(cache_path=cache, budget_usd=args.budget_usd, shots=shots)
    if not args.summary_lm.startswith(("http://", "https://")):
        raise ConfigError(f"--summary-lm is 'local' or an http(s) base URL, not {args.summary_lm!r}.")
    if not args.summary_lm_model:
        raise ConfigError("--summary-lm URL needs --summary-lm-model NAME.")
    return OpenAISummaryLM(args.summary_lm, args.summary_lm_model, api_key=os.environ.get(args.summary_lm_key_env),
                           price_in_per_1m=args.price_in, price_out_per_1m=args.price_out, cache_path=cache,
                           budget_usd=args.budget_usd, shots=shots)


def cmd_summarize(args: argparse.Namespace, *, demo: bool = False, progress: Optional[ProgressCallback] = None) -> int:
    """Run EA on a summarization task and print the table; results in DIR/results.json. `progress`:
    the CLI's progress bars (any callback of typed events)."""
    from ea_core.data.summaries import load_summaries
    from ea_core.summarization import format_summary_table, run_summarization, write_summarization

    if demo:
        data, out = "demo:aclsum", Path(args.out or "runs/demo-aclsum")
        sizes = {k: getattr(args, k, None) if getattr(args, k, None) is not None else DEMO_ACLSUM[k]
                 for k in ("max_train", "max_val", "max_test")}
        cols: dict[str, Any] = {}
        mine = args.mine_lm_max if args.mine_lm_max is not None else DEMO_ACLSUM["mine_lm_max"]
    else:
        data, out = args.data, Path(args.out)
        sizes = {k: getattr(args, k, None) for k in ("max_train", "max_val", "max_test")}
        cols = {"source_column": args.source_column, "summary_column": args.summary_column,
                "instruction_column": args.instruction_column}
        mine = args.mine_lm_max
    task = load_summaries(data, max_source_words=args.max_source_words, **cols, **sizes)
    for w in task.warnings:
        print(f"warning: {w}", file=sys.stderr)
    out.mkdir(parents=True, exist_ok=True)
    lm = _lm(args, out, task)
    if lm.shots:  # the worked examples leave the training split: mining never asks the LM about its own shots
        task = dataclasses.replace(task, train=task.train.subset(range(len(lm.shots), len(task.train))))
    print(f"Summarization: {len(task.train)}/{len(task.val)}/{len(task.test)} examples from {task.origin}; "
          f"LM: {lm.describe()}", file=sys.stderr)
    result = run_summarization(task, lm, ssms=args.summary_ssm or ("extractive", "lead"),
                               max_lm_rate=args.max_lm_rate, gamma=args.gamma, mine_lm_max=mine, progress=progress)
    path = write_summarization(result, out)
    from ea_core.summary_bundle import export_summary_bundle

    bundle = export_summary_bundle(result, lm.settings(), out / "bundle")
    print(f"Exported the adapted summarizer to {bundle}", file=sys.stderr)
    print(format_summary_table(result.rows))
    m = result.mining
    print(f"Mining: gamma {m['gamma']:.3f}; {m['ssms_missed']} of {m['train']} training examples missed by every "
          f"small model, {m['lm_asked']} asked to the LM, {m['underfit']} underfit. LM calls {m['lm_calls']}, "
          f"output tokens {m['lm_output_tokens']}, ${m['lm_cost_usd']:.4f}.")
    print(f"Results: {path}", file=sys.stderr)
    return 0


def cmd_predict_summaries(args: argparse.Namespace) -> int:
    """``predict`` with a summarization bundle: the summary, the stage and its confidence per row."""
    from ea_core.summary_bundle import predict_summaries, read_summary_inputs, write_summary_predictions

    table, split = read_summary_inputs(args.input, source_column=args.text_col)
    key_env = args.lm_key_env or "OPENAI_API_KEY"
    preds = predict_summaries(args.bundle, split, use_lm=not args.no_lm, api_key=os.environ.get(key_env),
                              cache_path=args.cache, base_url=args.lm_base_url,
                              trust_endpoint=bool(getattr(args, "trust_bundle_endpoint", False)))
    output = args.output or f"{args.input}.predictions.csv"
    write_summary_predictions(table, preds, output)
    counts = {s: preds.stage.count(s) for s in dict.fromkeys(preds.stage)}
    print(f"Wrote {len(preds.summaries)} summaries to {output} (answered by: "
          f"{', '.join(f'{k} {v}' for k, v in counts.items())})", file=sys.stderr)
    return 0


__all__ = ["DEMO_ACLSUM", "add_summary_args", "cmd_predict_summaries", "cmd_summarize"]
