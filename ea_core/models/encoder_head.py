"""``head:MODEL`` — a frozen pretrained encoder plus a small trained softmax head.

The fast CPU mode: the encoder runs once per text, never backwards. Attention-masked mean-pooled
embeddings are cached on disk per (encoder, max_length, texts), so tuning, retraining, warm
starts and repeated predictions on the same data never run the encoder again; a per-text memory
(`EmbeddingMemory`, shared by the models of one process, thread-safe and bounded) also serves
subsets of already-embedded data. The head (linear, or one hidden layer) is trained in seconds
with AdamW and early stopping on validation accuracy. Training draws its initial weights, batch
order and dropout masks from generators seeded with `seed`, never from torch's global generator,
so two fits in two threads neither disturb each other nor the caller's random state.

Cache folder: the `cache_dir` setting, else ``$EA_CACHE_DIR/embeddings``, else
``~/.cache/ea_studio/embeddings`` (a model loaded from a bundle always uses the latter two: a
bundle never chooses where this machine writes). Entries are plain ``.npy`` files read with
``allow_pickle=False``; deleting the folder is always safe.

Imbalanced labels: ``class_weight`` ("auto", "balanced", "none") weights the cross-entropy by
scikit-learn's ``compute_class_weight("balanced")``; "auto" does so when the training split's
largest class has at least `imbalance_ratio` times the examples of its smallest. Early stopping
keeps the epoch with the best ``selection_metric`` on validation (accuracy, macro-F1, or "auto":
macro-F1 when imbalanced). A warm start trains its few hard examples unweighted.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import threading
from collections import OrderedDict
from pathlib import Path
from typing import Any, Iterable, Mapping, Optional

import numpy as np

from ea_core.errors import ModelError
from ea_core.events import CancelToken, ProgressCallback
from ea_core.metrics import SELECTION_METRICS
from ea_core.models.base import SmallModel, check_named_model, check_tensor, damaged, read_tensors, register
from ea_core.models.catalog import is_local, resolve_model
from ea_core.models.common import (
    CLASS_WEIGHTS,
    DEFAULT_IMBALANCE_RATIO,
    BestWeights,
    EpochScore,
    Progress,
    check_choice,
    check_training_data,
    check_warm_labels,
    class_weights,
    cross_entropy_np,
    epoch_score,
    resolve_selection_metric,
    softmax_np,
    usable_val,
)
from ea_core.models.hf_common import (
    collate,
    load_pretrained,
    load_tokenizer,
    pick_device,
    sorted_batches,
    tokenize_split,
)
from ea_core.process import warn_ignored_threads
from ea_core.splits import Split

HEAD_WEIGHTS = "head.safetensors"
ENCODER_SUBDIR = "encoder"
_POOLING = "mean-v1"  # bump when the embedding computation changes, to invalidate caches


# Calls with fewer inputs than this are not cached (live single-input routing).
MIN_CACHED_INPUTS = 32


def default_cache_dir() -> Path:
    """``$EA_CACHE_DIR/embeddings`` or ``~/.cache/ea_studio/embeddings``."""
    root = os.environ.get("EA_CACHE_DIR") or os.path.join("~", ".cache", "ea_studio")
    return Path(root).expanduser() / "embeddings"


def encoder_fingerprint(resolved: str) -> str:
    """Identity of an encoder for cache keys: the hub id, or for a local folder its config and
    the size plus first and last MiB of each weight file (cheap, and survives moving the folder)."""
    if not is_local(resolved):
        return f"hub:{resolved}"
    folder = Path(resolved)
    h = hashlib.sha256()
    config = folder / "config.json"
    if config.is_file():
        h.update(config.read_bytes())
    for path in sorted(folder.glob("*.safetensors")) + sorted(folder.glob("*.bin")):
        size = path.stat().st_size
        h.update(f"{path.name}:{size}".encode())
        with path.open("rb") as fh:
            h.update(fh.read(1 << 20))
            if size > 2 << 20:
                fh.seek(-(1 << 20), os.SEEK_END)
                h.update(fh.read())
    return f"local:{h.hexdigest()}"


#: One input of a split: (text, pair or None).
Input = tuple[str, Optional[str]]

#: Default bound of the shared memory: 1M MiniLM vectors (384 float32) are about 1.5 GB.
DEFAULT_MEMORY_VECTORS = 1_000_000


class EmbeddingMemory:
    """Embeddings already computed in this process, keyed by (encoder space, input).

    Lets a new model on the same encoder (another cross-validation fold, a retrain, a warm start,
    a subset of the data) skip the encoder for texts it has seen. Safe to share between threads:
    every method holds a lock, and callers never rely on an entry surviving between two calls
    (`get_many` returns what it found, the caller keeps it). Bounded: at most `max_vectors`
    vectors, least recently used first out.
    """

    def __init__(self, max_vectors: int = DEFAULT_MEMORY_VECTORS) -> None:
        if int(max_vectors) < 0:
            raise ModelError(f"max_vectors must be >= 0, not {max_vectors!r}.")
        self.max_vectors = int(max_vectors)
        self._lock = threading.Lock()
        self._vectors: OrderedDict[tuple[str, Input], np.ndarray] = OrderedDict()

    def get_many(self, space: str, keys: Iterable[Input]) -> dict[Input, np.ndarray]:
        """The vectors of `keys` held for `space` (missing keys are simply absent)."""
        found: dict[Input, np.ndarray] = {}
        with self._lock:
            for key in keys:
                vector = self._vectors.get((space, key))
                if vector is not None:
                    self._vectors.move_to_end((space, key))
                    found[key] = vector
        return found

    def put_many(self, space: str, vectors: Mapping[Input, np.ndarray]) -> None:
        """Remember `vectors` for `space`, evicting the least recently used beyond the bound."""
        # Rows of a bigger array are copied, so an evicted row frees its memory for real.
        owned = {key: (v.copy() if v.base is not None else v) for key, v in vectors.items()}
        with self._lock:
            for key, vector in owned.items():
                self._vectors[(space, key)] = vector
                self._vectors.move_to_end((space, key))
            while len(self._vectors) > self.max_vectors:
                self._vectors.popitem(last=False)

    def clear(self) -> None:
        """Forget every vector."""
        with self._lock:
            self._vectors.clear()

    def __len__(self) -> int:
        with self._lock:
            return len(self._vectors)

    def __getstate__(self) -> dict[str, Any]:
        return {"max_vectors": self.max_vectors}  # a copy in another process starts empty

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__(state["max_vectors"])  # type: ignore[misc]


#: The memory every `EncoderHeadModel` of this process shares unless given its own.
SHARED_MEMORY = EmbeddingMemory()


def clear_memory_cache() -> None:
    """Forget the in-process embeddings of the shared memory (the disk cache is untouched)."""
    SHARED_MEMORY.clear()


def _assemble(keys: list[Input], known: Mapping[Input, np.ndarray], fresh: Mapping[Input, np.ndarray]) -> np.ndarray:
    """Stack one vector per key, from this call's memory reads and its own encoder output."""
    return np.stack([known[k] if k in known else fresh[k] for k in keys]).astype(np.float32, copy=False)


