"""Small helpers every model kind shares: progress reporting, label checks, softmax, seeds.

Kept free of torch and transformers so that the TF-IDF kind stays cheap to import.
"""

from __future__ import annotations

from typing import Optional

import numpy as np

from ea_core.errors import DataError, ModelError
from ea_core.events import CancelToken, ProgressCallback, ProgressEvent, StageTimer, no_progress
from ea_core.splits import Split


class Progress:
    """Emits `ProgressEvent`s for one stage with elapsed time and a linear ETA, and checks
    cancellation. `total` may grow (e.g. when early stopping is not known in advance)."""

    def __init__(
        self,
        stage: str,
        total: int,
        callback: Optional[ProgressCallback] = None,
        cancel: Optional[CancelToken] = None,
    ) -> None:
        self.stage = stage
        self.callback = callback or no_progress
        self.cancel = cancel
        self.timer = StageTimer(total)

    @property
    def total(self) -> int:
        return self.timer.total

    def check(self) -> None:
        """Raise `Cancelled` if the user asked to stop."""
        if self.cancel is not None:
            self.cancel.check()

    def emit(
        self,
        step: int,
        *,
        loss: Optional[float] = None,
        val_accuracy: Optional[float] = None,
        message: Optional[str] = None,
        total: Optional[int] = None,
    ) -> None:
        if total is not None:
            self.timer.total = max(int(total), 0)
        self.callback(
            ProgressEvent(
                stage=self.stage,
                step=int(step),
                total=self.timer.total,
                loss=None if loss is None else float(loss),
                val_accuracy=None if val_accuracy is None else float(val_accuracy),
                elapsed_s=self.timer.elapsed(),
                eta_s=self.timer.eta(step),
                message=message,
            )
        )


def check_training_data(labels: list[str], train: Split, val: Optional[Split] = None) -> None:
    """Fail early, with a readable message, on data that cannot be trained on."""
    if len(labels) < 2:
        raise DataError(f"A classifier needs at least 2 labels; got {list(labels)!r}.")
    if len(train) == 0:
        raise DataError("The training split is empty.")
    for name, split in (("training", train), ("validation", val)):
        if split is None or len(split) == 0:
            continue
        y = np.asarray(split.labels)
        if (y < 0).any() or (y >= len(labels)).any():
            raise DataError(
                f"The {name} labels must index the label list (0..{len(labels) - 1}); "
                f"found {sorted(set(y.tolist()))}."
            )


def check_warm_labels(current: Optional[list[str]], labels: list[str]) -> None:
    """A warm start keeps the output layer, so the label list must not change."""
    if current is not None and list(current) != list(labels):
        raise ModelError(
            f"warm_start needs the same labels as the trained model: {list(current)!r} != {list(labels)!r}."
        )


def softmax_np(logits: np.ndarray) -> np.ndarray:
    """Row-wise softmax in float64; rows sum to 1 up to rounding."""
    z = np.asarray(logits, dtype=np.float64)
    if z.size == 0:
        return z.reshape(z.shape[0], -1)
    z = z - z.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def cross_entropy_np(logits: np.ndarray, y: np.ndarray) -> float:
    """Mean cross-entropy of integer labels `y` under softmax(`logits`)."""
    z = np.asarray(logits, dtype=np.float64)
    z = z - z.max(axis=1, keepdims=True)
    logp = z - np.log(np.exp(z).sum(axis=1, keepdims=True))
    return float(-logp[np.arange(len(y)), np.asarray(y)].mean()) if len(y) else 0.0


def usable_val(val: Optional[Split]) -> Optional[Split]:
    """`val` if it has labelled rows to stop on, else None."""
    if val is None or len(val) == 0 or (np.asarray(val.labels) < 0).all():
        return None
    if (np.asarray(val.labels) < 0).any():
        return val.subset(np.flatnonzero(np.asarray(val.labels) >= 0))
    return val


class BestWeights:
    """Early stopping on validation accuracy (ties broken by lower loss), keeping the best weights.

    Shared by every neural small model: `update` after each evaluation says when to stop,
    `restore` puts the best weights back and returns their validation accuracy (None if never set).
    """

    def __init__(self, patience: int) -> None:
        self.patience = patience
        self.accuracy, self.loss, self.bad = -1.0, float("inf"), 0
        self.state: Optional[dict] = None

    def update(self, module, val_accuracy: float, val_loss: float) -> bool:
        if (val_accuracy, -val_loss) > (self.accuracy, -self.loss):
            self.accuracy, self.loss, self.bad = val_accuracy, val_loss, 0
            self.state = {k: v.detach().to("cpu", copy=True) for k, v in module.state_dict().items()}
            return False  # an improvement never stops training
        self.bad += 1
        return self.bad >= self.patience

    def restore(self, module) -> Optional[float]:
        if self.state is None:
            return None
        module.load_state_dict(self.state)
        return self.accuracy
