"""A summarization run's settings (`SummaryRunConfig`, saved as config.json with
``task_kind = "summarization"``) and the one reader of a run folder's settings that knows both
task kinds (`load_run_config`).

Why a config of its own rather than more fields on `RunConfig`: a summarization run has no label
column, no classification small models and no class weighting, and a classification run has no
reference summaries or ROUGE gamma; one dataclass with both would accept settings that mean
nothing. What the run queue and the endpoint checks read (``data``, ``ssm``, ``lm``,
``lm_model``, ``lm_base_url``, ``lm_key_env``, ``price_*``, ``budget_usd``, ``cache``) has the
same names in both, so `ea_core.runs` starts, queues and checks either without asking which.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any, Optional, Union

from ea_core.errors import ConfigError
from ea_core.runconfig import RunConfig, settings_from_dict

TASK_KIND = "summarization"
#: The small summarizers a run trains when none is named.
DEFAULT_SUMMARY_SSMS = ("extractive", "lead")
#: Where the offline demo's settings differ: the local LM is slow on CPU, so it sees a small
#: validation and test sample and at most 24 mined training examples.
DEMO_ACLSUM = {"max_train": None, "max_val": 45, "max_test": 60, "mine_lm_max": 24}


@dataclass
class SummaryRunConfig:
    """Everything that defines a summarization run. Saved as config.json; never holds an API key."""

    data: str  # demo:aclsum, a file, or a Hugging Face dataset name
    ssm: list[str] = field(default_factory=lambda: list(DEFAULT_SUMMARY_SSMS))
    source_column: Optional[str] = None
    summary_column: Optional[str] = None
    instruction_column: Optional[str] = None
    max_train: Optional[int] = None
    max_val: Optional[int] = None
    max_test: Optional[int] = None
    max_source_words: int = 400
    lm: str = "local"  # "local" (the packaged SmolLM2 stand-in) or "openai" (an OpenAI-compatible endpoint)
    lm_model: Optional[str] = None
    lm_base_url: Optional[str] = None
    lm_key_env: str = "OPENAI_API_KEY"
    price_in: Optional[float] = None  # USD per 1M prompt tokens
    price_out: Optional[float] = None  # USD per 1M output tokens
    budget_usd: Optional[float] = None
    prompt_template: Optional[str] = None  # None: the default summarization prompt
    shots: int = 0  # k-shot: the first K training examples as worked examples
    gamma: Optional[float] = None  # underfit threshold on ROUGE-L; None: the small models' median
    mine_lm_max: Optional[int] = None  # at most N missed training examples asked to the LM
    max_lm_rate: float = 0.3
    seed: int = 0
    cache: Optional[str] = None  # the LM answer cache (the runs manager gives each owner one)
    task_kind: str = TASK_KIND

    @classmethod
    def demo(cls, **changes: Any) -> "SummaryRunConfig":
        """The offline default: ACLSum, extractive and lead, the packaged local LM."""
        sizes = {k: v for k, v in DEMO_ACLSUM.items() if k != "mine_lm_max"}
        return cls(**{"data": "demo:aclsum", **sizes, "mine_lm_max": DEMO_ACLSUM["mine_lm_max"], **changes})

    def validate(self) -> None:
        """A `ConfigError` naming the first setting that cannot work."""
        if self.task_kind != TASK_KIND:
            raise ConfigError(f"task_kind must be {TASK_KIND!r} for a summarization run.")
        if not str(self.data or "").strip():
            raise ConfigError("Name the data: demo:aclsum, a CSV/TSV/JSONL/Parquet file or a dataset name.")
        if not self.ssm:
            raise ConfigError("Give at least one small summarizer (extractive, lead, finetune:MODEL).")
        if len(set(self.ssm)) != len(self.ssm):
            raise ConfigError(f"The same small summarizer is given twice: {self.ssm}.")
        if self.lm not in ("local", "openai"):
            raise ConfigError(f"The LM is 'local' or 'openai' (an OpenAI-compatible endpoint), not {self.lm!r}.")
        if self.lm == "openai" and not (self.lm_base_url and self.lm_model):
            raise ConfigError("An OpenAI-compatible LM needs its base URL and model name.")
        for name in ("max_train", "max_val", "max_test", "mine_lm_max"):
            value = getattr(self, name)
            if value is not None and (not isinstance(value, int) or isinstance(value, bool) or value < 0):
                raise ConfigError(f"{name} is a whole number >= 0 (or empty: no cap), not {value!r}.")
        if not isinstance(self.max_source_words, int) or self.max_source_words < 1:
            raise ConfigError(f"max_source_words is a whole number >= 1, not {self.max_source_words!r}.")
        if not isinstance(self.shots, int) or self.shots < 0:
            raise ConfigError(f"shots is a whole number >= 0, not {self.shots!r}.")
        if self.gamma is not None and not 0.0 <= float(self.gamma) <= 1.0:
            raise ConfigError(f"gamma is a ROUGE-L F1 in [0, 1] (or empty: the median), not {self.gamma}.")
        if not 0.0 <= float(self.max_lm_rate) <= 1.0:
            raise ConfigError("The LM budget (share of inputs) must be between 0 and 1.")
        for name in ("price_in", "price_out", "budget_usd"):
            value = getattr(self, name)
            if value is not None and not (math.isfinite(float(value)) and float(value) >= 0):
                raise ConfigError(f"{name} must be a number >= 0 in USD.")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "SummaryRunConfig":
        """Settings from config.json (or a file a user loads back); unknown keys are an error."""
        return settings_from_dict(cls, data, ("data",), "summarization")


AnyRunConfig = Union[RunConfig, SummaryRunConfig]


def is_summary_config(data: Any) -> bool:
    """Whether saved settings (a dict) or a config object are a summarization run's."""
    kind = data.get("task_kind") if isinstance(data, dict) else getattr(data, "task_kind", None)
    return kind == TASK_KIND


def load_run_config(data: dict[str, Any]) -> AnyRunConfig:
    """A run folder's config.json as the config of its task kind."""
    return SummaryRunConfig.from_dict(data) if is_summary_config(data) else RunConfig.from_dict(data)


__all__ = ["AnyRunConfig", "DEFAULT_SUMMARY_SSMS", "DEMO_ACLSUM", "SummaryRunConfig", "TASK_KIND",
           "is_summary_config", "load_run_config"]
