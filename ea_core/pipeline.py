"""The EA run: every stage of EA_METHOD.md in order, with progress events, checkpoints and resume.

Stages: load data -> train the SSMs (Specific Layer) -> rank them -> mine underfit examples with
the LM -> LM answers on validation and test -> train the ASSMs (Augmented Layer) -> optional
EA(Full) -> calibrate -> tune thresholds on validation, report on test -> export a bundle.

Each stage's outputs (model weights, probability arrays, LM answers) are cached in the run
folder with a completion mark, so running the same command again resumes where it stopped and
the UI can re-route any thresholds from the cached arrays without recomputing anything. The LM
answer cache (SQLite) lives beside the run folders, so paid answers are bought once; a kill -9
loses only the LM requests in flight (at most the concurrency), whose answers never arrived.
Before any training, a run with an API LM checks that its endpoint answers and takes the key.
The folder has one writer (its lock), and its budget one ledger (lm/spend.jsonl, written per
paid answer), so a resumed run counts the money already spent.
"""

from __future__ import annotations

import dataclasses
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from ea_core import mining
from ea_core.errors import ConfigError
from ea_core.events import CancelToken, ProgressCallback, ProgressEvent
from ea_core.llm.base import FAILED, MISSING_CONFIDENCE, UNPARSEABLE, LMAnswer, LMProvider, routing_confidence
from ea_core.llm.cost import SpendLedger
from ea_core.llm.urls import strip_userinfo, userinfo_secret
from ea_core.mining import DEFAULT_OOF_FOLDS
from ea_core.models.common import (
    CLASS_WEIGHTS,
    DEFAULT_IMBALANCE_RATIO,
    SELECTION_METRICS,
    resolve_selection_metric,
    selection_score,
)
from ea_core.resources import ResourceMeter
from ea_core.router import StageOutput
from ea_core.runfolder import RunFolder, fingerprint, load_arrays, read_json, save_arrays, write_json
from ea_core.splits import Split, TaskData
from ea_core.tuning import apply_temperature

SPLITS = ("train", "val", "test")
#: Few-shot examples per label the offline image stand-in (local:image-knn) sees when --few-shot is not given.
IMAGE_KNN_FEW_SHOT = 5


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
    operating_point: str = "crossfit_guarded"  # how the reported point is chosen: ea_core.tuning.HONEST_RULES
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
        from ea_core.tuning import HONEST_RULES

        if self.operating_point not in HONEST_RULES:
            raise ConfigError(f"--operating-point must be one of {', '.join(HONEST_RULES)}.")
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
        from ea_core.models import spec_kind

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
        from ea_core.llm import api_model

        model = self.lm_model or (api_model(self.lm or "", None, self.lm_base_url) if self.lm else None)
        return {str(model or ""): [float(self.price_in), float(self.price_out)]}

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "RunConfig":
        """A config from saved settings (config.json, or a file a user loads back); unknown keys are an error."""
        if not isinstance(data, dict):
            raise ConfigError("Run settings must be a JSON object of setting -> value.")
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ConfigError(f"Unknown run setting(s): {', '.join(unknown)}. Known: {', '.join(sorted(known))}.")
        if "data" not in data or "ssm" not in data:
            raise ConfigError("Run settings need at least 'data' and 'ssm'.")
        try:
            return cls(**data)
        except TypeError as err:
            raise ConfigError(f"Bad run settings: {err}.") from None

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


@dataclass
class StageRecord:
    """A trained small model in the run folder (SSM or ASSM) and its cached outputs."""

    name: str  # SPEC for SSMs, "assm:SPEC" / "assm_full:SPEC" for augmented ones
    folder: Path
    val_accuracy: float
    test_accuracy: float
    train_time_s: float
    peak_rss_mb: float
    trained_on: int

    def outputs(self) -> dict[str, np.ndarray]:
        return load_arrays(self.folder / "outputs.npz")


@dataclass
class RunState:
    """What a (possibly partial) run holds, handed to the report, the tuner and the UI."""

    folder: RunFolder
    config: RunConfig
    task: TaskData
    ssms: list[StageRecord] = field(default_factory=list)  # rank order
    assms: list[StageRecord] = field(default_factory=list)
    assm_full: list[StageRecord] = field(default_factory=list)
    lm_answers: dict[str, dict[str, np.ndarray]] = field(default_factory=dict)  # split -> arrays
    lm_describe: dict[str, Any] = field(default_factory=dict)
    lm_gives_confidence: bool = False
    lm_few_shot: Optional[list] = None  # the prompt's examples, for the exported bundle
    lm_label_offsets: Optional[list[float]] = None  # local LM's "calibrate before use" offsets
    mining: Optional[mining.MiningResult] = None
    lm_usage: dict[str, Any] = field(default_factory=dict)
    temperatures: dict[str, float] = field(default_factory=dict)
    calibration: dict[str, dict[str, float]] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    tuning: dict[str, dict[str, Any]] = field(default_factory=dict)  # system -> layers, thresholds (on val)
    rows: list[dict[str, Any]] = field(default_factory=list)  # the results table

    def records(self) -> dict[str, StageRecord]:
        """Every trained small model of the run by stage name."""
        return {r.name: r for r in self.ssms + self.assms + self.assm_full}

    def layer_records(self, layer: str) -> list[StageRecord]:
        return {"ssm": self.ssms, "assm": self.assms, "assm_full": self.assm_full}[layer]

    def stage_names(self, layers: tuple[str, ...] = ("ssm", "assm", "lm")) -> list[str]:
        """Names of the stages `stage_outputs` gives for `layers`, without loading any array."""
        return [name for layer in layers for name in (
            (["lm"] if self.lm_answers else []) if layer == "lm" else [r.name for r in self.layer_records(layer)])]

    def stage_outputs(self, split: str, layers: tuple[str, ...] = ("ssm", "assm", "lm"),
                      calibrated: bool = True) -> list[StageOutput]:
        """Per-stage outputs on a split (small models temperature-scaled unless `calibrated` is
        False), in routing order, for `router.route`."""
        out: list[StageOutput] = []
        for layer in layers:
            if layer == "lm":
                if split in self.lm_answers:
                    out.append(lm_stage_output(self.lm_answers[split]))
                continue
            for rec in self.layer_records(layer):
                proba = rec.outputs()[split]
                t = self.temperatures.get(rec.name, 1.0) if calibrated else 1.0
                out.append(StageOutput.from_proba(rec.name, apply_temperature(proba, t)))
        return out




