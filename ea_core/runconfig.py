"""A run's settings (`RunConfig`, saved as config.json) and the checks made on them before any work.

Kept apart from the engine so that the CLI, the app's form, the bundle and the report read and
check settings without importing the pipeline.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import numpy as np

from ea_core import mining
from ea_core.errors import ConfigError, LMError
from ea_core.llm.spec import LMSpec
from ea_core.llm.prompt import PromptTemplate
from ea_core.metrics import SELECTION_METRICS
from ea_core.mining import DEFAULT_OOF_FOLDS
from ea_core.models import spec_kind
from ea_core.models.common import CLASS_WEIGHTS, DEFAULT_IMBALANCE_RATIO, resolve_selection_metric
from ea_core.operating_point import HONEST_DEFAULT, HONEST_RULES
from ea_core.runfolder import fingerprint
from ea_core.splits import TaskData


def settings_from_dict(cls: Any, data: Any, required: tuple[str, ...], what: str) -> Any:
    """The dataclass `cls` from saved settings, checked: a JSON object, no unknown key, the
    `required` keys present, values the constructor takes (`ConfigError` naming what is wrong)."""
    if not isinstance(data, dict):
        raise ConfigError(f"{what.capitalize()} settings must be a JSON object of setting -> value.")
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - known)
    if unknown:
        raise ConfigError(f"Unknown {what} setting(s): {', '.join(unknown)}. Known: {', '.join(sorted(known))}.")
    if any(key not in data for key in required):
        raise ConfigError(f"{what.capitalize()} settings need at least {' and '.join(repr(k) for k in required)}.")
    try:
        return cls(**data)
    except TypeError as err:
        raise ConfigError(f"Bad {what} settings: {err}.") from None


#: Routers a run can add to the paper's cascade ("cascade": that one alone).
ROUTERS = ("cascade", "learned")


@dataclass
class RunConfig:
    """Everything that defines a run. Saved as config.json; never holds an API key."""

    data: str
    ssm: list[str]
    text_col: Optional[str] = None
    text_pair_col: Optional[str] = None
    label_col: Optional[str] = None
    split_col: Optional[str] = None
    val_source: Optional[str] = None
    test_source: Optional[str] = None
    val_frac: float = 0.15
    test_frac: float = 0.15
    seed: int = 0
    max_train: Optional[int] = None
    max_val: Optional[int] = None
    max_test: Optional[int] = None
    ssm_settings: dict[str, dict[str, Any]] = field(default_factory=dict)  # per SPEC kind
    lm: Optional[str] = None  # "openai", "local", "local:PATH"; None = Specific Layer only
    lm_model: Optional[str] = None
    lm_base_url: Optional[str] = None
    lm_key_env: str = "OPENAI_API_KEY"
    budget_usd: Optional[float] = None
    price_in: Optional[float] = None  # USD per 1M input tokens (None: the price table's, if it knows the model)
    price_out: Optional[float] = None  # USD per 1M output tokens
    concurrency: int = 8
    few_shot: int = 0
    prompt: Optional[dict[str, Any]] = None  # PromptTemplate fields (system, instruction, input_format...)
    cache: Optional[str] = None
    mining: str = "all"  # "all": every SSM wrong; "top": the top-ranked SSM wrong
    oof_folds: int = DEFAULT_OOF_FOLDS  # >= 2: find SSM-wrong examples with k-fold cross-fitted SSMs; 0: in-sample
    assm: str = "top"  # "top" or "each"
    ea_full: bool = False
    calibrate: bool = True
    max_lm_rate: float = 0.3  # LM budget used to pick the reported operating point
    max_cost_per_1k: Optional[float] = None  # optional money budget (USD per 1,000 inputs), on top
    operating_point: str = HONEST_DEFAULT  # how the reported point is chosen: ea_core.operating_point.HONEST_RULES
    # Extra LM calls on a random sample of the training inputs the best small model is least sure of
    # (out of fold), so the operating point's guard sees more paired evidence than validation holds.
    probe_lm: int = 0
    # Extra LM calls on a uniform random sample of the training inputs (out of fold), so the learned
    # router's labels are not only from misclassified inputs (needs `--router learned`).
    router_labels: int = 0
    # "learned": also route with a deferral classifier trained on mining's answers (ea_core.learned_router).
    router: str = "cascade"
    # Mining, EA(Full) and the probe through the endpoint's Batch API (billed at a discount, answers
    # within the provider's window); the batch is polled every lm_batch_poll_s seconds.
    lm_batch: bool = False
    lm_batch_poll_s: float = 30.0
    # Imbalanced labels (ea_core.models.common): "auto" = on when the training split's largest/smallest
    # class ratio is >= imbalance_ratio. selection_metric drives early stopping, the SSM ranking and
    # threshold tuning alike; class_weight is every small model's loss weighting.
    selection_metric: str = "auto"  # "auto", "accuracy" or "macro_f1"
    class_weight: str = "auto"  # "auto", "balanced" or "none"
    imbalance_ratio: float = DEFAULT_IMBALANCE_RATIO

    def validate(self) -> None:
        if not self.ssm:
            raise ConfigError("Give at least one small model with --ssm (e.g. --ssm tfidf --ssm head:minilm).")
        if len(set(self.ssm)) != len(self.ssm):
            raise ConfigError(f"The same --ssm is given twice: {self.ssm}.")
        if self.mining not in mining.MINING_RULES:
            raise ConfigError(f"--mining must be one of {', '.join(mining.MINING_RULES)}.")
        if self.assm not in ("top", "each"):
            raise ConfigError("--assm must be 'top' or 'each'.")
        if not 0.0 <= self.max_lm_rate <= 1.0:
            raise ConfigError("--max-lm-rate must be between 0 and 1.")
        if self.operating_point not in HONEST_RULES:
            raise ConfigError(f"--operating-point must be one of {', '.join(HONEST_RULES)}.")
        if self.router not in ROUTERS:
            raise ConfigError(f"--router must be one of {', '.join(ROUTERS)}.")
        if self.probe_lm < 0:
            raise ConfigError("--probe-lm must be 0 (off) or a number of extra LM calls.")
        if self.probe_lm and self.oof_folds < 2:
            raise ConfigError("--probe-lm needs out-of-fold small models (--oof-folds 2 or more): in-sample "
                              "confidences on the training split say nothing about new inputs.")
        if self.router_labels < 0:
            raise ConfigError("--router-labels must be 0 (off) or a number of extra LM calls.")
        if self.router_labels and self.router != "learned":
            raise ConfigError("--router-labels trains the learned router: give --router learned too.")
        if self.router_labels and self.oof_folds < 2:
            raise ConfigError("--router-labels needs out-of-fold small models (--oof-folds 2 or more): the learned "
                              "router learns where in-sample answers are wrong, which they rarely are.")
        if self.oof_folds == 1 or self.oof_folds < 0:
            raise ConfigError("--oof-folds must be 0 (off) or at least 2.")
        if self.max_cost_per_1k is not None and self.max_cost_per_1k < 0:
            raise ConfigError("--max-cost-per-1k must be >= 0.")
        if self.budget_usd is not None and self.budget_usd < 0:
            raise ConfigError("--budget-usd must be >= 0.")
        if self.concurrency < 1:
            raise ConfigError("--concurrency must be >= 1.")
        for name, price in (("--price-in", self.price_in), ("--price-out", self.price_out)):
            if price is not None and not (price >= 0 and np.isfinite(price)):
                raise ConfigError(f"{name} must be a price >= 0 in USD per 1M tokens.")
        if (self.price_in is None) != (self.price_out is None):
            raise ConfigError("Give both prices (--price-in and --price-out, USD per 1M tokens) or neither.")
        if self.selection_metric not in SELECTION_METRICS:
            raise ConfigError(f"--selection-metric must be one of {', '.join(SELECTION_METRICS)}.")
        if self.class_weight not in CLASS_WEIGHTS:
            raise ConfigError(f"--class-weight must be one of {', '.join(CLASS_WEIGHTS)}.")
        if not (self.imbalance_ratio >= 1 and np.isfinite(self.imbalance_ratio)):
            raise ConfigError("--imbalance-ratio must be a number >= 1 (largest / smallest class count).")

    def metric_for(self, task: TaskData) -> str:
        """The selection metric this run uses on `task`: ``accuracy`` or ``macro_f1`` (``auto``
        resolves to macro_f1 when the training split is imbalanced past `imbalance_ratio`)."""
        return resolve_selection_metric(self.selection_metric, task.train.labels, task.n_labels, self.imbalance_ratio)

    def model_settings(self, spec: str) -> dict[str, Any]:
        """Constructor settings for small model `spec`: the run-wide imbalance settings (only where
        they differ from the models' defaults, so older runs keep their fingerprints), then the
        per-kind `ssm_settings`, which win. Image models (kinds ``image_head``/``image_finetune``)
        take their own settings and, of the run-wide ones, only an explicit class weighting."""
        kind = spec_kind(spec)
        if kind.startswith("image_"):
            weighting = {"balanced": {"class_weight": "balanced"}}.get(self.class_weight, {})
            return {**weighting, **self.ssm_settings.get(kind, {})}
        run_wide: dict[str, Any] = {}
        if self.selection_metric != "auto":
            run_wide["selection_metric"] = self.selection_metric
        if self.class_weight != "auto":
            run_wide["class_weight"] = self.class_weight
        if self.imbalance_ratio != DEFAULT_IMBALANCE_RATIO:
            run_wide["imbalance_ratio"] = self.imbalance_ratio
        return {**run_wide, **self.ssm_settings.get(kind, {})}

    def prices(self) -> Optional[dict[str, list[float]]]:
        """The user's prices for the LM model as a price-table entry (None: use the table's)."""
        if self.price_in is None or self.price_out is None:
            return None
        spec = self.lm_spec(environ={})
        model = spec.model if spec.is_endpoint else self.lm_model
        return {str(model or ""): [float(self.price_in), float(self.price_out)]}

    def lm_spec(self, api_key: Optional[str] = None, **options: Any) -> LMSpec:
        """The run's LM as one parsed value (kind, endpoint, key source, price): see `LMSpec`."""
        return LMSpec.from_config(self, api_key, **options)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "RunConfig":
        """A config from saved settings (config.json, or a file a user loads back); unknown keys are an error."""
        return settings_from_dict(cls, data, ("data", "ssm"), "run")

    def data_fingerprint(self) -> str:
        keys = ("data", "text_col", "text_pair_col", "label_col", "split_col", "val_source", "test_source",
                "val_frac", "test_frac", "seed", "max_train", "max_val", "max_test")
        files = [_file_stamp(getattr(self, k)) for k in ("data", "val_source", "test_source")]
        return fingerprint({k: getattr(self, k) for k in keys}, files)

    def lm_identity(self) -> dict[str, Any]:
        return {"lm": self.lm, "model": self.lm_model, "base_url": self.lm_base_url, "few_shot": self.few_shot,
                "prompt": self.prompt}

    def cache_path(self, run_folder: Path) -> Path:
        """The LM answer cache: as set, else lm_cache.sqlite beside the run folder (shared by sibling runs)."""
        return Path(self.cache) if self.cache else Path(run_folder).resolve().parent / "lm_cache.sqlite"


