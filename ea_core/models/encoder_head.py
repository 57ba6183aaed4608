"""``head:MODEL`` — a frozen pretrained encoder plus a small trained softmax head.

The fast CPU mode: the encoder runs once per text, never backwards. Attention-masked mean-pooled
embeddings are cached on disk per (encoder, max_length, texts), so tuning, retraining, warm
starts and repeated predictions on the same data never run the encoder again; a per-text memory
cache also serves subsets of already-embedded data. The head (linear, or one hidden layer) is
trained in seconds with AdamW and early stopping on validation accuracy.

Cache folder: the `cache_dir` setting, else ``$EA_CACHE_DIR/embeddings``, else
``~/.cache/ea_studio/embeddings``. Entries are plain ``.npy`` files read with
``allow_pickle=False``; deleting the folder is always safe.
"""

from __future__ import annotations

import hashlib
import os
import shutil
from pathlib import Path
from typing import Any, Optional

import numpy as np

from ea_core.errors import ModelError
from ea_core.events import CancelToken, ProgressCallback
from ea_core.models.base import SmallModel, register
from ea_core.models.catalog import is_local, resolve_model
from ea_core.models.common import (
    BestWeights,
    Progress,
    check_training_data,
    check_warm_labels,
    cross_entropy_np,
    softmax_np,
    usable_val,
)
from ea_core.models.hf_common import (
    collate,
    configure_threads,
    load_pretrained,
    load_tokenizer,
    pick_device,
    quiet_transformers,
    sorted_batches,
    tokenize_split,
)
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


# Embeddings already computed in this process, per (encoder, max_length): lets a new model on the
# same encoder (another fold, a retrain, a subset of the data) skip the encoder for known texts.
_MEMORY: dict[str, dict[tuple[str, Optional[str]], np.ndarray]] = {}
_MEMORY_MAX_VECTORS = 1_000_000


def _memory_for(key: str) -> dict[tuple[str, Optional[str]], np.ndarray]:
    if key not in _MEMORY and sum(len(m) for m in _MEMORY.values()) > _MEMORY_MAX_VECTORS:
        _MEMORY.clear()  # crude but bounded: a new encoder evicts the others
    return _MEMORY.setdefault(key, {})


def clear_memory_cache() -> None:
    """Forget the in-process embeddings (the disk cache is untouched)."""
    _MEMORY.clear()