def lm_stage_output(answers: dict[str, np.ndarray], missing: float = MISSING_CONFIDENCE) -> StageOutput:
    """The LM as a routing stage: its label, its confidence (`routing_confidence`: `missing` when it
    gave none, 0 with no usable answer) and its cost per input."""
    conf = routing_confidence(answers["label"], answers["confidence"], missing)
    return StageOutput(name="lm", pred=answers["label"].astype(np.int64), conf=conf, is_lm=True,
                       cost_usd=answers["cost_usd"].astype(np.float64))


def answers_to_arrays(answers: list[LMAnswer], price_per_1m: Any = None) -> dict[str, np.ndarray]:
    """LM answers as arrays. `cost_usd` is what each answer costs at the model's price, also when it
    came from the cache (where nothing was paid this time): the routing cost of a system."""
    prompt = np.array([a.prompt_tokens for a in answers], dtype=np.float64)
    completion = np.array([a.completion_tokens for a in answers], dtype=np.float64)
    if isinstance(price_per_1m, dict) and "input" in price_per_1m:
        cost = (prompt * price_per_1m["input"] + completion * price_per_1m["output"]) / 1e6
    else:
        cost = np.array([a.cost_usd for a in answers], dtype=np.float64)
    return {
        "label": np.array([a.label for a in answers], dtype=np.int64),
        "confidence": np.array([np.nan if a.confidence is None else a.confidence for a in answers], dtype=np.float64),
        "cost_usd": cost,
        "tokens": np.array([a.prompt_tokens + a.completion_tokens for a in answers], dtype=np.int64),
        "latency_s": np.array([a.latency_s for a in answers], dtype=np.float64),
        "cached": np.array([a.cached for a in answers], dtype=bool),
    }


#: Stage name -> Pipeline method. The names are what progress events of stage ``run`` carry.
STEP_METHODS = {"data": "stage_data", "ssm": "stage_ssms", "mine": "stage_mine", "lm_eval": "stage_lm_eval",
                "assm": "stage_assm", "ea_full": "stage_ea_full", "calibrate": "stage_calibrate",
                "tune": "stage_tune", "report": "stage_report", "export": "stage_export"}


def step_names(cfg: RunConfig) -> list[str]:
    """The stages a run with these settings goes through, in order (what a UI stepper shows)."""
    names = ["data", "ssm"]
    if cfg.lm:
        names += ["mine", "lm_eval", "assm"] + (["ea_full"] if cfg.ea_full else [])
    names.append("calibrate")
    if cfg.lm:
        names.append("tune")
    names.append("report")
    if cfg.lm:
        names.append("export")
    return names