def prompt_template(fields: Optional[dict[str, Any]]) -> Optional[PromptTemplate]:
    """A PromptTemplate from user-edited fields (None: the provider's default template)."""
    if not fields:
        return None
    unknown = set(fields) - set(PromptTemplate.__dataclass_fields__)
    if unknown:
        raise ConfigError(f"Unknown prompt template field(s) {', '.join(sorted(unknown))}; known: "
                          f"{', '.join(PromptTemplate.__dataclass_fields__)}.")
    return PromptTemplate.from_dict(fields)


def check_money_caps(cfg: RunConfig, spec: Optional[LMSpec] = None) -> None:
    """A money cap on an LM whose price is unknown would count 0 per answer and never bind: refuse it.
    An endpoint on this machine is not free by itself (it may forward to a paid API)."""
    caps = [name for name, value in (("--budget-usd", cfg.budget_usd), ("--max-cost-per-1k", cfg.max_cost_per_1k))
            if value is not None]
    spec = spec or cfg.lm_spec(environ={})
    if caps and not spec.price.known:
        where = " on this machine" if spec.is_loopback else ""
        raise ConfigError(
            f"{' and '.join(caps)} {'need' if len(caps) > 1 else 'needs'} the LM's price, and model {spec.model!r} "
            f"at {spec.base_url}{where} has none in the price table. Give it in USD per 1M tokens with --price-in X "
            "--price-out Y, or --price-in 0 --price-out 0 for a self-hosted model that costs nothing (in the app: "
            "the input and output price fields of the Large model tab, or its 'self-hosted, free' tick), or drop "
            "the money cap.")


def check_lm_settings(cfg: RunConfig, api_key: Optional[str]) -> None:
    """Fail before hours of training, not at the mining stage, and before any network call:
    configuration first (the model, a money cap on an unknown price), then the key."""
    spec = cfg.lm_spec(api_key)
    if not spec.is_endpoint:
        return
    if cfg.lm == "openai" and not cfg.lm_model and not cfg.lm_base_url:
        raise ConfigError("--lm openai needs --lm-model NAME (e.g. gpt-4o-mini).")
    check_money_caps(cfg, spec)
    if spec.missing_key:
        raise LMError(f"No API key: set the environment variable {spec.key_env or cfg.lm_key_env} (or name another "
                      "one with --lm-key-env). Keys are never read from the command line or saved.")


def _file_stamp(source: Optional[str]) -> Optional[list[int]]:
    """Size and modification time of a local data file, so an edited file is loaded again."""
    if not source or not Path(source).is_file():
        return None
    st = Path(source).stat()
    return [st.st_size, st.st_mtime_ns]