def _head_net(dim: int, k: int, hidden: int, dropout: float) -> Any:
    import torch.nn as nn

    if hidden > 0:
        return nn.Sequential(
            nn.Dropout(dropout), nn.Linear(dim, hidden), nn.GELU(), nn.Dropout(dropout), nn.Linear(hidden, k)
        )
    return nn.Sequential(nn.Dropout(dropout), nn.Linear(dim, k))


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
        self.threads = threads
        self.cache_dir = None if cache_dir is None else str(cache_dir)
        self.use_cache = bool(use_cache)
        self.save_encoder = bool(save_encoder)
        if self.epochs < 1 or self.batch_size < 1 or self.max_length < 2 or self.lr <= 0:
            raise ModelError("head needs epochs >= 1, batch_size >= 1, max_length >= 2 and lr > 0.")
        self.head_: Any = None
        self.mean_: Optional[np.ndarray] = None
        self.scale_: Optional[np.ndarray] = None
        self.history_: list[dict[str, Any]] = []
        self.best_val_accuracy_: Optional[float] = None
        #: Encoder forward passes (batches) run by this instance: lets tests and UIs see cache hits.
        self.encoder_calls_ = 0
        self._encoder_source: Optional[str] = None  # overrides MODEL when the encoder was saved along
        self._encoder: Any = None
        self._tokenizer: Any = None
        self._fingerprint: Optional[str] = None

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
        }

    # ------------------------------------------------------------------ embeddings

    def _resolved(self) -> str:
        return self._encoder_source or resolve_model(self.model)

    def fingerprint(self) -> str:
        if self._fingerprint is None:
            self._fingerprint = encoder_fingerprint(self._resolved())
        return self._fingerprint

    def _load_encoder(self) -> None:
        if self._encoder is not None:
            return
        from transformers import AutoModel

        resolved = self._resolved()
        name = self.model if self._encoder_source is None else self._encoder_source
        self._tokenizer = load_tokenizer(name, resolved)
        self._encoder = load_pretrained(AutoModel, name, resolved)
        self._encoder.eval()
        self._encoder.requires_grad_(False)

    @property
    def _memory(self) -> dict[tuple[str, Optional[str]], np.ndarray]:
        return _memory_for(f"{self.fingerprint()}|{self.max_length}|{_POOLING}")

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

        Small calls (fewer than `MIN_CACHED_INPUTS`, e.g. one input routed live) skip both caches:
        caching them would only add disk writes and grow memory in a long-running app.
        """
        if len(split) < MIN_CACHED_INPUTS:
            keys = [split.input(i) for i in range(len(split))]
            fresh: dict[tuple[str, Optional[str]], np.ndarray] = {}
            missing = [k for k in dict.fromkeys(keys) if k not in self._memory]
            if missing:
                self._encode(missing, None, batch_size or self.embed_batch_size, into=fresh)
            return np.stack([self._memory.get(k, fresh.get(k)) for k in keys]).astype(np.float32, copy=False)
        path = self._cache_path(split) if self.use_cache else None
        if path is not None and path.is_file():
            try:
                cached = np.load(path, allow_pickle=False)
                if cached.ndim == 2 and cached.shape[0] == len(split):
                    memory = self._memory
                    for i in range(len(split)):
                        memory.setdefault(split.input(i), cached[i])
                    return cached
            except (OSError, ValueError):
                pass  # a corrupt entry is recomputed and overwritten
        keys = [split.input(i) for i in range(len(split))]
        missing = [key for key in dict.fromkeys(keys) if key not in self._memory]
        if missing:
            self._encode(missing, progress, batch_size or self.embed_batch_size)
        out = np.stack([self._memory[key] for key in keys]).astype(np.float32, copy=False)
        if path is not None:
            try:
                path.parent.mkdir(parents=True, exist_ok=True)
                tmp = path.with_suffix(f".{os.getpid()}.tmp.npy")
                np.save(tmp, out, allow_pickle=False)
                os.replace(tmp, path)
            except OSError:
                pass  # a read-only or full cache only costs speed
        return out

    def _encode(self, inputs: list[tuple[str, Optional[str]]], progress: Optional[Progress], batch_size: int,
                into: Optional[dict[tuple[str, Optional[str]], np.ndarray]] = None) -> None:
        """Embed `inputs` into `into` (default: the in-process cache shared by this encoder)."""
        import torch

        memory = self._memory if into is None else into

        self._load_encoder()
        configure_threads(self.threads)
        device = pick_device(self.device)
        self._encoder.to(device)
        texts = [t for t, _ in inputs]
        pairs = None if all(p is None for _, p in inputs) else [p or "" for _, p in inputs]
        feats = tokenize_split(self._tokenizer, Split(texts, np.full(len(texts), -1), pairs), self.max_length)
        lengths = np.array([len(f["input_ids"]) for f in feats])
        batches = sorted_batches(lengths, batch_size)
        if progress is not None:
            embed_progress = Progress(progress.stage, len(batches), progress.callback, progress.cancel)
        with torch.inference_mode():
            for b, idx in enumerate(batches):
                if progress is not None:
                    embed_progress.check()
                batch = {k: v.to(device) for k, v in collate([feats[i] for i in idx], self._tokenizer).items()}
                hidden = self._encoder(**batch).last_hidden_state.float()
                mask = batch["attention_mask"].unsqueeze(-1).to(hidden.dtype)
                pooled = (hidden * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1e-9)
                self.encoder_calls_ += 1
                vectors = pooled.cpu().numpy()
                for row, i in enumerate(idx):
                    memory[inputs[i]] = vectors[row]
                if progress is not None:
                    done = min((b + 1) * batch_size, len(inputs))
                    embed_progress.emit(b + 1, message=f"embedding {done}/{len(inputs)} texts")

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

        torch.manual_seed(self.seed)
        if not warm:
            self.mean_ = x_train.mean(axis=0)
            self.scale_ = np.maximum(x_train.std(axis=0), 1e-6).astype(np.float32)
            self.head_ = _head_net(x_train.shape[1], len(labels), self.hidden, self.dropout)
        self.labels_ = list(labels)
        xt = torch.from_numpy((x_train - self.mean_) / self.scale_)
        yt = torch.tensor(np.array(train.labels), dtype=torch.long)
        xv = None if x_val is None else torch.from_numpy((x_val - self.mean_) / self.scale_)
        # Few epochs at a lower rate: on tweets (20 hard examples) this learns about 2/3 of them
        # for a <= 5 pt validation loss; 10x more steps learns all and loses 10-15 pt.
        epochs = self.warm_start_epochs if warm else self.epochs
        lr = self.warm_start_lr if warm else self.lr
        threads = torch.get_num_threads()
        torch.set_num_threads(1)  # a small head gains nothing from threads; they only add sync cost
        try:
            self._train_head(xt, yt, xv, None if val is None else val.labels, lr, epochs,
                             Progress(stage, epochs, callback, cancel))
        finally:
            torch.set_num_threads(threads)
        return self

    def _train_head(self, xt: Any, yt: Any, xv: Any, yv: Optional[np.ndarray], lr: float, epochs: int,
                    progress: Progress) -> None:
        """Mini-batch AdamW on the embeddings; keep the weights of the best validation epoch."""
        import torch
        import torch.nn.functional as F

        head = self.head_
        optimizer = torch.optim.AdamW(head.parameters(), lr=lr, weight_decay=self.weight_decay)
        gen = torch.Generator().manual_seed(self.seed)
        best = BestWeights(self.patience)
        stop = False
        self.history_ = []
        for epoch in range(epochs):
            progress.check()
            head.train()
            total, seen = 0.0, 0
            for idx in torch.randperm(len(xt), generator=gen).split(self.batch_size):
                loss = F.cross_entropy(head(xt[idx]), yt[idx])
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
                val_acc = float((val_logits.argmax(axis=1) == yv).mean())
                val_loss = cross_entropy_np(val_logits, yv)
                stop = best.update(head, val_acc, val_loss)
            self.history_.append({"epoch": epoch + 1, "loss": total / seen, "val_accuracy": val_acc,
                                  "val_loss": None if xv is None else val_loss})
            progress.emit(epoch + 1, loss=total / seen, val_accuracy=val_acc, total=epoch + 1 if stop else None,
                          message="early stop" if stop else "training head")
            if stop:
                break
        self.best_val_accuracy_ = best.restore(head)
        head.eval()

    # ------------------------------------------------------------------ inference

    def predict_proba(self, split: Split, *, batch_size: Optional[int] = None) -> np.ndarray:
        import torch

        if self.head_ is None:
            raise ModelError(f"{self.spec} is not trained yet: call fit() or load_model() first.")
        if len(split) == 0:
            return np.zeros((0, len(self.labels_)))
        x = self._features(self.embed(split, batch_size=batch_size))
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
            self._load_encoder()
            if target.exists():
                shutil.rmtree(target)
            with quiet_transformers():
                self._encoder.save_pretrained(target)
                self._tokenizer.save_pretrained(target)

    def _load_weights(self, folder: Path) -> None:
        from safetensors import safe_open

        tensors: dict[str, Any] = {}
        with safe_open(str(folder / HEAD_WEIGHTS), framework="pt") as fh:
            for key in fh.keys():
                tensors[key] = fh.get_tensor(key)
        weights = {k[len("head."):]: v for k, v in tensors.items() if k.startswith("head.")}
        self.mean_ = tensors["mean"].numpy()
        self.scale_ = tensors["scale"].numpy()
        last = max((k for k in weights if k.endswith("weight")), key=lambda k: int(k.split(".")[0]))
        k, dim = weights[last].shape[0], self.mean_.shape[0]
        self.head_ = _head_net(dim, k, self.hidden, self.dropout)
        self.head_.load_state_dict(weights)
        self.head_.eval()
        if (folder / ENCODER_SUBDIR / "config.json").is_file():
            self._encoder_source = str((folder / ENCODER_SUBDIR).resolve())
            self._encoder = self._tokenizer = self._fingerprint = None
