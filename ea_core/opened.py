"""An opened run: what a client (the app's tabs, a notebook, a server) needs of one run, as plain data.

Clients lay out and format; they never read a run folder. `OpenedRun` answers from the folder
through `RunManager` and `open_run`, and keeps what is costly to build (the run's state, an
explorer per routing order, loaded adapted systems) for as long as the client keeps it.
"""

from __future__ import annotations

import csv
import math
import shutil
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Optional, Sequence

import numpy as np

from ea_core.bundle import default_system, export_run_bundle, system_from_run
from ea_core.cascade import Routed, route_split
from ea_core.errors import Cancelled, ConfigError, DataError, EAError
from ea_core.events import CancelToken
from ea_core.explore import ORDERS, Explorer, Headroom, available_orders, headroom
from ea_core.findings import mined_counts, mined_examples, write_mined_csv
from ea_core.inputs import read_inputs, spreadsheet_safe
from ea_core.llm.spec import LMSpec, Price
from ea_core.models.catalog import unavailable_reason
from ea_core.monitor import RunProgress
from ea_core.operating_point import plain_why
from ea_core.pipeline import step_names
from ea_core.report import routed_note
from ea_core.runconfig import RunConfig
from ea_core.runfolder import read_json
from ea_core.runs import RunManager, RunStatus
from ea_core.runstate import RunState, open_run
from ea_core.splits import Split
from ea_core.summary_opened import is_summary_run
from ea_core.system import AdaptedSystem

#: A run in one of these states can continue where it stopped.
RESUMABLE = ("cancelled", "interrupted", "failed")
#: Failures that resuming with the same settings meets again (a `RunStatus.error_kind`).
PERMANENT_ERRORS = ("DataError", "ConfigError")
#: Files of a finished run offered for download.
RESULT_FILES = ("results.csv", "results.json")
#: Adapted systems (loaded models) kept per opened run: one per routing order, calibration and LM use.
SYSTEMS_KEPT = 6


def lm_spec(cfg: Optional[RunConfig]) -> Optional[LMSpec]:
    """The run's LM as one parsed value (no key read); None for settings that name none readable."""
    if cfg is None:
        return None
    try:
        return LMSpec.from_config(cfg, key_env="")
    except EAError:
        return None


def lm_is_local(cfg: Optional[RunConfig]) -> bool:
    """Whether the run's LM runs in process (no endpoint, no money)."""
    spec = lm_spec(cfg)
    return bool(spec and spec.is_local)


def lm_needs_key(cfg: Optional[RunConfig]) -> bool:
    """Whether calling the run's LM needs an API key (an endpoint that is not on this machine)."""
    spec = lm_spec(cfg)
    return bool(spec and spec.needs_key)


def lm_title(cfg: Optional[RunConfig]) -> str:
    """The run's LM in a few words: ``local SmolLM2 (packaged)``, ``gpt-4o-mini @ api.openai.com``."""
    if cfg is None:
        return "-"
    if str(cfg.lm).startswith("local"):
        return "local " + (str(cfg.lm).partition(":")[2] or "SmolLM2 (packaged)")
    host = ""
    if cfg.lm_base_url:
        from urllib.parse import urlsplit

        host = urlsplit(cfg.lm_base_url).hostname or ""
    return f"{cfg.lm_model or cfg.lm}" + (f" @ {host}" if host else f" ({cfg.lm})")


#: Systems a past run is compared by (its results table's rows).
COMPARED = ("ea", "lm", "oracle")


