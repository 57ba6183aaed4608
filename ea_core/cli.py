"""Command line: the same EA run as the app, without a UI.

    python -m ea_core train   --data PATH_OR_NAME --ssm SPEC [--ssm SPEC ...] [--out DIR]
    python -m ea_core run     --data ... --ssm ... --lm openai --lm-model NAME | --lm local[:PATH] [--out DIR]
    python -m ea_core demo    [--data demo:tweets|demo:digits|demo:aclsum] [--out DIR]
    python -m ea_core summarize --data FILE|demo:aclsum [--summary-ssm SPEC ...] [--summary-lm local|URL] [--out DIR]
    python -m ea_core predict --bundle DIR --input FILE [--output FILE] [--engine local|ray] [--lm-base-url URL]
    python -m ea_core plan    --bundle DIR --input FILE [--sample N] | --data ... --ssm ... [--lm ...]
    python -m ea_core serve   --bundle DIR [--host H] [--port P] [--api-key-env VAR] [--lm-base-url URL]
    python -m ea_core from-log LOG_DIR --out FILE.jsonl [--lm-labels]

Bad input exits with code 2 and a specific message on stderr, never a traceback. The API key is
read from an environment variable (OPENAI_API_KEY, or the one named by --lm-key-env), never from
the command line.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Optional, Sequence

from ea_core.errors import ConfigError, EAError
from ea_core.events import Callback, ProgressEvent
from ea_core.llm.base import MISSING_CONFIDENCE
from ea_core.metrics import SELECTION_METRICS
from ea_core.mining import DEFAULT_OOF_FOLDS
from ea_core.models.common import CLASS_WEIGHTS, DEFAULT_IMBALANCE_RATIO
from ea_core.operating_point import HONEST_DEFAULT, HONEST_RULES
from ea_core.process import configure_process
from ea_core.runconfig import ROUTERS, RunConfig, prompt_template
from ea_core.summarize_cli import add_summary_args, cmd_predict_summaries, cmd_summarize

SPEC_HELP = ("small model SPEC: 'tfidf' (TF-IDF + logistic regression), 'head:MODEL' (frozen encoder + "
             "trained head) or 'finetune:MODEL' (full fine-tuning); MODEL is a Hugging Face id, a local "
             "folder or a catalog name ('minilm' = the packaged all-MiniLM-L6-v2). Repeat for several.")

# The offline default run: demo tweets, two offline SSMs, the packaged local LM.
DEMO_SSMS = ["tfidf", "head:minilm"]
DEMO_SIZES = {"max_train": 2000, "max_val": 500, "max_test": 500}  # the demo:tweets default sample
# The offline image default: demo digits (all 1,797), the packaged pretrained CNN and a small CNN from scratch.
DEMO_IMAGE_SSMS = ["head:efficientnet_lite0", "finetune:tiny_cnn"]


class TerminalProgress(Callback):
    """Prints progress events as one tqdm bar per stage on stderr (a `Callback`: the run's steps as
    headings, messages as lines, steps of a stage as its bar)."""

    def __init__(self, stream=None) -> None:
        from tqdm import tqdm

        self._tqdm = tqdm
        self.stream = stream or sys.stderr
        self.bar = None
        self.stage: Optional[str] = None

    def on_run(self, ev: ProgressEvent) -> None:
        self.close()
        if ev.step_name:
            print(f"== {ev.step_name}", file=self.stream, flush=True)

    def on_status(self, ev: ProgressEvent) -> None:
        self.close()

    def on_train(self, ev: ProgressEvent) -> None:
        self._show(ev)

    def on_model(self, ev: ProgressEvent) -> None:
        self._show(ev)

    def on_lm(self, ev: ProgressEvent) -> None:
        self._show(ev)

    def on_stage(self, ev: ProgressEvent) -> None:
        self._show(ev)

    def _show(self, ev: ProgressEvent) -> None:
        if ev.is_message:
            if ev.message:
                self.close()
                print(f"   {ev.message}", file=self.stream, flush=True)
            return
        if ev.stage != self.stage:
            self.close()
            self.stage = ev.stage
            self.bar = self._tqdm(total=ev.total or None, desc=ev.stage, file=self.stream, mininterval=0.5,
                                  leave=True, dynamic_ncols=True)
        assert self.bar is not None
        if ev.total and self.bar.total != ev.total:
            self.bar.total = ev.total
        self.bar.n = ev.step
        post = {}
        for key, fmt in (("loss", "{:.3f}"), ("val_accuracy", "{:.1%}"), ("calls", "{}"), ("cache_hits", "{}"),
                         ("failures", "{}"), ("tokens", "{}"), ("cost_usd", "${:.4f}")):
            value = getattr(ev, key)
            if value is not None:
                post[key.replace("val_accuracy", "val_acc")] = fmt.format(value)
        if post:
            self.bar.set_postfix(post, refresh=False)
        self.bar.refresh()

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None
            self.stage = None


def _add_data_args(p: argparse.ArgumentParser, required: bool = True) -> None:
    g = p.add_argument_group("data")
    g.add_argument("--data", required=required, metavar="PATH_OR_NAME",
                   help="CSV, TSV, JSONL or Parquet file; 'demo:tweets' (offline demo); or a Hugging Face dataset name")
    g.add_argument("--text-col", metavar="C", help="column holding the text (detected when obvious)")
    g.add_argument("--text-pair-col", metavar="C", help="second text column for pair tasks (e.g. NLI hypothesis)")
    g.add_argument("--label-col", metavar="C", help="column holding the label (detected when obvious)")
    g.add_argument("--split-col", metavar="C", help="column naming each row's split (train/validation/test)")
    g.add_argument("--val-data", metavar="PATH", help="separate validation file")
    g.add_argument("--test-data", metavar="PATH", help="separate test file")
    g.add_argument("--val-frac", type=float, default=0.15, help="validation share when splitting (default 0.15)")
    g.add_argument("--test-frac", type=float, default=0.15, help="test share when splitting (default 0.15)")
    g.add_argument("--max-train", type=int, metavar="N", help="cap the training split (stratified sample)")
    g.add_argument("--max-val", type=int, metavar="N", help="cap the validation split")
    g.add_argument("--max-test", type=int, metavar="N", help="cap the test split")
    g.add_argument("--seed", type=int, default=0, help="seed for splits, sampling and training (default 0)")


def _add_ssm_args(p: argparse.ArgumentParser, required: bool = True) -> None:
    g = p.add_argument_group("small models")
    g.add_argument("--ssm", action="append", required=required, metavar="SPEC", help=SPEC_HELP)
    g.add_argument("--epochs", type=int, help="training epochs for the neural small models (default: per kind)")
    _add_imbalance_args(g)


def _add_imbalance_args(g) -> None:
    g.add_argument("--selection-metric", choices=SELECTION_METRICS, default="auto",
                   help="what early stopping, the SSM ranking and threshold tuning maximise on validation "
                        "(default auto: macro_f1 when the training labels are imbalanced, else accuracy)")
    g.add_argument("--class-weight", choices=CLASS_WEIGHTS, default="auto",
                   help="class weighting of the small models' loss (default auto: balanced when the training "
                        "labels are imbalanced, else none)")
    g.add_argument("--imbalance-ratio", type=float, default=DEFAULT_IMBALANCE_RATIO, metavar="R",
                   help="largest / smallest training class count from which 'auto' counts labels as imbalanced "
                        f"(default {DEFAULT_IMBALANCE_RATIO:g})")


def _add_lm_args(p: argparse.ArgumentParser, required: bool = True) -> None:
    g = p.add_argument_group("large model")
    g.add_argument("--lm", required=required, metavar="PROVIDER",
                   help="'openai' (any OpenAI-compatible endpoint) or 'local[:PATH_OR_ID]' (in-process Hugging Face "
                        "causal LM; default: the packaged SmolLM2-135M-Instruct, a weak offline stand-in)")
    g.add_argument("--lm-model", metavar="NAME", help="model name at the endpoint (required with --lm openai)")
    g.add_argument("--lm-base-url", metavar="URL", help="endpoint base URL (default: OpenAI's)")
    g.add_argument("--lm-key-env", metavar="VAR", default="OPENAI_API_KEY",
                   help="environment variable holding the API key (default OPENAI_API_KEY); keys are never "
                        "taken on the command line")
    g.add_argument("--budget-usd", type=float, metavar="X", help="stop calling the LM once X USD are spent")
    g.add_argument("--price-in", type=float, metavar="USD",
                   help="the LM's price per 1M input (prompt) tokens; with --price-out, overrides the price table "
                        "(needed for money caps on a model the table does not know, also behind a local URL, which "
                        "may be a proxy to a paid API; --price-in 0 --price-out 0: a self-hosted model, free)")
    g.add_argument("--price-out", type=float, metavar="USD", help="the LM's price per 1M output tokens")
    g.add_argument("--concurrency", type=int, default=8, metavar="N", help="parallel LM requests (default 8)")
    g.add_argument("--few-shot", type=int, default=0, metavar="K", help="K examples per label in the prompt")
    g.add_argument("--prompt-file", metavar="JSON",
                   help="edited prompt template: a JSON object with any of system, instruction (use {labels}), "
                        "input_format ({text}), pair_format ({text}, {pair})")
    g.add_argument("--cache", metavar="PATH", help="LM answer cache (default: lm_cache.sqlite beside the run folder)")
    g.add_argument("--mining", choices=("all", "top"), default="all",
                   help="send to the LM the training examples every SSM gets wrong (all) or the top SSM gets wrong (top)")
    g.add_argument("--oof-folds", type=int, default=DEFAULT_OOF_FOLDS, metavar="K",
                   help=f"find SSM-wrong examples with K-fold cross-fitted SSMs (default {DEFAULT_OOF_FOLDS}; 0 = "
                        "in-sample, where a small model that fits its training data leaves almost nothing to mine)")
    g.add_argument("--probe-lm", type=int, default=0, metavar="N",
                   help="ask the LM about N more training inputs, drawn at random among those the best small model "
                        "is least sure of (out of fold; the --max-lm-rate share), so that the operating point's "
                        "guard sees hundreds of paired examples, not only validation's; N extra paid calls, "
                        "cached and reused by mining (default 0: off)")
    g.add_argument("--router-labels", type=int, default=0, metavar="N",
                   help="with --router learned: ask the LM about N more training inputs drawn uniformly at random "
                        "(out of fold), so the learned router also learns where the LM is wrong and the small model "
                        "right, not only from the mined inputs, and the operating points' guards pool those of them each "
                        "router would send to the LM; N extra paid calls at most, cached (default 0: off)")
    g.add_argument("--lm-batch", action="store_true",
                   help="ask the LM about training inputs (mining, --ea-full, --probe-lm) through the endpoint's "
                        "Batch API: half price at OpenAI, answers within 24 h; the run waits, polling, and a "
                        "restarted run collects the batch it submitted instead of paying again")
    g.add_argument("--router", choices=ROUTERS, default="cascade",
                   help="cascade: the paper's router (each small model's own confidence decides); learned: also "
                        "route with a classifier trained on mining's out-of-fold outputs and paid LM answers, "
                        "scored as an extra results row ea_learned (default cascade)")
    g.add_argument("--assm", choices=("top", "each"), default="top",
                   help="augment the top-ranked SSM only, or each SSM (default top)")
    g.add_argument("--ea-full", action="store_true",
                   help="also run the EA(Full) ablation (LM answers for the whole training split)")
    g.add_argument("--max-lm-rate", type=float, default=0.3, metavar="R",
                   help="LM budget for the reported operating point: max share of inputs sent to the LM (default 0.3)")
    g.add_argument("--max-cost-per-1k", type=float, metavar="USD",
                   help="also cap the LM's money per 1,000 inputs for the reported operating point")
    g.add_argument("--operating-point", choices=HONEST_RULES, default=HONEST_DEFAULT,
                   help=f"how the reported operating point is chosen on validation (default {HONEST_DEFAULT}: the "
                        "LM budget spent on the inputs the best small model is least sure of, kept when its gain "
                        "over the best single system is beyond bootstrap noise; a tuned cascade replaces it only "
                        "when it beats it beyond noise on validation folds its thresholds were not tuned on; "
                        "insample: the point with the best validation accuracy)")
    g.add_argument("--no-calibration", action="store_true", help="skip temperature scaling of the small models")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m ea_core", description=(
        "Easy Adaptation: adapt a large model to your classification task without touching its weights."))
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("train", help="train and rank the small models (Specific Layer) only",
                       description="Train the chosen SSMs, evaluate on validation and test, rank by validation "
                                   "accuracy, print a table and write DIR/results.json.")
    _add_data_args(p)
    _add_ssm_args(p)
    p.add_argument("--out", default="runs/train", metavar="DIR", help="run folder (default runs/train)")
    _add_queue_arg(p)

    p = sub.add_parser("run", help="the whole EA run: SSMs, LM, underfit mining, ASSMs, routing, results",
                       description="Run every EA stage with progress, resumable: run the same command again "
                                   "after an interruption and completed stages are not redone.")
    _add_data_args(p)
    _add_ssm_args(p)
    _add_lm_args(p)
    p.add_argument("--out", default="runs/run", metavar="DIR", help="run folder (default runs/run)")
    _add_queue_arg(p)

    p = sub.add_parser("demo", help="the whole EA run on the offline default (demo tweets, local models)",
                       description=f"Demo tweets ({DEMO_SIZES['max_train']}/{DEMO_SIZES['max_val']}/"
                                   f"{DEMO_SIZES['max_test']} examples), SSMs {', '.join(DEMO_SSMS)}, and the packaged "
                                   "SmolLM2-135M-Instruct as the LM (a weak stand-in: use a real LM for real gains). "
                                   f"With --data demo:digits: the 1,797 digit images, SSMs {', '.join(DEMO_IMAGE_SSMS)}, "
                                   "and the offline image stand-in local:image-knn as the LM stage.")
    p.add_argument("--data", choices=("demo:tweets", "demo:digits", "demo:aclsum"), default="demo:tweets",
                   help="which bundled demo (default demo:tweets; demo:digits is an image task; demo:aclsum "
                        "summarization, ACLSum)")
    p.add_argument("--out", default=None, metavar="DIR", help="run folder (default runs/demo, runs/demo-digits)")
    _add_queue_arg(p)
    p.add_argument("--max-train", type=int, default=None, metavar="N", help=f"default {DEMO_SIZES['max_train']} "
                   "for tweets, all for digits")
    p.add_argument("--max-val", type=int, default=None, metavar="N")
    p.add_argument("--max-test", type=int, default=None, metavar="N")
    p.add_argument("--ssm", action="append", metavar="SPEC",
                   help=f"override the demo SSMs (default {DEMO_SSMS}; for digits {DEMO_IMAGE_SSMS})")
    p.add_argument("--lm", default="local", metavar="PROVIDER", help="LM provider (default: local)")
    p.add_argument("--max-lm-rate", type=float, default=0.3, metavar="R", help="LM budget (default 0.3)")
    _add_imbalance_args(p)
    add_summary_args(p, demo=True)

    p = sub.add_parser("summarize", help="EA on a summarization task (source and reference-summary columns)",
                       description="Small summarizers, the LM, mining (ROUGE-L below gamma), the augmented layer "
                                   "and the routing; writes DIR/results.json (ROUGE-1/2/L on validation and test).")
    add_summary_args(p)
    p.add_argument("--max-train", type=int, default=None, metavar="N")
    p.add_argument("--max-val", type=int, default=None, metavar="N")
    p.add_argument("--max-test", type=int, default=None, metavar="N")
    p.add_argument("--max-lm-rate", type=float, default=0.3, metavar="R", help="LM budget (default 0.3)")

    p = sub.add_parser("predict", help="batch prediction with an exported bundle",
                       description="Route every input of FILE through an exported adapted system. A bundle is "
                                   "treated as data from someone else: it never chooses where the LM is called or "
                                   "which key is sent, and it may only use files inside its own folder.")
    p.add_argument("--bundle", required=True, metavar="DIR", help="bundle folder (a run writes DIR/bundle)")
    p.add_argument("--input", required=True, metavar="FILE", help="CSV, TSV, JSONL, Parquet or .txt (one input per line); "
                   "for an image system: an image, or a folder or .zip of images (class folders named like the "
                   "labels are scored)")
    p.add_argument("--output", metavar="FILE",
                   help="write predictions here (default: FILE.predictions.csv). CSV output is made safe for "
                        "spreadsheets: a cell starting with =, +, -, @, tab or carriage return gets a leading ' "
                        "(OWASP CSV injection rule), so it shows as text instead of running as a formula; a name "
                        "ending in .jsonl writes JSON lines with every text exactly as read")
    p.add_argument("--text-col", metavar="C", help="text column of FILE (default: as in training / detected)")
    p.add_argument("--text-pair-col", metavar="C", help="second text column for pair tasks")
    g = p.add_argument_group("large model (the bundle's LM stage)")
    g.add_argument("--lm-base-url", metavar="URL",
                   help="endpoint to call the LM stage at (an OpenAI-compatible base URL). Without it the LM is "
                        "called only at its provider's own URL (OpenAI's, or the preset's); a bundle that "
                        "recorded another endpoint is refused, with that endpoint shown")
    g.add_argument("--lm-key-env", metavar="VAR",
                   help="environment variable with the API key (default: the provider's standard one, e.g. "
                        "OPENAI_API_KEY or DEEPSEEK_API_KEY; none for local servers such as Ollama). Never a "
                        "variable named by the bundle")
    g.add_argument("--trust-bundle-endpoint", action="store_true",
                   help="call the LM at the endpoint recorded in the bundle, with your key: only for a bundle "
                        "you made or whose maker you trust")
    g.add_argument("--lm-local", metavar="PATH_OR_ID",
                   help="for a bundle whose LM runs in process: the model folder, .gguf file or Hugging Face id to "
                        "load (a bundle may itself name only a Hugging Face id or the packaged default)")
    g.add_argument("--cache", metavar="PATH", help="LM answer cache file (default: one kept in OUTPUT.parts/ until "
                   "the job ends, so that a killed job does not pay twice)")
    g.add_argument("--no-lm", action="store_true", help="never call the LM: the last small model answers the rest")
    g.add_argument("--lm-batch", action="store_true",
                   help="ask the LM stage through the endpoint's Batch API (text systems, local engine): half "
                        "price at OpenAI, answers within 24 h. Every chunk's batch is submitted first, then "
                        "collected in order; each batch id is kept in OUTPUT.parts/, so the same command run "
                        "again after a stop polls those batches instead of paying again")
    g.add_argument("--lm-batch-poll", type=float, default=30.0, metavar="S",
                   help="with --lm-batch: seconds between polls (default 30)")
    g.add_argument("--lm-batch-wait", type=float, default=None, metavar="S",
                   help="with --lm-batch: stop after S seconds of waiting on a batch, keeping the chunks written "
                        "(default: wait until the batches end; 0: submit and stop, collect with a later run)")
    g = p.add_argument_group("large files (a text system reads and writes FILE in chunks)")
    g.add_argument("--chunk-rows", type=int, default=None, metavar="N",
                   help="rows read, routed and written at a time (default 10,000): memory stays flat in the "
                        "file's size. Each chunk written is kept in OUTPUT.parts/: run the same command again "
                        "after a kill and the chunks written are not redone")
    g.add_argument("--no-resume", action="store_true", help="start afresh even when OUTPUT.parts/ holds this "
                   "job's chunks")
    g.add_argument("--route", action=argparse.BooleanOptionalAction, default=None,
                   help="add a 'route' column: every stage the row reached with its confidence, the last one "
                        "answered (default: on for Parquet output, off for CSV / JSON lines)")
    g.add_argument("--engine", choices=("local", "ray"), default="local",
                   help="local: this process; ray: Ray Data (pip install '.[ray]'), each small model as "
                        "map_batches over an actor pool, only unsure rows passed on, the LM in one actor "
                        "with bounded concurrency; same output")
    g.add_argument("--ray-address", metavar="ADDR",
                   help="with --engine ray: the cluster to join (e.g. ray://head:10001 or 'auto'); default: "
                        "a local Ray on this machine's cores. The input, the bundle and OUTPUT must be at the "
                        "same paths on every node (a shared file system)")

    p = sub.add_parser("plan", help="what a job will take, before anything is spent: rows, LM calls, USD, CPU time",
                       description="With --bundle and --input: what `predict` will take on that file (rows, each "
                                   "stage's share from the bundle's tuned operating point or, with --sample N, "
                                   "measured on the file's first N rows by the small models alone, LM calls, tokens "
                                   "and USD at the bundle's model's price, CPU time from measured rates). With "
                                   "--data and --ssm (and --lm ...): what a run with those settings will take. "
                                   "Nothing calls the LM.")
    p.add_argument("--bundle", metavar="DIR", help="a bundle folder (with --input)")
    p.add_argument("--input", metavar="FILE", help="the file `predict` would read")
    p.add_argument("--sample", type=int, default=0, metavar="N",
                   help="route the input's first N rows through the bundle's small models (never the LM) to "
                        "measure each stage's share and time on this very file (default 0: the bundle's figures)")
    p.add_argument("--no-lm", action="store_true", help="plan for predict --no-lm")
    p.add_argument("--json", action="store_true", help="print the plan as JSON (bundle plans)")
    _add_data_args(p, required=False)
    _add_ssm_args(p, required=False)
    _add_lm_args(p, required=False)

    from ea_core.serve.main import add_from_log_args, add_serve_args

    p = sub.add_parser("serve", help="serve a bundle over HTTP (OpenAI-compatible chat, classify, metrics)",
                       description="Serve an exported adapted system: POST /v1/chat/completions (the reply is the "
                                   "label, with the route in an 'ea' object and x-ea-* headers), POST /v1/classify, "
                                   "POST /v1/feedback, GET /v1/models, /healthz, /readyz, /metrics. Like predict, "
                                   "the bundle never chooses where the LM is called or which key is sent.")
    add_serve_args(p)
    p = sub.add_parser("from-log", help="turn a server's request log into labelled data for a new run",
                       description="Gold labels from POST /v1/feedback and, with --lm-labels, the LM's answers for "
                                   "the inputs it answered, as a JSON lines file that `run --data` reads.")
    add_from_log_args(p)
    return parser


def _config_from_args(args: argparse.Namespace, lm: bool):
    settings = {}
    if getattr(args, "epochs", None):
        settings = {kind: {"epochs": args.epochs} for kind in ("head", "finetune", "image_head", "image_finetune")}
    cfg = RunConfig(
        data=args.data, ssm=list(args.ssm), text_col=args.text_col, text_pair_col=args.text_pair_col,
        label_col=args.label_col, split_col=args.split_col, val_source=args.val_data, test_source=args.test_data,
        val_frac=args.val_frac, test_frac=args.test_frac, seed=args.seed, max_train=args.max_train,
        max_val=args.max_val, max_test=args.max_test, ssm_settings=settings,
        selection_metric=args.selection_metric, class_weight=args.class_weight, imbalance_ratio=args.imbalance_ratio,
    )
    if lm:
        cfg.lm, cfg.lm_model, cfg.lm_base_url, cfg.lm_key_env = args.lm, args.lm_model, args.lm_base_url, args.lm_key_env
        cfg.budget_usd, cfg.concurrency, cfg.few_shot, cfg.cache = args.budget_usd, args.concurrency, args.few_shot, args.cache
        cfg.mining, cfg.oof_folds, cfg.assm, cfg.ea_full = args.mining, args.oof_folds, args.assm, args.ea_full
        cfg.max_lm_rate, cfg.calibrate = args.max_lm_rate, not args.no_calibration
        cfg.max_cost_per_1k, cfg.operating_point = args.max_cost_per_1k, args.operating_point
        cfg.probe_lm, cfg.router, cfg.lm_batch = args.probe_lm, args.router, args.lm_batch
        cfg.router_labels = getattr(args, "router_labels", 0)
        cfg.price_in, cfg.price_out = args.price_in, args.price_out
        cfg.prompt = _read_prompt_file(args.prompt_file) if args.prompt_file else None
    return cfg


def _read_prompt_file(path: str) -> dict:
    import json

    try:
        fields = json.loads(Path(path).read_text(encoding="utf-8"))
    except OSError as err:
        raise ConfigError(f"Cannot read --prompt-file {path}: {err.strerror}.") from None
    except ValueError as err:
        raise ConfigError(f"--prompt-file {path} is not valid JSON ({err}).") from None
    if not isinstance(fields, dict):
        raise ConfigError(f"--prompt-file {path} must hold a JSON object of template fields.")
    prompt_template(fields)  # validate now, not at the mining stage
    return fields


def _add_queue_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("--queue", choices=("auto", "always", "never"), default="auto",
                   help="take a turn in the run queue of the run folder's parent (the one an app over that folder "
                        "uses: its limit on runs at once, its memory check) before starting: auto (default) when "
                        "that folder has a queue (an app or an earlier queued run made DIR/../.queue), always, or "
                        "never")


def run_and_report(cfg, out: str, queue: str = "auto") -> int:
    """Run (or resume) a pipeline (it tunes, writes the results table and exports the bundle), then print them.
    With `queue` (auto: when `out`'s parent has a queue), the run first waits its turn there (`ea_core.runqueue`)."""
    import contextlib

    from ea_core.report import format_table
    from ea_core.runconfig import check_lm_settings
    from ea_core.runqueue import has_queue, turn_in_queue
    from ea_core.runs import execute_run

    cfg.validate()
    if cfg.lm:  # configuration errors (a money cap on an unknown price, no key) before any folder or request
        check_lm_settings(cfg, None)
    queued = queue == "always" or (queue == "auto" and has_queue(Path(out).resolve().parent))
    turn = (turn_in_queue(out, cfg, on_wait=lambda text: print(text, file=sys.stderr, flush=True)) if queued
            else contextlib.nullcontext())
    with turn:
        progress = TerminalProgress()
        try:
            state = execute_run(cfg, out, callback=progress)
        finally:
            progress.close()
    rows = state.rows
    out_dir = Path(out)
    if cfg.lm:
        from ea_core.bundle import default_system

        print(f"Exported the adapted system ({default_system(rows)}) to {out_dir / 'bundle'}", file=sys.stderr)
    if state.mining is not None:
        m = state.mining.summary()
        print(f"Mining: {m['sent_to_lm']} of {m['n_train']} training examples sent to the LM, "
              f"{m['underfit']} underfit (LM wrong too), {m['lm_failed']} failed calls.")
    if state.lm_answers:
        from ea_core.runstate import lm_confidence_counts

        counts = lm_confidence_counts(state.lm_answers)
        print("LM answers with a confidence: " + ", ".join(
            f"{split} {c['with_confidence']} of {c['answers']}" for split, c in counts.items())
            + f" (the others route with confidence {MISSING_CONFIDENCE:g})")
    for name, cal in state.calibration.items():
        print(f"Calibration {name}: temperature {cal['temperature']:.2f}, validation ECE "
              f"{cal['ece_val_before']:.3f} -> {cal['ece_val_after']:.3f}, test ECE "
              f"{cal['ece_test_before']:.3f} -> {cal['ece_test_after']:.3f}")
    for note in state.notes:
        print(f"note: {note}")
    print(format_table(rows))
    for row in rows:
        if row.get("candidates"):
            weighed = ", ".join(f"{name} {acc:.1%}" for name, acc in row["candidates"].items())
            why = state.tuning.get(row['system'], {}).get('why') or row.get('note', '')
            print(f"{row['system']}: {why} (validation, never test: {weighed})")
    print(f"Results written to {out_dir / 'results.json'}")
    return 0


class PredictProgress(TerminalProgress):
    """`TerminalProgress`, plus a line of rows, rows/s and time left as chunks are written."""

    def __init__(self, stream=None, every_s: float = 2.0) -> None:
        super().__init__(stream)
        self.every_s, self._last = every_s, 0.0

    def on_stage(self, ev: ProgressEvent) -> None:
        if ev.stage != "predict":
            return super().on_stage(ev)
        import time

        now = time.monotonic()
        if ev.message and (ev.is_message or now - self._last >= self.every_s or ev.step >= ev.total):
            self._last = now
            self.close()
            print(f"   predict: {ev.message}", file=self.stream, flush=True)


def cmd_plan(args: argparse.Namespace) -> int:
    """`plan`: for a bundle and a file, or for a run's settings; nothing is spent."""
    from ea_core.plan import plan_bundle, plan_run

    if args.bundle:
        if not args.input:
            raise ConfigError("plan --bundle needs --input FILE (the file predict would read).")
        plan = plan_bundle(args.bundle, args.input, text_col=args.text_col, pair_col=args.text_pair_col,
                           sample=args.sample, use_lm=not args.no_lm, price_in=args.price_in,
                           price_out=args.price_out)
        if args.json:
            import json

            print(json.dumps(plan.to_dict(), indent=2, default=str))
        else:
            print("\n".join(plan.lines()))
        return 0
    if not args.data or not args.ssm:
        raise ConfigError("plan needs --bundle DIR --input FILE, or a run's settings: --data ... --ssm ... "
                          "[--lm ...].")
    cfg = _config_from_args(args, lm=bool(args.lm))
    print("\n".join(plan_run(cfg)))
    return 0


def cmd_predict_stream(args: argparse.Namespace, lm_kw: dict) -> int:
    """`predict` for a text system: read, route and write in chunks (`ea_core.batch_predict`)."""
    from ea_core.batch_predict import DEFAULT_CHUNK_ROWS, prepare, run
    from ea_core.bundle import BUNDLE_JSON, plan_bundle_lm

    # Open the input first: a bad file or column fails before any model loads.
    job = prepare(args.bundle, args.input, args.output, text_col=args.text_col, pair_col=args.text_pair_col,
                  chunk_rows=args.chunk_rows or DEFAULT_CHUNK_ROWS, route=args.route, use_lm=not args.no_lm,
                  lm_options=lm_kw, cache=args.cache, resume=not args.no_resume, lm_batch=args.lm_batch,
                  lm_batch_poll_s=args.lm_batch_poll, lm_batch_max_wait_s=args.lm_batch_wait)
    if job.has_lm:
        # Say where the LM will be called (or refuse the bundle's own endpoint) before any model loads.
        print(plan_bundle_lm(job.meta["lm"], where=Path(args.bundle) / BUNDLE_JSON, **lm_kw).describe(),
              file=sys.stderr)
    progress = PredictProgress()
    try:
        summary = run(job, engine=args.engine, ray_address=args.ray_address, callback=progress)
    finally:
        progress.close()
    print(summary.text())
    if summary.rows > summary.resumed_rows:
        print(f"{summary.rows - summary.resumed_rows:,} rows in {summary.elapsed_s:.1f} s "
              f"({summary.rows_per_s:,.0f} rows/s, engine {summary.engine})", file=sys.stderr)
    return 0


def cmd_predict(args: argparse.Namespace) -> int:
    from ea_core.bundle import BUNDLE_JSON, load_bundle, plan_bundle_lm, read_bundle_meta
    from ea_core.inputs import read_inputs, write_predictions
    from ea_core.summary_bundle import is_summary_bundle

    if is_summary_bundle(args.bundle):  # the bundle's task kind: summaries, not labels
        return cmd_predict_summaries(args)
    meta = read_bundle_meta(args.bundle)
    task = meta.get("task") or {}
    lm_kw = dict(base_url=args.lm_base_url, key_env=args.lm_key_env, trust_endpoint=args.trust_bundle_endpoint,
                 local_model=args.lm_local)
    if task.get("modality") != "image":
        return cmd_predict_stream(args, lm_kw)
    if args.engine != "local":
        raise ConfigError("--engine ray reads tables of texts; an image system predicts with the local engine.")
    if args.lm_batch:
        raise ConfigError("--lm-batch reads tables of texts; an image system asks its LM request by request.")
    # Read the input first: a bad file fails before any model loads.
    if task.get("modality") == "image":
        from ea_core.data import read_image_inputs

        split, warnings = read_image_inputs(args.input, labels=meta["labels"])
        for w in warnings:
            print(f"warning: {w}", file=sys.stderr)
    else:
        split, _ = read_inputs(args.input, text_col=args.text_col or task.get("text_col"),
                               pair_col=args.text_pair_col or task.get("pair_col"), labels=meta["labels"],
                               pair_task=task.get("pair"))
    if not args.no_lm and any(e.get("lm") for e in meta["stages"]):
        # Say where the LM will be called (or refuse the bundle's own endpoint) before any model loads.
        print(plan_bundle_lm(meta["lm"], where=Path(args.bundle) / BUNDLE_JSON, **lm_kw).describe(),
              file=sys.stderr)
    system = load_bundle(args.bundle, cache_path=args.cache, use_lm=not args.no_lm, **lm_kw)
    progress = TerminalProgress()
    try:
        preds = system.predict(split, callback=progress)
    finally:
        progress.close()
    output = args.output or f"{args.input}.predictions.csv"
    print(write_predictions(output, split, preds, system.labels))
    return 0


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    configure_process()
    try:
        if args.command == "train":
            return run_and_report(_config_from_args(args, lm=False), args.out, queue=args.queue)
        if args.command == "run":
            return run_and_report(_config_from_args(args, lm=True), args.out, queue=args.queue)
        if args.command in ("summarize", "demo") and (args.command == "summarize" or args.data == "demo:aclsum"):
            bars = TerminalProgress()
            try:
                return cmd_summarize(args, demo=args.command == "demo", progress=bars)
            finally:
                bars.close()
        if args.command == "demo":
            images = args.data == "demo:digits"
            sizes = {k: getattr(args, k) if getattr(args, k) is not None else (None if images else DEMO_SIZES[k])
                     for k in DEMO_SIZES}
            cfg = RunConfig(data=args.data, ssm=args.ssm or list(DEMO_IMAGE_SSMS if images else DEMO_SSMS),
                            lm=args.lm, **sizes, max_lm_rate=args.max_lm_rate, oof_folds=DEFAULT_OOF_FOLDS,
                            selection_metric=args.selection_metric, class_weight=args.class_weight,
                            imbalance_ratio=args.imbalance_ratio)
            return run_and_report(cfg, args.out or ("runs/demo-digits" if images else "runs/demo"),
                                  queue=args.queue)
        if args.command == "predict":
            return cmd_predict(args)
        if args.command == "plan":
            return cmd_plan(args)
        if args.command == "serve":
            from ea_core.serve.main import cmd_serve

            return cmd_serve(args)
        if args.command == "from-log":
            from ea_core.serve.main import cmd_from_log

            return cmd_from_log(args)
    except EAError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except OSError as err:  # a folder that cannot be written, a disk that is full...
        where = f" ({err.filename})" if err.filename else ""
        print(f"error: {err.strerror or err}{where}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("\nInterrupted. Run the same command again to resume where it stopped.", file=sys.stderr)
        return 130
    return 2