class Pipeline:
    """Runs (or resumes) one EA run in a folder. `api_key` stays in memory only."""

    def __init__(
        self,
        config: RunConfig,
        out_dir: str | Path | RunFolder,
        *,
        api_key: Optional[str] = None,
        callback: Optional[ProgressCallback] = None,
        cancel: Optional[CancelToken] = None,
        provider: Optional[LMProvider] = None,
    ) -> None:
        config.validate()
        # A key pasted into the base URL (http://user:KEY@host) is used in memory, never stored:
        # config.json, summary.json, the bundle and the cache see the URL without it.
        url_key = userinfo_secret(config.lm_base_url)
        if url_key is not None:
            config = dataclasses.replace(config, lm_base_url=strip_userinfo(config.lm_base_url or ""))
            if not api_key and not os.environ.get(config.lm_key_env or ""):
                api_key = url_key
        self.config = config
        self.folder = out_dir if isinstance(out_dir, RunFolder) else RunFolder(out_dir)
        self.state: RunState
        self._api_key = api_key
        self._user_callback = callback
        self.cancel = cancel or CancelToken()
        self._provider = provider
        self._cache: Any = None  # the LM answer cache, opened once (see `answer_cache`)
        self._check_config()
        if config.lm and provider is None:
            check_lm_settings(config, api_key)

    # -- plumbing -------------------------------------------------------------------------
    def __repr__(self) -> str:  # never show the key
        return f"Pipeline(out_dir={str(self.folder.root)!r}, ssm={self.config.ssm!r}, lm={self.config.lm!r})"

    def emit(self, event: ProgressEvent) -> None:
        self.folder.log_event(event)
        if self._user_callback is not None:
            self._user_callback(event)

    def _check_config(self) -> None:
        """Refuse to mix two runs in one folder (the settings are written when the run starts)."""
        path = self.folder.path("config.json")
        new = self.config.to_dict()
        if path.is_file() and self.folder.path("stages", "data.json").is_file():
            old = read_json(path)
            if old.get("data") != new["data"] or old.get("ssm") != new["ssm"]:
                raise ConfigError(
                    f"{self.folder.root} already holds a run on other data or models "
                    f"(data={old.get('data')!r}, ssm={old.get('ssm')}). Use a new --out folder to start a new run."
                )

    def provider(self) -> LMProvider:
        if self._provider is None:
            from ea_core.llm import make_provider
            from ea_core.llm.cost import Budget

            cfg = self.config
            from ea_core.llm.prompt import example_from_json

            examples = [example_from_json(e) for e in self.state.lm_few_shot] if self.state.lm_few_shot else None
            # One ledger per run folder: every paid answer is recorded as it arrives, so a resumed
            # run starts from the money already spent (the cap is on the run, not on a session).
            money = {} if cfg.lm.startswith("local") else {"budget": Budget(cfg.budget_usd, ledger=self._ledger())}
            self._provider = make_provider(
                cfg.lm, model=cfg.lm_model, base_url=cfg.lm_base_url, key_env=cfg.lm_key_env, api_key=self._api_key,
                cache=self.answer_cache(), concurrency=cfg.concurrency,
                few_shot_examples=examples, prompt=prompt_template(cfg.prompt), prices=cfg.prices(), **money,
            )
            if hasattr(self._provider, "calibrate_on"):
                # Local label scoring: "calibrate before use" on unlabelled training inputs, not on
                # whatever batch comes first (the mined examples are a skewed sample).
                train = self.task.train
                offsets = self._provider.calibrate_on([train.input(i) for i in range(len(train))], self.task.labels)
                write_json(self._lm_dir() / "label_offsets.json", [float(x) for x in offsets])
        return self._provider

    def answer_cache(self) -> Any:
        """The run's LM answer cache (`ConfigError` naming the path if it cannot be one)."""
        if self._cache is None:
            from ea_core.llm.cache import AnswerCache

            self._cache = AnswerCache(self.config.cache_path(self.folder.root))
        return self._cache

    def _ledger(self) -> SpendLedger:
        """The run's spend ledger (lm/spend.jsonl); a run from before the ledger starts from its spent.json."""
        old = self.folder.path("lm", "spent.json")
        opening = float(read_json(old)["usd"]) if old.is_file() else 0.0
        return SpendLedger(self.folder.path("lm", "spend.jsonl"), opening_usd=opening)

    def _spent(self) -> float:
        """USD paid to the LM by this run folder so far, over all its sessions (for --budget-usd)."""
        return self._ledger().total

    def check_lm_endpoint(self) -> None:
        """Before any training: is the LM's endpoint up, and does it take the key? (`LMError` if not.)

        One free request (`OpenAIProvider.check_endpoint`), made only when some LM stage still has
        inputs to ask: a finished run reopened or resumed past its LM stages needs no endpoint.
        """
        cfg = self.config
        if not cfg.lm or not self._lm_work_left():
            return
        if self._provider is None:
            self.answer_cache()  # a --cache that cannot hold answers fails now too
        if self._provider is None and cfg.lm.startswith("local"):
            return
        from ea_core.llm.planning import check_endpoint

        if self._provider is not None:
            prov = self._provider
        else:
            from ea_core.llm import make_provider

            prov = make_provider(cfg.lm, model=cfg.lm_model, base_url=cfg.lm_base_url, key_env=cfg.lm_key_env,
                                 api_key=self._api_key, concurrency=cfg.concurrency, prices=cfg.prices())
        report = check_endpoint(prov)
        if report is None:
            return
        models = report.get("models")
        note = ""
        if models and cfg.lm_model and cfg.lm_model not in models:
            note = f"; note: it does not list model {cfg.lm_model!r} among its {len(models)} models"
        self.emit(ProgressEvent(stage="lm", step=0, total=0, message=(
            f"LM endpoint {prov.describe().get('base_url', '')} answers ({report.get('latency_s', 0.0) * 1000:.0f} ms)"
            f"{note}")))

    def _lm_work_left(self) -> bool:
        """Whether some LM stage of this run has no saved answers yet, or saved failures to retry."""
        stages = ["mine", "val", "test"] + (["train_full"] if self.config.ea_full else [])
        for stage in stages:
            path = self._lm_dir() / f"{stage}.npz"
            if not path.is_file() or np.any(load_arrays(path)["label"] == FAILED):
                return True
        return False

    # -- the run --------------------------------------------------------------------------
    def steps(self) -> list[tuple[str, Callable[[], None]]]:
        """The run's stages in order, as (name, method); names as in `step_names`."""
        return [(name, getattr(self, STEP_METHODS[name])) for name in step_names(self.config)]

    def run(self) -> RunState:
        """Run every stage not yet done; returns the complete state (also written to disk).

        The folder is locked for the whole run: a second run into it fails with `RunBusy`.
        """
        took_lock = not self.folder.holds_lock
        self.folder.lock()
        try:
            self._check_config()
            write_json(self.folder.path("config.json"), self.config.to_dict())
            self.check_lm_endpoint()  # an unreachable endpoint or a refused key fails now, not hours later
            steps = self.steps()
            t0 = time.perf_counter()
            for i, (name, fn) in enumerate(steps):
                self.cancel.check()
                self.emit(ProgressEvent(stage="run", step=i, total=len(steps), message=name,
                                        elapsed_s=time.perf_counter() - t0))
                fn()
                if name != "data":
                    save_state(self.state)
            self.emit(ProgressEvent(stage="run", step=len(steps), total=len(steps), message="done",
                                    elapsed_s=time.perf_counter() - t0))
            write_json(self.folder.path("summary.json"), self.summary())
            return self.state
        finally:
            if took_lock:
                self.folder.unlock()

    # -- stages ---------------------------------------------------------------------------
    def stage_data(self) -> None:
        cfg = self.config
        fp = cfg.data_fingerprint()
        data_dir = self.folder.path("data")
        if self.folder.is_done("data", fp):
            self.task = load_task(data_dir)
        else:
            from ea_core.data import load_dataset

            self.task = load_dataset(
                cfg.data, text_col=cfg.text_col, text_pair_col=cfg.text_pair_col, label_col=cfg.label_col,
                split_col=cfg.split_col, val_source=cfg.val_source, test_source=cfg.test_source,
                val_frac=cfg.val_frac, test_frac=cfg.test_frac, seed=cfg.seed,
                max_train=cfg.max_train, max_val=cfg.max_val, max_test=cfg.max_test,
            )
            save_task(self.task, data_dir)
            self.folder.mark_done("data", fp)
        from ea_core.models import check_spec_for_data

        for spec in cfg.ssm:  # a text model on images (or the reverse) fails now, with the models to use
            check_spec_for_data(spec, self.task.modality)
        if self.task.is_image:
            self._adapt_to_images()
        self.state = RunState(folder=self.folder, config=cfg, task=self.task)
        for w in self.task.warnings:
            self.emit(ProgressEvent(stage="data", step=0, total=0, message=f"warning: {w}"))

    def _adapt_to_images(self) -> None:
        """An image task: make ``--lm local`` (the offline default)
        the offline image stand-in, which answers from few-shot examples (5 per label unless
        --few-shot says otherwise). The resolved settings are what config.json records."""
        from ea_core.llm import IMAGE_KNN_SPEC

        cfg = self.config
        if cfg.lm == "local":
            cfg.lm = IMAGE_KNN_SPEC
            self.emit(ProgressEvent(stage="data", step=0, total=0, message=(
                "image data: the local LM stage is the offline stand-in local:image-knn (few-shot nearest neighbours, "
                "not a language model); give a vision LM (--lm openai --lm-model ...) for real gains")))
        if cfg.lm == IMAGE_KNN_SPEC and cfg.few_shot <= 0:
            cfg.few_shot = IMAGE_KNN_FEW_SHOT
        write_json(self.folder.path("config.json"), cfg.to_dict())

    def _train_small_model(self, name: str, folder: Path, fp: str, build: Callable[[], Any], train: Split,
                           warm: bool, select: Optional[Callable[[np.ndarray], float]] = None) -> StageRecord:
        """Train (or reload) one small model and cache its probabilities on every split."""
        info_path = folder / "info.json"
        if not self.folder.is_done(f"model_{folder.parent.name}_{folder.name}", fp):
            model = build()
            with ResourceMeter() as meter:
                model.fit(train, self.task.val, self.task.labels, callback=self.emit, cancel=self.cancel,
                          warm_start=warm, stage=f"train:{name}", select=select)
            for stale in folder.glob("oof*.npz"):  # out-of-fold outputs of a previous model
                stale.unlink()
            model.save(folder / "model")
            outputs = {s: model.predict_proba(self.task.split(s)) for s in SPLITS}
            save_arrays(folder / "outputs.npz", **outputs)
            acc = {s: float(np.mean(outputs[s].argmax(1) == self.task.split(s).labels)) for s in ("val", "test")}
            info = {"name": name, "val_accuracy": acc["val"], "test_accuracy": acc["test"],
                    "train_time_s": meter.elapsed_s, "peak_rss_mb": meter.peak_rss_mb, "trained_on": len(train)}
            write_json(info_path, info)
            self.folder.mark_done(f"model_{folder.parent.name}_{folder.name}", fp)
        info = read_json(info_path)
        self.emit(ProgressEvent(stage=f"model:{name}", step=1, total=1, val_accuracy=info["val_accuracy"],
                                elapsed_s=info["train_time_s"], message=(
                                    f"{name}: val acc {info['val_accuracy']:.1%}, test acc {info['test_accuracy']:.1%}, "
                                    f"trained on {info['trained_on']} examples in {info['train_time_s']:.1f} s")))
        return StageRecord(folder=folder, **info)

    def stage_ssms(self) -> None:
        from ea_core.models import make_model

        cfg = self.config
        records = []
        for i, spec in enumerate(cfg.ssm):
            settings = cfg.model_settings(spec)
            fp = fingerprint(cfg.data_fingerprint(), spec, settings)
            folder = self.folder.path("ssm", f"{i:02d}_{_safe(spec)}")
            records.append(self._train_small_model(
                spec, folder, fp, lambda spec=spec, settings=settings: make_model(spec, self.task.labels, **settings),
                self.task.train, warm=False))
        # Eq. 7-8: rank by the validation selection metric (accuracy, or macro-F1 on imbalanced
        # labels), best first (stable for ties: command-line order).
        self.state.ssms = rank_records(records, self.task.val.labels, cfg.metric_for(self.task), self.task.n_labels)
        write_json(self.folder.path("ranking.json"), [r.name for r in self.state.ssms])

    def _train_probs_for_mining(self) -> list[np.ndarray]:
        """SSM probabilities on the training split, in rank order (out-of-fold when asked)."""
        cfg = self.config
        if cfg.oof_folds < 2:
            return [r.outputs()["train"] for r in self.state.ssms]
        from ea_core.models import make_model

        folds = mining.kfold_indices(self.task.train.labels, cfg.oof_folds, cfg.seed)
        probs = []
        for rec in self.state.ssms:
            path = rec.folder / f"oof{cfg.oof_folds}.npz"
            if not path.is_file():
                oof = np.zeros((len(self.task.train), self.task.n_labels))
                settings = cfg.model_settings(rec.name)
                for f, held in enumerate(folds):
                    self.cancel.check()
                    keep = np.setdiff1d(np.arange(len(self.task.train)), held)
                    model = make_model(rec.name, self.task.labels, **settings)
                    model.fit(self.task.train.subset(keep), self.task.val, self.task.labels, callback=self.emit,
                              cancel=self.cancel, stage=f"oof:{rec.name}:{f + 1}/{len(folds)}")
                    oof[held] = model.predict_proba(self.task.train.subset(held))
                save_arrays(path, proba=oof)
            probs.append(load_arrays(path)["proba"])
        return probs

    def _lm_answers(self, split_name: str, index: np.ndarray, stage: str) -> dict[str, np.ndarray]:
        """LM answers for `index` of a split; cached on disk, retried while any call failed."""
        path = self._lm_dir() / f"{stage}.npz"
        if path.is_file():
            cached = load_arrays(path)
            usage_path = path.with_name(f"{stage}_usage.json")
            if np.array_equal(cached["index"], index) and not np.any(cached["label"] == FAILED):
                if usage_path.is_file():
                    self.state.lm_usage[stage] = read_json(usage_path)
                return cached
        split = self.task.split(split_name)
        inputs = [split.input(int(i)) for i in index]
        if hasattr(self.provider(), "estimate"):
            est = self.provider().estimate(inputs, self.task.labels)
            price = f"~${est.usd:.4f}" if est.price_known else "price unknown"
            self.emit(ProgressEvent(stage=f"lm:{stage}", step=0, total=0, message=(
                f"LM estimate for {stage}: {est.calls} paid calls ({est.cached} cached), "
                f"~{est.prompt_tokens + est.completion_tokens} tokens, {price}")))
        answers, usage = self.provider().classify(inputs, self.task.labels, stage=f"lm:{stage}",
                                                  callback=self.emit, cancel=self.cancel)
        price = self.provider().describe().get("price_usd_per_1m")
        arrays = {"index": np.asarray(index, dtype=np.int64), **answers_to_arrays(answers, price)}
        save_arrays(path, **arrays)
        self.cancel.check()  # cancelled mid-stage: what was answered is saved (and cached); stop here
        usage_d = dataclasses.asdict(usage)
        self.state.lm_usage[stage] = usage_d
        write_json(path.with_name(f"{stage}_usage.json"), usage_d)
        if usage.budget_exhausted:
            self.state.notes.append(f"LM budget exhausted during {stage}: remaining inputs have no LM answer "
                                    "(run again with a higher --budget-usd to complete them).")
        if usage.failures:
            self.state.notes.append(f"{usage.failures} LM calls failed during {stage}; run the same command "
                                    "again to retry only those.")
        return arrays

    def stage_mine(self) -> None:
        cfg = self.config
        shown = self._few_shot_rows()
        if shown:
            from ea_core.llm.prompt import example_to_json, select_examples

            self.state.lm_few_shot = [example_to_json(e) for e in select_examples(self.task.train, self.task.labels,
                                                                                  cfg.few_shot, cfg.seed)]
        self._load_lm_description()
        train_probs = self._train_probs_for_mining()
        y = self.task.train.labels
        # The few-shot examples are in the prompt with their labels: never candidates (a label leak).
        candidates = mining.without_shown(mining.ssm_wrong(train_probs, y, cfg.mining), shown)
        self.emit(ProgressEvent(stage="mine", step=0, total=0,
                                message=f"{len(candidates)} of {len(y)} training examples are wrong for "
                                        f"{'every SSM' if cfg.mining == 'all' else 'the top SSM'}; asking the LM"))
        answers = self._lm_answers("train", candidates, "mine")
        usage = self.state.lm_usage.get("mine", {})
        self.state.mining = mining.split_underfit(candidates, answers["label"], y, len(y), usage, shown)
        labels = answers["label"]
        answered = labels >= 0
        right = int(np.sum(labels[answered] == y[candidates][answered]))
        self.emit(ProgressEvent(stage="mine", step=0, total=0, message=(
            f"LM on {len(candidates)} candidates: {right} right, {int(answered.sum()) - right} wrong, "
            f"{int(np.sum(labels == UNPARSEABLE))} named no label (paid, kept), {int(np.sum(labels == FAILED))} "
            "failed (not cached: asked again by the next run)")))
        write_json(self.folder.path("mining.json"), self.state.mining.summary())
        save_arrays(self.folder.path("mining.npz"), underfit=self.state.mining.underfit,
                    candidates=candidates, failed=self.state.mining.failed, shown=np.asarray(shown, dtype=np.int64))

    def _few_shot_rows(self) -> list[int]:
        """Training rows shown to the LM as few-shot examples (none without --few-shot)."""
        from ea_core.llm.prompt import select_example_rows

        return select_example_rows(self.task.train, self.task.labels, self.config.few_shot, self.config.seed)

    def _lm_dir(self) -> Path:
        """LM outputs depend on the data (which inputs) and the LM (which answers)."""
        return self.folder.path("lm", fingerprint(self.config.data_fingerprint(), self.config.lm_identity()))

    def _load_lm_description(self) -> None:
        """What the LM is (settings safe to save); asks the provider once per LM identity."""
        path = self._lm_dir() / "describe.json"
        if not path.is_file():
            prov = self.provider()
            write_json(path, {"describe": prov.describe()})
        self.state.lm_describe = read_json(path)["describe"]
        offsets = self._lm_dir() / "label_offsets.json"
        if offsets.is_file():
            self.state.lm_label_offsets = read_json(offsets)

    def stage_lm_eval(self) -> None:
        for split in ("val", "test"):
            n = len(self.task.split(split))
            self.state.lm_answers[split] = self._lm_answers(split, np.arange(n), split)
        # The LM-first order needs the LM's own confidence (token log-probs or label scores).
        self.state.lm_gives_confidence = bool(np.isfinite(self.state.lm_answers["val"]["confidence"]).any())

    def _assm_sources(self) -> list[StageRecord]:
        return self.state.ssms[:1] if self.config.assm == "top" else list(self.state.ssms)

    def _train_augmented(self, layer: str, index: np.ndarray) -> list[StageRecord]:
        from ea_core.models import load_model

        if len(index) < 2:
            self.state.notes.append(f"{layer}: only {len(index)} training examples to learn from; skipped.")
            return []
        train = self.task.train.subset(index)
        records = []
        select = self._assm_select()
        for src in self._assm_sources():
            fp = fingerprint(index, src.name, read_json(src.folder / "info.json"), *(["select:routed"] if select else []))
            folder = self.folder.path(layer, src.folder.name)
            records.append(self._train_small_model(
                f"{layer}:{src.name}", folder, fp, lambda src=src: load_model(src.folder / "model"), train, warm=True,
                select=select))
        return records

    def _assm_select(self) -> Optional[Callable[[np.ndarray], float]]:
        """The epoch score of an augmented SSM: the validation accuracy of the routed system it
        joins (Specific Layer -> this ASSM -> LM, thresholds tuned within the run's LM budget).

        Accuracy on all of validation favours an ASSM that does little (it is trained on the few
        examples everything else gets wrong). bench/bench_assm_signal.py, 6 seeds on demo tweets
        with an LM better on some classes: EA test 75.4% with this score vs 73.8% with plain
        validation accuracy, optimism no worse. None (plain selection) when the LM has no
        validation answers yet.
        """
        from ea_core.tuning import Calibration, autotune

        if "val" not in self.state.lm_answers:
            return None
        cfg, y = self.config, self.task.val.labels
        metric = cfg.metric_for(self.task)

        def stage(name: str, proba: np.ndarray) -> StageOutput:
            if cfg.calibrate:
                proba = apply_temperature(proba, Calibration.fit(proba, y).temperature)
            return StageOutput.from_proba(name, proba)

        front = [stage(r.name, r.outputs()["val"]) for r in self.state.ssms]
        lm = lm_stage_output(self.state.lm_answers["val"])

        def score(proba: np.ndarray) -> float:
            try:
                point = autotune([*front, stage("assm", proba), lm], y, max_lm_rate=cfg.max_lm_rate,
                                 max_cost_per_1k=cfg.max_cost_per_1k, metric=metric)
            except ConfigError:  # no point within the budget: fall back to the ASSM's own accuracy
                return float(np.mean(proba.argmax(1) == y))
            return float(point.accuracy)
        return score

    def stage_assm(self) -> None:
        assert self.state.mining is not None
        self.state.assms = self._train_augmented("assm", self.state.mining.underfit)

    def stage_ea_full(self) -> None:
        """EA(Full) ablation: LM answers for the whole training split, ASSM on every LM error."""
        index = mining.without_shown(np.arange(len(self.task.train)), self._few_shot_rows())  # no label leaks
        answers = self._lm_answers("train", index, "train_full")
        errors = index[mining.lm_errors(answers["label"], self.task.train.labels[index])]
        self.state.assm_full = self._train_augmented("assm_full", errors)

    def stage_calibrate(self) -> None:
        """Temperature scaling per small model on validation; ECE before/after on val and test."""
        from ea_core.tuning import Calibration, expected_calibration_error

        y, yt = self.task.val.labels, self.task.test.labels
        for rec in self.state.ssms + self.state.assms + self.state.assm_full:
            out = rec.outputs()
            cal = Calibration.fit(out["val"], y) if self.config.calibrate else Calibration(1.0, np.nan, np.nan)
            self.state.temperatures[rec.name] = float(cal.temperature)
            self.state.calibration[rec.name] = {
                "temperature": float(cal.temperature),
                "ece_val_before": cal.ece_before,
                "ece_val_after": cal.ece_after,
                "ece_test_before": float(expected_calibration_error(out["test"], yt)),
                "ece_test_after": float(expected_calibration_error(cal.apply(out["test"]), yt)),
            }
        write_json(self.folder.path("calibration.json"), self.state.calibration)

    def stage_tune(self) -> None:
        """Thresholds of every routed system for the run's LM budget, chosen on validation by the
        honest rule of `report.tune_systems` (cross-fitted; a simpler system unless the gain is beyond noise)."""
        from ea_core.report import tune_systems

        self.state.tuning = tune_systems(self.state, callback=self.emit)
        write_json(self.folder.path("tuning.json"), self.state.tuning)

    def stage_report(self) -> None:
        """The results table (results.json / .csv) and, with an LM, the validation Pareto front."""
        from ea_core.report import write_report

        self.state.rows = write_report(self.state)
        self.emit(ProgressEvent(stage="report", step=1, total=1, message=f"{len(self.state.rows)} systems scored"))

    def stage_export(self) -> None:
        """The best routed system as a bundle (bundle/), ready for `predict` and the app."""
        from ea_core.bundle import export_run_bundle

        export_run_bundle(self.state, self.state.rows, self.folder.path("bundle"))
        self.emit(ProgressEvent(stage="export", step=1, total=1, message="bundle written"))

    def summary(self) -> dict[str, Any]:
        st = self.state
        return {
            "task": {"name": st.task.name, "labels": st.task.labels, "pair": st.task.is_pair,
                     "sizes": {s: len(st.task.split(s)) for s in SPLITS}, "warnings": st.task.warnings},
            "ranking": [r.name for r in st.ssms],
            "selection_metric": self.config.metric_for(st.task),
            "mining": st.mining.summary() if st.mining else None,
            "lm": st.lm_describe,
            "lm_usage": st.lm_usage,
            "lm_with_confidence": lm_confidence_counts(st.lm_answers),
            "calibration": st.calibration,
            "notes": st.notes,
        }


