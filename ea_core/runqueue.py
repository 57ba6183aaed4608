"""The run queue of a runs folder: how many workers run at once, and whose turn is next.

Why: every Run used to start a worker at once. On a 2-core machine N workers share the same
~1.4 cores (each run takes N times longer, none finishes sooner) and each holds 1-2 GB, so a few
people pressing Run could exhaust memory. Here a run waits its turn: at most `max_running`
workers at once (by default from the cores and free memory: one on 2 cores), at most
`max_running_per_owner` of one owner's, first come first served, and a run starts only when the
memory it is expected to need is free (with nothing else running and still not enough, it is
refused with a message instead of being killed by the kernel half way).

Why in the runs folder, not in the server's memory: the queue is the ``.queue/`` folder beside
the runs (one small file per queued or running run, the settings, a history of finished runs),
and the waiting is done by each run's own worker process, which starts at once at a lower CPU
priority, holds its key in memory, and takes its turn under a file lock. So a restarted server
finds its queue as it left it, a queued run keeps its key, Cancel is the same signal as for a
running worker, and any process sharing the folder (the app, the command line) shares the limits.
This module imports little: a waiting worker costs tens of MB, not the engine's hundreds.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import random
import resource
import signal
import statistics
import time
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, Callable, Iterator, Optional

import psutil

from ea_core.errors import ConfigError
from ea_core.events import EventKind, ProgressEvent
from ea_core.runfolder import RunFolder, read_json, write_json

QUEUE_DIR = ".queue"
ENTRIES_DIR = "runs"
SETTINGS_JSON = "settings.json"
HISTORY_JSONL = "history.jsonl"
LOCK_FILE = "lock"
STATUS_JSON = "status.json"  # the run's status file (as `ea_core.runs` writes it)
CANCEL_FILE = "cancel.requested"  # as `ea_core.runs`
#: How often a waiting worker looks whether its turn has come.
POLL_S = 1.0
#: A queued entry without a worker pid (the manager is starting it) is kept this long.
START_GRACE_S = 120.0
#: What a run is assumed to take before any has finished here: the offline demo on 2 cores.
DEFAULT_RUN_S = 240.0
#: What one worker is assumed to hold at its peak when nothing better is known (the demo: 1.8-1.9 GB).
TYPICAL_RUN_MB = 1900.0
HISTORY_KEPT = 200


def ordinal(n: int) -> str:
    return f"{n}{'th' if 10 <= n % 100 <= 20 else {1: 'st', 2: 'nd', 3: 'rd'}.get(n % 10, 'th')}"


def minutes(seconds: float) -> str:
    """~40 s, ~3 min, ~1.5 h."""
    if seconds < 60:
        return f"~{max(seconds, 5):.0f} s"
    if seconds < 5400:
        return f"~{seconds / 60:.0f} min"
    return f"~{seconds / 3600:.1f} h"


def available_mb() -> float:
    return psutil.virtual_memory().available / 2**20


def default_max_running(cpus: Optional[int] = None, free_mb: Optional[float] = None) -> int:
    """Workers at once: half the cores (a run's torch uses about two), as many as the free memory
    holds at a typical run's peak; at least one. On 2 cores: one, which finishes N runs as soon as
    N at once does (measured: N workers share ~1.4 cores whatever N)."""
    cpus = cpus or os.cpu_count() or 1
    free_mb = available_mb() if free_mb is None else free_mb
    return max(1, min(cpus // 2, int(free_mb // TYPICAL_RUN_MB)))


@dataclass(frozen=True)
class QueueSettings:
    """The operator's limits (0: the default). Kept in ``.queue/settings.json`` so that every
    process taking turns in the folder reads the same."""

    max_running: int = 0
    max_running_per_owner: int = 0
    max_queued_per_owner: int = 8
    worker_nice: int = 10
    memory_margin_mb: float = 256.0

    def resolved(self) -> "QueueSettings":
        """With the defaults filled in: `default_max_running`, half of it per owner (at least one)."""
        total = self.max_running if self.max_running > 0 else default_max_running()
        per_owner = self.max_running_per_owner if self.max_running_per_owner > 0 else max(1, (total + 1) // 2)
        return QueueSettings(total, min(per_owner, total), max(1, self.max_queued_per_owner),
                             max(0, min(19, int(self.worker_nice))), max(0.0, float(self.memory_margin_mb)))

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "QueueSettings":
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})


@dataclass
class Entry:
    """One queued or running run, as its file in ``.queue/runs/`` holds it."""

    run_id: str
    owner: str  # the owner's hash, as the run's status holds it
    queued_at: float = field(default_factory=time.time)
    state: str = "queued"  # queued | running
    pid: Optional[int] = None
    pid_started: Optional[float] = None
    memory_mb: float = TYPICAL_RUN_MB
    duration_s: float = DEFAULT_RUN_S
    started_at: Optional[float] = None
    signature: str = ""

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "Entry":
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})


@dataclass(frozen=True)
class Place:
    """Where a queued run stands: `position` (1: next), the expected wait, and what it waits for."""

    position: int
    wait_s: float
    waiting_for: str = ""
    running: int = 0
    limit: int = 1

    def text(self) -> str:
        """``queued: 2nd, ~3 min`` (and why, when it is not only the runs before it)."""
        why = f" ({self.waiting_for})" if self.waiting_for else ""
        return f"queued: {ordinal(self.position)}, {minutes(self.wait_s)}{why}"


@dataclass(frozen=True)
class Turn:
    """One look at the queue for a run: `admitted`, or `refused` (a message), or waiting (`why`)."""

    admitted: bool = False
    refused: Optional[str] = None
    why: str = ""


def process_alive(pid: Optional[int], started: Optional[float]) -> bool:
    """Whether `pid` is still the process that started at `started` (not a zombie, not reused)."""
    if not pid:
        return False
    try:
        proc = psutil.Process(pid)
        if proc.status() == psutil.STATUS_ZOMBIE:
            return False
        return started is None or abs(proc.create_time() - started) < 1.0
    except (psutil.NoSuchProcess, psutil.AccessDenied):
        return False


def _rss_mb(pid: Optional[int]) -> float:
    try:
        return psutil.Process(pid).memory_info().rss / 2**20 if pid else 0.0
    except (psutil.NoSuchProcess, psutil.AccessDenied):
        return 0.0


# -- what a run is expected to need -------------------------------------------------------------

#: Parameters (millions) of the encoders a spec may name; others count as a base-size encoder.
_PARAMS_M = {"minilm": 23, "distilbert": 66, "albert": 12, "bert": 110, "roberta": 125, "xlnet": 117,
             "efficientnet_lite0": 5, "mobilenet_v2": 4, "resnet34": 22, "squeezenet1_0": 1, "resnet18": 12,
             "mobilenet_v3_small": 3, "tiny_cnn": 0.1, "smollm": 135}


def _params_m(model: str) -> float:
    name = model.strip().lower()
    for key, value in _PARAMS_M.items():
        if key in name.replace("-", "_").replace("all_minilm", "minilm"):
            return float(value)
    return 125.0


def estimate_memory_mb(config: Any) -> float:
    """A run's expected peak memory (MB) from its settings: the worker's libraries, each small
    model (weights; for fine-tuning also gradients, optimiser state and activations) and an
    in-process LM. Rough on purpose; `RunQueue.estimates` prefers what the same settings measured."""
    specs = [str(s) for s in (getattr(config, "ssm", None) or [])]
    lm = str(getattr(config, "lm", "") or "")
    mb = 450.0  # python, numpy, scikit-learn, pandas, the data
    torch = False
    for spec in specs:
        kind, _, model = spec.partition(":")
        if kind == "tfidf":
            mb += 120
        elif kind == "head":
            mb += 150 + 6 * _params_m(model)
            torch = True
        elif kind == "finetune":
            mb += 500 + 16 * _params_m(model)
            torch = True
        elif kind in ("causal", "causal-full"):  # a causal LM fine-tuned on summaries: ~6 GB measured (135M)
            mb += 1500 + 30 * _params_m(model or "smollm2")
            torch = True
        else:
            mb += 300
    if lm.startswith("local"):
        torch = True
        mb += 350 if "image" in lm else 6 * (_params_m(lm.partition(":")[2]) if ":" in lm else 135) + 150
    elif lm:
        mb += 80
    return mb + (350 if torch else 0)


def signature(config: Any) -> str:
    """Settings that decide a run's work (the data by file name: an upload is copied per run)."""
    data = config.to_dict() if hasattr(config, "to_dict") else dict(config)
    data = {k: v for k, v in data.items() if k not in ("cache", "title")}
    data["data"] = Path(str(data.get("data") or "")).name
    return hashlib.sha256(json.dumps(data, sort_keys=True, default=str).encode()).hexdigest()[:16]


# -- the queue ----------------------------------------------------------------------------------

class RunQueue:
    """The queue of one runs folder (see the module docstring). Every change happens under the
    folder's queue lock; entries of processes that died are dropped when seen."""

    def __init__(self, runs_dir: str | Path, settings: Optional[QueueSettings] = None) -> None:
        self.runs_dir = Path(runs_dir)
        self.dir = self.runs_dir / QUEUE_DIR
        (self.dir / ENTRIES_DIR).mkdir(parents=True, exist_ok=True, mode=0o700)
        if settings is not None:  # the defaults decided once, when the server starts
            write_json(self.dir / SETTINGS_JSON, settings.resolved().to_dict())

    # -- settings and files -------------------------------------------------------------------
    def settings(self) -> QueueSettings:
        """The folder's settings, defaults filled in."""
        try:
            return QueueSettings.from_dict(read_json(self.dir / SETTINGS_JSON)).resolved()
        except (OSError, ValueError, TypeError):
            return QueueSettings().resolved()

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        with open(self.dir / LOCK_FILE, "a+") as f:
            fcntl.flock(f.fileno(), fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(f.fileno(), fcntl.LOCK_UN)

    def _path(self, run_id: str) -> Path:
        return self.dir / ENTRIES_DIR / f"{run_id}.json"

    def _write(self, entry: Entry) -> None:
        write_json(self._path(entry.run_id), asdict(entry))

    def _read(self, prune: bool = False) -> list[Entry]:
        """The live entries (with `prune`, under the lock: dead ones deleted)."""
        out = []
        for path in (self.dir / ENTRIES_DIR).glob("*.json"):
            try:
                entry = Entry.from_dict(read_json(path))
            except (OSError, ValueError, TypeError):
                continue
            alive = (process_alive(entry.pid, entry.pid_started) if entry.pid
                     else time.time() - entry.queued_at < START_GRACE_S)
            if alive:
                out.append(entry)
            elif prune:
                path.unlink(missing_ok=True)
        return out

    def entry(self, run_id: str) -> Optional[Entry]:
        try:
            return Entry.from_dict(read_json(self._path(run_id)))
        except (OSError, ValueError, TypeError):
            return None

    def entries(self) -> list[Entry]:
        with self._locked():
            return self._read(prune=True)

    @staticmethod
    def _fifo(entries: list[Entry]) -> list[Entry]:
        return sorted((e for e in entries if e.state == "queued"), key=lambda e: (e.queued_at, e.run_id))

    # -- joining and leaving ------------------------------------------------------------------
    def enqueue(self, run_id: str, owner: str, *, memory_mb: float = TYPICAL_RUN_MB,
                duration_s: float = DEFAULT_RUN_S, sig: str = "") -> Entry:
        """Put a run at the end of the queue (its worker is attached next, `attach`); `ConfigError`
        when its owner has too many waiting already, or the machine could never hold it."""
        settings = self.settings()
        total_mb = psutil.virtual_memory().total / 2**20
        if memory_mb + settings.memory_margin_mb > total_mb:
            raise ConfigError(f"This run needs about {memory_mb / 1024:.1f} GB of memory and this machine has "
                              f"{total_mb / 1024:.1f} GB in all: choose smaller models or less data.")
        with self._locked():
            live = self._read(prune=True)
            waiting = [e for e in live if e.owner == owner and e.state == "queued" and e.run_id != run_id]
            if len(waiting) >= settings.max_queued_per_owner:
                raise ConfigError(f"You have {len(waiting)} runs waiting already (the limit on this server): cancel "
                                  "one, or wait for them to start.")
            entry = Entry(run_id, owner, time.time(), memory_mb=float(memory_mb), duration_s=float(duration_s),
                          signature=sig)
            self._write(entry)
            return entry

    def attach(self, run_id: str, pid: int, pid_started: Optional[float]) -> None:
        """Record the worker that waits for (and then runs) the entry."""
        with self._locked():
            entry = self.entry(run_id)
            if entry is not None:
                entry.pid, entry.pid_started = pid, pid_started
                self._write(entry)

    def remove(self, run_id: str) -> None:
        with self._locked():
            self._path(run_id).unlink(missing_ok=True)

    # -- whose turn -----------------------------------------------------------------------------
    def try_admit(self, run_id: str) -> Turn:
        """Look once: admit the run if its turn has come (it becomes ``running`` in the queue)."""
        settings = self.settings()
        with self._locked():
            live = self._read(prune=True)
            me = next((e for e in live if e.run_id == run_id), None)
            if me is None:
                return Turn(refused="This run is no longer in the queue.")
            if me.state == "running":
                return Turn(admitted=True)
            running = [e for e in live if e.state == "running"]
            if len(running) >= settings.max_running:
                return Turn(why="")
            busy: dict[str, int] = {}
            for e in running:
                busy[e.owner] = busy.get(e.owner, 0) + 1
            first = next((e for e in self._fifo(live) if busy.get(e.owner, 0) < settings.max_running_per_owner), None)
            if first is None or first.run_id != run_id:
                mine = busy.get(me.owner, 0) >= settings.max_running_per_owner
                return Turn(why="your other run first" if mine else "")
            growth = sum(max(0.0, e.memory_mb - _rss_mb(e.pid)) for e in running)  # what running ones will still take
            free = available_mb() - growth - settings.memory_margin_mb
            if me.memory_mb > free:
                if not running:
                    return Turn(refused=(
                        f"Not enough free memory to start this run: it needs about {me.memory_mb / 1024:.1f} GB and "
                        f"{max(free, 0) / 1024:.1f} GB is free on this server (other programs use the rest). Choose "
                        "smaller models or less data, or try again later."))
                return Turn(why=f"waiting for {me.memory_mb / 1024:.1f} GB of memory")
            me.state, me.started_at = "running", time.time()
            self._write(me)
            return Turn(admitted=True)

    def place(self, run_id: str) -> Optional[Place]:
        """Where a queued run stands (None when it is not queued): its position among the queued
        runs, first come first served, and the expected wait from the running runs' and earlier
        runs' expected times. Read without the lock (what a page polls)."""
        settings = self.settings()
        live = self._read()
        queue = self._fifo(live)
        ids = [e.run_id for e in queue]
        if run_id not in ids:
            return None
        now = time.time()
        running = [e for e in live if e.state == "running"]
        slots = sorted(max(e.duration_s - (now - (e.started_at or now)), 30.0) for e in running)
        slots += [0.0] * max(settings.max_running - len(slots), 0)
        slots = slots[: max(settings.max_running, 1)] or [0.0]
        wait = 0.0
        for e in queue:
            i = min(range(len(slots)), key=slots.__getitem__)
            if e.run_id == run_id:
                wait = slots[i]
                break
            slots[i] += e.duration_s
        me = queue[ids.index(run_id)]
        why = ""
        if len(running) < settings.max_running and ids.index(run_id) == 0:
            turn_why = self._why_waiting(me, running, settings)
            why = turn_why
        return Place(ids.index(run_id) + 1, wait, why, len(running), settings.max_running)

    def _why_waiting(self, me: Entry, running: list[Entry], settings: QueueSettings) -> str:
        mine = sum(1 for e in running if e.owner == me.owner)
        if mine >= settings.max_running_per_owner:
            return "your other run first"
        growth = sum(max(0.0, e.memory_mb - _rss_mb(e.pid)) for e in running)
        if me.memory_mb > available_mb() - growth - settings.memory_margin_mb:
            return f"waiting for {me.memory_mb / 1024:.1f} GB of memory"
        return "starting"

    def wait_turn(self, run_id: str, stop: Callable[[], bool], poll_s: float = POLL_S) -> Optional[str]:
        """Wait until the run is admitted (None) or refused (the message); `stop()` true ends the
        wait (returns "cancelled")."""
        while True:
            if stop():
                return "cancelled"
            turn = self.try_admit(run_id)
            if turn.admitted:
                return None
            if turn.refused:
                return turn.refused
            deadline = time.time() + poll_s * (0.75 + random.random() / 2)
            while time.time() < deadline:
                if stop():
                    return "cancelled"
                time.sleep(0.1)

    # -- what runs took -------------------------------------------------------------------------
    def record(self, sig: str, state: str, duration_s: Optional[float], peak_mb: Optional[float]) -> None:
        """Append a finished run's time and peak memory to the history (the estimates' source)."""
        line = json.dumps({"signature": sig, "state": state, "duration_s": duration_s, "peak_mb": peak_mb,
                           "ended": time.time()})
        path = self.dir / HISTORY_JSONL
        with self._locked():
            lines = path.read_text().splitlines() if path.is_file() else []
            lines = (lines + [line])[-HISTORY_KEPT:]
            tmp = path.with_suffix(".tmp")
            tmp.write_text("\n".join(lines) + "\n")
            os.replace(tmp, path)

    def _history(self) -> list[dict[str, Any]]:
        path = self.dir / HISTORY_JSONL
        out = []
        if path.is_file():
            for line in path.read_text().splitlines():
                with contextlib.suppress(ValueError):
                    out.append(json.loads(line))
        return out

    def estimates(self, sig: str, fallback_mb: float) -> tuple[float, float]:
        """(seconds, peak MB) a run with these settings is expected to take: the median of what
        the same settings measured here, else the median time of recent finished runs and
        `fallback_mb`; else `DEFAULT_RUN_S`."""
        done = [h for h in self._history() if h.get("state") == "done" and h.get("duration_s")]
        same = [h for h in done if h.get("signature") == sig]
        durations = [float(h["duration_s"]) for h in (same or done[-20:])]
        peaks = [float(h["peak_mb"]) for h in same if h.get("peak_mb")]
        seconds = statistics.median(durations) if durations else DEFAULT_RUN_S
        memory = 1.1 * statistics.median(peaks) if peaks else fallback_mb
        return seconds, memory


# -- the worker's side ----------------------------------------------------------------------------

def _terminal(folder: Path, state: str, message: str) -> None:
    """Write a run's terminal status and event (a run that ended before its worker ran it)."""
    path = folder / STATUS_JSON
    try:
        status = read_json(path)
    except (OSError, ValueError):
        status = {"run_id": folder.name}
    now = time.time()
    status.update(state=state, message=message, ended=now, heartbeat=now)
    write_json(path, status)
    RunFolder(folder).log_event(ProgressEvent(stage="status", step=0, total=0, kind=EventKind.STATUS, state=state,
                                              message=f"{state}: {message}"))


def wait_in_queue(folder: str | Path) -> Optional[int]:
    """A worker's first step: wait for its run's turn (its manager lowered its CPU priority, `lower_priority`).

    None: go on and run. An exit code: the run ended while queued (cancelled, or refused for
    memory), its status and terminal event written here."""
    folder = Path(folder)
    queue = RunQueue(folder.parent)
    if queue.entry(folder.name) is None:
        return None  # started outside the queue
    stopped: list[int] = []

    def stop(*_: Any) -> None:
        stopped.append(1)

    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, stop)
    refused = queue.wait_turn(folder.name, lambda: bool(stopped) or (folder / CANCEL_FILE).exists())
    if refused is None:
        return None
    queue.remove(folder.name)
    if refused == "cancelled":
        _terminal(folder, "cancelled", "cancelled while queued; press Resume to queue it again")
        return 0
    _terminal(folder, "failed", refused)
    return 2


def has_queue(runs_dir: str | Path) -> bool:
    """Whether `runs_dir` is a queued runs folder (an app over it, or a queued run, made its queue)."""
    return (Path(runs_dir) / QUEUE_DIR / ENTRIES_DIR).is_dir()


def cli_owner() -> str:
    """Who the command line's runs belong to in a queue: the local user (one owner for the per-owner limit)."""
    import getpass

    try:
        return "cli:" + getpass.getuser()
    except (KeyError, OSError):
        return "cli"


@contextlib.contextmanager
def turn_in_queue(folder: str | Path, config: Any, *, owner: Optional[str] = None,
                  on_wait: Optional[Callable[[str], None]] = None) -> Iterator[None]:
    """Run `folder`'s run in this process when its turn comes in its runs folder's queue (the command
    line's way: ``run --out runs/x`` and an app over ``runs/`` share one queue and its limits).

    This process joins the queue as the run's worker, waits (`on_wait` gets "queued: 2nd, ~3 min"
    whenever that changes), runs the body, then leaves and records what the run took. Refused
    (not enough memory with nothing else running, too many of the owner's runs waiting): ConfigError.
    Ctrl-C while waiting leaves the queue."""
    folder = Path(folder).resolve()
    queue = RunQueue(folder.parent)
    run_id = folder.name
    existing = queue.entry(run_id)
    if existing is not None and existing.pid and process_alive(existing.pid, existing.pid_started):
        raise ConfigError(f"{folder} is already queued or running in another process.")
    sig = signature(config)
    seconds, memory = queue.estimates(sig, estimate_memory_mb(config))
    queue.enqueue(run_id, owner or cli_owner(), memory_mb=memory, duration_s=seconds, sig=sig)
    me = psutil.Process()
    queue.attach(run_id, me.pid, me.create_time())
    shown: list[str] = []
    looks: list[int] = []

    def look() -> bool:  # called before each try: from the second on, the run is waiting
        looks.append(1)
        if len(looks) == 1:
            return False
        place = queue.place(run_id)
        text = place.text() if place is not None else ""
        if text and on_wait is not None and (not shown or shown[-1] != text):
            shown.append(text)
            on_wait(text)
        return False

    admitted = False
    try:
        refused = queue.wait_turn(run_id, look)
        if refused is not None:
            raise ConfigError(refused)
        admitted = True
        yield
    finally:
        if admitted:
            leave_queue(folder)
        else:
            queue.remove(run_id)


def lower_priority(pid: int, nice: int) -> None:
    """Run process `pid` `nice` steps below this one (the people at the page win the cores).

    A worker leads its own session, and where the kernel groups processes by session
    (``sched_autogroup_enabled``, common on desktops and servers) a process's nice counts only
    within its group: the groups share the CPU equally. So the worker's group gets the nice too
    (``/proc/PID/autogroup``), or a worker at nice 10 would still take half the cores."""
    target = None
    with contextlib.suppress(psutil.Error, OSError):
        proc = psutil.Process(pid)
        target = min(19, psutil.Process().nice() + int(nice))
        if proc.nice() < target:
            proc.nice(target)
    group = Path(f"/proc/{pid}/autogroup")
    if target is not None and group.is_file():
        with contextlib.suppress(OSError, ValueError):
            mine = int(Path("/proc/self/autogroup").read_text().split("nice")[-1])
            group.write_text(str(min(19, mine + int(nice))))


def autogroup_nice(pid: int) -> Optional[int]:
    """The nice of `pid`'s scheduling group (None where the kernel does not group by session)."""
    try:
        return int(Path(f"/proc/{pid}/autogroup").read_text().split("nice")[-1])
    except (OSError, ValueError):
        return None


def leave_queue(folder: str | Path) -> None:
    """A worker's last step: its run leaves the queue, and what it took joins the history."""
    folder = Path(folder)
    queue = RunQueue(folder.parent)
    entry = queue.entry(folder.name)
    queue.remove(folder.name)
    if entry is None:
        return
    try:
        status = read_json(folder / STATUS_JSON)
    except (OSError, ValueError):
        status = {}
    started, ended = status.get("started"), status.get("ended")
    duration = float(ended) - float(started) if started and ended else None
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KB on Linux
    queue.record(entry.signature, str(status.get("state") or ""), duration, peak_mb)
