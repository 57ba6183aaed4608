"""Small helpers every model kind shares: progress reporting, label checks, softmax, seeds.

Kept free of torch and transformers so that the TF-IDF kind stays cheap to import.
"""

from __future__ import annotations

from typing import Callable, Optional

import numpy as np

from ea_core.errors import DataError, ModelError
from ea_core.events import CancelToken, EventKind, ProgressCallback, ProgressEvent, StageTimer, no_progress
from ea_core.metrics import SELECTION_METRICS, accuracy, macro_f1
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
                kind=EventKind.TRAIN,
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
    """Early stopping on a validation score (ties broken by lower loss), keeping the best weights.

    The score is accuracy or macro-F1 (the model's ``selection_metric``). Shared by every neural
    small model: `update` after each evaluation says when to stop, `restore` puts the best weights
    back and returns their validation score (None if never set).
    """

    def __init__(self, patience: int) -> None:
        self.patience = patience
        self.score, self.loss, self.bad = -1.0, float("inf"), 0
        self.state: Optional[dict] = None

    @property
    def accuracy(self) -> float:  # the name before selection metrics; kept for callers
        return self.score

    def update(self, module, val_score: float, val_loss: float) -> bool:
        if (val_score, -val_loss) > (self.score, -self.loss):
            self.score, self.loss, self.bad = val_score, val_loss, 0
            self.state = {k: v.detach().to("cpu", copy=True) for k, v in module.state_dict().items()}
            return False  # an improvement never stops training
        self.bad += 1
        return self.bad >= self.patience

    def restore(self, module) -> Optional[float]:
        if self.state is None:
            return None
        module.load_state_dict(self.state)
        return self.score


# ------------------------------------------------------------------ imbalanced labels

#: How a small model weights its classes in the training loss (the ``class_weight`` setting).
CLASS_WEIGHTS = ("auto", "balanced", "none")
#: ``auto`` turns class weighting (and macro-F1 selection) on when the training split's largest
#: class has at least this many times the examples of its smallest. 3.0: the demo tweets (2.3:1)
#: stay as they were, where weighting trades accuracy for little macro-F1; a 62% majority of
#: three classes (e.g. 62/28/10, 6:1) is past it, where unweighted models answer the majority.
DEFAULT_IMBALANCE_RATIO = 3.0


def imbalance_ratio(y: np.ndarray, n_labels: int) -> float:
    """Largest over smallest class count among the labels present in `y` (1.0 for one class or none)."""
    y = np.asarray(y)
    counts = np.bincount(y[y >= 0], minlength=n_labels)
    present = counts[counts > 0]
    return float(present.max() / present.min()) if present.size > 1 else 1.0


def is_imbalanced(y: np.ndarray, n_labels: int, ratio: float = DEFAULT_IMBALANCE_RATIO) -> bool:
    return imbalance_ratio(y, n_labels) >= ratio


def check_choice(name: str, value: str, choices: tuple[str, ...]) -> str:
    if value not in choices:
        raise ModelError(f"{name} must be one of {', '.join(choices)}, not {value!r}.")
    return value


def class_weights(y: np.ndarray, n_labels: int, setting: str = "auto",
                  ratio: float = DEFAULT_IMBALANCE_RATIO) -> Optional[np.ndarray]:
    """Per-label loss weights for training on `y`, or None for an unweighted loss.

    ``balanced`` is scikit-learn's ``compute_class_weight("balanced")`` (n / (K * count)) over the
    labels present; a label absent from `y` gets weight 1 (it contributes no loss term anyway).
    ``auto`` is ``balanced`` when `imbalance_ratio` of `y` is at least `ratio`, else None."""
    check_choice("class_weight", setting, CLASS_WEIGHTS)
    y = np.asarray(y)
    y = y[y >= 0]
    if setting == "none" or (setting == "auto" and not is_imbalanced(y, n_labels, ratio)):
        return None
    from sklearn.utils.class_weight import compute_class_weight

    present = np.unique(y)
    out = np.ones(n_labels)
    if present.size:
        out[present] = compute_class_weight("balanced", classes=present, y=y)
    return out


def resolve_selection_metric(setting: str, y: np.ndarray, n_labels: int,
                             ratio: float = DEFAULT_IMBALANCE_RATIO) -> str:
    """``accuracy`` or ``macro_f1``; ``auto`` is macro_f1 when the training labels `y` are imbalanced."""
    check_choice("selection_metric", setting, SELECTION_METRICS)
    if setting != "auto":
        return setting
    return "macro_f1" if is_imbalanced(y, n_labels, ratio) else "accuracy"


#: A caller's own epoch score: validation probabilities in, a number to maximise out (see `SmallModel.fit`).
EpochScore = Callable[[np.ndarray], float]


def epoch_score(y: np.ndarray, logits: np.ndarray, metric: str, select: Optional[EpochScore] = None) -> float:
    """The validation score early stopping maximises: the caller's `select` of the probabilities
    when given (an augmented SSM is scored by the routed system it joins), else the selection metric."""
    if select is not None:
        return float(select(softmax_np(logits)))
    return selection_score(y, logits.argmax(axis=1), metric, logits.shape[1])


def selection_score(y: np.ndarray, pred: np.ndarray, metric: str, n_labels: int) -> float:
    """The score a selection `metric` (``accuracy`` or ``macro_f1``, already resolved) gives `pred`."""
    if metric == "macro_f1":
        return macro_f1(y, pred, n_labels)
    return accuracy(y, pred)
