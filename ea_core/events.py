"""Progress events, the callbacks that receive them, and cancellation, shared by every long stage.

Stages never print: they call a callback with small typed `ProgressEvent`s, as a Hugging Face
`Trainer` calls its `TrainerCallback`s. The event log, the CLI's progress bars, the app's monitor
and the tests are callbacks; a `CallbackList` fans one event out to several. Consumers read the
typed fields (`kind`, `model`, `fold`, `lm_stage` ...), never the `stage` label. Cancellation is
cooperative: stages call `cancel.check()` between steps, which raises `Cancelled`.
"""

from __future__ import annotations

import dataclasses
import threading
import time
from dataclasses import asdict, dataclass, field
from enum import Enum
from typing import Any, Callable, Iterable, Iterator, Optional, Union

from ea_core.errors import Cancelled


class EventKind(str, Enum):
    """What an event is about: which typed fields it carries, which callback method receives it."""

    RUN = "run"  # the run enters a step of its plan (`step_name`); the last one (no step name) ends it
    STATUS = "status"  # the run has ended: `state` is done, failed, cancelled or interrupted
    TRAIN = "train"  # a small model trains (`model`; `fold` of `folds` for an out-of-fold refit)
    MODEL = "model"  # a small model is trained: `model`, `val_accuracy`, `test_accuracy`, `elapsed_s`
    LM = "lm"  # the LM answers inputs (`lm_stage`): calls, cache hits, failures, tokens, money, ETA
    STAGE = "stage"  # any other stage's step or message (data, mining, tuning, report, export)


@dataclass
class ProgressEvent:
    """One step of progress, or one message (``total == 0``), of a stage.

    `stage` is a label for people (``train:tfidf``, ``lm:mine``); what an event means is in its
    typed fields. Saved as JSON without its None fields; `from_dict` reads event logs written
    before the fields existed too.
    """

    stage: str
    step: int
    total: int
    kind: EventKind = EventKind.STAGE
    step_name: Optional[str] = None  # RUN: the step entered (None on the run's last RUN event)
    state: Optional[str] = None  # STATUS: how the run ended
    model: Optional[str] = None  # TRAIN / MODEL: the small model's name (``tfidf``, ``assm:tfidf``)
    fold: Optional[int] = None  # TRAIN: 1-based fold of an out-of-fold refit (None: a model the run keeps)
    folds: Optional[int] = None
    lm_stage: Optional[str] = None  # LM: which inputs (``mine``, ``val``, ``test``, ``probe``, ``train_full``)
    loss: Optional[float] = None
    val_accuracy: Optional[float] = None
    test_accuracy: Optional[float] = None
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

    def __post_init__(self) -> None:
        self.kind = EventKind(self.kind)  # "train" as well as EventKind.TRAIN

    @property
    def is_message(self) -> bool:
        """A line for the log, not a step of a bar."""
        return not self.total

    def to_dict(self) -> dict[str, Any]:
        out = {k: v for k, v in asdict(self).items() if v is not None}
        out["kind"] = self.kind.value
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "ProgressEvent":
        """An event as `to_dict` wrote it (unknown keys ignored; an old log's event typed from its label)."""
        known = {f.name for f in dataclasses.fields(cls)}
        values = {k: v for k, v in data.items() if k in known}
        values.setdefault("stage", "")
        values["step"], values["total"] = int(values.get("step") or 0), int(values.get("total") or 0)
        if "kind" in values:
            if values["kind"] not in {k.value for k in EventKind}:
                values["kind"] = EventKind.STAGE  # a kind from a newer version: shown as a plain stage
        else:
            values.update(_typed_from_label(str(values["stage"]), values.get("message")))
        return cls(**values)


