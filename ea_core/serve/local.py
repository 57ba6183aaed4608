"""Servers an app starts for its users' runs: a bundle served on this machine's loopback, in a
thread of the app's own process, one per owner, stopped on request, when the page that started it
closes (its session ends) or when the app closes.

A client of the app (its Results tab) hands over a bundle folder and, for an API LM, the key the
user pasted (kept in this process's memory only). Each server gets a fresh bearer key of its own,
so another local user cannot call it (and spend the owner's LM budget) by guessing the port.
"""

from __future__ import annotations

import dataclasses
import secrets
import socket
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

from ea_core.errors import ConfigError
from ea_core.serve.settings import ServeSettings

#: Where an app's servers listen: this machine only (a shared server's users run `serve` themselves).
LOCAL_HOST = "127.0.0.1"


@dataclass
class LocalServer:
    """One started server: where it listens, the key clients send, what it serves."""

    bundle: Path
    url: str  # the OpenAI base URL: http://127.0.0.1:PORT/v1
    key: str  # the bearer key clients send (in memory only)
    use_lm: bool
    has_lm: bool
    thread: Any  # ea_core.serve.main.ServerThread
    started: float = field(default_factory=time.time)
    readiness: dict[str, Any] = field(default_factory=dict)  # /readyz's answer when it started
    session: Optional[str] = None  # the page session that started it (it stops when that session ends)

    @property
    def alive(self) -> bool:
        return self.thread.thread.is_alive()

    def describe(self) -> str:
        """The server in one line: where, what it answers with, readiness."""
        if not self.alive:
            return "The local server stopped."
        if not self.has_lm:
            lm = "the small models answer every input (the bundle has no LM stage)"
        elif not self.use_lm:
            lm = "the LM stage is off: the last small model answers what reaches it"
        elif self.readiness.get("lm_reachable") is False:
            lm = "the LM endpoint does not answer now: the last small model answers until it does"
        else:
            lm = "the LM answers what the small models are unsure of"
        return f"Serving at {self.url} ({lm})."

    def stop(self) -> None:
        self.thread.stop()


def _check_port(port: int) -> int:
    """`port` if it can be bound on the loopback (0: a free one is picked), else a ConfigError."""
    if not 0 <= int(port) < 65536:
        raise ConfigError(f"The port must be between 1 and 65535 (0: any free port), not {port}.")
    with socket.socket() as s:
        try:
            s.bind((LOCAL_HOST, int(port)))
        except OSError:
            raise ConfigError(f"Port {port} is in use on {LOCAL_HOST}: pick another one, or 0 for any free "
                              "port.") from None
        return int(s.getsockname()[1])


class LocalServers:
    """The servers one app runs for its owners: at most one per owner and `limit` in all (0: none,
    as on a shared server, whose users reach only its public port)."""

    def __init__(self, limit: int = 1) -> None:
        self.limit = max(int(limit), 0)
        self._servers: dict[str, LocalServer] = {}
        self._lock = threading.Lock()
        self._starting = threading.Lock()  # one start at a time: the limit holds under concurrent clicks

    def get(self, owner: Optional[str]) -> Optional[LocalServer]:
        """The owner's running server (a stopped one is forgotten)."""
        with self._lock:
            server = self._servers.get(owner or "")
            if server is not None and not server.alive:
                del self._servers[owner or ""]
                return None
            return server

    def start(self, owner: str, bundle: str | Path, *, port: int = 0, use_lm: bool = True,
              lm_api_key: Optional[str] = None, trust_endpoint: bool = True, cache: Optional[str] = None,
              settings: Optional[ServeSettings] = None, session: Optional[str] = None) -> LocalServer:
        """Serve `bundle` for `owner` on the loopback (the owner's previous server stops first).

        `trust_endpoint`: the LM is called where the bundle says (the app's own run, whose endpoint
        the app's policy already allowed); `lm_api_key` is that LM's key, used in memory only;
        `cache`: the LM answer cache (the owner's, shared with their runs; None: none); `session`:
        the page session that starts it, whose end stops it (`stop_session`)."""
        from ea_core.bundle import read_bundle_meta
        from ea_core.serve.app import create_app
        from ea_core.serve.main import ServerThread, build_served
        from ea_core.summary_bundle import is_summary_bundle, read_summary_bundle_meta

        if not owner:
            raise ConfigError("The page has no owner yet: reload it and try again.")
        if self.limit == 0:
            raise ConfigError("This server does not start servers for its users (it listens beyond this machine): "
                              "download the bundle and run the command shown on your own machine.")
        with self._starting:
            self.stop(owner)
            running = len(self)
            if running >= self.limit:
                raise ConfigError(f"{running} local server(s) already run here, the most this app allows: stop one "
                                  "first.")
            port = _check_port(port)
            meta = read_summary_bundle_meta(Path(bundle)) if is_summary_bundle(bundle) else read_bundle_meta(bundle)
            has_lm = any(e.get("lm") for e in meta["stages"])
            key = "ea-local-" + secrets.token_urlsafe(18)
            settings = dataclasses.replace(settings or ServeSettings(), api_key=key)
            served = build_served(bundle, settings, lm_api_key=lm_api_key, trust_endpoint=trust_endpoint,
                                  cache=cache, use_lm=use_lm)
            try:
                thread = ServerThread(create_app(served), host=LOCAL_HOST, port=port).start()
            except RuntimeError as err:
                served.engine.close()
                raise ConfigError(f"The local server did not start ({err}): the port may have been taken "
                                  "meanwhile; try again, or another port.") from None
            server = LocalServer(Path(bundle), thread.url + "/v1", key, use_lm=use_lm, has_lm=has_lm, thread=thread,
                                 session=session)
            server.readiness = thread.readiness()
            with self._lock:
                self._servers[owner] = server
            return server

    def stop(self, owner: Optional[str]) -> bool:
        """Stop the owner's server; whether one was running."""
        with self._lock:
            server = self._servers.pop(owner or "", None)
        if server is None:
            return False
        server.stop()
        return True

    def stop_session(self, session: Optional[str]) -> int:
        """Stop the servers the page session `session` started (it closed); how many."""
        if session is None:
            return 0
        with self._lock:
            owners = [o for o, s in self._servers.items() if s.session == session]
            servers = [self._servers.pop(o) for o in owners]
        for server in servers:
            server.stop()
        return len(servers)

    def stop_all(self) -> None:
        with self._lock:
            servers, self._servers = list(self._servers.values()), {}
        for server in servers:
            server.stop()

    def __len__(self) -> int:
        with self._lock:
            return sum(1 for s in self._servers.values() if s.alive)
