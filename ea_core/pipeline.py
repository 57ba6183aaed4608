"""The EA engine: every stage of EA_METHOD.md in order, with progress events, checkpoints and resume.

Stages: data -> SSMs (Specific Layer) -> rank -> mine underfit examples with the LM -> LM answers on
validation and test -> ASSMs (Augmented Layer) -> optional EA(Full) -> calibrate -> tune -> report
-> export a bundle. Each stage's outputs are cached in the run folder with a completion mark, so the
same command resumes where it stopped (what a run holds, and how it is reopened: `ea_core.runstate`).
A run with an API LM checks its endpoint and key before any training. The LM answer cache (SQLite,
beside the run folders) and the run's spend ledger (lm/spend.jsonl) mean a paid answer is bought
once and a resumed run counts the money already spent; the folder has one writer (its lock).
"""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path
from typing import Any, Callable, Optional

import numpy as np

from ea_core import mining
from ea_core.bundle import default_system, export_run_bundle
from ea_core.calibration import Calibration, apply_temperature, expected_calibration_error
from ea_core.data import load_dataset
from ea_core.errors import ConfigError
from ea_core.events import CancelToken, Callbacks, EventKind, ProgressEvent, callback_list, tagged
from ea_core.learned_router import (EVIDENCE_FOLDS, ROUTER_LABELS_NPZ, ROUTER_LABELS_STAGE, LearnedRouter,
                                   fit_learned_router, known_lm_answers, load_router_labels, oof_router_scores,
                                   paired_vs_cascade, region_pairs, router_label_sample)
from ea_core.llm import IMAGE_KNN_SPEC, make_provider
from ea_core.llm.base import FAILED, UNPARSEABLE, LMProvider
from ea_core.llm.batch_api import BATCH_PRICE_FACTOR
from ea_core.llm.cache import AnswerCache
from ea_core.llm.spend import Budget, SpendLedger
from ea_core.llm.planning import check_endpoint
from ea_core.llm.prompt import example_from_json, example_to_json, select_example_rows, select_examples
from ea_core.llm.spec import KEY_URL
from ea_core.models import EmbeddingMemory, check_spec_for_data, load_model, make_model
from ea_core.report import tune_systems, write_report
from ea_core.resources import ResourceMeter
from ea_core.router import StageOutput
from ea_core.runconfig import RunConfig, check_lm_settings, prompt_template
from ea_core.runfolder import RunFolder, fingerprint, load_arrays, read_json, save_arrays, write_json
from ea_core.runstate import (
    LEARNED_NPZ,
    SPLITS,
    RunState,
    StageRecord,
    answers_to_arrays,
    lm_confidence_counts,
    lm_stage_output,
    load_task,
    mining_probs,
    oof_path,
    rank_records,
    save_state,
    save_task,
)
from ea_core.splits import Split
from ea_core.tuning import autotune

#: LM stages over the training split, which `RunConfig.lm_batch` sends through the Batch API.
BATCH_STAGES = ("mine", "train_full", "probe", ROUTER_LABELS_STAGE)