@dataclass
class PastRun:
    """One of the owner's runs as a list of runs shows it, read from its small files only (no model,
    no data): its status, what it ran on, and its headline results (test, with 95% intervals)."""

    status: RunStatus
    data: str = "-"
    sizes: dict[str, int] = field(default_factory=dict)  # train / val / test
    models: list[str] = field(default_factory=list)
    lm: str = "-"
    max_lm_rate: Optional[float] = None
    rows: dict[str, dict[str, Any]] = field(default_factory=dict)  # system -> results row
    best_ssm: Optional[str] = None  # by validation (the run's ranking)
    lm_calls: int = 0  # the whole run's paid LM calls
    lm_cost_usd: float = 0.0
    lm_free: bool = False  # an in-process LM (nothing to pay)

    # the status, as before
    @property
    def run_id(self) -> str:
        return self.status.run_id

    @property
    def state(self) -> str:
        return self.status.state

    @property
    def title(self) -> str:
        return self.status.title

    @property
    def created(self) -> float:
        return self.status.created

    @property
    def elapsed_s(self) -> Optional[float]:
        return self.status.elapsed_s

    def row(self, system: str) -> dict[str, Any]:
        """A results row: a system name, or "best_ssm" for the run's best small model."""
        if system == "best_ssm":
            system = self.best_ssm or ""
        return self.rows.get(system, {})

    def accuracy(self, system: str, split: str = "test") -> tuple[Optional[float], Optional[tuple[float, float]]]:
        """(accuracy, 95% interval or None) of `system` on `split` (None when the run has no such row)."""
        row = self.row(system)
        ci = row.get(f"{split}_accuracy_ci")
        return row.get(f"{split}_accuracy"), (tuple(ci) if ci else None)


def read_past_run(manager: RunManager, status: RunStatus) -> PastRun:
    """`PastRun` of a run: what its small files say (a file missing or unreadable leaves its fields empty)."""
    folder = manager.folder(status.run_id)
    out = PastRun(status)

    def load(name: str) -> dict[str, Any]:
        try:
            data = read_json(folder / name)
        except (OSError, ValueError):
            return {}
        return data if isinstance(data, dict) else {}

    cfg_data, results, summary = load("config.json"), load("results.json"), load("summary.json")
    try:
        cfg = RunConfig.from_dict(cfg_data) if cfg_data else None
    except (EAError, ValueError, TypeError):
        cfg = None
    task = summary.get("task") or {}
    if cfg is not None:
        out.data = str(task.get("name") or Path(str(cfg.data)).name or cfg.data)
        out.models, out.lm, out.max_lm_rate = list(cfg.ssm), lm_title(cfg), cfg.max_lm_rate
        out.lm_free = lm_is_local(cfg)
    out.sizes = {k: int(v) for k, v in (task.get("sizes") or {}).items()}
    out.rows = {str(r.get("system")): r for r in results.get("rows", []) if isinstance(r, dict)}
    ranking = summary.get("ranking") or [name for name in out.models if name in out.rows]
    out.best_ssm = next((name for name in ranking if name in out.rows), None)
    usage = (summary.get("lm_usage") or {}).values()
    out.lm_calls = sum(int(u.get("calls") or 0) for u in usage if isinstance(u, dict))
    out.lm_cost_usd = sum(float(u.get("cost_usd") or 0.0) for u in usage if isinstance(u, dict))
    return out


def past_runs(manager: RunManager, owner: Optional[str]) -> list[PastRun]:
    """The owner's classification runs, newest first (nobody else's), each with what it ran on and
    its results (summarization runs are the Summaries tab's: `ea_core.summary_opened`)."""
    return [read_past_run(manager, status) for status in manager.runs(owner)
            if not is_summary_run(manager, status.run_id)] if owner else []


@dataclass
class ModelRow:
    """A trained small model, as a monitor lists it."""

    name: str
    val_accuracy: Optional[float]
    test_accuracy: Optional[float]
    train_time_s: Optional[float]


class ProgressFeed:
    """A run's progress as its event log grows: `poll` folds the new events into `progress`."""

    def __init__(self, manager: RunManager, run_id: str, steps: Sequence[str] = ()) -> None:
        self.manager, self.run_id = manager, run_id
        self.progress = RunProgress(steps=list(steps))
        self.offset = 0

    def poll(self) -> bool:
        """Read what was logged since the last poll; True if anything was."""
        events, self.offset = self.manager.read_events(self.run_id, self.offset)
        return self.progress.update(events)


