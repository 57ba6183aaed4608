"""Runs in the background: start, watch, cancel and reopen EA runs by id.

Why a worker process per run (not a thread in the server): a crash (out of memory, a native
library abort) takes down one run, not the app; Cancel is a signal, not a hope that a thread
looks at a flag; torch's process-wide settings (threads, RNG) belong to one run; and the run
outlives the page that started it, and even the server: a restarted app finds it by its folder.

Everything about a run is in its folder, so any process can watch it:

* ``status.json``: queued / running / done / failed / cancelled / interrupted, the worker's pid
  (and its start time, so a reused pid is not mistaken for the worker), a heartbeat, times, the
  owner (a hash of the browser's owner token) and a one-line message;
* ``events.jsonl``: the progress events, ending with a terminal ``status`` event whatever
  happened (the worker writes it; if the worker died without one, whoever notices writes it);
* ``run.lock``: held by the writing process, so two processes never write one folder.

The API key reaches the worker through a pipe on its standard input, read once and kept in
memory: never a file, a command-line argument or an environment variable (`ps` shows nothing).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import secrets
import shutil
import signal
import subprocess
import sys
import threading
import time
import traceback
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, Callable, Optional

from ea_core.errors import Cancelled, ConfigError, EAError, RunBusy
from ea_core.events import Callbacks, CancelToken, EventKind, ProgressEvent, callback_list
from ea_core.llm.endpoints import EndpointPolicy
from ea_core.llm.spec import LMSpec
from ea_core.logins import AUTH_ENV
from ea_core.pipeline import Pipeline
from ea_core.process import PASSIVE_WAIT, configure_process
from ea_core.quotas import DiskQuota, folder_bytes
from ea_core.runfolder import RunFolder, read_json, write_json
from ea_core.runqueue import Place, QueueSettings, RunQueue, estimate_memory_mb, lower_priority, signature
from ea_core.summary_config import is_summary_config, load_run_config
from ea_core.summary_run import run_summary

STATUS_JSON = "status.json"
EVENTS_JSONL = "events.jsonl"
CANCEL_FILE = "cancel.requested"
WORKER_LOG = "worker.log"
ACTIVE = ("queued", "running")
TERMINAL = ("done", "failed", "cancelled", "interrupted")
HEARTBEAT_S = 2.0
#: A queued run whose worker never reported within this time is treated as interrupted.
START_TIMEOUT_S = 120.0
_RUN_ID = re.compile(r"^[A-Za-z0-9_-]{16,64}$")
#: Environment variables a worker never inherits: a session's key comes from its own page only,
#: never from the server owner's environment.
_SECRET_ENV = re.compile(r"(_API_KEY|_TOKEN|_SECRET|_PASSWORD)$|^OPENAI_|^HF_TOKEN$", re.I)


def owner_hash(owner: str) -> str:
    """What a run records of its owner: a hash, so status files never hold a browser's token."""
    return hashlib.sha256(f"ea-owner:{owner}".encode()).hexdigest()[:32] if owner else ""


def scrub(text: str, secret: Optional[str]) -> str:
    """`text` with `secret` masked (error messages must never carry the key)."""
    return text.replace(secret, "***") if secret and len(secret) >= 4 else text


@dataclass
class RunStatus:
    """The state of one run as ``status.json`` holds it."""

    run_id: str
    state: str = "queued"
    created: float = field(default_factory=time.time)
    started: Optional[float] = None
    ended: Optional[float] = None
    heartbeat: Optional[float] = None
    pid: Optional[int] = None
    pid_started: Optional[float] = None
    message: str = ""
    owner: str = ""
    title: str = ""
    #: A failed run's error class (``DataError``, ``ConfigError``, ``ModelError``, ``LMError`` ...): whether
    #: running the same settings again can succeed (`ea_core.opened.OpenedRun.resume_blocker`).
    error_kind: str = ""

    @property
    def active(self) -> bool:
        return self.state in ACTIVE

    @property
    def elapsed_s(self) -> Optional[float]:
        if self.started is None:
            return None
        return (self.ended or time.time()) - self.started

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "RunStatus":
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})


