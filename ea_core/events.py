"""Progress events and cancellation shared by every long-running stage.

Stages never print. They call a callback with small typed `ProgressEvent`s (in the spirit of
Hugging Face `Trainer` callbacks); the CLI turns them into a progress bar, the UI into bars and
plots, tests into a list. Cancellation is cooperative: stages call `cancel.check()` between
steps, which raises `Cancelled`.
"""

from __future__ import annotations

import threading
import time
from dataclasses import asdict, dataclass, field
from typing import Any, Callable, Optional

from ea_core.errors import Cancelled


@dataclass
class ProgressEvent:
    """One step of progress of a stage (e.g. ``train:tfidf``, ``lm:mine``, ``assm``).

    An event with ``total == 0`` is a message (``message``), not a step of a bar.
    """

    stage: str
    step: int
    total: int
    loss: Optional[float] = None
    val_accuracy: Optional[float] = None
    calls: Optional[int] = None
    cache_hits: Optional[int] = None
    failures: Optional[int] = None  # LM requests that got no answer (never cached; asked again next run)
    unparsed: Optional[int] = None  # LM answers that named no label (paid and cached)
    tokens: Optional[int] = None
    cost_usd: Optional[float] = None
    elapsed_s: Optional[float] = None
    eta_s: Optional[float] = None
    message: Optional[str] = None
    time: float = field(default_factory=time.time)

    def to_dict(self) -> dict[str, Any]:
        return {k: v for k, v in asdict(self).items() if v is not None}


ProgressCallback = Callable[[ProgressEvent], None]


def no_progress(event: ProgressEvent) -> None:
    """Default callback: ignore events."""


class CancelToken:
    """Thread-safe cancellation flag checked by long stages between steps."""

    def __init__(self) -> None:
        self._event = threading.Event()

    def cancel(self) -> None:
        self._event.set()

    @property
    def cancelled(self) -> bool:
        return self._event.is_set()

    def check(self) -> None:
        """Raise `Cancelled` if cancellation was requested."""
        if self._event.is_set():
            raise Cancelled()


class StageTimer:
    """Tracks elapsed time and a linear ETA for a stage with a known number of steps."""

    def __init__(self, total: int) -> None:
        self.total = max(int(total), 0)
        self.start = time.perf_counter()

    def elapsed(self) -> float:
        return time.perf_counter() - self.start

    def eta(self, done: int) -> Optional[float]:
        if done <= 0 or self.total <= 0:
            return None
        return self.elapsed() / done * max(self.total - done, 0)