def rank_records(records: list[StageRecord], y_val: np.ndarray, metric: str, n_labels: int) -> list[StageRecord]:
    """Small models best first by `metric` (accuracy or macro_f1) on validation; stable for ties."""
    scores = [selection_score(y_val, r.outputs()["val"].argmax(1), metric, n_labels) for r in records]
    order = sorted(range(len(records)), key=lambda i: -(scores[i] if np.isfinite(scores[i]) else -np.inf))
    return [records[i] for i in order]


def lm_confidence_counts(lm_answers: dict[str, dict[str, np.ndarray]]) -> dict[str, dict[str, int]]:
    """Per split: LM answers naming a label, and how many of them carried the LM's own confidence
    (the others route with `MISSING_CONFIDENCE`)."""
    out = {}
    for split, arrays in lm_answers.items():
        ok = arrays["label"] >= 0
        out[split] = {"answers": int(ok.sum()), "with_confidence": int(np.sum(ok & np.isfinite(arrays["confidence"])))}
    return out


def prompt_template(fields: Optional[dict[str, Any]]):
    """A PromptTemplate from user-edited fields (None: the provider's default template)."""
    if not fields:
        return None
    from ea_core.llm.prompt import PromptTemplate

    unknown = set(fields) - set(PromptTemplate.__dataclass_fields__)
    if unknown:
        raise ConfigError(f"Unknown prompt template field(s) {', '.join(sorted(unknown))}; known: "
                          f"{', '.join(PromptTemplate.__dataclass_fields__)}.")
    return PromptTemplate.from_dict(fields)