class OpenedRun:
    """One run, finished or not, by id. Ownership is the caller's to check (`of_owner` does)."""

    def __init__(self, manager: RunManager, run_id: str) -> None:
        self.manager = manager
        self.run_id = run_id
        self.folder: Path = manager.folder(run_id)  # ConfigError for anything but a well-formed id
        self._lock = threading.RLock()
        self._state: Optional[RunState] = None
        self._explorers: dict[tuple[str, bool], Explorer] = {}
        self._systems: "OrderedDict[tuple[Any, ...], AdaptedSystem]" = OrderedDict()

    @classmethod
    def of_owner(cls, manager: RunManager, run_id: Optional[str], owner: Optional[str]) -> Optional["OpenedRun"]:
        """The run if `owner` started it; None otherwise (a missing run and someone else's look the same)."""
        if not run_id or not owner or not manager.owns(run_id, owner):
            return None
        return cls(manager, run_id)

    # -- any run, running or ended --------------------------------------------------------
    def status(self) -> RunStatus:
        return self.manager.status(self.run_id)

    def config(self) -> Optional[RunConfig]:
        """The run's settings (never a key); None if its folder holds none readable."""
        try:
            return RunConfig.from_dict(read_json(self.folder / "config.json"))
        except (EAError, OSError, ValueError, TypeError):
            return None

    def input_file(self) -> Optional[Path]:
        """The run's own copy of the data file it was started on (an upload), or None (a demo, a
        dataset by name, or a file the run did not copy)."""
        cfg = self.config()
        if cfg is None:
            return None
        path = Path(str(cfg.data))
        inputs = (self.folder / "input").resolve()
        try:
            inside = path.resolve().parent == inputs
        except OSError:
            return None
        return path if inside and path.is_file() else None

    def steps(self) -> list[str]:
        """The steps the run goes through, in order (a stepper's items)."""
        cfg = self.config()
        return step_names(cfg) if cfg is not None else []

    def lm_is_local(self) -> bool:
        return lm_is_local(self.config())

    def lm_needs_key(self) -> bool:
        return lm_needs_key(self.config())

    def lm_price(self) -> Optional[Price]:
        """What the run's LM costs (`LMSpec.price`: free in process or self-hosted, known, unknown);
        None when the run names no readable LM."""
        spec = lm_spec(self.config())
        return spec.price if spec is not None else None

    def lm_title(self) -> str:
        """The run's LM in a few words (`lm_title`)."""
        return lm_title(self.config())

    def feed(self) -> ProgressFeed:
        """A new progress feed over the run's events (it replays the log from the start)."""
        return ProgressFeed(self.manager, self.run_id, self.steps())

    def notes(self) -> list[str]:
        """What a finished run wants its user to know (failed LM calls, an exhausted budget ...)."""
        try:
            return [str(n) for n in read_json(self.folder / "summary.json").get("notes", [])]
        except (OSError, ValueError, AttributeError):
            return []

    def model_rows(self, progress: RunProgress) -> list[ModelRow]:
        """The trained small models the progress has seen, with their accuracies and training time."""
        saved: Optional[dict[str, dict[str, Any]]] = None
        rows = []
        for name, m in progress.models.items():
            test = m.get("test_accuracy")
            if test is None:  # an event log from before model events carried the test accuracy
                saved = self._saved_models() if saved is None else saved
                test = saved.get(name, {}).get("test_accuracy")
            rows.append(ModelRow(name, m.get("val_accuracy"), test, m.get("train_time_s")))
        return rows

    def _saved_models(self) -> dict[str, dict[str, Any]]:
        out = {}
        for path in self.folder.glob("*/*/info.json"):
            try:
                info = read_json(path)
            except (OSError, ValueError):
                continue
            out[str(info.get("name"))] = info
        return out

    def can_resume(self, status: Optional[RunStatus] = None) -> bool:
        """Whether Resume can succeed: the run stopped, and not on a failure that the same
        settings would meet again (`resume_blocker`)."""
        status = status or self.status()
        return status.state in RESUMABLE and self.resume_blocker(status) is None

    def resume_blocker(self, status: Optional[RunStatus] = None) -> Optional[str]:
        """Why resuming this failed run would fail again (None when it may succeed): its data or
        settings were refused (a user error: resuming repeats them), or a small model it needs
        cannot be downloaded here now. Failures that can pass (an endpoint down, a missing key,
        an interrupted worker) never block."""
        status = status or self.status()
        if status.state != "failed":
            return None
        cfg = self.config()
        if cfg is not None:
            problems = [r for r in (unavailable_reason(s) for s in cfg.ssm) if r]
            if problems:
                return "; ".join(problems)
        if status.error_kind in PERMANENT_ERRORS:
            return "the same data and settings would be refused again"
        return None

    def resume(self, owner: str, api_key: Optional[str] = None) -> RunStatus:
        """Start the run's worker again: it continues where it stopped (finished stages are kept).
        ConfigError when it would fail the same way again (`resume_blocker`)."""
        blocker = self.resume_blocker()
        if blocker:
            raise ConfigError(f"Resume would fail the same way ({blocker}): change the setup and press Run.")
        key = (api_key or "").strip() or None
        if self.lm_needs_key() and key is None:
            raise ConfigError("This run calls an API model: its key is needed to resume it.")
        return self.manager.start(self.run_id, owner, key)

    # -- a finished run -----------------------------------------------------------------------
    def state(self) -> RunState:
        """What the run holds (loaded once)."""
        with self._lock:
            if self._state is None:
                self._state = open_run(self.folder)
            return self._state

    def orders(self) -> list[str]:
        """The routing orders this run can show (`ea_core.explore.available_orders`): LM-first needs
        augmented models and LM confidences, EA(Full) its models, the learned router its scores."""
        return available_orders(self.state())

    def exported_order(self) -> str:
        """The routing order the run exported (`bundle.default_system`: the learned router where
        the evidence does not put it behind the cascade), where the Thresholds tab opens; else "ea"."""
        state = self.state()
        system = default_system(state.rows or [])
        return system if system in available_orders(state) else "ea"

    def headroom(self) -> Optional[Headroom]:
        """What a better LM could change, when the run's EA kept the best small model alone."""
        return headroom(self.state())

    # -- what mining found (the paper's X_train^U) ----------------------------------------------
    def mined(self, which: str = "all", limit: Optional[int] = None) -> list[dict[str, Any]]:
        """The training examples mining sent to the LM (`ea_core.findings.mined_examples`)."""
        if which not in ("all", "underfit", "lm_fixed"):
            raise ConfigError(f"Unknown filter {which!r}: all, underfit or lm_fixed.")
        return mined_examples(self.state(), which, limit)

    def mined_counts(self) -> dict[str, int]:
        return mined_counts(self.state())

    def mined_csv(self, which: str, out: Path) -> Path:
        """The mined examples of filter `which` as a spreadsheet-safe CSV in `out` (a copy to download)."""
        out.mkdir(parents=True, exist_ok=True)
        return write_mined_csv(self.mined(which), out / f"mined-{which}-{self.state().task.name}.csv")

    def explorer(self, order: str = "ea", calibrated: bool = True) -> Explorer:
        """The run's stages in `order`, for thresholds (built once per order and calibration)."""
        key = (order, bool(calibrated))
        with self._lock:
            if key not in self._explorers:
                self._explorers[key] = Explorer.build(self.state(), order, bool(calibrated))
            return self._explorers[key]

    def thresholds(self, order: str, calibrated: bool, sliders: Sequence[float]) -> list[float]:
        """Slider values as the routing thresholds of `order`'s stages."""
        return self.explorer(order, calibrated).thresholds(sliders)

    def tuned_note(self, order: str) -> Optional[str]:
        """Why the run kept the cascade it kept for `order` (None when it kept every stage)."""
        tuned = self.state().tuning.get(order, {})
        why = tuned.get("why")
        if not why or why.startswith("rule "):  # a run tuned before every rule said why in plain words
            chosen = tuned.get("chosen", "full")
            return plain_why(tuned["rule"], chosen) if tuned.get("rule") else routed_note(chosen)
        return why

    def stage_names(self, order: str) -> list[str]:
        return self.state().stage_names(ORDERS[order][1])

    def examples(self, order: str, calibrated: bool, sliders: Sequence[float], k: int = 10) -> list[dict[str, Any]]:
        """Right and wrong test inputs at the sliders' thresholds (from the cached outputs)."""
        ex = self.explorer(order, calibrated)
        return ex.examples(ex.thresholds(sliders), "test", k=k)

    def test_image(self, name: str) -> Optional[tuple[bytes, str]]:
        """A test image by its name (what the examples show for an image task)."""
        test = self.state().task.test
        if not test.images or name not in test.texts:
            return None
        i = test.texts.index(name)
        return test.images[i], test.texts[i]

    def system(self, order: str, calibrated: bool, sliders: Sequence[float], *, use_lm: bool,
               api_key: Optional[str] = None, own: bool = False) -> AdaptedSystem:
        """The run's adapted system at the sliders' thresholds, models loaded once. The LM stage
        only with `use_lm` (an API LM then needs `api_key`, which lives in the system's memory only).
        With `own`, a system of the caller's own (the same models) whose thresholds no later call
        changes: for a job that outlives a slider move."""
        state, ex = self.state(), self.explorer(order, calibrated)
        if use_lm:  # an endpoint this server does not call is refused before any model loads
            LMSpec.from_config(state.config, environ={}).check_endpoint(getattr(self.manager, "endpoints", None))
        needs_key = bool(use_lm) and lm_needs_key(state.config)
        key = (order, bool(calibrated), bool(use_lm), hash(api_key) if needs_key else None)
        with self._lock:
            system = self._systems.get(key)
            if system is None:
                system = system_from_run(state, ex.tuned_thresholds(), list(ORDERS[order][1]),
                                         api_key=api_key if needs_key else None, use_lm=use_lm,
                                         calibrated=calibrated)
                self._systems[key] = system
                while len(self._systems) > SYSTEMS_KEPT:
                    self._systems.popitem(last=False)
            self._systems.move_to_end(key)
            live = [t for t, name in zip(ex.thresholds(sliders), ex.names) if use_lm or name != "lm"]
            if own:
                return system.with_thresholds(live)
            for stage, t in zip(system.stages, live):
                stage.threshold = t
            return system

    def results(self) -> list[dict[str, Any]]:
        """The results table's rows (systems, accuracies with intervals, LM calls, money)."""
        return self.state().rows

    def lm_spend(self) -> tuple[int, float]:
        """(paid LM calls, USD) of the whole run."""
        usage = self.state().lm_usage.values()
        return (sum(int(u.get("calls") or 0) for u in usage), sum(float(u.get("cost_usd") or 0.0) for u in usage))

    def copy_results(self, out: Path) -> dict[str, Path]:
        """Copies of the results files in `out` (a download never exposes the run folder)."""
        out.mkdir(parents=True, exist_ok=True)
        return {name: Path(shutil.copyfile(self.folder / name, out / name)) for name in RESULT_FILES
                if (self.folder / name).is_file()}

    def export_bundle(self, out: Path, order: str, calibrated: bool, sliders: Sequence[float]) -> Path:
        """The adapted system at the sliders' thresholds, exported as a bundle folder in `out`."""
        state = self.state()
        return export_run_bundle(state, state.rows, out, system=order,
                                 thresholds=self.thresholds(order, calibrated, sliders),
                                 layers=ORDERS[order][1], calibrated=calibrated)

    def bundle_zip(self, out: Path, order: str, calibrated: bool, sliders: Sequence[float]) -> Path:
        """The adapted system at the sliders' thresholds, exported as a bundle and zipped in `out`."""
        bundle = self.export_bundle(out / "bundle", order, calibrated, sliders)
        return Path(shutil.make_archive(str(out / self.bundle_name()), "zip", root_dir=bundle))

    def bundle_name(self) -> str:
        """The name of the run's bundle zip (and of the folder it unzips to), without ".zip"."""
        return f"ea-bundle-{self.state().task.name}"

    def val_lm_share(self, order: str, calibrated: bool, sliders: Sequence[float]) -> Optional[float]:
        """The share of validation inputs the LM answers at the sliders' thresholds (None without an
        LM stage): what a server of this system watches its live traffic against (drift)."""
        ex = self.explorer(order, calibrated)
        if "lm" not in ex.names:
            return None
        return float(ex.evaluate(ex.thresholds(sliders))[0].lm_call_rate)

    def check_lm_endpoint(self) -> None:
        """ConfigError when the run's LM endpoint is one this server does not call."""
        LMSpec.from_config(self.state().config, environ={}).check_endpoint(getattr(self.manager, "endpoints", None))


