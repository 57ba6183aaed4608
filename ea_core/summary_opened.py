"""An opened summarization run as plain data for any client (the Summaries tab, tests): its
status, its progress lines, its Table-2-shaped results, the files to download and its bundle.

The summarization counterpart of `ea_core.opened` (whose `OpenedRun` reads a classification run's
state and explorer): runs of both kinds share the runs folder, the queue and the owner checks of
`ea_core.runs.RunManager`; they differ in what a finished one holds. No page reads a run folder's
files: they ask this module.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Optional, Sequence

from ea_core.errors import EAError, ModelError
from ea_core.events import EventKind, ProgressEvent
from ea_core.models.base import read_json_file
from ea_core.monitor import RunProgress
from ea_core.runfolder import read_json
from ea_core.runs import RunManager, RunStatus
from ea_core.summarization import STAGES_JSON
from ea_core.summary_bundle import bundle_with_thresholds, read_summary_bundle_meta
from ea_core.summary_config import SummaryRunConfig, is_summary_config
from ea_core.summary_explore import SummaryExplorer, explorer_from

#: The files a finished run hands over, in the order the page lists them.
DOWNLOADS = ("results.json", "results.csv", "summaries.json", "bundle.zip")
#: Where the system at thresholds picked on the sliders is exported (beside ``bundle/``).
PICKED = "picked"


def is_summary_run(manager: RunManager, run_id: str) -> bool:
    """Whether the run's settings are a summarization run's (an unreadable config.json: no)."""
    try:
        return is_summary_config(read_json(manager.folder(run_id) / "config.json"))
    except (EAError, OSError, ValueError):
        return False


def summary_runs(manager: RunManager, owner: Optional[str]) -> list[RunStatus]:
    """The owner's summarization runs, newest first (nobody else's)."""
    return [s for s in manager.runs(owner or "") if is_summary_run(manager, s.run_id)] if owner else []


def progress_lines(events: Sequence[dict[str, Any]], lines: Optional[list[str]] = None) -> list[str]:
    """Events folded into the lines a person reads: a message per stage, and one line per LM
    stage whose count is updated in place (``lm:val 12/45``)."""
    lines = [] if lines is None else lines
    for data in events:
        try:
            ev = ProgressEvent.from_dict(data)
        except (KeyError, TypeError, ValueError):
            continue
        if ev.kind == EventKind.STATUS:
            continue  # the terminal state is the status line's to show
        if ev.is_message:
            lines.append(ev.message or ev.stage)
        elif lines and lines[-1].startswith(ev.stage + " "):
            lines[-1] = f"{ev.stage} {ev.step}/{ev.total}"
        else:
            lines.append(f"{ev.stage} {ev.step}/{ev.total}")
    return lines


class SummaryFeed:
    """A summarization run's progress as its event log grows: the lines a person reads and the
    small models' training curves (`ea_core.monitor.RunProgress`, as the Train & mine tab folds them)."""

    def __init__(self, run: "OpenedSummaryRun") -> None:
        self.run = run
        self.offset = 0
        self.lines: list[str] = []
        self.progress = RunProgress()

    def poll(self) -> bool:
        """Fold in what was logged since the last poll; True if anything was."""
        events, self.offset = self.run.events(self.offset)
        progress_lines(events, self.lines)
        self.progress.update(events)
        return bool(events)

    @property
    def n_points(self) -> int:
        """Points on the training curves (a redraw is needed when this grows)."""
        return sum(len(points) for points in self.progress.curves.values())


class OpenedSummaryRun:
    """One summarization run, finished or not, by id; `of_owner` checks who asks."""

    def __init__(self, manager: RunManager, run_id: str) -> None:
        self.manager, self.run_id = manager, run_id
        self.folder: Path = manager.folder(run_id)  # ConfigError for anything but a well-formed id

    @classmethod
    def of_owner(cls, manager: RunManager, run_id: Optional[str], owner: Optional[str]) -> Optional["OpenedSummaryRun"]:
        """The run if `owner` started it and it is a summarization run; None otherwise."""
        if not run_id or not owner or not manager.owns(run_id, owner) or not is_summary_run(manager, run_id):
            return None
        return cls(manager, run_id)

    def status(self) -> RunStatus:
        return self.manager.status(self.run_id)

    def config(self) -> Optional[SummaryRunConfig]:
        """The run's settings (never a key); None when unreadable."""
        try:
            return SummaryRunConfig.from_dict(read_json(self.folder / "config.json"))
        except (EAError, OSError, ValueError, TypeError):
            return None

    def feed(self) -> SummaryFeed:
        """A new reader of the run's progress, from its first event."""
        return SummaryFeed(self)

    def events(self, offset: int = 0) -> tuple[list[dict[str, Any]], int]:
        """Events logged since byte `offset`, and the next offset."""
        return self.manager.read_events(self.run_id, offset)

    def results(self) -> Optional[dict[str, Any]]:
        """results.json of a finished run (rows, timings, mining, warnings); None before it is written.
        A damaged file is an `EAError` naming it."""
        path = self.folder / "results.json"
        if not path.is_file():
            return None
        try:
            data = read_json_file(path)
        except ModelError as err:
            raise EAError(f"This run's results cannot be read: {err}") from None
        if not isinstance(data, dict) or not isinstance(data.get("rows"), list):
            raise EAError(f"This run's results cannot be read: {path.name} has no rows.")
        return data

    def downloads(self) -> list[Path]:
        """The files of a finished run to download (those present)."""
        return [self.folder / name for name in DOWNLOADS if (self.folder / name).is_file()]

    def explorer(self, system: str = "ea") -> Optional[SummaryExplorer]:
        """Threshold sliders over the routed `system` (None for a run that saved no stage arrays)."""
        path = self.folder / STAGES_JSON
        results = self.results()
        if results is None or not path.is_file():
            return None
        try:
            stages = read_json_file(path)
        except ModelError as err:
            raise EAError(f"This run's stage arrays cannot be read: {err}") from None
        return explorer_from(stages, results["rows"], system)

    def export_thresholds(self, thresholds: Sequence[float], metrics: Optional[dict[str, Any]] = None) -> Path:
        """The adapted system at `thresholds` (picked on the sliders) as ``picked/`` beside the run's
        bundle, and zipped; returns the zip (the folder is what Try it, a file and the server load)."""
        bundle = self.bundle()
        if bundle is None:
            raise EAError("This run has no adapted system to export (it has not finished).")
        return bundle_with_thresholds(bundle, thresholds, self.folder / PICKED, metrics)

    def picked_bundle(self) -> Optional[Path]:
        """The bundle last exported at thresholds picked on the sliders, if any."""
        path = self.folder / PICKED
        return path if (path / "bundle.json").is_file() else None

    def picked_thresholds(self) -> Optional[list[float]]:
        """The thresholds of the picked bundle (what the sliders show again after a reload), if any."""
        path = self.picked_bundle()
        if path is None:
            return None
        try:
            return [float(e["threshold"]) for e in read_summary_bundle_meta(path)["stages"]]
        except EAError:
            return None

    def bundle(self) -> Optional[Path]:
        """The adapted system's folder (what Try it, a batch and the local server load), if written."""
        path = self.folder / "bundle"
        return path if (path / "bundle.json").is_file() else None


__all__ = ["DOWNLOADS", "OpenedSummaryRun", "SummaryFeed", "is_summary_run", "progress_lines", "summary_runs"]
