"""Money the LM is paid, as it is paid: the run's `SpendLedger` and the `Budget` every provider checks.

Why its own piece: the cap is on the run, not on a session or a provider, so what was paid must be
on disk the moment it is paid (a run killed and resumed, or another process, sees it), and every
provider (the chat API, a future server) shares one rule for "may I send another request?".
"""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path
from typing import Any, Optional, Union

from ea_core.errors import ConfigError


class SpendLedger:
    """Money paid to the LM, one line per paid answer in an append-only JSONL file.

    The budget of a run is one ledger in its run folder: each paid answer is recorded as it
    arrives (not when a stage ends), so a run killed mid-stage and resumed, or another process
    reading the same folder, sees the money already spent. `total` reads only the lines added
    since it last looked. A line that cannot be written (full disk) is kept in memory, counted,
    and written with the next one.
    """

    def __init__(self, path: Union[str, Path], *, opening_usd: float = 0.0) -> None:
        self.path = Path(path)
        self._lock = threading.Lock()
        self._offset = 0
        self._total = 0.0
        self._unwritten: list[str] = []
        if opening_usd > 0 and not self.path.exists():  # spend recorded before there was a ledger
            self.add(opening_usd, note="earlier sessions")

    def add(self, usd: float, note: Optional[str] = None) -> None:
        """Record one payment; raises `OSError` if the file cannot be written (the amount still counts)."""
        usd = float(usd)
        if not usd > 0:
            return
        line = {"time": round(time.time(), 3), "usd": usd}
        if note:
            line["note"] = note
        with self._lock:
            self._unwritten.append(json.dumps(line) + "\n")
            self.path.parent.mkdir(parents=True, exist_ok=True)
            with open(self.path, "a", encoding="utf-8") as f:
                f.write("".join(self._unwritten))
            self._unwritten.clear()

    @property
    def total(self) -> float:
        """USD recorded (by any process) plus any not yet written."""
        with self._lock:
            self._read_new()
            return self._total + sum(json.loads(x)["usd"] for x in self._unwritten)

    def _read_new(self) -> None:
        try:
            size = self.path.stat().st_size
        except FileNotFoundError:
            return
        if size < self._offset:  # replaced: read again from the start
            self._offset, self._total = 0, 0.0
        if size == self._offset:
            return
        with open(self.path, "rb") as f:
            f.seek(self._offset)
            chunk = f.read(size - self._offset)
        end = chunk.rfind(b"\n") + 1
        for raw in chunk[:end].splitlines():
            try:
                self._total += max(float(json.loads(raw)["usd"]), 0.0)
            except (ValueError, KeyError, TypeError):
                continue  # a torn line from a crash: skip it
        self._offset += end

    def __getstate__(self) -> dict[str, Any]:
        return {"path": self.path, "_offset": 0, "_total": 0.0, "_unwritten": list(self._unwritten)}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        return f"SpendLedger({str(self.path)!r}, total={self.total:.4f})"


class Budget:
    """A spending cap in USD shared by every provider (and stage) it is given to.

    Providers check `exhausted` before each request and `add` what each response cost. Calls
    already in flight when the cap is reached still complete, so the final spend may exceed
    `max_usd` by at most the cost of the requests in flight (up to the provider's concurrency).

    With a `ledger` (a `SpendLedger` or its path) the spend is the ledger's: money paid in
    earlier sessions of the same run counts, and every `add` is recorded there at once.
    `max_usd` None: no cap, the spend is only recorded.
    """

    def __init__(self, max_usd: Optional[float], ledger: Union["SpendLedger", str, Path, None] = None) -> None:
        if max_usd is not None and not (max_usd >= 0):
            raise ConfigError("The LM budget must be a non-negative amount in USD.")
        self.max_usd = None if max_usd is None else float(max_usd)
        self.ledger = ledger if isinstance(ledger, SpendLedger) or ledger is None else SpendLedger(ledger)
        self._spent = 0.0
        self._lock = threading.Lock()

    @property
    def spent(self) -> float:
        if self.ledger is not None:
            return self.ledger.total
        with self._lock:
            return self._spent

    @property
    def exhausted(self) -> bool:
        return self.max_usd is not None and self.spent >= self.max_usd

    def add(self, usd: float, note: Optional[str] = None) -> None:
        """Count a payment (and record it in the ledger; `OSError` if that cannot be written)."""
        usd = max(float(usd), 0.0)
        with self._lock:
            self._spent += usd
        if self.ledger is not None:
            self.ledger.add(usd, note)

    def __repr__(self) -> str:
        cap = "none" if self.max_usd is None else f"{self.max_usd:.4f}"
        return f"Budget(max_usd={cap}, spent={self.spent:.4f})"

    def __getstate__(self) -> dict[str, Any]:
        with self._lock:
            return {"max_usd": self.max_usd, "ledger": self.ledger, "_spent": self._spent}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._lock = threading.Lock()