def read_status(folder: str | Path) -> Optional[RunStatus]:
    path = Path(folder) / STATUS_JSON
    if not path.is_file():
        return None
    try:
        return RunStatus.from_dict(read_json(path))
    except (ValueError, TypeError):
        return None


def _process_alive(pid: Optional[int], started: Optional[float]) -> bool:
    """Whether `pid` is still the process that started at `started` (not a zombie, not a reused pid)."""
    if not pid:
        return False
    import psutil

    try:
        proc = psutil.Process(pid)
        if proc.status() == psutil.STATUS_ZOMBIE:
            return False
        return started is None or abs(proc.create_time() - started) < 1.0
    except (psutil.NoSuchProcess, psutil.AccessDenied):
        return False


def _process_start_time(pid: int) -> Optional[float]:
    import psutil

    try:
        return psutil.Process(pid).create_time()
    except (psutil.NoSuchProcess, psutil.AccessDenied):
        return None


def log_event(folder: Path, event: ProgressEvent) -> None:
    RunFolder(folder).log_event(event)


def terminal_event(state: str, message: str = "") -> ProgressEvent:
    """The last event of a run: kind STATUS with its `state`; message ``STATE`` or ``STATE: details``."""
    return ProgressEvent(stage="status", step=0, total=0, kind=EventKind.STATUS, state=state,
                         message=f"{state}: {message}" if message else state)


class StatusKeeper:
    """Keeps ``status.json`` honest for the process that runs a pipeline (worker or CLI).

    Marks the run running (pid, start time), beats a heartbeat, turns a cancel request file into
    a cancel of the token, and on exit writes the terminal status and the terminal event.
    """

    def __init__(self, folder: Path, cancel: CancelToken, title: str = "") -> None:
        self.folder = Path(folder)
        self.cancel = cancel
        self._lock = threading.Lock()
        old = read_status(self.folder)
        self.status = old or RunStatus(run_id=self.folder.name, title=title)
        self._stop = threading.Event()
        self._thread: Optional[threading.Thread] = None

    def _write(self, **changes: Any) -> None:
        with self._lock:
            for k, v in changes.items():
                setattr(self.status, k, v)
            write_json(self.folder / STATUS_JSON, self.status.to_dict())

    def _beat(self) -> None:
        while not self._stop.wait(HEARTBEAT_S):
            if (self.folder / CANCEL_FILE).exists():
                self.cancel.cancel()
            self._write(heartbeat=time.time())

    def start(self) -> None:
        pid = os.getpid()
        if (self.folder / CANCEL_FILE).exists():
            self.cancel.cancel()
        now = time.time()
        self._write(state="running", pid=pid, pid_started=_process_start_time(pid), started=now, ended=None,
                    heartbeat=now, message="")
        self._thread = threading.Thread(target=self._beat, name="ea-heartbeat", daemon=True)
        self._thread.start()

    def finish(self, state: str, message: str = "", error_kind: str = "") -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        self._write(state=state, ended=time.time(), heartbeat=time.time(), message=message, error_kind=error_kind)
        log_event(self.folder, terminal_event(state, message))


