"""``head:MODEL`` on texts: a frozen Hugging Face encoder (`TextEncoder`) under the shared head.

The encoder gives attention-masked mean-pooled embeddings, also cached on disk per (encoder,
max_length, texts): a rerun of the same data never loads the encoder. Cache folder: the
`cache_dir` setting, else ``$EA_CACHE_DIR/embeddings``, else ``~/.cache/ea_studio/embeddings`` (a
model loaded from a bundle always uses the latter two: a bundle never chooses where this machine
writes). Entries are plain ``.npy`` files read with ``allow_pickle=False``; deleting the folder is
always safe. Training, class weights and warm starts: `ea_core.models.head`.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import threading
from pathlib import Path
from typing import Any, Optional

import numpy as np

from ea_core.errors import ModelError
from ea_core.metrics import SELECTION_METRICS
from ea_core.models.base import check_named_model, register
from ea_core.models.catalog import is_local, resolve_model
from ea_core.models.common import CLASS_WEIGHTS, DEFAULT_IMBALANCE_RATIO, Progress, check_choice
from ea_core.models.head import ExtractorSetting, FeatureExtractor, HeadModel
from ea_core.models.hf_common import (
    collate,
    load_pretrained,
    load_tokenizer,
    pick_device,
    sorted_batches,
    tokenize_split,
)
from ea_core.models.memory import EmbeddingMemory
from ea_core.process import warn_ignored_threads
from ea_core.splits import Split

ENCODER_SUBDIR = "encoder"
_POOLING = "mean-v1"  # bump when the embedding computation changes, to invalidate caches

#: One input of a split: (text, pair or None).
Input = tuple[str, Optional[str]]


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


class TextEncoder(FeatureExtractor):
    """A frozen Hugging Face encoder: mean-pooled embeddings of texts (and text pairs)."""

    def __init__(self, model: str, *, max_length: int, device: str, cache_dir: Optional[str], use_cache: bool,
                 save_encoder: bool) -> None:
        self.model = str(model)
        self.max_length = int(max_length)
        self.device = device
        self.cache_dir = None if cache_dir is None else str(cache_dir)
        self.use_cache = bool(use_cache)
        self.save_encoder = bool(save_encoder)
        if self.max_length < 2:
            raise ModelError("head needs max_length >= 2.")
        self.calls = 0
        self.source: Optional[str] = None  # the encoder saved along with a model, used instead of MODEL
        self.encoder_: Any = None
        self._tokenizer: Any = None
        self._fingerprint: Optional[str] = None
        self._lock = threading.Lock()  # two live predictions at once load the encoder once

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state.pop("_lock", None)  # locks do not pickle; a copy gets its own
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._lock = threading.Lock()

    def _resolved(self) -> str:
        return self.source or resolve_model(self.model)

    def fingerprint(self) -> str:
        if self._fingerprint is None:
            self._fingerprint = encoder_fingerprint(self._resolved())
        return self._fingerprint

    def load_encoder(self) -> tuple[Any, Any]:
        """(tokenizer, encoder), loaded once even when two threads ask at once."""
        with self._lock:
            if self.encoder_ is None:
                from transformers import AutoModel

                resolved = self._resolved()
                name = self.model if self.source is None else self.source
                tokenizer = load_tokenizer(name, resolved)
                encoder = load_pretrained(AutoModel, name, resolved)
                encoder.eval()
                encoder.requires_grad_(False)
                self._tokenizer, self.encoder_ = tokenizer, encoder
            return self._tokenizer, self.encoder_

    def keys(self, split: Split) -> list[Input]:
        return [split.input(i) for i in range(len(split))]

    def space(self) -> str:
        return f"{self.fingerprint()}|{self.max_length}|{_POOLING}"

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

    def read_cache(self, split: Split) -> Optional[np.ndarray]:
        if not self.use_cache:
            return None
        path = self._cache_path(split)
        if path.is_file():
            try:
                cached = np.load(path, allow_pickle=False)
                if cached.ndim == 2 and cached.shape[0] == len(split):
                    return cached
            except (OSError, ValueError):
                pass  # a corrupt entry is recomputed and overwritten
        return None

    def write_cache(self, split: Split, vectors: np.ndarray) -> None:
        if not self.use_cache:
            return
        path = self._cache_path(split)
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_suffix(f".{os.getpid()}.{threading.get_ident()}.tmp.npy")
            np.save(tmp, vectors, allow_pickle=False)
            os.replace(tmp, path)
        except OSError:
            pass  # a read-only or full cache only costs speed

    def encode(self, split: Split, rows: list[int], progress: Optional[Progress], batch_size: int) -> np.ndarray:
        import torch

        inputs = [split.input(i) for i in rows]
        tokenizer, encoder = self.load_encoder()
        device = pick_device(self.device)
        if next(encoder.parameters()).device != torch.device(device):  # .to() walks every module (3 ms a call)
            encoder.to(device)
        texts = [t for t, _ in inputs]
        pairs = None if all(p is None for _, p in inputs) else [p or "" for _, p in inputs]
        feats = tokenize_split(tokenizer, Split(texts, np.full(len(texts), -1), pairs), self.max_length)
        lengths = np.array([len(f["input_ids"]) for f in feats])
        batches = sorted_batches(lengths, batch_size)
        if progress is not None:
            progress = Progress(progress.stage, len(batches), progress.callback, progress.cancel)
        out = np.zeros((0, 0), dtype=np.float32)
        with torch.inference_mode():
            for b, idx in enumerate(batches):
                if progress is not None:
                    progress.check()
                batch = {k: v.to(device) for k, v in collate([feats[i] for i in idx], tokenizer).items()}
                hidden = encoder(**batch).last_hidden_state.float()
                mask = batch["attention_mask"].unsqueeze(-1).to(hidden.dtype)
                pooled = (hidden * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1e-9)
                self.calls += 1
                vectors = pooled.cpu().numpy()
                if b == 0:
                    out = np.empty((len(inputs), vectors.shape[1]), dtype=np.float32)
                out[idx] = vectors
                if progress is not None:
                    done = min((b + 1) * batch_size, len(inputs))
                    progress.emit(b + 1, message=f"embedding {done}/{len(inputs)} texts")
        return out

    def metadata(self) -> dict[str, str]:
        return {"encoder": self.fingerprint(), "pooling": _POOLING}

    def save(self, folder: Path) -> None:
        if not self.save_encoder:
            return
        target = folder / ENCODER_SUBDIR
        if self.source is not None and Path(self.source).resolve() == target.resolve():
            return
        if target.exists():
            shutil.rmtree(target)
        tokenizer, encoder = self.load_encoder()
        encoder.save_pretrained(target)
        tokenizer.save_pretrained(target)

    def load(self, folder: Path) -> None:
        if (folder / ENCODER_SUBDIR / "config.json").is_file():
            self.source = str((folder / ENCODER_SUBDIR).resolve())
            self.encoder_ = self._tokenizer = self._fingerprint = None

    def confine(self, folder: Path) -> None:
        """From a bundle: embeddings go to this user's cache (never a `cache_dir` the bundle names),
        the device is chosen here, and the encoder is the bundle's own copy or a catalog name /
        Hugging Face id, never a folder elsewhere on this machine."""
        self.cache_dir = None
        self.device = "auto"
        self.save_encoder = False
        if not (folder / ENCODER_SUBDIR / "config.json").is_file():
            check_named_model(self.model, folder / "model.json")


@register
class EncoderHeadModel(HeadModel):
    """Frozen encoder embeddings (remembered, cached on disk) + a softmax head with early stopping."""

    kind = "head"

    model = ExtractorSetting()
    max_length = ExtractorSetting()
    device = ExtractorSetting()
    cache_dir = ExtractorSetting()
    use_cache = ExtractorSetting()
    save_encoder = ExtractorSetting()
    extractor: TextEncoder

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
        memory: Optional[EmbeddingMemory] = None,
    ) -> None:
        self.extractor = TextEncoder(model, max_length=max_length, device=device, cache_dir=cache_dir,
                                     use_cache=use_cache, save_encoder=save_encoder)
        self.seed = int(seed)
        self.normalize = bool(normalize)
        self.class_weight = check_choice("class_weight", str(class_weight), CLASS_WEIGHTS)
        self.imbalance_ratio = float(imbalance_ratio)
        self.selection_metric = check_choice("selection_metric", str(selection_metric), SELECTION_METRICS)
        warn_ignored_threads(f"head:{self.model}", threads)
        self._set_head(embed_batch_size=embed_batch_size, hidden=hidden, dropout=dropout, epochs=epochs, lr=lr,
                       batch_size=batch_size, weight_decay=weight_decay, patience=patience,
                       warm_start_epochs=warm_start_epochs, warm_start_lr=warm_start_lr, threads=threads,
                       memory=memory)

    @property
    def encoder_calls_(self) -> int:
        """Encoder forward passes (batches) run by this model: lets tests and UIs see cache hits."""
        return self.extractor.calls

    @property
    def _encoder(self) -> Any:
        return self.extractor.encoder_  # None until the encoder is first needed

    def _load_encoder(self) -> tuple[Any, Any]:
        return self.extractor.load_encoder()

    def fingerprint(self) -> str:
        return self.extractor.fingerprint()