# -- batch prediction: a file of inputs through an adapted system ---------------------------------

#: Rows per chunk: the unit of progress and of cancelling (an LM stage makes chunks small).
BATCH_CHUNK_ROWS = 512
BATCH_CHUNK_ROWS_LM = 48
#: Rows of the result a page shows (the file has them all).
BATCH_PREVIEW_ROWS = 50


def read_batch_inputs(path: str | Path, *, labels: Sequence[str], image: bool = False, pair: bool = False,
                      text_col: Optional[str] = None, pair_col: Optional[str] = None) -> tuple[Split, list[str]]:
    """A file of inputs to predict, read like the training data: a table (CSV, TSV, JSONL, JSON,
    Parquet; the training column names if it has them, else detected) or plain text lines, or for
    an image task a ZIP / folder of images. A label column, or an image in a folder named after a
    label, is kept to score the predictions. Returns (inputs, warnings)."""
    path = str(path)
    if image:
        from ea_core.data import read_image_inputs

        return read_image_inputs(path, labels=list(labels))
    if path.lower().endswith(".zip"):
        raise DataError("A ZIP of images is for an image task; this system classifies texts: give a CSV, TSV, "
                        "JSONL, Parquet or text file.")
    try:
        split, _ = read_inputs(path, text_col=text_col, pair_col=pair_col if pair else None, labels=list(labels),
                               pair_task=pair)
    except DataError:
        if not text_col:
            raise
        try:  # not the training column names: detect them as training does
            split, _ = read_inputs(path, labels=list(labels), pair_task=pair)
        except DataError as err:
            raise DataError(str(err).replace("Name it with --text-col.", f"Name it {text_col!r} (as in training).")
                            .replace("Name it with --text-pair-col.", f"Name it {pair_col!r} (as in training).")
                            ) from None
    return split, []


