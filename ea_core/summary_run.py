"""A summarization run from its settings (`SummaryRunConfig`) to the files it hands over, in one
place for every client: the background worker (`ea_core.runs`, so the app's runs are queued,
cancellable and survive a refresh), and the command line (`summarize`, `demo --data demo:aclsum`).

What it writes in the output folder: results.json (rows in the shape of Table 2, timings, mining,
the task kind), results.csv, summaries.json, the adapted system (``bundle/``) and the same zipped
(``bundle.zip``). The LM's answers go to the answer cache named by the settings, so a run started
again after a cancel or a crash pays for nothing twice.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

from ea_core.data.summaries import ACLSUM_DEMO, SummaryTask, load_summaries
from ea_core.errors import ConfigError
from ea_core.events import Callbacks, CancelToken, ProgressEvent, callback_list
from ea_core.llm.endpoints import EndpointPolicy
from ea_core.llm.summarize import DEFAULT_SUMMARY_PROMPT, LocalSummaryLM, OpenAISummaryLM, SummaryLM
from ea_core.summarization import SummarizationResult, run_summarization
from ea_core.summary_bundle import export_summary_run
from ea_core.summary_config import SummaryRunConfig


@dataclass
class SummaryRun:
    """A finished summarization run: the result (with its models, in memory), the LM it used and
    the files written."""

    result: SummarizationResult
    lm: SummaryLM
    task: SummaryTask
    files: list[Path]


def load_summary_task(config: SummaryRunConfig) -> SummaryTask:
    """The splits the settings name (columns detected where not given; caps and truncation applied)."""
    data = ACLSUM_DEMO if config.data == "demo:aclsum" else config.data
    cols = {"source_column": config.source_column, "summary_column": config.summary_column,
            "instruction_column": config.instruction_column}
    return load_summaries(data, max_source_words=config.max_source_words, max_train=config.max_train,
                          max_val=config.max_val, max_test=config.max_test, **cols)


def summary_lm(config: SummaryRunConfig, *, api_key: Optional[str] = None, task: Optional[SummaryTask] = None,
               endpoint_policy: Optional[EndpointPolicy] = None) -> SummaryLM:
    """The LM the settings describe (the key from the caller, memory only), with its k-shot worked
    examples taken from the start of `task`'s training split."""
    k = int(config.shots or 0)
    if k and task is not None and k >= len(task.train) - 1:
        raise ConfigError(f"{k} worked examples (k-shot, --summary-shots) would leave fewer than two training "
                          f"examples of {len(task.train)}: use fewer.")
    shots = [] if not k or task is None else [
        (task.train.sources[i], task.train.instructions[i], task.train.references[i]) for i in range(k)]
    common: dict[str, Any] = {"cache_path": config.cache, "budget_usd": config.budget_usd, "shots": shots,
                              "prompt_template": config.prompt_template or DEFAULT_SUMMARY_PROMPT}
    if config.lm == "local":
        return LocalSummaryLM(**common)
    if not (config.lm_base_url or "").startswith(("http://", "https://")):
        raise ConfigError(f"The LM's base URL is an http(s) address, not {config.lm_base_url!r}.")
    if not config.lm_model:
        raise ConfigError("An OpenAI-compatible LM needs its model name.")
    return OpenAISummaryLM(config.lm_base_url, config.lm_model, api_key=api_key,
                           price_in_per_1m=float(config.price_in or 0.0),
                           price_out_per_1m=float(config.price_out or 0.0),
                           endpoint_policy=endpoint_policy, **common)


def run_summary(config: SummaryRunConfig, out_dir: str | Path, *, api_key: Optional[str] = None,
                callback: Callbacks = None, cancel: Optional[CancelToken] = None,
                endpoint_policy: Optional[EndpointPolicy] = None) -> SummaryRun:
    """Load, train, mine, route, report and export (see the module docstring). `callback` gets the
    typed progress events (the task's warnings first, as messages); `cancel` is looked at on every
    event, so Cancel stops the run at its next step (`ea_core.errors.Cancelled`)."""
    config.validate()
    cancel = cancel or CancelToken()
    emit = callback_list(callback)

    def progress(event: ProgressEvent) -> None:
        cancel.check()
        emit(event)

    task = load_summary_task(config)
    for w in task.warnings:
        emit(ProgressEvent("data", 0, 0, message=f"warning: {w}"))
    lm = summary_lm(config, api_key=api_key, task=task, endpoint_policy=endpoint_policy)
    if lm.shots:  # the worked examples leave the training split: mining never asks the LM about its own shots
        task = dataclasses.replace(task, train=task.train.subset(range(len(lm.shots), len(task.train))))
    emit(ProgressEvent("data", 0, 0, message=f"{len(task.train)}/{len(task.val)}/{len(task.test)} examples "
                                             f"(train/validation/test) from {task.origin}; LM: {lm.describe()}"))
    cancel.check()
    result = run_summarization(task, lm, ssms=list(config.ssm), max_lm_rate=float(config.max_lm_rate),
                               gamma=config.gamma, seed=int(config.seed), mine_lm_max=config.mine_lm_max,
                               progress=progress)
    files = export_summary_run(result, lm.settings(), out_dir)
    return SummaryRun(result, lm, task, files)


__all__ = ["SummaryRun", "load_summary_task", "run_summary", "summary_lm"]