def _typed_from_label(stage: str, message: Any) -> dict[str, Any]:
    """The typed fields of an event logged before events were typed, from its stage label.

    Only for replaying old run folders: new events carry their fields, and nothing else reads labels.
    """
    head, _, rest = stage.partition(":")
    if stage == "status":
        return {"kind": EventKind.STATUS, "state": str(message or "").partition(":")[0] or None}
    if stage == "run":
        return {"kind": EventKind.RUN, "step_name": None if message in (None, "", "done") else str(message)}
    if head == "model" and rest:
        return {"kind": EventKind.MODEL, "model": rest}
    if head == "train" and rest:
        return {"kind": EventKind.TRAIN, "model": rest}
    if head == "oof" and rest:
        model, _, fold = rest.rpartition(":")
        k, _, n = fold.partition("/")
        if k.isdigit() and n.isdigit():
            return {"kind": EventKind.TRAIN, "model": model, "fold": int(k), "folds": int(n)}
        return {"kind": EventKind.TRAIN, "model": rest, "fold": 0}
    if head == "lm":
        return {"kind": EventKind.LM, "lm_stage": rest or None}
    return {"kind": EventKind.STAGE}


ProgressCallback = Callable[[ProgressEvent], None]


def no_progress(event: ProgressEvent) -> None:
    """Default callback: ignore events."""


class Callback:
    """A progress callback with one method per `EventKind`, as Hugging Face's `TrainerCallback`
    (``on_train``, ``on_lm`` ...): override the ones you need; the others ignore their events.
    Any plain function of one event is a callback too."""

    def __call__(self, event: ProgressEvent) -> None:
        getattr(self, f"on_{event.kind.value}")(event)

    def on_run(self, event: ProgressEvent) -> None:
        """The run entered a step of its plan (``event.step_name``), or finished its plan (None)."""

    def on_status(self, event: ProgressEvent) -> None:
        """The run has ended (``event.state``)."""

    def on_train(self, event: ProgressEvent) -> None:
        """A small model's training step (loss, validation accuracy), or a message while training."""

    def on_model(self, event: ProgressEvent) -> None:
        """A small model is trained (its validation and test accuracy, training time)."""

    def on_lm(self, event: ProgressEvent) -> None:
        """The LM's running counters for one stage, or a message about the LM."""

    def on_stage(self, event: ProgressEvent) -> None:
        """Any other stage's step or message."""


class CallbackList:
    """Several callbacks as one: each event goes to every callback, in order (Hugging Face's
    `CallbackHandler`). Nested lists are flattened, None entries dropped."""

    def __init__(self, callbacks: Iterable[Optional[ProgressCallback]] = ()) -> None:
        self.callbacks: list[ProgressCallback] = []
        for cb in callbacks:
            self.add(cb)

    def add(self, callback: Optional[ProgressCallback]) -> None:
        if isinstance(callback, CallbackList):
            self.callbacks.extend(callback.callbacks)
        elif callback is not None:
            self.callbacks.append(callback)

    def __call__(self, event: ProgressEvent) -> None:
        for cb in self.callbacks:
            cb(event)

    def __iter__(self) -> Iterator[ProgressCallback]:
        return iter(self.callbacks)

    def __len__(self) -> int:
        return len(self.callbacks)


Callbacks = Union[None, ProgressCallback, Iterable[Optional[ProgressCallback]]]


def callback_list(callbacks: Callbacks) -> CallbackList:
    """One callable from a callback, a list of them, or None."""
    if callbacks is None or callable(callbacks):
        return CallbackList([callbacks])
    return CallbackList(callbacks)


def tagged(callback: Optional[ProgressCallback], **fields: Any) -> Optional[ProgressCallback]:
    """`callback`, with `fields` set on every event that passes through it (where the event left
    them unset): how the pipeline says which model or fold a model's own training events are about."""
    if callback is None:
        return None

    def tag(event: ProgressEvent) -> None:
        missing = {k: v for k, v in fields.items() if getattr(event, k) is None}
        callback(dataclasses.replace(event, **missing) if missing else event)

    return tag


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
