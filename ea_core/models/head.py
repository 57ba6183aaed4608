"""``head:MODEL`` for any modality: a small softmax head trained over a frozen feature extractor.

The fast CPU mode. The extractor (a Hugging Face text encoder, a CNN backbone) runs once per
input and never backwards; its vectors are kept in an `EmbeddingMemory` owned by whoever built the
model (and, for text, on disk), so tuning, retraining, warm starts and out-of-fold heads on the
same inputs never run it again. What differs by modality is the extractor; the head, its training
(AdamW, early stopping on the selection metric, class weights, warm starts), its generators (seeded,
never torch's global one, so two fits in two threads disturb neither each other nor the caller)
and its saved weights are here, once.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from pathlib import Path
from typing import Any, ClassVar, Hashable, Optional

import numpy as np

from ea_core.errors import ModelError
from ea_core.events import CancelToken, ProgressCallback
from ea_core.models.base import SmallModel, check_tensor, damaged, read_tensors
from ea_core.models.common import (
    DEFAULT_IMBALANCE_RATIO,
    BestWeights,
    EpochScore,
    Progress,
    check_training_data,
    check_warm_labels,
    class_weights,
    cross_entropy_np,
    epoch_score,
    resolve_selection_metric,
    softmax_np,
    usable_val,
)
from ea_core.models.memory import MIN_CACHED_INPUTS, EmbeddingMemory, assemble
from ea_core.splits import Split

HEAD_WEIGHTS = "head.safetensors"


class FeatureExtractor(ABC):
    """The frozen network under a head: turns inputs into fixed-size vectors.

    It holds its own settings (the model reads and sets them through `ExtractorSetting`) and its
    loaded weights; the head model decides what is cached and trains on the vectors.
    """

    #: Forward passes (batches) run: lets tests and UIs see cache hits.
    calls: int = 0

    def check(self, split: Split) -> None:
        """ModelError when `split` holds inputs this extractor cannot read."""

    @abstractmethod
    def keys(self, split: Split) -> list[Hashable]:
        """One memory key per row; rows with equal keys have equal vectors."""

    @abstractmethod
    def space(self) -> str:
        """Which vectors are interchangeable (the same network, weights, input size, pooling)."""

    @abstractmethod
    def encode(self, split: Split, rows: list[int], progress: Optional[Progress], batch_size: int) -> np.ndarray:
        """Vectors (len(rows), dim), float32, of those rows of `split`; checks `progress` for cancel."""

    @property
    def dim(self) -> Optional[int]:
        """The vector size when known without loading the network, else None."""
        return None

    def prepare(self, progress: Progress) -> None:
        """Before training: load what fit needs and report what is worth a warning."""

    def read_cache(self, split: Split) -> Optional[np.ndarray]:
        """Every vector of `split` from a cache outside this process, or None."""
        return None

    def write_cache(self, split: Split, vectors: np.ndarray) -> None:
        """Keep the vectors of `split` for `read_cache` (a failure only costs speed)."""

    def metadata(self) -> dict[str, str]:
        """Written into the head's weights file: which features it was trained on."""
        return {}

    def save(self, folder: Path) -> None:
        """What a saved model needs besides the head (e.g. weights that cannot be fetched again)."""

    def load(self, folder: Path) -> None:
        """Read back what `save` wrote."""

    def confine(self, folder: Path) -> None:
        """Loaded from an untrusted bundle: see `SmallModel._confine`."""


class ExtractorSetting:
    """A head model's constructor setting that its extractor holds. Reading or setting it on the
    model reads or sets the extractor's, so `get_params` sees one flat list of settings and a
    setting changed on the model (a bundle's `_confine`, a caller) reaches the extractor."""

    def __set_name__(self, owner: type, name: str) -> None:
        self.name = name

    def __get__(self, obj: Any, objtype: Optional[type] = None) -> Any:
        return self if obj is None else getattr(obj.extractor, self.name)

    def __set__(self, obj: Any, value: Any) -> None:
        setattr(obj.extractor, self.name, value)


def head_net(dim: int, k: int, hidden: int, dropout: float, generator: Any = None) -> Any:
    """The head: [dropout, linear(dim, hidden), GELU, dropout,] linear(., k).

    Initial weights come from `generator` (torch's default Linear initialisation, drawn from an
    explicit generator); with None they are left uninitialised, for weights loaded right after.
    """
    import torch.nn as nn

    from ea_core.models.seeded import SeededDropout, init_linear, uninitialised_linear

    if hidden > 0:
        layers = [SeededDropout(dropout), uninitialised_linear(dim, hidden), nn.GELU(), SeededDropout(dropout),
                  uninitialised_linear(hidden, k)]
    else:
        layers = [SeededDropout(dropout), uninitialised_linear(dim, k)]
    net = nn.Sequential(*layers)
    if generator is not None:
        for layer in net:
            if isinstance(layer, nn.Linear):
                init_linear(layer, generator)
    return net