def execute_run(config: Any, folder: str | Path, *, api_key: Optional[str] = None,
                callback: Callbacks = None, cancel: Optional[CancelToken] = None,
                title: str = "") -> Any:
    """Run (or resume) a run in this process with an honest status file; returns the RunState (a
    classification run's pipeline) or the `ea_core.summary_run.SummaryRun` (a summarization run,
    `config` a `SummaryRunConfig`: started again, it reuses the LM answers its cache holds).

    The terminal status is written whatever happens: done, cancelled (`Cancelled`), failed (a
    user-facing `EAError`, or any other exception, reported as an internal error). Exceptions are
    re-raised after the status is written, so the CLI can still print and exit with its code.
    """
    folder = Path(folder)
    cancel = cancel or CancelToken()
    run_folder = RunFolder(folder)
    run_folder.lock()  # RunBusy: another process writes this folder, and its status is its own
    keeper = StatusKeeper(folder, cancel, title)
    keeper.start()
    # The lock is held until the terminal status is written: a watcher that finds the folder
    # unlocked while the status still says running knows the worker died.
    try:
        if is_summary_config(config):
            logged = callback_list([run_folder.log_event, callback_list(callback)])
            state = run_summary(config, folder, api_key=api_key, callback=logged, cancel=cancel,
                                endpoint_policy=EndpointPolicy.from_env())
        else:
            state = Pipeline(config, run_folder, api_key=api_key, callback=callback, cancel=cancel).run()
        keeper.finish("done", "finished")
        return state
    except Cancelled:
        keeper.finish("cancelled", "cancelled by the user; what was done is kept, run again to resume")
        raise
    except EAError as err:
        keeper.finish("failed", scrub(str(err), api_key), error_kind=type(err).__name__)
        raise
    except KeyboardInterrupt:
        keeper.finish("interrupted", "interrupted; run again to resume")
        raise
    except BaseException as err:  # noqa: BLE001  (a bug: still leave a terminal status behind)
        keeper.finish("failed", scrub(f"internal error ({type(err).__name__}): {err}", api_key)[:500]
                      + f" (details in {WORKER_LOG} of the run folder)")
        raise
    finally:
        run_folder.unlock()


def _worker_env() -> dict[str, str]:
    """The server's environment minus anything that looks like a secret (its logins too), plus
    passive OpenMP waiting (see `ea_core.process.PASSIVE_WAIT`: the worker shares the CPU with the app)."""
    env = {k: v for k, v in os.environ.items() if not _SECRET_ENV.search(k) and k != AUTH_ENV}
    env.setdefault("OMP_WAIT_POLICY", PASSIVE_WAIT)
    return env