def _route_text(names: Sequence[str], confidences: np.ndarray) -> str:
    """``tfidf 0.412 → lm 0.900``: each stage the input reached with its confidence, in order."""
    return " → ".join(f"{name} {c:.3f}" for name, c in zip(names, confidences) if not math.isnan(c))


@dataclass
class BatchRow:
    """One predicted input, as a page previews it."""

    input: str
    prediction: str
    answered_by: str
    confidence: Optional[float]
    route: str
    gold: Optional[str] = None


class BatchPrediction:
    """A file of inputs answered by an adapted system, chunk after chunk, with a CSV written as it
    goes: one row per input with its answer, who answered, at which stage, with what confidence,
    and the route (each stage reached with its confidence). `chunks` is a generator a page can
    stream; `cancel` (from any thread) stops it between LM calls, keeping the rows written. The
    stages run as the command line's streaming predict runs them (`ea_core.cascade`); the file is
    read whole (an upload to the app), where `ea_core.batch_predict` streams files of any size."""

    def __init__(self, system: AdaptedSystem, inputs: Split, out: Path, *, source: str = "",
                 chunk_rows: Optional[int] = None) -> None:
        if not len(inputs):
            raise DataError("The file holds no input to predict.")
        self.system, self.inputs, self.out, self.source = system, inputs, Path(out), source
        has_lm = any(s.is_lm for s in system.stages)
        self.chunk_rows = int(chunk_rows or (BATCH_CHUNK_ROWS_LM if has_lm else BATCH_CHUNK_ROWS))
        self.names = [s.name for s in system.stages]
        self.total = len(inputs)
        self.done = 0
        self.answered = [0] * len(self.names)
        self.known = self.correct = 0
        self.preview: list[BatchRow] = []
        self.state = "ready"  # running, done, cancelled, failed
        self.error = ""
        self.started: Optional[float] = None
        self.ended: Optional[float] = None
        self._cancel = CancelToken()
        self._idle = threading.Event()
        self._idle.set()

    # -- where it stands --------------------------------------------------------------------
    @property
    def finished(self) -> bool:
        return self.state in ("done", "cancelled", "failed")

    @property
    def elapsed_s(self) -> float:
        if self.started is None:
            return 0.0
        return (self.ended or time.perf_counter()) - self.started

    def eta_s(self) -> Optional[float]:
        if not self.done or self.finished:
            return None
        return self.elapsed_s / self.done * (self.total - self.done)

    def shares(self) -> dict[str, int]:
        """How many of the inputs done each stage answered."""
        return dict(zip(self.names, self.answered))

    def cancel(self, wait_s: float = 20.0) -> None:
        """Stop: the chunk in progress is dropped (its paid LM answers stay in the answer cache),
        the rows written stay in the file. Waits up to `wait_s` for the chunk to stop."""
        self._cancel.cancel()
        self._idle.wait(wait_s)
        if not self.finished:
            self.state, self.ended = "cancelled", time.perf_counter()

    # -- the work ---------------------------------------------------------------------------
    def header(self) -> list[str]:
        split = self.inputs
        cols = ["image" if split.is_image else "text"] + (["text_pair"] if split.pairs is not None else [])
        cols += ["prediction", "answered_by", "stage", "confidence", "route"]
        return cols + (["gold", "right"] if bool(np.any(split.labels >= 0)) else [])

    def chunks(self) -> Iterator["BatchPrediction"]:
        """Predict chunk after chunk, appending each to the CSV; yield after each (and once first)."""
        self.state, self.started = "running", time.perf_counter()
        self.out.parent.mkdir(parents=True, exist_ok=True)
        with_gold = "gold" in self.header()
        labels = self.system.labels
        try:
            with open(self.out, "w", newline="", encoding="utf-8") as f:
                writer = csv.writer(f)
                writer.writerow(self.header())
                f.flush()
                yield self
                for start in range(0, self.total, self.chunk_rows):
                    if self._cancel.cancelled:
                        break
                    index = np.arange(start, min(start + self.chunk_rows, self.total))
                    part = self.inputs.subset(index)
                    self._idle.clear()
                    try:
                        routed = route_split(self.system, part, cancel=self._cancel)
                        if self._cancel.cancelled:  # LM calls stopped half-way: drop the chunk
                            break
                        self._write(writer, part, routed, labels, with_gold)
                        f.flush()
                    finally:
                        self._idle.set()
                    yield self
        except Cancelled:
            pass
        except (EAError, OSError) as err:
            self.state, self.error, self.ended = "failed", str(err), time.perf_counter()
            raise
        if not self.finished:
            self.state = "cancelled" if self._cancel.cancelled else "done"
            self.ended = time.perf_counter()
        yield self

    def _write(self, writer: Any, part: Split, routed: Routed, labels: list[str], with_gold: bool) -> None:
        for i in range(len(part)):
            k = int(routed.answered_by[i])
            label = labels[int(routed.pred[i])] if routed.pred[i] >= 0 else ""
            by = self.names[k] if k >= 0 else ""
            conf = None if math.isnan(routed.confidence[i]) else float(routed.confidence[i])
            route = _route_text(self.names, routed.stage_confidence[i])
            shown = str(part.texts[i])
            cells = [shown] + ([str(part.pairs[i])] if part.pairs is not None else [])
            cells += [label, by]
            gold = labels[int(part.labels[i])] if int(part.labels[i]) >= 0 else None
            row = [spreadsheet_safe(c) for c in cells] + [str(k + 1) if k >= 0 else "",
                                                          "" if conf is None else f"{conf:.4f}",
                                                          spreadsheet_safe(route)]
            if with_gold:
                row += [spreadsheet_safe(gold or ""), "" if gold is None else str(gold == label).lower()]
            writer.writerow(row)
            if k >= 0:
                self.answered[k] += 1
            if gold is not None:
                self.known += 1
                self.correct += int(gold == label)
            if len(self.preview) < BATCH_PREVIEW_ROWS:
                text = shown if part.pairs is None else f"{shown} ‖ {part.pairs[i]}"
                self.preview.append(BatchRow(text, label or "(no usable answer)", by, conf, route, gold))
        self.done += len(part)
