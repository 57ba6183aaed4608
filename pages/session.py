"""Per-server and per-browser-session state of the app (no ML here: it only holds what ea_core built).

Two scopes, never a module-level global:

* `Studio`, one per built app: the run manager (runs live in their folders, see
  `ea_core.runs`) and the table of live browser sessions.
* `Session`, one per browser session (Gradio's ``session_hash``): its private scratch folder
  (downloads, an unpacked bundle), the runs it has opened (`ea_core.opened.OpenedRun`: explorers
  and adapted systems are big numpy/torch objects that do not belong in `gr.State`, which is
  deep-copied), and the monitor of the run it watches. Dropped, scratch deleted, when the browser
  goes away (``demo.unload``).

Who owns a run, an uploaded data file and the saved setup is decided by the browser's owner token
(kept in `gr.BrowserState`, so a reload or a server restart finds the same runs, files and setup:
`ea_core.uploads.OwnerStore`), not by the session: a refreshed page is a new session of the same
owner.
"""

from __future__ import annotations

import secrets
import shutil
import threading
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional

import gradio as gr

from ea_core.errors import EAError
from ea_core.llm.endpoints import EndpointPolicy
from ea_core.opened import OpenedRun, ProgressFeed
from ea_core.process import release_memory
from ea_core.quotas import DiskQuota
from ea_core.runqueue import QueueSettings
from ea_core.runs import RunManager
from ea_core.serve.local import LocalServers
from ea_core.uploads import OwnerStore, StoreLimits

#: Opened runs kept in memory per session (each holds its cached arrays and loaded models).
OPEN_RUNS_KEPT = 2


def new_owner_token() -> str:
    return secrets.token_urlsafe(24)


@dataclass
class Watch:
    """The monitor of one run: its progress feed, and what the page was last sent."""

    run_id: str
    feed: ProgressFeed
    local_lm: bool = False  # an in-process LM: no money to count
    price: Any = None  # the run's LM price (`ea_core.llm.spec.Price`): free, known or unknown
    shown: dict[str, Any] = field(default_factory=dict)  # what the page last got, per output

    @property
    def progress(self) -> Any:
        return self.feed.progress

    def changed(self, name: str, signature: Any) -> bool:
        """Whether output `name` must be redrawn (its signature differs from the last one sent)."""
        if self.shown.get(name) == signature:
            return False
        self.shown[name] = signature
        return True


@dataclass
class Session:
    """What one browser session holds on the server."""

    upload_dir: Path  # private scratch: downloads, an unpacked bundle (data uploads are the owner's)
    bundle_dir: Optional[Path] = None  # an uploaded bundle, unpacked
    watch: Optional[Watch] = None
    runs: "OrderedDict[str, OpenedRun]" = field(default_factory=OrderedDict)  # least recently used first
    cache: "OrderedDict[Any, Any]" = field(default_factory=OrderedDict)
    lock: threading.RLock = field(default_factory=threading.RLock)

    def opened(self, manager: RunManager, run_id: str) -> OpenedRun:
        """The session's opened run `run_id` (the last OPEN_RUNS_KEPT are kept, with what they loaded)."""
        with self.lock:
            run = self.runs.get(run_id)
            if run is None:
                run = self.runs[run_id] = OpenedRun(manager, run_id)
                while len(self.runs) > OPEN_RUNS_KEPT:
                    self.runs.popitem(last=False)
            self.runs.move_to_end(run_id)
            return run

    def cached(self, key: Any, build: Callable[[], Any], keep: int = 8) -> Any:
        """A per-session memo (the loaded data, its columns), least recently used out."""
        with self.lock:
            if key in self.cache:
                self.cache.move_to_end(key)
                return self.cache[key]
        value = build()
        with self.lock:
            self.cache[key] = value
            while len(self.cache) > keep:
                self.cache.popitem(last=False)
        return value

    def forget(self, match: Callable[[Any], bool]) -> None:
        with self.lock:
            for key in [k for k in self.cache if match(k)]:
                del self.cache[key]


class Studio:
    """The app's server side: a run manager over `runs_dir`, the owners' stores (uploads and setup,
    within `limits`) and the live sessions."""

    def __init__(self, runs_dir: str | Path, limits: Optional[StoreLimits] = None, *,
                 queue: Optional[QueueSettings] = None, endpoints: Optional[EndpointPolicy] = None,
                 quota: Optional[DiskQuota] = None, local_servers: int = 1) -> None:
        self.runs_dir = Path(runs_dir).resolve()
        # Servers of the owners' systems on this machine's loopback (Results tab).
        self.servers = LocalServers(local_servers)
        # A shared server's limits (see ea_core.runs.RunManager); an owner's uploads count in the disk quota.
        self.manager = RunManager(self.runs_dir, queue=queue, endpoints=endpoints, quota=quota,
                                  other_use=self.upload_bytes)
        self.limits = limits or StoreLimits()
        self.uploads_root = self.runs_dir / ".uploads"
        self._sessions: dict[str, Session] = {}
        self._lock = threading.Lock()

    def session(self, request: Optional[gr.Request]) -> Session:
        """The calling browser session's state (created on first use)."""
        key = getattr(request, "session_hash", None) or "no-session"
        with self._lock:
            if key not in self._sessions:
                folder = self.uploads_root / secrets.token_hex(12)
                folder.mkdir(parents=True, mode=0o700)
                self._sessions[key] = Session(upload_dir=folder)
            return self._sessions[key]

    def upload_bytes(self, owner: str) -> int:
        """What the owner's uploads take on disk (counted in the run manager's disk quota)."""
        try:
            return self.store(owner).usage()
        except EAError:
            return 0

    def store(self, owner: Optional[str]) -> OwnerStore:
        """What the browser's owner keeps here: uploaded data files and the saved setup
        (ConfigError while the page has no owner token yet)."""
        manager = self.manager

        def disk_check(added: int, what: str) -> Optional[str]:  # uploads count in the runs' disk quota too
            if manager.quota.limit_bytes is None:
                return None
            return manager.quota.refuse_adding(manager.disk_use(owner or ""), added, what)

        return OwnerStore(self.runs_dir, owner or "", self.limits, disk_check=disk_check)

    def drop(self, request: Optional[gr.Request]) -> None:
        """Forget a closed session, stop the local server it started and delete its uploads (bound
        to ``demo.unload``)."""
        key = getattr(request, "session_hash", None) or "no-session"
        self.servers.stop_session(key)  # it serves a bundle in the session's folder, removed below
        with self._lock:
            session = self._sessions.pop(key, None)
        if session is not None:
            shutil.rmtree(session.upload_dir, ignore_errors=True)
            del session  # its opened runs (models, arrays) go now, and their memory back to the system
            release_memory()

    def opened(self, request: Optional[gr.Request], owner: Optional[str],
               run_id: Optional[str]) -> Optional[OpenedRun]:
        """The calling session's opened run `run_id`, if `owner` started it (None otherwise)."""
        if not run_id or not owner or not self.manager.owns(run_id, owner):
            return None
        return self.session(request).opened(self.manager, run_id)

    @property
    def n_sessions(self) -> int:
        return len(self._sessions)

    def server_secret(self) -> str:
        """The key that encrypts the browser's owner token, kept beside the runs so that a restarted
        server still reads what browsers stored (it protects an owner token, never an API key)."""
        path = self.runs_dir / ".browser_state_secret"
        if not path.is_file():
            path.write_text(secrets.token_urlsafe(32))
            path.chmod(0o600)
        return path.read_text().strip()