#: Few-shot examples per label the offline image stand-in (local:image-knn) sees when --few-shot is not given.
IMAGE_KNN_FEW_SHOT = 5


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
        callback: Callbacks = None,
        cancel: Optional[CancelToken] = None,
        provider: Optional[LMProvider] = None,
    ) -> None:
        config.validate()
        # A key pasted into the base URL (http://user:KEY@host) is split out by the LM's spec and
        # used in memory, never stored: config.json, summary.json, the bundle and the cache see the
        # URL without it.
        spec = config.lm_spec(api_key)
        if spec.url_key is not None:
            config = dataclasses.replace(config, lm_base_url=spec.given_url)
            if spec.key_source == KEY_URL:
                api_key = spec.key
        self.config = config
        self.folder = out_dir if isinstance(out_dir, RunFolder) else RunFolder(out_dir)
        self.state: RunState
        self._api_key = api_key
        # Every event goes to the run folder's event log, then to the caller's callbacks.
        self.callbacks = callback_list([self.folder.log_event, callback_list(callback)])
        self.cancel = cancel or CancelToken()
        self._provider = provider
        self._cache: Any = None  # the LM answer cache, opened once (see `answer_cache`)
        self.memory = EmbeddingMemory()  # the run's embeddings: its SSMs, folds and ASSMs share them
        self._check_config()
        if config.lm and provider is None:
            check_lm_settings(config, api_key)

    # -- plumbing -------------------------------------------------------------------------
    def __repr__(self) -> str:  # never show the key
        return f"Pipeline(out_dir={str(self.folder.root)!r}, ssm={self.config.ssm!r}, lm={self.config.lm!r})"

    def emit(self, event: ProgressEvent) -> None:
        self.callbacks(event)

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
            cfg = self.config
            examples = [example_from_json(e) for e in self.state.lm_few_shot] if self.state.lm_few_shot else None
            # One ledger per run folder: every paid answer is recorded as it arrives, so a resumed
            # run starts from the money already spent (the cap is on the run, not on a session).
            local = cfg.lm_spec(environ={}).is_local
            money = {} if local else {"budget": Budget(cfg.budget_usd, ledger=self._ledger())}
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
        if self._provider is None and cfg.lm_spec(environ={}).is_local:
            return  # an in-process model: no endpoint
        if self._provider is not None:
            prov = self._provider
        else:
            prov = make_provider(cfg.lm, model=cfg.lm_model, base_url=cfg.lm_base_url, key_env=cfg.lm_key_env,
                                 api_key=self._api_key, concurrency=cfg.concurrency, prices=cfg.prices())
        report = check_endpoint(prov)
        if report is None:
            return
        models = report.get("models")
        note = ""
        if models and cfg.lm_model and cfg.lm_model not in models:
            note = f"; note: it does not list model {cfg.lm_model!r} among its {len(models)} models"
        self.emit(ProgressEvent(stage="lm", step=0, total=0, kind=EventKind.LM, message=(
            f"LM endpoint {prov.describe().get('base_url', '')} answers ({report.get('latency_s', 0.0) * 1000:.0f} ms)"
            f"{note}")))

    def _lm_work_left(self) -> bool:
        """Whether some LM stage of this run has no saved answers yet, or saved failures to retry."""
        stages = ["mine", "val", "test"] + (["train_full"] if self.config.ea_full else []) + (
            ["probe"] if self.config.probe_lm else []) + (
            [ROUTER_LABELS_STAGE] if self._asks_router_labels() else [])
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
                self.emit(ProgressEvent(stage="run", step=i, total=len(steps), kind=EventKind.RUN, step_name=name,
                                        message=name, elapsed_s=time.perf_counter() - t0))
                fn()
                if name != "data":
                    save_state(self.state)
            self.emit(ProgressEvent(stage="run", step=len(steps), total=len(steps), kind=EventKind.RUN,
                                    message="done", elapsed_s=time.perf_counter() - t0))
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
            self.task = load_dataset(
                cfg.data, text_col=cfg.text_col, text_pair_col=cfg.text_pair_col, label_col=cfg.label_col,
                split_col=cfg.split_col, val_source=cfg.val_source, test_source=cfg.test_source,
                val_frac=cfg.val_frac, test_frac=cfg.test_frac, seed=cfg.seed,
                max_train=cfg.max_train, max_val=cfg.max_val, max_test=cfg.max_test,
            )
            save_task(self.task, data_dir)
            self.folder.mark_done("data", fp)
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
                model.fit(train, self.task.val, self.task.labels, callback=tagged(self.emit, model=name),
                          cancel=self.cancel, warm_start=warm, stage=f"train:{name}", select=select)
            for stale in folder.glob("oof*.npz"):  # out-of-fold outputs of a previous model
                stale.unlink()
            model.save(folder / "model")
            outputs = {s: model.predict_proba(self.task.split(s)) for s in SPLITS}
            save_arrays(folder / "outputs.npz", **outputs)
            acc = {s: float(np.mean(outputs[s].argmax(1) == self.task.split(s).labels)) for s in ("val", "test")}
            info = {"name": name, "val_accuracy": acc["val"], "test_accuracy": acc["test"],
                    "train_time_s": meter.elapsed_s, "peak_rss_mb": meter.peak_rss_mb, "trained_on": len(train)}
            if meter.peak_gpu_mb is not None:
                info["peak_gpu_mb"] = meter.peak_gpu_mb
            write_json(info_path, info)
            self.folder.mark_done(f"model_{folder.parent.name}_{folder.name}", fp)
        info = read_json(info_path)
        self.emit(ProgressEvent(stage=f"model:{name}", step=1, total=1, kind=EventKind.MODEL, model=name,
                                val_accuracy=info["val_accuracy"], test_accuracy=info["test_accuracy"],
                                elapsed_s=info["train_time_s"], message=(
                                    f"{name}: val acc {info['val_accuracy']:.1%}, test acc {info['test_accuracy']:.1%}, "
                                    f"trained on {info['trained_on']} examples in {info['train_time_s']:.1f} s")))
        return StageRecord(folder=folder, **info)

    def stage_ssms(self) -> None:
        cfg = self.config
        records = []
        for i, spec in enumerate(cfg.ssm):
            settings = cfg.model_settings(spec)
            fp = fingerprint(cfg.data_fingerprint(), spec, settings)
            folder = self.folder.path("ssm", f"{i:02d}_{_safe(spec)}")
            records.append(self._train_small_model(
                spec, folder, fp,
                lambda spec=spec, settings=settings: make_model(spec, self.task.labels, memory=self.memory, **settings),
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
        folds = mining.kfold_indices(self.task.train.labels, cfg.oof_folds, cfg.seed)
        probs = []
        for rec in self.state.ssms:
            path = oof_path(rec.folder, cfg.oof_folds)
            if not path.is_file():
                oof = np.zeros((len(self.task.train), self.task.n_labels))
                settings = cfg.model_settings(rec.name)
                for f, held in enumerate(folds):
                    self.cancel.check()
                    keep = np.setdiff1d(np.arange(len(self.task.train)), held)
                    model = make_model(rec.name, self.task.labels, memory=self.memory, **settings)
                    model.fit(self.task.train.subset(keep), self.task.val, self.task.labels,
                              callback=tagged(self.emit, model=rec.name, fold=f + 1, folds=len(folds)),
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
            if est.price_known and self.config.lm_batch and stage in BATCH_STAGES:
                price += f" at the normal price, ~${est.usd * BATCH_PRICE_FACTOR:.4f} at the batch price"
            self.emit(ProgressEvent(stage=f"lm:{stage}", step=0, total=0, kind=EventKind.LM, lm_stage=stage, message=(
                f"LM estimate for {stage}: {est.calls} new calls ({est.cached} cached), "
                f"~{est.prompt_tokens + est.completion_tokens} tokens, {price}")))
        if self.config.lm_batch and stage in BATCH_STAGES:
            if not hasattr(self.provider(), "classify_batch"):
                raise ConfigError("--lm-batch needs an OpenAI-compatible endpoint with a Batch API (--lm openai "
                                  "and a base URL), not a local model.")
            answers, usage = self.provider().classify_batch(
                inputs, self.task.labels, state_path=path.with_name(f"{stage}_batch.json"), stage=f"lm:{stage}",
                callback=tagged(self.emit, lm_stage=stage), cancel=self.cancel, poll_s=self.config.lm_batch_poll_s)
        else:
            answers, usage = self.provider().classify(inputs, self.task.labels, stage=f"lm:{stage}",
                                                      callback=tagged(self.emit, lm_stage=stage), cancel=self.cancel)
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
        if cfg.probe_lm:
            self._probe(train_probs[0], shown)
        if self._asks_router_labels():
            self._router_labels(train_probs[0], shown)

    def _asks_router_labels(self) -> bool:
        return self.config.router == "learned" and self.config.router_labels > 0

    def _router_labels(self, top_probs: np.ndarray, shown: list[int]) -> None:
        """The LM on a uniform random sample of the training inputs (`RunConfig.router_labels`): the
        learned router's labels where the best small model is right too, not only where mining looked."""
        cfg = self.config
        index = router_label_sample(len(self.task.train), cfg.router_labels, seed=cfg.seed, shown=shown)
        answers = self._lm_answers("train", index, ROUTER_LABELS_STAGE)
        ssm_label = top_probs[index].argmax(axis=1)
        save_arrays(self.folder.path(ROUTER_LABELS_NPZ), index=index, ssm_label=ssm_label, lm_label=answers["label"])
        y = self.task.train.labels[index]
        self.emit(ProgressEvent(stage="mine", step=0, total=0, message=(
            f"Router labels: the LM on {len(index)} training inputs drawn at random: LM right on "
            f"{int(np.sum(answers['label'] == y))}, the best small model (out of fold) on {int(np.sum(ssm_label == y))}")))

    def _probe(self, top_probs: np.ndarray, shown: list[int]) -> None:
        """The LM on a random sample of the training inputs the best small model is least sure of
        (out of fold): paired evidence for the operating point's guard (`RunConfig.probe_lm`)."""
        cfg = self.config
        index = mining.probe_sample(top_probs.max(axis=1), share=cfg.max_lm_rate, n=cfg.probe_lm, seed=cfg.seed,
                                    shown=shown)
        answers = self._lm_answers("train", index, "probe")
        ssm_label = top_probs[index].argmax(axis=1)
        save_arrays(self.folder.path("probe.npz"), index=index, ssm_label=ssm_label)
        self.state.probe = {"index": index, "ssm_label": ssm_label, "lm_label": answers["label"]}
        y = self.task.train.labels[index]
        self.emit(ProgressEvent(stage="mine", step=0, total=0, message=(
            f"Probe: the LM on {len(index)} random training inputs the best small model is least sure of: LM right "
            f"on {int(np.sum(answers['label'] == y))}, the small model (out of fold) on {int(np.sum(ssm_label == y))}")))

    def _few_shot_rows(self) -> list[int]:
        """Training rows shown to the LM as few-shot examples (none without --few-shot)."""
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
                f"{layer}:{src.name}", folder, fp, lambda src=src: load_model(src.folder / "model", memory=self.memory),
                train, warm=True, select=select))
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
        router = None
        if self.config.router == "learned" and self.state.lm_answers:
            router = self._fit_learned_router()
        self.state.tuning = tune_systems(self.state, callback=self.emit)
        if router is not None and self.config.router_labels > 0:
            self._tune_with_training_evidence()
        write_json(self.folder.path("tuning.json"), self.state.tuning)

    def _tune_with_training_evidence(self) -> None:
        """With router labels (`RunConfig.router_labels`, a uniform sample of the training split with
        the LM's answers): each budget point's guard also pools the sampled training inputs in the
        region it sends to the LM, out of fold: the learned row's those its router, fitted without
        them (`oof_router_scores`), is least sure of; the cascade's those the best small model is
        least sure of (with the probe's, a sample of the same region). Validation stays the only
        evidence of the tuned thresholds; these inputs only join the paired test of the budget point."""
        import copy

        st, cfg = self.state, self.config
        sample = load_router_labels(st, cfg.router_labels)
        if sample is None or not len(sample["index"]):
            return
        train_probs, y = mining_probs(st), self.task.train.labels
        known = known_lm_answers(st, router_labels=cfg.router_labels)
        oof = oof_router_scores(train_probs, self.task.train, known, seed=cfg.seed, folds=EVIDENCE_FOLDS)
        cascade_unsure = 1.0 - train_probs[0].max(axis=1)
        learned_pairs = region_pairs(oof, sample, y, cfg.max_lm_rate)
        cascade_pairs = region_pairs(cascade_unsure, sample, y, cfg.max_lm_rate)
        versus = paired_vs_cascade(oof, cascade_unsure, sample, y, cfg.max_lm_rate)
        if st.probe is not None:  # the probe: a uniform sample of the same region
            new = ~np.isin(cascade_pairs["index"], st.probe["index"])
            cascade_pairs = {k: np.concatenate([st.probe[k] if k != "y" else y[st.probe["index"]],
                                                cascade_pairs[k][new]]) for k in cascade_pairs}
        for pairs, pick in ((learned_pairs, lambda s: s == "ea_learned"), (cascade_pairs, lambda s: s != "ea_learned")):
            if not len(pairs["index"]):
                continue
            with_pairs = copy.copy(st)
            with_pairs.probe = {k: pairs[k] for k in ("index", "ssm_label", "lm_label")}
            st.tuning.update({k: v for k, v in tune_systems(with_pairs).items() if pick(k)})
        if "ea_learned" in st.tuning:  # which of the two the run exports: report.build_rows pools these with val
            st.tuning["ea_learned"]["train_vs_cascade"] = versus.tolist()
        self.emit(ProgressEvent(stage="tune", step=0, total=0, message=(
            f"router labels as evidence beside validation: {len(learned_pairs['index'])} training inputs where the "
            f"learned router would call the LM, {len(cascade_pairs['index'])} where the cascade would")))

    def _fit_learned_router(self) -> Optional[LearnedRouter]:
        """The deferral router (`RunConfig.router` "learned"), trained on the training split's
        out-of-fold outputs and the LM answers mining and the probe bought; its scores on val and test."""
        st = self.state
        known = known_lm_answers(st, router_labels=self.config.router_labels)
        router = fit_learned_router(mining_probs(st), self.task.train, known, seed=self.config.seed)
        if router is None:
            st.notes.append("learned router: too few LM answers on training inputs to learn from (mining found "
                            "under 10 inputs the LM fixed); no ea_learned row. --router-labels or --probe-lm adds some.")
            return None
        st.learned = {split: router.score([r.outputs()[split] for r in st.ssms], self.task.split(split))
                      for split in ("val", "test")}
        save_arrays(self.folder.path(LEARNED_NPZ), **st.learned)
        info = router.info()
        write_json(self.folder.path("learned_router.json"), info)
        self.emit(ProgressEvent(stage="tune", step=0, total=0, message=(
            f"learned router: trained on {info['training_rows']} training inputs ({info['lm_fixes']} the LM fixed), "
            f"cross-validated AUC {info['cv_auc']:.2f}")))
        return router

    def stage_report(self) -> None:
        """The results table (results.json / .csv) and, with an LM, the validation Pareto front."""
        self.state.rows = write_report(self.state)
        self.emit(ProgressEvent(stage="report", step=1, total=1, message=f"{len(self.state.rows)} systems scored"))

    def stage_export(self) -> None:
        """The best routed system as a bundle (bundle/), ready for `predict` and the app."""
        system = default_system(self.state.rows)
        export_run_bundle(self.state, self.state.rows, self.folder.path("bundle"), system=system)
        self.emit(ProgressEvent(stage="export", step=1, total=1, message=f"bundle written ({system})"))

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

def _safe(spec: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in spec)[:60]