def check_money_caps(cfg: RunConfig) -> None:
    """A money cap on an LM whose price is unknown would count 0 per answer and never bind: refuse it."""
    from ea_core.llm import api_model, price_known

    caps = [name for name, value in (("--budget-usd", cfg.budget_usd), ("--max-cost-per-1k", cfg.max_cost_per_1k))
            if value is not None]
    if caps and not price_known(cfg.lm or "", model=cfg.lm_model, base_url=cfg.lm_base_url, prices=cfg.prices()):
        model = api_model(cfg.lm or "", cfg.lm_model, cfg.lm_base_url)
        raise ConfigError(
            f"{' and '.join(caps)} {'need' if len(caps) > 1 else 'needs'} the LM's price, and model {model!r} has none "
            "in the price table. Give it in USD per 1M tokens with --price-in X --price-out Y (in the app: the "
            "input and output price fields of the Large model tab), or drop the money cap.")


def check_lm_settings(cfg: RunConfig, api_key: Optional[str]) -> None:
    """Fail before hours of training, not at the mining stage: an API LM needs its key."""
    from ea_core.errors import LMError
    from ea_core.llm.presets import is_local_url

    if cfg.lm is None or cfg.lm.startswith("local"):
        return
    if cfg.lm == "openai" and not cfg.lm_model and not cfg.lm_base_url:
        raise ConfigError("--lm openai needs --lm-model NAME (e.g. gpt-4o-mini).")
    check_money_caps(cfg)
    if api_key or os.environ.get(cfg.lm_key_env) or (cfg.lm_base_url and is_local_url(cfg.lm_base_url)):
        return
    raise LMError(f"No API key: set the environment variable {cfg.lm_key_env} (or name another one with "
                  "--lm-key-env). Keys are never read from the command line or saved.")