def _head_net(dim: int, k: int, hidden: int, dropout: float, generator: Any = None) -> Any:
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


@register
class EncoderHeadModel(SmallModel):
    """Frozen encoder embeddings (cached) + a softmax head trained with early stopping."""

    kind = "head"

    def __init__(
        self,
        model: str = "minilm",
        *,
        max_length: int = 128,
        embed_batch_size: int = 64,
        hidden: int = 256,
        dropout: float = 0.3,
        epochs: int = 100,
        lr: float = 1e-3,
        batch_size: int = 64,
        weight_decay: float = 1e-2,
        patience: int = 10,
        seed: int = 0,
        normalize: bool = True,
        warm_start_epochs: int = 10,
        warm_start_lr: float = 3e-4,
        device: str = "auto",
        threads: Optional[int] = None,
        cache_dir: Optional[str] = None,
        use_cache: bool = True,
        save_encoder: bool = False,
        class_weight: str = "auto",
        imbalance_ratio: float = DEFAULT_IMBALANCE_RATIO,
        selection_metric: str = "auto",
    ) -> None:
        self.model = str(model)
        self.max_length = int(max_length)
        self.embed_batch_size = int(embed_batch_size)
        self.hidden = int(hidden)
        self.dropout = float(dropout)
        self.epochs = int(epochs)
        self.lr = float(lr)
        self.batch_size = int(batch_size)
        self.weight_decay = float(weight_decay)
        self.patience = int(patience)
        self.seed = int(seed)
        self.normalize = bool(normalize)
        self.warm_start_epochs = int(warm_start_epochs)
        self.warm_start_lr = float(warm_start_lr)
        self.device = device
        self.threads = threads  # kept so saved configs load; see `ea_core.process.configure_process`
        warn_ignored_threads(f"head:{self.model}", threads)
        self.cache_dir = None if cache_dir is None else str(cache_dir)
        self.use_cache = bool(use_cache)
        self.save_encoder = bool(save_encoder)
        self.class_weight = check_choice("class_weight", str(class_weight), CLASS_WEIGHTS)
        self.imbalance_ratio = float(imbalance_ratio)
        self.selection_metric = check_choice("selection_metric", str(selection_metric), SELECTION_METRICS)
        if self.epochs < 1 or self.batch_size < 1 or self.embed_batch_size < 1 or self.max_length < 2 or self.lr <= 0:
            raise ModelError("head needs epochs >= 1, batch_size >= 1, embed_batch_size >= 1, max_length >= 2 "
                             "and lr > 0.")
        self.head_: Any = None
        self.mean_: Optional[np.ndarray] = None
        self.scale_: Optional[np.ndarray] = None
        self.history_: list[dict[str, Any]] = []
        self.best_val_accuracy_: Optional[float] = None
        self.best_val_score_: Optional[float] = None  # of `selection_metric_` (accuracy or macro-F1)
        self.class_weight_: Optional[np.ndarray] = None  # per-label loss weights of the last fresh fit
        self.selection_metric_: Optional[str] = None
        #: Encoder forward passes (batches) run by this instance: lets tests and UIs see cache hits.
        self.encoder_calls_ = 0
        self._encoder_source: Optional[str] = None  # overrides MODEL when the encoder was saved along
        self._encoder: Any = None
        self._tokenizer: Any = None
        self._fingerprint: Optional[str] = None
        self._load_lock = threading.Lock()  # two live predictions at once load the encoder once
        #: The in-process embedding memory; None means the process's `SHARED_MEMORY`. Give a model
        #: its own `EmbeddingMemory` to keep its embeddings apart (or to bound them differently).
        self.memory: Optional[EmbeddingMemory] = None

    @property
    def spec(self) -> str:
        return f"{self.kind}:{self.model}"

    def get_config(self) -> dict[str, Any]:
        return {
            "model": self.model,
            "max_length": self.max_length,
            "embed_batch_size": self.embed_batch_size,
            "hidden": self.hidden,
            "dropout": self.dropout,
            "epochs": self.epochs,
            "lr": self.lr,
            "batch_size": self.batch_size,
            "weight_decay": self.weight_decay,
            "patience": self.patience,
            "seed": self.seed,
            "normalize": self.normalize,
            "warm_start_epochs": self.warm_start_epochs,
            "warm_start_lr": self.warm_start_lr,
            "device": self.device,
            "threads": self.threads,
            "cache_dir": self.cache_dir,
            "use_cache": self.use_cache,
            "save_encoder": self.save_encoder,
            "class_weight": self.class_weight,
            "imbalance_ratio": self.imbalance_ratio,
            "selection_metric": self.selection_metric,
        }

    # ------------------------------------------------------------------ embeddings

    def _resolved(self) -> str:
        return self._encoder_source or resolve_model(self.model)

    def fingerprint(self) -> str:
        if self._fingerprint is None:
            self._fingerprint = encoder_fingerprint(self._resolved())
        return self._fingerprint

    def _load_encoder(self) -> tuple[Any, Any]:
        """(tokenizer, encoder), loaded once per instance even when two threads ask at once."""
        with self._load_lock:
            if self._encoder is None:
                from transformers import AutoModel

                resolved = self._resolved()
                name = self.model if self._encoder_source is None else self._encoder_source
                tokenizer = load_tokenizer(name, resolved)
                encoder = load_pretrained(AutoModel, name, resolved)
                encoder.eval()
                encoder.requires_grad_(False)
                self._tokenizer, self._encoder = tokenizer, encoder
            return self._tokenizer, self._encoder

    def _memory_store(self) -> EmbeddingMemory:
        return SHARED_MEMORY if self.memory is None else self.memory

    def _space(self) -> str:
        """Which embeddings are interchangeable: same encoder, truncation and pooling."""
        return f"{self.fingerprint()}|{self.max_length}|{_POOLING}"

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state.pop("_load_lock", None)  # locks do not pickle; a copy gets its own
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._load_lock = threading.Lock()

    def _cache_path(self, split: Split) -> Path:
        h = hashlib.sha256()
        h.update(f"{self.fingerprint()}|{self.max_length}|{_POOLING}|{len(split)}|{split.pairs is not None}\n".encode())
        for i in range(len(split)):
            text, pair = split.input(i)
            h.update(str(text).encode("utf-8", "surrogatepass"))
            h.update(b"\x00" if pair is None else b"\x01" + str(pair).encode("utf-8", "surrogatepass"))
            h.update(b"\x1e")
        folder = Path(self.cache_dir).expanduser() if self.cache_dir else default_cache_dir()
        return folder / f"{h.hexdigest()[:40]}.npy"

    def embed(self, split: Split, progress: Optional[Progress] = None, batch_size: Optional[int] = None) -> np.ndarray:
        """Mean-pooled embeddings (n, dim) float32 of every input, from cache when possible.

        Small calls (fewer than `MIN_CACHED_INPUTS`, e.g. one input routed live) read the memory
        but write to neither cache: caching them would only add disk writes and grow memory in a
        long-running app. The output is assembled from what this call read from the memory and
        what it encoded itself, so another thread evicting entries meanwhile changes nothing.
        """
        keys = [split.input(i) for i in range(len(split))]
        memory, space = self._memory_store(), self._space()
        batch_size = batch_size or self.embed_batch_size
        if len(split) < MIN_CACHED_INPUTS:
            unique = list(dict.fromkeys(keys))
            known = memory.get_many(space, unique)
            missing = [k for k in unique if k not in known]
            fresh = self._encode(missing, None, batch_size) if missing else {}
            return _assemble(keys, known, fresh)
        path = self._cache_path(split) if self.use_cache else None
        if path is not None and path.is_file():
            try:
                cached = np.load(path, allow_pickle=False)
                if cached.ndim == 2 and cached.shape[0] == len(split):
                    memory.put_many(space, {key: cached[i] for i, key in enumerate(keys)})
                    return cached
            except (OSError, ValueError):
                pass  # a corrupt entry is recomputed and overwritten
        unique = list(dict.fromkeys(keys))
        known = memory.get_many(space, unique)
        missing = [key for key in unique if key not in known]
        fresh = self._encode(missing, progress, batch_size) if missing else {}
        memory.put_many(space, fresh)
        out = _assemble(keys, known, fresh)
        if path is not None:
            try:
                path.parent.mkdir(parents=True, exist_ok=True)
                tmp = path.with_suffix(f".{os.getpid()}.{threading.get_ident()}.tmp.npy")
                np.save(tmp, out, allow_pickle=False)
                os.replace(tmp, path)
            except OSError:
                pass  # a read-only or full cache only costs speed
        return out

    def _encode(self, inputs: list[Input], progress: Optional[Progress], batch_size: int) -> dict[Input, np.ndarray]:
        """Run the encoder on `inputs`; returns {input: vector} (the caller decides what to cache)."""
        import torch

        tokenizer, encoder = self._load_encoder()
        device = pick_device(self.device)
        encoder.to(device)
        texts = [t for t, _ in inputs]
        pairs = None if all(p is None for _, p in inputs) else [p or "" for _, p in inputs]
        feats = tokenize_split(tokenizer, Split(texts, np.full(len(texts), -1), pairs), self.max_length)
        lengths = np.array([len(f["input_ids"]) for f in feats])
        batches = sorted_batches(lengths, batch_size)
        if progress is not None:
            embed_progress = Progress(progress.stage, len(batches), progress.callback, progress.cancel)
        out: dict[Input, np.ndarray] = {}
        with torch.inference_mode():
            for b, idx in enumerate(batches):
                if progress is not None:
                    embed_progress.check()
                batch = {k: v.to(device) for k, v in collate([feats[i] for i in idx], tokenizer).items()}
                hidden = encoder(**batch).last_hidden_state.float()
                mask = batch["attention_mask"].unsqueeze(-1).to(hidden.dtype)
                pooled = (hidden * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1e-9)
                self.encoder_calls_ += 1
                vectors = pooled.cpu().numpy()
                for row, i in enumerate(idx):
                    out[inputs[i]] = vectors[row]
                if progress is not None:
                    done = min((b + 1) * batch_size, len(inputs))
                    embed_progress.emit(b + 1, message=f"embedding {done}/{len(inputs)} texts")
        return out

    def _features(self, emb: np.ndarray) -> np.ndarray:
        x = emb.astype(np.float32, copy=True)
        if self.normalize:
            x /= np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)
        return x

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
    ) -> "EncoderHeadModel":
        import torch

        check_training_data(labels, train, val)
        warm = warm_start and self.head_ is not None
        if warm:
            check_warm_labels(getattr(self, "labels_", None), labels)
        val = usable_val(val)
        stage = stage or f"train:{self.spec}"
        progress = Progress(stage, 1, callback, cancel)
        x_train = self._features(self.embed(train, progress))
        x_val = None if val is None else self._features(self.embed(val, progress))
        progress.check()

        if not warm:
            self.mean_ = x_train.mean(axis=0)
            self.scale_ = np.maximum(x_train.std(axis=0), 1e-6).astype(np.float32)
            init = torch.Generator().manual_seed(self.seed)  # never torch's global generator
            self.head_ = _head_net(x_train.shape[1], len(labels), self.hidden, self.dropout, init)
        self.labels_ = list(labels)
        xt = torch.from_numpy((x_train - self.mean_) / self.scale_)
        yt = torch.tensor(np.array(train.labels), dtype=torch.long)
        xv = None if x_val is None else torch.from_numpy((x_val - self.mean_) / self.scale_)
        # Few epochs at a lower rate: on tweets (20 hard examples) this learns about 2/3 of them
        # for a <= 5 pt validation loss; 10x more steps learns all and loses 10-15 pt.
        epochs = self.warm_start_epochs if warm else self.epochs
        lr = self.warm_start_lr if warm else self.lr
        k, y = len(labels), np.asarray(train.labels)
        weights = None if warm else class_weights(y, k, self.class_weight, self.imbalance_ratio)
        if not warm:
            self.class_weight_ = weights
            self.selection_metric_ = resolve_selection_metric(self.selection_metric, y, k, self.imbalance_ratio)
        loss_weight = None if weights is None else torch.tensor(weights, dtype=torch.float32)
        # torch's thread count is process-wide and so not changed here: a CPU shared with other
        # busy work trains this head fastest with 1 thread (see `ea_core.process`).
        self._train_head(xt, yt, xv, None if val is None else val.labels, lr, epochs,
                         Progress(stage, epochs, callback, cancel), loss_weight, select)
        return self

    def _train_head(self, xt: Any, yt: Any, xv: Any, yv: Optional[np.ndarray], lr: float, epochs: int,
                    progress: Progress, loss_weight: Any = None, select: Optional[EpochScore] = None) -> None:
        """Mini-batch AdamW on the embeddings; keep the weights of the best validation epoch.

        Batch order and dropout masks come from one generator seeded with `seed`: the same seed
        gives the same head, and torch's global generator is neither read nor reseeded.
        """
        import torch

        from ea_core.models.seeded import set_generator

        gen = torch.Generator().manual_seed(self.seed)
        set_generator(self.head_, gen)
        try:
            self._train_epochs(xt, yt, xv, yv, lr, epochs, progress, gen, loss_weight, select)
        finally:
            set_generator(self.head_, None)

    def _train_epochs(self, xt: Any, yt: Any, xv: Any, yv: Optional[np.ndarray], lr: float, epochs: int,
                      progress: Progress, gen: Any, loss_weight: Any = None,
                      select: Optional[EpochScore] = None) -> None:
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
            val_acc = None
            if xv is not None:
                head.eval()
                with torch.inference_mode():
                    val_logits = head(xv).numpy()
                val_pred = val_logits.argmax(axis=1)
                val_acc = float((val_pred == yv).mean())
                val_score = epoch_score(yv, val_logits, metric, select)
                val_loss = cross_entropy_np(val_logits, yv)
                stop = best.update(head, val_score, val_loss)
            self.history_.append({"epoch": epoch + 1, "loss": total / seen, "val_accuracy": val_acc,
                                  "val_loss": None if xv is None else val_loss,
                                  "val_score": None if xv is None else val_score, "metric": metric})
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
        x = self._features(self.embed(split, batch_size=batch_size))
        if x.shape[1] != self.mean_.shape[0]:
            raise ModelError(f"{self.spec}: the encoder gives {x.shape[1]}-dim embeddings but the head was "
                             f"trained on {self.mean_.shape[0]}-dim ones (a different encoder, or edited weights).")
        self.head_.eval()
        with torch.inference_mode():
            logits = self.head_(torch.from_numpy((x - self.mean_) / self.scale_)).numpy()
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
        save_file(tensors, str(folder / HEAD_WEIGHTS), metadata={"encoder": self.fingerprint(), "pooling": _POOLING})
        if self.save_encoder:
            target = folder / ENCODER_SUBDIR
            if self._encoder_source is not None and Path(self._encoder_source).resolve() == target.resolve():
                return
            if target.exists():
                shutil.rmtree(target)
            tokenizer, encoder = self._load_encoder()
            encoder.save_pretrained(target)
            tokenizer.save_pretrained(target)

    def _confine(self, folder: Path, root: Path) -> None:
        """From a bundle: embeddings go to this user's cache (never a `cache_dir` the bundle names),
        the device is chosen here, and the encoder is the bundle's own copy or a catalog name /
        Hugging Face id, never a folder elsewhere on this machine."""
        self.cache_dir = None
        self.device = "auto"
        self.save_encoder = False
        if not (folder / ENCODER_SUBDIR / "config.json").is_file():
            check_named_model(self.model, folder / "model.json")

    def _load_weights(self, folder: Path) -> None:
        """The head and its normalisation, shapes checked against the settings and the labels."""
        path = folder / HEAD_WEIGHTS
        tensors = read_tensors(path, framework="pt")
        for name in ("mean", "scale"):
            if name not in tensors:
                raise damaged(path, f"tensor {name!r} is missing")
        check_tensor(path, "mean", tensors["mean"], (None,))
        dim, k = int(tensors["mean"].shape[0]), len(self.labels_)
        check_tensor(path, "scale", tensors["scale"], (dim,))
        # The layout `_head_net` builds: [dropout, linear(dim, hidden), GELU, dropout,] linear(., k)
        if self.hidden > 0:
            expected = {"1.weight": (self.hidden, dim), "1.bias": (self.hidden,), "4.weight": (k, self.hidden),
                        "4.bias": (k,)}
        else:
            expected = {"1.weight": (k, dim), "1.bias": (k,)}
        weights = {key[len("head."):]: v for key, v in tensors.items() if key.startswith("head.")}
        if set(weights) != set(expected) or set(tensors) != {"mean", "scale"} | {f"head.{n}" for n in expected}:
            raise damaged(path, f"tensors {sorted(tensors)} do not match a head with hidden={self.hidden} "
                                f"(expected {sorted(expected)} under 'head.', plus mean and scale)")
        for name, shape in expected.items():
            check_tensor(path, f"head.{name}", weights[name], shape)
        self.mean_ = tensors["mean"].float().numpy()
        self.scale_ = tensors["scale"].float().numpy()
        self.head_ = _head_net(dim, k, self.hidden, self.dropout)  # uninitialised: loaded next
        self.head_.load_state_dict({n: v.float() for n, v in weights.items()})
        self.head_.eval()
        if (folder / ENCODER_SUBDIR / "config.json").is_file():
            self._encoder_source = str((folder / ENCODER_SUBDIR).resolve())
            self._encoder = self._tokenizer = self._fingerprint = None