class RunManager:
    """Start, list, watch and cancel runs under one folder (``runs/`` by default).

    Holds no run's data in memory: every question is answered from the run folders, so a new
    manager (a restarted server) sees the same runs. The only in-memory state is the handles of
    the workers this manager started, kept to reap them.

    A shared server's limits: `queue` (how many workers at once, per owner, and how many may
    wait: `ea_core.runqueue`; a run that must wait is ``queued`` with its place in its status
    message), `endpoints` (which LM endpoints runs may call: `ea_core.llm.endpoints`, passed on
    to the workers), `quota` (disk per owner and an age limit: `ea_core.quotas`); `other_use`
    gives the bytes an owner keeps elsewhere (uploads), counted in the quota.
    """

    def __init__(self, runs_dir: str | Path, python: Optional[str] = None, *, queue: Optional[QueueSettings] = None,
                 endpoints: Optional[EndpointPolicy] = None, quota: Optional[DiskQuota] = None,
                 other_use: Optional[Callable[[str], int]] = None) -> None:
        self.runs_dir = Path(runs_dir).resolve()
        self.runs_dir.mkdir(parents=True, exist_ok=True)
        self.python = python or sys.executable
        self._procs: dict[str, subprocess.Popen] = {}
        self._lock = threading.Lock()
        self.queue = RunQueue(self.runs_dir, queue)  # settings given: written for every process of the folder
        self.endpoints = endpoints or EndpointPolicy()
        self.quota = quota or DiskQuota()
        self.other_use = other_use
        self._expired_at = 0.0
        self.expire()

    # -- folders ------------------------------------------------------------------------
    def folder(self, run_id: str) -> Path:
        """The folder of a run id; refuses anything that is not a well-formed id (no path tricks)."""
        if not isinstance(run_id, str) or not _RUN_ID.match(run_id):
            raise ConfigError("Not a valid run id.")
        return self.runs_dir / run_id

    def owner_dir(self, owner: str) -> Path:
        """Per-owner files shared by that owner's runs (the LM answer cache)."""
        path = self.runs_dir / ".owners" / owner_hash(owner)
        path.mkdir(parents=True, exist_ok=True, mode=0o700)
        return path

    def exists(self, run_id: str) -> bool:
        try:
            return (self.folder(run_id) / STATUS_JSON).is_file()
        except ConfigError:
            return False

    def owns(self, run_id: str, owner: str) -> bool:
        """Whether `owner` (a browser's owner token) started this run."""
        if not owner or not self.exists(run_id):
            return False
        status = read_status(self.folder(run_id))
        return status is not None and secrets.compare_digest(status.owner, owner_hash(owner))

    def check_owner(self, run_id: str, owner: str) -> Path:
        """The run's folder if `owner` owns it; otherwise the same error as for a missing run."""
        if not self.owns(run_id, owner):
            raise ConfigError("No such run in this session.")
        return self.folder(run_id)

    # -- starting -----------------------------------------------------------------------
    def create(self, config: Any, owner: str, *, title: str = "", data_file: Optional[str | Path] = None) -> str:
        """A new run folder, queued: settings (never a key), status, and a copy of an uploaded data
        file (so the run folder is self-contained and survives the upload's deletion). Refused
        (`ConfigError`) when the LM endpoint is not one this server calls, or the owner's disk
        quota is used up."""
        LMSpec.from_config(config, environ={}).check_endpoint(self.endpoints)
        self.expire()
        self.check_quota(owner)
        run_id = secrets.token_urlsafe(18)
        folder = self.folder(run_id)
        folder.mkdir(mode=0o700)
        if data_file is not None:
            src = Path(data_file)
            (folder / "input").mkdir()
            dst = folder / "input" / re.sub(r"[^A-Za-z0-9._-]", "_", src.name)[-100:]
            shutil.copyfile(src, dst)
            config.data = str(dst)
        if config.lm and not config.cache:
            config.cache = str(self.owner_dir(owner) / "lm_cache.sqlite")
        if config.lm_base_url:  # a key pasted into the URL never reaches config.json (see `launch`)
            config.lm_base_url = LMSpec.from_config(config, environ={}).given_url
        config.validate()
        write_json(folder / "config.json", config.to_dict())
        write_json(folder / STATUS_JSON, RunStatus(run_id=run_id, owner=owner_hash(owner), title=title).to_dict())
        return run_id

    def start(self, run_id: str, owner: str, api_key: Optional[str] = None) -> RunStatus:
        """Start (or resume) the run's worker process. The key goes through a pipe, nothing else."""
        folder = self.check_owner(run_id, owner)
        with self._lock:
            status = self.status(run_id)
            if status.state == "running" or (status.state == "queued" and status.pid):
                raise RunBusy("This run is already running.")
            if RunFolder(folder).is_locked():
                raise RunBusy("Another process is writing this run folder.")
            (folder / CANCEL_FILE).unlink(missing_ok=True)
            self._enqueue(run_id, folder, status.owner)  # ConfigError: endpoint refused, too many waiting, too big
            log = open(folder / WORKER_LOG, "ab")
            try:
                proc = subprocess.Popen(
                    [self.python, "-m", "ea_core.worker", str(folder)], stdin=subprocess.PIPE, stdout=log,
                    stderr=subprocess.STDOUT, env={**_worker_env(), **self.endpoints.env()}, start_new_session=True,
                    close_fds=True)
            except BaseException:
                self.queue.remove(run_id)
                raise
            finally:
                log.close()
            lower_priority(proc.pid, self.queue.settings().worker_nice)
            self.queue.attach(run_id, proc.pid, _process_start_time(proc.pid))
            assert proc.stdin is not None
            try:
                proc.stdin.write((json.dumps({"api_key": api_key or None}) + "\n").encode())
                proc.stdin.close()
            except BrokenPipeError:
                pass  # the worker died at once; its status says why
            self._procs[run_id] = proc
            status.state, status.pid = "queued", proc.pid
            status.pid_started, status.message = _process_start_time(proc.pid), "starting"
            status.created = status.created or time.time()
            status.ended = None
            current = read_status(folder)
            if current is None or current.state in TERMINAL or current.state == "queued":
                write_json(folder / STATUS_JSON, status.to_dict())
            return status

    def launch(self, config: Any, owner: str, api_key: Optional[str] = None, *, title: str = "",
               data_file: Optional[str | Path] = None) -> str:
        """`create` then `start`: the run id of a new background run.

        A key given only inside the base URL (``http://user:KEY@host``) is sent to the worker
        through the pipe like any key; the URL is stored without it.
        """
        api_key = LMSpec.from_config(config, api_key, environ={}).key or api_key
        run_id = self.create(config, owner, title=title, data_file=data_file)
        self.start(run_id, owner, api_key)
        return run_id

    def _enqueue(self, run_id: str, folder: Path, owner_hash_: str) -> None:
        """The run at the end of the queue, with what it is expected to take (time, memory)."""
        cfg = load_run_config(read_json(folder / "config.json"))
        LMSpec.from_config(cfg, environ={}).check_endpoint(self.endpoints)  # the policy may have changed
        sig = signature(cfg)
        seconds, memory = self.queue.estimates(sig, estimate_memory_mb(cfg))
        self.queue.enqueue(run_id, owner_hash_, memory_mb=memory, duration_s=seconds, sig=sig)

    def place(self, run_id: str) -> Optional[Place]:
        """Where a queued run stands in the queue (None when it is not waiting)."""
        return self.queue.place(run_id)

    # -- disk -----------------------------------------------------------------------------
    def disk_use(self, owner: str) -> int:
        """Bytes the owner keeps: their run folders and `other_use` (their uploads, as
        `ea_core.uploads.OwnerStore.usage` counts them). Their LM answer cache is not counted:
        it is what keeps paid answers from being bought twice, and no page can remove it."""
        mine = owner_hash(owner)
        total = 0
        for path in self.runs_dir.iterdir():
            status = read_status(path) if path.is_dir() and _RUN_ID.match(path.name) else None
            if status is not None and secrets.compare_digest(status.owner, mine):
                total += folder_bytes(path)
        return total + (int(self.other_use(owner)) if self.other_use is not None else 0)

    def check_quota(self, owner: str) -> None:
        """`ConfigError` when the owner's disk quota is used up."""
        message = self.quota.over(self.disk_use(owner)) if self.quota.limit_bytes is not None else None
        if message:
            raise ConfigError(message)

    def remove(self, run_id: str, owner: str) -> None:
        """Delete an ended run of `owner` (its folder and everything in it)."""
        folder = self.check_owner(run_id, owner)
        if self.status(run_id).active or RunFolder(folder).is_locked():
            raise RunBusy("This run is still queued or running: cancel it first.")
        shutil.rmtree(folder, ignore_errors=True)

    def expire(self, now: Optional[float] = None, every_s: float = 600.0) -> list[str]:
        """Remove ended runs older than the quota's age limit (looked at most every `every_s`)."""
        max_age = self.quota.max_age_s
        now = time.time() if now is None else now
        if max_age is None or now - self._expired_at < every_s:
            return []
        self._expired_at = now
        removed = []
        for path in self.runs_dir.iterdir():
            status = read_status(path) if path.is_dir() and _RUN_ID.match(path.name) else None
            if status is None or status.active or RunFolder(path).is_locked():
                continue
            if now - (status.ended or status.created) > max_age:
                shutil.rmtree(path, ignore_errors=True)
                removed.append(path.name)
        return removed

    # -- watching -----------------------------------------------------------------------
    def _reap(self) -> None:
        for run_id, proc in list(self._procs.items()):
            if proc.poll() is not None:
                del self._procs[run_id]

    def status(self, run_id: str) -> RunStatus:
        """The run's status; a run whose worker died without saying so becomes interrupted
        (or cancelled, if a cancel was asked), with its terminal event written."""
        self._reap()
        folder = self.folder(run_id)
        status = read_status(folder)
        if status is None:
            raise ConfigError("No such run.")
        if not status.active or self._worker_alive(folder, status):
            if status.state == "queued":
                place = self.queue.place(run_id)
                status.message = place.text() if place is not None else status.message
            return status
        status = read_status(folder) or status  # the worker may have finished just now
        if status.active and not self._worker_alive(folder, status):
            cancelled = (folder / CANCEL_FILE).exists()
            queued = status.state == "queued"
            status.state = "cancelled" if cancelled else "interrupted"
            status.message = ("cancelled by the user" + (" while queued" if queued else "")
                              if cancelled else
                              "the worker process stopped without finishing (killed, or the machine restarted)"
                              "; press Resume to continue where it stopped")
            status.ended = time.time()
            write_json(folder / STATUS_JSON, status.to_dict())
            log_event(folder, terminal_event(status.state, status.message))
        return status

    @staticmethod
    def _worker_alive(folder: Path, status: RunStatus) -> bool:
        """Whether the run's worker may still write: a running worker holds the folder's lock (the
        kernel drops it when the process is gone, even by kill -9, and only once its last thread is:
        a pid check alone sees a multi-threaded process as a zombie too early); a queued one is
        checked by pid, or given START_TIMEOUT_S to appear."""
        if status.state == "running":
            return RunFolder(folder).is_locked()
        if status.pid is None:
            return time.time() - status.created < START_TIMEOUT_S
        return _process_alive(status.pid, status.pid_started)

    def runs(self, owner: str) -> list[RunStatus]:
        """The owner's runs, newest first (nobody else's: listing is by owner, ids are secret)."""
        mine = owner_hash(owner)
        out = []
        if not owner:
            return out
        for path in self.runs_dir.iterdir():
            status = read_status(path) if path.is_dir() and _RUN_ID.match(path.name) else None
            if status is not None and secrets.compare_digest(status.owner, mine):
                out.append(self.status(path.name))
        return sorted(out, key=lambda s: -s.created)

    def read_events(self, run_id: str, offset: int = 0) -> tuple[list[dict[str, Any]], int]:
        """Events appended since byte `offset` (whole lines only) and the new offset."""
        path = self.folder(run_id) / EVENTS_JSONL
        if not path.is_file():
            return [], 0
        with open(path, "rb") as f:
            f.seek(offset)
            chunk = f.read()
        end = chunk.rfind(b"\n") + 1
        events = []
        for line in chunk[:end].splitlines():
            try:
                events.append(json.loads(line))
            except ValueError:
                continue
        return events, offset + end

    # -- stopping -----------------------------------------------------------------------
    def cancel(self, run_id: str, owner: str) -> RunStatus:
        """Ask the run to stop: a cancel file (checked at every heartbeat) and SIGTERM to the worker.
        The worker saves what it has and writes ``cancelled``; `status` does it if the worker is gone."""
        folder = self.check_owner(run_id, owner)
        status = self.status(run_id)
        if not status.active:
            return status
        (folder / CANCEL_FILE).write_text(str(time.time()))
        if status.pid and _process_alive(status.pid, status.pid_started):
            try:
                os.killpg(status.pid, signal.SIGTERM)
            except (ProcessLookupError, PermissionError):
                pass
        return self.status(run_id)

    def kill(self, run_id: str, owner: str, grace_s: float = 10.0) -> RunStatus:
        """Cancel, and if the worker has not stopped within `grace_s`, kill it (SIGKILL)."""
        status = self.cancel(run_id, owner)
        deadline = time.time() + grace_s
        while status.active and time.time() < deadline:
            time.sleep(0.2)
            status = self.status(run_id)
        if status.active and status.pid:
            try:
                os.killpg(status.pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
            time.sleep(0.2)
            status = self.status(run_id)
        return status


def worker_main(argv: Optional[list[str]] = None, key_line: Optional[str] = None) -> int:
    """Entry point of a worker process: ``python -m ea_core.worker RUN_FOLDER`` (key on stdin, or
    `key_line` when the caller read it already)."""
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1:
        print("usage: python -m ea_core.worker RUN_FOLDER  (the API key, if any, as JSON on stdin)", file=sys.stderr)
        return 2
    folder = Path(args[0])
    if key_line is None:
        line = sys.stdin.readline()
        sys.stdin.close()
    else:
        line, key_line = key_line, None
    try:
        api_key = json.loads(line).get("api_key") if line.strip() else None
    except ValueError:
        api_key = None
    del line
    configure_process()
    cancel = CancelToken()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: cancel.cancel())
    try:
        config = load_run_config(read_json(folder / "config.json"))
        status = read_status(folder)
        execute_run(config, folder, api_key=api_key, cancel=cancel, title=status.title if status else "")
    except EAError:
        return 2  # the status file and the event log say why
    except BaseException:  # noqa: BLE001
        traceback.print_exc()
        return 1
    return 0
