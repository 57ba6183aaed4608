"""The command line of summarization runs: ``summarize`` (any data, any LM) and what ``demo --data
demo:aclsum`` runs (the offline default). Kept apart from `ea_core.cli` so that the classification
commands stay as they are; the engine is imported inside the command (start-up time).
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Optional

from ea_core.errors import ConfigError
from ea_core.events import ProgressCallback, ProgressEvent
from ea_core.summary_config import DEFAULT_SUMMARY_SSMS, DEMO_ACLSUM, SummaryRunConfig


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
                        "(seq2seq), causal:MODEL (a causal LM with LoRA; causal:smollm2 is the packaged "
                        "SmolLM2-135M, offline) or causal-full:MODEL (full fine-tuning); repeat for several "
                        "(default extractive and lead)")
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


def config_from_args(args: argparse.Namespace, *, demo: bool = False) -> SummaryRunConfig:
    """The run's settings from the flags (what the app's worker gets from the Summaries tab)."""
    lm, url = ("local", None) if args.summary_lm == "local" else ("openai", args.summary_lm)
    if lm == "openai" and not url.startswith(("http://", "https://")):
        raise ConfigError(f"--summary-lm is 'local' or an http(s) base URL, not {args.summary_lm!r}.")
    if lm == "openai" and not args.summary_lm_model:
        raise ConfigError("--summary-lm URL needs --summary-lm-model NAME.")
    if int(getattr(args, "summary_shots", 0) or 0) < 0:
        raise ConfigError(f"--summary-shots is 0 or more, not {args.summary_shots}.")
    common = {"ssm": list(args.summary_ssm or DEFAULT_SUMMARY_SSMS), "max_source_words": args.max_source_words,
              "lm": lm, "lm_base_url": url, "lm_model": args.summary_lm_model, "lm_key_env": args.summary_lm_key_env,
              "price_in": args.price_in, "price_out": args.price_out, "budget_usd": args.budget_usd,
              "shots": int(getattr(args, "summary_shots", 0) or 0), "gamma": args.gamma,
              "max_lm_rate": args.max_lm_rate, "cache": args.cache}
    sizes = {k: getattr(args, k, None) for k in ("max_train", "max_val", "max_test")}
    if demo:
        changes = {k: v for k, v in sizes.items() if v is not None}
        if args.mine_lm_max is not None:
            changes["mine_lm_max"] = args.mine_lm_max
        return SummaryRunConfig.demo(**common, **changes)
    return SummaryRunConfig(data=args.data, source_column=args.source_column, summary_column=args.summary_column,
                            instruction_column=args.instruction_column, mine_lm_max=args.mine_lm_max,
                            **sizes, **common)


def cmd_summarize(args: argparse.Namespace, *, demo: bool = False, progress: Optional[ProgressCallback] = None) -> int:
    """Run EA on a summarization task and print the table; results in DIR/results.json. `progress`:
    the CLI's progress bars (any callback of typed events)."""
    from ea_core.summarization import format_summary_table
    from ea_core.summary_run import run_summary

    out = Path((args.out or "runs/demo-aclsum") if demo else args.out)
    config = config_from_args(args, demo=demo)
    config.cache = config.cache or str(out / "lm_cache.sqlite")
    out.mkdir(parents=True, exist_ok=True)

    def said(event: ProgressEvent) -> None:  # the run's messages (warnings, sizes) go to stderr
        if event.is_message and event.stage == "data":
            print(event.message, file=sys.stderr)

    api_key = os.environ.get(config.lm_key_env) if config.lm == "openai" else None
    run = run_summary(config, out, api_key=api_key, callback=[said, progress])
    result = run.result
    print(f"Exported the adapted summarizer to {out / 'bundle'}", file=sys.stderr)
    print(format_summary_table(result.rows))
    m = result.mining
    print(f"Mining: gamma {m['gamma']:.3f}; {m['ssms_missed']} of {m['train']} training examples missed by every "
          f"small model, {m['lm_asked']} asked to the LM, {m['underfit']} underfit. LM calls {m['lm_calls']}, "
          f"output tokens {m['lm_output_tokens']}, ${m['lm_cost_usd']:.4f}.")
    print(f"Results: {out / 'results.json'}", file=sys.stderr)
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