class HeadModel(SmallModel):
    """Extractor vectors (remembered) + a softmax head trained with early stopping.

    A kind subclasses this with its constructor (its settings, the extractor's among them as
    `ExtractorSetting`s) and builds `extractor` there; `_set_head` stores the head's settings.
    """

    runtime_params = ("memory",)

    extractor: FeatureExtractor
    model: str
    seed: int
    memory: EmbeddingMemory
    class_weight: Optional[str]

    # Where the text and image heads differed before they were one class; each kind keeps its own
    # value, so every head trains exactly as it did (same weights, same accuracies).
    normalize: bool = False  #: L2-normalise the vectors before standardising them (text: a setting)
    selection_metric: str = "accuracy"  #: what early stopping maximises (text: a setting)
    imbalance_ratio: float = DEFAULT_IMBALANCE_RATIO  #: when ``class_weight="auto"`` weighs (text: a setting)
    scale_floor: ClassVar[bool] = True  #: standardise by max(std, 1e-6); False: by std + 1e-6
    shared_generator: ClassVar[bool] = False  #: the initial weights and the batch order share one generator
    weighted_warm_starts: ClassVar[bool] = False  #: a warm start keeps the class weights (else unweighted)

    def _set_head(self, *, embed_batch_size: int, hidden: int, dropout: float, epochs: int, lr: float,
                  batch_size: int, weight_decay: float, patience: int, warm_start_epochs: int,
                  warm_start_lr: float, threads: Optional[int], memory: Optional[EmbeddingMemory]) -> None:
        """Store the head's settings (each under its constructor name), check them, reset the state."""
        self.embed_batch_size = int(embed_batch_size)
        self.hidden = int(hidden)
        self.dropout = float(dropout)
        self.epochs = int(epochs)
        self.lr = float(lr)
        self.batch_size = int(batch_size)
        self.weight_decay = float(weight_decay)
        self.patience = int(patience)
        self.warm_start_epochs = int(warm_start_epochs)
        self.warm_start_lr = float(warm_start_lr)
        self.threads = threads  # kept so saved configs load; see `ea_core.process.configure_process`
        #: Where vectors are remembered: the caller's, shared by the models it builds, else this model's own.
        self.memory = EmbeddingMemory() if memory is None else memory
        if self.epochs < 1 or self.batch_size < 1 or self.embed_batch_size < 1 or self.lr <= 0 or self.hidden < 0:
            raise ModelError("head needs epochs >= 1, batch_size >= 1, embed_batch_size >= 1, hidden >= 0 and lr > 0.")
        if not 0.0 <= self.dropout < 1.0:
            raise ModelError("dropout must be in [0, 1).")
        self.head_: Any = None
        self.mean_: Optional[np.ndarray] = None
        self.scale_: Optional[np.ndarray] = None
        self.history_: list[dict[str, Any]] = []
        self.best_val_accuracy_: Optional[float] = None
        self.best_val_score_: Optional[float] = None  # of `selection_metric_` (accuracy or macro-F1)
        self.class_weight_: Optional[np.ndarray] = None  # per-label loss weights of the last fresh fit
        self.selection_metric_: Optional[str] = None

    @property
    def spec(self) -> str:
        return f"head:{self.model}"

    # ------------------------------------------------------------------ features

    def embed(self, split: Split, progress: Optional[Progress] = None, batch_size: Optional[int] = None) -> np.ndarray:
        """The extractor's vectors (n, dim) float32 for every row, run only on inputs not remembered.

        Small calls (fewer than `MIN_CACHED_INPUTS`, e.g. one input routed live) read the memory
        but write to no cache: caching them would only add writes and grow memory in a
        long-running app. The output is assembled from what this call read from the memory and
        what it computed itself, so another thread evicting entries meanwhile changes nothing.
        """
        ex = self.extractor
        ex.check(split)
        if len(split) == 0:
            return np.zeros((0, ex.dim or 0), dtype=np.float32)
        remember = len(split) >= MIN_CACHED_INPUTS
        space = ex.space()
        keys = ex.keys(split)
        saved = ex.read_cache(split) if remember else None
        if saved is not None:
            self.memory.put_many(space, dict(zip(keys, saved)))
            return saved
        first: dict[Hashable, int] = {}  # each distinct input once, at its first row
        for row, key in enumerate(keys):
            first.setdefault(key, row)
        known = self.memory.get_many(space, first)
        missing = [key for key in first if key not in known]
        fresh: dict[Hashable, np.ndarray] = {}
        if missing:
            vectors = ex.encode(split, [first[key] for key in missing], progress, batch_size or self.embed_batch_size)
            fresh = dict(zip(missing, vectors))
        if remember:
            self.memory.put_many(space, fresh)
        out = assemble(keys, known, fresh)
        if remember:
            ex.write_cache(split, out)
        return out

    def _normalised(self, emb: np.ndarray) -> np.ndarray:
        x = emb.astype(np.float32, copy=True)
        if self.normalize:
            x /= np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)
        return x

    def _standardised(self, x: np.ndarray) -> Any:
        import torch

        return torch.from_numpy(((x - self.mean_) / self.scale_).astype(np.float32, copy=False))

    # ------------------------------------------------------------------ training

    def fit(
        self,
        train: Split,
        val: Optional[Split],
        labels: list[str],
        *,
        callback: Optional[ProgressCallback] = None,
        cancel: Optional[CancelToken] = None,
        warm_start: bool = False,
        stage: Optional[str] = None,
        select: Optional[EpochScore] = None,
    ) -> "HeadModel":
        import torch

        check_training_data(labels, train, val)
        warm = warm_start and self.head_ is not None
        if warm:
            check_warm_labels(getattr(self, "labels_", None), labels)
        val = usable_val(val)
        stage = stage or f"train:{self.spec}"
        progress = Progress(stage, 1, callback, cancel)
        self.extractor.prepare(progress)
        x_train = self._normalised(self.embed(train, progress))
        x_val = None if val is None else self._normalised(self.embed(val, progress))
        progress.check()

        k, y = len(labels), np.asarray(train.labels)
        gen = torch.Generator().manual_seed(self.seed)  # never torch's global generator
        if not warm:
            std = x_train.std(axis=0)
            self.mean_ = x_train.mean(axis=0)
            self.scale_ = (np.maximum(std, 1e-6) if self.scale_floor else std + 1e-6).astype(np.float32)
            init = gen if self.shared_generator else torch.Generator().manual_seed(self.seed)
            self.head_ = head_net(x_train.shape[1], k, self.hidden, self.dropout, init)
            self.selection_metric_ = resolve_selection_metric(self.selection_metric, y, k, self.imbalance_ratio)
        self.labels_ = list(labels)
        # A warm start trains few hard examples, few epochs at a lower rate: on tweets (20 hard
        # examples) this learns about 2/3 of them for a <= 5 pt validation loss.
        epochs = self.warm_start_epochs if warm else self.epochs
        lr = self.warm_start_lr if warm else self.lr
        weights = None
        if not warm or self.weighted_warm_starts:
            weights = class_weights(y, k, self.class_weight or "none", self.imbalance_ratio)
        if not warm:
            self.class_weight_ = weights
        loss_weight = None if weights is None else torch.tensor(weights, dtype=torch.float32)
        # torch's thread count is process-wide and so not changed here: a CPU shared with other
        # busy work trains this head fastest with 1 thread (see `ea_core.process`).
        from ea_core.models.seeded import set_generator

        set_generator(self.head_, gen)
        try:
            self._train_epochs(self._standardised(x_train), torch.as_tensor(y, dtype=torch.long),
                               None if x_val is None else self._standardised(x_val),
                               None if val is None else np.asarray(val.labels), lr, epochs,
                               Progress(stage, epochs, callback, cancel), gen, loss_weight, select)
        finally:
            set_generator(self.head_, None)
        return self

    def _train_epochs(self, xt: Any, yt: Any, xv: Any, yv: Optional[np.ndarray], lr: float, epochs: int,
                      progress: Progress, gen: Any, loss_weight: Any = None,
                      select: Optional[EpochScore] = None) -> None:
        """Mini-batch AdamW on the vectors, batch order and dropout from `gen`; keep the weights
        of the best validation epoch."""
        import torch
        import torch.nn.functional as F

        head = self.head_
        optimizer = torch.optim.AdamW(head.parameters(), lr=lr, weight_decay=self.weight_decay)
        best = BestWeights(self.patience)
        metric = self.selection_metric_ or "accuracy"
        stop = False
        self.history_ = []
        for epoch in range(epochs):
            progress.check()
            head.train()
            total, seen = 0.0, 0
            for idx in torch.randperm(len(xt), generator=gen).split(self.batch_size):
                loss = F.cross_entropy(head(xt[idx]), yt[idx], weight=loss_weight)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                total += float(loss.detach()) * len(idx)
                seen += len(idx)
            val_acc = val_loss = val_score = None
            if xv is not None:
                head.eval()
                with torch.inference_mode():
                    val_logits = head(xv).numpy()
                val_acc = float((val_logits.argmax(axis=1) == yv).mean())
                val_score = epoch_score(yv, val_logits, metric, select)
                val_loss = cross_entropy_np(val_logits, yv)
                stop = best.update(head, val_score, val_loss)
            self.history_.append({"epoch": epoch + 1, "loss": total / seen, "val_accuracy": val_acc,
                                  "val_loss": val_loss, "val_score": val_score, "metric": metric})
            progress.emit(epoch + 1, loss=total / seen, val_accuracy=val_acc, total=epoch + 1 if stop else None,
                          message="early stop" if stop else "training head")
            if stop:
                break
        self.best_val_score_ = best.restore(head)
        self.best_val_accuracy_ = self._best_accuracy(self.best_val_score_)
        head.eval()

    def _best_accuracy(self, best_score: Optional[float]) -> Optional[float]:
        """Validation accuracy of the epoch early stopping kept (from the history)."""
        if best_score is None:
            return None
        kept = [h for h in self.history_ if h.get("val_score") == best_score]
        return min(kept, key=lambda h: h["val_loss"])["val_accuracy"] if kept else None

    # ------------------------------------------------------------------ inference

    def predict_proba(self, split: Split, *, batch_size: Optional[int] = None) -> np.ndarray:
        import torch

        if self.head_ is None:
            raise ModelError(f"{self.spec} is not trained yet: call fit() or load_model() first.")
        if len(split) == 0:
            return np.zeros((0, len(self.labels_)))
        x = self._normalised(self.embed(split, batch_size=batch_size))
        if x.shape[1] != self.mean_.shape[0]:
            raise ModelError(f"{self.spec}: the extractor gives {x.shape[1]}-dim vectors but the head was "
                             f"trained on {self.mean_.shape[0]}-dim ones (a different network, or edited weights).")
        self.head_.eval()
        with torch.inference_mode():
            logits = self.head_(self._standardised(x)).numpy()
        return softmax_np(logits)

    # ------------------------------------------------------------------ persistence

    def _save_weights(self, folder: Path) -> None:
        import torch
        from safetensors.torch import save_file

        if self.head_ is None:
            raise ModelError(f"{self.spec} is not trained yet: nothing to save.")
        tensors = {f"head.{k}": v.detach().cpu().contiguous() for k, v in self.head_.state_dict().items()}
        tensors["mean"] = torch.from_numpy(np.ascontiguousarray(self.mean_, dtype=np.float32))
        tensors["scale"] = torch.from_numpy(np.ascontiguousarray(self.scale_, dtype=np.float32))
        save_file(tensors, str(folder / HEAD_WEIGHTS), metadata=self.extractor.metadata())
        self.extractor.save(folder)

    def _confine(self, folder: Path, root: Path) -> None:
        self.extractor.confine(folder)

    def _load_weights(self, folder: Path) -> None:
        """The head and its standardisation, shapes checked against the settings and the labels."""
        path = folder / HEAD_WEIGHTS
        tensors = read_tensors(path, framework="pt")
        for name in ("mean", "scale"):
            if name not in tensors:
                raise damaged(path, f"tensor {name!r} is missing")
        check_tensor(path, "mean", tensors["mean"], (self.extractor.dim,))
        dim, k = int(tensors["mean"].shape[0]), len(self.labels_)
        check_tensor(path, "scale", tensors["scale"], (dim,))
        # The layout `head_net` builds: [dropout, linear(dim, hidden), GELU, dropout,] linear(., k)
        if self.hidden > 0:
            expected = {"1.weight": (self.hidden, dim), "1.bias": (self.hidden,), "4.weight": (k, self.hidden),
                        "4.bias": (k,)}
        else:
            expected = {"1.weight": (k, dim), "1.bias": (k,)}
        if set(tensors) != {"mean", "scale"} | {f"head.{n}" for n in expected}:
            raise damaged(path, f"tensors {sorted(tensors)} do not match a head with hidden={self.hidden} over "
                                f"{dim}-dim features (expected {sorted(expected)} under 'head.', plus mean and scale)")
        for name, shape in expected.items():
            check_tensor(path, f"head.{name}", tensors[f"head.{name}"], shape)
        if float(tensors["scale"].min()) <= 0:
            raise damaged(path, "tensor 'scale' must be positive")
        self.mean_ = tensors["mean"].float().numpy()
        self.scale_ = tensors["scale"].float().numpy()
        self.head_ = head_net(dim, k, self.hidden, self.dropout)  # uninitialised: loaded next
        self.head_.load_state_dict({n: tensors[f"head.{n}"].float() for n in expected})
        self.head_.eval()
        self.extractor.load(folder)
