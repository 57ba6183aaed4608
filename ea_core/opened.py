"""An opened run: what a client (the app's tabs, a notebook, a server) needs of one run, as plain data.

Clients lay out and format; they never read a run folder. `OpenedRun` answers from the folder
through `RunManager` and `open_run`, and keeps what is costly to build (the run's state, an
explorer per routing order, loaded adapted systems) for as long as the client keeps it.
"""

from __future__ import annotations

import shutil
import threading
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional, Sequence

from ea_core.bundle import export_run_bundle, system_from_run
from ea_core.errors import ConfigError, EAError
from ea_core.explore import ORDERS, Explorer
from ea_core.llm.spec import LMSpec
from ea_core.monitor import RunProgress
from ea_core.pipeline import step_names
from ea_core.report import routed_note
from ea_core.runconfig import RunConfig
from ea_core.runfolder import read_json
from ea_core.runs import RunManager, RunStatus
from ea_core.runstate import RunState, open_run
from ea_core.system import AdaptedSystem

#: A run in one of these states can continue where it stopped.
RESUMABLE = ("cancelled", "interrupted", "failed")
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


def past_runs(manager: RunManager, owner: Optional[str]) -> list[RunStatus]:
    """The owner's runs, newest first (nobody else's)."""
    return manager.runs(owner) if owner else []


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

    def steps(self) -> list[str]:
        """The steps the run goes through, in order (a stepper's items)."""
        cfg = self.config()
        return step_names(cfg) if cfg is not None else []

    def lm_is_local(self) -> bool:
        return lm_is_local(self.config())

    def lm_needs_key(self) -> bool:
        return lm_needs_key(self.config())

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
        return (status or self.status()).state in RESUMABLE

    def resume(self, owner: str, api_key: Optional[str] = None) -> RunStatus:
        """Start the run's worker again: it continues where it stopped (finished stages are kept)."""
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
        """The routing orders this run can show (LM-first needs augmented models and LM confidences)."""
        state = self.state()
        return ["ea"] + (["ea_lm_first"] if state.assms and state.lm_gives_confidence else [])

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
        return tuned.get("why") or routed_note(tuned.get("chosen", "full"))

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
               api_key: Optional[str] = None) -> AdaptedSystem:
        """The run's adapted system at the sliders' thresholds, models loaded once. The LM stage
        only with `use_lm` (an API LM then needs `api_key`, which lives in the system's memory only)."""
        state, ex = self.state(), self.explorer(order, calibrated)
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

    def bundle_zip(self, out: Path, order: str, calibrated: bool, sliders: Sequence[float]) -> Path:
        """The adapted system at the sliders' thresholds, exported as a bundle and zipped in `out`."""
        state = self.state()
        bundle = export_run_bundle(state, state.rows, out / "bundle", system=order,
                                   thresholds=self.thresholds(order, calibrated, sliders),
                                   layers=ORDERS[order][1], calibrated=calibrated)
        return Path(shutil.make_archive(str(out / f"ea-bundle-{state.task.name}"), "zip", root_dir=bundle))