def _file_stamp(source: Optional[str]) -> Optional[list[int]]:
    """Size and modification time of a local data file, so an edited file is loaded again."""
    if not source or not Path(source).is_file():
        return None
    st = Path(source).stat()
    return [st.st_size, st.st_mtime_ns]


def _safe(spec: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in spec)[:60]


def save_task(task: TaskData, folder: Path) -> None:
    """Freeze the splits in the run folder, so a resumed run sees exactly the same data."""
    folder.mkdir(parents=True, exist_ok=True)
    for name in SPLITS:
        split = task.split(name)
        cols = {"text": pa.array(split.texts, pa.string()), "label": pa.array(split.labels)}
        if split.pairs is not None:
            cols["pair"] = pa.array(split.pairs, pa.string())
        if split.images is not None:
            cols["image"] = pa.array(split.images, pa.binary())
        pq.write_table(pa.table(cols), folder / f"{name}.parquet")
    write_json(folder / "task.json", {"name": task.name, "labels": task.labels, "warnings": task.warnings,
                                      "text_col": task.text_col, "pair_col": task.pair_col,
                                      "label_col": task.label_col})


def load_task(folder: Path) -> TaskData:
    meta = read_json(folder / "task.json")
    splits = {}
    for name in SPLITS:
        t = pq.read_table(folder / f"{name}.parquet")
        pairs = t.column("pair").to_pylist() if "pair" in t.column_names else None
        images = t.column("image").to_pylist() if "image" in t.column_names else None
        splits[name] = Split(t.column("text").to_pylist(), t.column("label").to_numpy(), pairs, images)
    return TaskData(name=meta["name"], labels=meta["labels"], train=splits["train"], val=splits["val"],
                    test=splits["test"], warnings=meta["warnings"], text_col=meta["text_col"],
                    pair_col=meta["pair_col"], label_col=meta["label_col"])


# -- a run as saved on disk ------------------------------------------------------------------

STATE_JSON = "state.json"


def save_state(state: RunState) -> None:
    """What `open_run` needs to rebuild the state without re-running anything (paths relative to the run)."""
    root = state.folder.root

    def rel(records: list[StageRecord]) -> list[str]:
        return [str(Path(r.folder).relative_to(root)) for r in records]

    lm_dir = None
    if state.config.lm:
        lm_dir = str(Path("lm") / fingerprint(state.config.data_fingerprint(), state.config.lm_identity()))
    write_json(root / STATE_JSON, {
        "ssms": rel(state.ssms), "assms": rel(state.assms), "assm_full": rel(state.assm_full), "lm_dir": lm_dir,
        "lm_gives_confidence": state.lm_gives_confidence, "lm_few_shot": state.lm_few_shot, "notes": state.notes,
    })


def is_run_folder(folder: str | Path) -> bool:
    return (Path(folder) / "config.json").is_file()


def open_run(folder: str | Path) -> RunState:
    """A run as saved in its folder, finished or partial, without an LM provider or API key.

    What it holds is what was done: the data, the trained models (rank order), the LM's answers,
    mining, calibration, tuning and the results table, each when its stage has finished. The UI
    reopens runs with it; nothing is recomputed or paid for.
    """
    root = Path(folder)
    if not is_run_folder(root):
        raise ConfigError(f"{root} is not a run folder (it has no config.json).")
    config = RunConfig.from_dict(read_json(root / "config.json"))
    if not (root / "data" / "task.json").is_file():
        raise ConfigError(f"The run in {root} has not loaded its data yet: there is nothing to open.")
    state = RunState(folder=RunFolder(root), config=config, task=load_task(root / "data"))
    saved = read_json(root / STATE_JSON) if (root / STATE_JSON).is_file() else {}

    def records(rels: list[str]) -> list[StageRecord]:
        return [StageRecord(folder=root / r, **read_json(root / r / "info.json")) for r in rels
                if (root / r / "info.json").is_file()]

    state.ssms, state.assms = records(saved.get("ssms", [])), records(saved.get("assms", []))
    state.assm_full = records(saved.get("assm_full", []))
    state.lm_gives_confidence = bool(saved.get("lm_gives_confidence", False))
    state.lm_few_shot = saved.get("lm_few_shot")
    state.notes = list(saved.get("notes", []))
    lm_dir = root / saved["lm_dir"] if saved.get("lm_dir") else None
    if lm_dir is not None and lm_dir.is_dir():
        for split in ("val", "test"):
            if (lm_dir / f"{split}.npz").is_file():
                state.lm_answers[split] = load_arrays(lm_dir / f"{split}.npz")
        for usage in lm_dir.glob("*_usage.json"):
            state.lm_usage[usage.name[: -len("_usage.json")]] = read_json(usage)
        if (lm_dir / "describe.json").is_file():
            state.lm_describe = read_json(lm_dir / "describe.json")["describe"]
        if (lm_dir / "label_offsets.json").is_file():
            state.lm_label_offsets = read_json(lm_dir / "label_offsets.json")
        if (root / "mining.npz").is_file() and (lm_dir / "mine.npz").is_file():
            saved_mining = load_arrays(root / "mining.npz")
            candidates = saved_mining["candidates"]
            answers = load_arrays(lm_dir / "mine.npz")
            if np.array_equal(answers["index"], candidates):
                state.mining = mining.split_underfit(candidates, answers["label"], state.task.train.labels,
                                                     len(state.task.train), state.lm_usage.get("mine"),
                                                     saved_mining.get("shown", ()))
    if (root / "calibration.json").is_file():
        state.calibration = read_json(root / "calibration.json")
        state.temperatures = {name: float(c["temperature"]) for name, c in state.calibration.items()}
    if (root / "tuning.json").is_file():
        state.tuning = read_json(root / "tuning.json")
    if (root / "results.json").is_file():
        state.rows = read_json(root / "results.json")["rows"]
    return state
