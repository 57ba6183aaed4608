"""Image small models: ``head:ARCH`` (frozen CNN + trained head) and ``finetune:ARCH`` (whole CNN).

The user-facing specs are the text ones (``head:efficientnet_lite0``, ``finetune:resnet34``); when
ARCH is an image architecture (see `ea_core.models.vision_backbones.ARCHITECTURES`),
`ea_core.models.make_model` builds these classes, registered as the kinds ``image_head`` and
``image_finetune`` in ``model.json``.

* `ImageHeadModel` — the fast CPU mode. The backbone runs once per image, batched, without
  autograd, channels-last on CPU; the pooled features are kept in memory keyed by the images'
  bytes, one vector per image (a bounded LRU shared by the models of one process), so retraining, warm starts,
  out-of-fold heads and predicting the training split never run the backbone again. The head
  (linear softmax by default, or one hidden layer) is trained with AdamW and early stopping on
  validation accuracy, with its initial weights, batch order and dropout from a seeded generator.
* `ImageFineTuneModel` — every weight trained: AdamW with cosine decay, settable augmentations
  (random resized crop, horizontal flip: off by default, wrong for digits and text), early
  stopping on validation accuracy keeping the best weights, batched channels-last evaluation.

Images are decoded and resized (bilinear) to ``image_size`` by `ea_core.imaging.to_array`, then
normalised with the architecture's mean/std. Both save as safetensors + JSON; the ``pretrained``
setting saved is what was actually used (True: ImageNet weights; False: random init), so a model
trained offline on a random backbone never reloads onto ImageNet weights elsewhere. A head whose
backbone is not pretrained saves the backbone too (random weights cannot be fetched again).
"""

from __future__ import annotations

import contextlib
import hashlib
import math
import threading
import uuid
from collections import OrderedDict
from pathlib import Path
from typing import Any, Iterator, Optional

import numpy as np

from ea_core.errors import ModelError
from ea_core.events import CancelToken, ProgressCallback
from ea_core.imaging import to_array
from ea_core.models.base import SmallModel, check_tensor, damaged, read_tensors, register
from ea_core.models.common import (
    BestWeights,
    EpochScore,
    Progress,
    check_training_data,
    check_warm_labels,
    class_weights,
    cross_entropy_np,
    epoch_score,
    softmax_np,
    usable_val,
)
from ea_core.models.encoder_head import MIN_CACHED_INPUTS, SHARED_MEMORY, _assemble
from ea_core.models.hf_common import pick_device
from ea_core.models.vision_backbones import ARCHITECTURES, architecture, build_backbone, build_net, feature_dim
from ea_core.splits import Split

HEAD_WEIGHTS = "head.safetensors"
BACKBONE_WEIGHTS = "backbone.safetensors"
NET_WEIGHTS = "model.safetensors"
_FEATURES = "pool-v1"  # bump when the feature computation changes

#: Values of the ``augment`` setting: none, or ``+``-joined parts ``crop`` (random resized crop,
#: scale 0.7-1, aspect 3/4-4/3) and ``flip`` (horizontal; wrong for digits, letters, text).
AUGMENT_PARTS = ("crop", "flip")
#: ``class_weight`` values: None (plain cross-entropy) or ``balanced`` (n / (K * count)).
CLASS_WEIGHTS = (None, "balanced")


def default_image_size(arch: str, pretrained: Optional[bool] = None) -> int:
    """The input size used when ``image_size`` is not set.

    96 px for the pretrained CNNs: on the 8x8 digits EfficientNet-Lite0's frozen features reach
    the same test accuracy at 96 px as at 224 px at ~5x the speed (bench/bench_vision.py); pass
    ``image_size=224`` for photos where fine detail matters. ``tiny_cnn``: 32 px.
    """
    a = ARCHITECTURES[arch]
    return 32 if a.source == "none" else DEFAULT_PRETRAINED_SIZE


DEFAULT_PRETRAINED_SIZE = 96


def _parse_augment(value: Optional[str]) -> tuple[str, ...]:
    text = "none" if value in (None, "", False) else str(value).strip().lower()
    if text == "none":
        return ()
    parts = tuple(p.strip() for p in text.replace(",", "+").split("+") if p.strip())
    bad = [p for p in parts if p not in AUGMENT_PARTS]
    if bad:
        raise ModelError(f"augment={value!r}: unknown part(s) {bad}; use 'none' or a '+'-joined choice of "
                         f"{', '.join(AUGMENT_PARTS)} (e.g. 'crop', 'crop+flip').")
    return parts


def _check_common(arch: str, image_size: Optional[int], width: int, class_weight: Optional[str]) -> None:
    a = architecture(arch)
    if a is None:
        raise ModelError(f"Unknown image architecture {arch!r}; known: {', '.join(ARCHITECTURES)}.")
    if image_size is not None and not (a.min_size <= int(image_size) <= 1024):
        raise ModelError(f"image_size={image_size} is out of range for {arch}: use {a.min_size}..1024 pixels.")
    if int(width) < 1:
        raise ModelError("width must be >= 1.")
    if class_weight not in CLASS_WEIGHTS:
        raise ModelError(f"class_weight={class_weight!r}: use None or 'balanced'.")


def _class_weights(y: np.ndarray, k: int, mode: Optional[str]) -> Any:
    """The loss weights as a tensor: None, or scikit-learn's balanced weights (`class_weights`)."""
    import torch

    if mode is None:
        return None
    return torch.tensor(class_weights(y, k, "balanced"), dtype=torch.float32)


@contextlib.contextmanager
def _seeded(seed: int) -> Iterator[None]:
    """torch's global CPU generator seeded with `seed` inside, the caller's state put back after
    (torchvision's initialisations and dropout draw from it)."""
    import torch

    with torch.random.fork_rng(devices=[]):
        torch.random.default_generator.manual_seed(int(seed))
        yield


def _device(name: str) -> Any:
    return pick_device(name)


def _normalise(batch_u8: Any, mean: Any, std: Any, channels_last: bool) -> Any:
    """uint8 (N,S,S,3) tensor -> float (N,3,S,S), normalised, channels-last when asked."""
    import torch

    x = batch_u8.permute(0, 3, 1, 2).float().div_(255.0)
    x = (x - mean) / std
    return x.contiguous(memory_format=torch.channels_last if channels_last else torch.contiguous_format)


def _pixels(split: Split, size: int) -> np.ndarray:
    if not split.is_image:
        raise ModelError("This is an image model but the data holds texts; pick a text model "
                         "(tfidf, head:minilm, ...) or load image data.")
    return to_array(split.images, size, split.texts)


def _content_key(split: Split) -> str:
    h = hashlib.sha256()
    for data in split.images or []:
        h.update(hashlib.sha256(data).digest())
    return h.hexdigest()


def _batched_forward(module: Any, pixels: np.ndarray, mean: Any, std: Any, batch_size: int, device: Any,
                     channels_last: bool, progress: Optional[Progress] = None) -> np.ndarray:
    """`module` over uint8 pixels, in batches, without autograd; float32 numpy output."""
    import torch

    module.eval()
    out = []
    with torch.inference_mode():
        for i, start in enumerate(range(0, len(pixels), batch_size)):
            if progress is not None:
                progress.check()
            x = _normalise(torch.from_numpy(pixels[start:start + batch_size]), mean, std, channels_last)
            out.append(module(x.to(device)).float().cpu().numpy())
            if progress is not None:
                progress.emit(min(start + batch_size, len(pixels)), message="extracting features")
    return np.concatenate(out).astype(np.float32, copy=False)




class _ImageModel(SmallModel):
    """What both image kinds share: settings checks, pixels, normalisation, the spec."""

    user_kind = ""

    model: str
    image_size: Optional[int]
    pretrained: Optional[bool]
    width: int
    channels_last: bool
    device: str

    @property
    def spec(self) -> str:
        return f"{self.user_kind}:{self.model}"

    @property
    def arch(self) -> Any:
        return ARCHITECTURES[self.model]

    @property
    def size(self) -> int:
        return int(self.image_size) if self.image_size is not None else default_image_size(self.model, self.pretrained)

    def _mean_std(self, device: Any) -> tuple[Any, Any]:
        import torch

        a = self.arch
        return (torch.tensor(a.mean, dtype=torch.float32).view(1, 3, 1, 1).to(device),
                torch.tensor(a.std, dtype=torch.float32).view(1, 3, 1, 1).to(device))

    def _warn(self, progress: Progress, note: Optional[str]) -> None:
        if note:
            progress.emit(0, total=0, message=f"warning: {note}")

    def _confine(self, folder: Path, root: Path) -> None:
        """From a bundle: the device is chosen here. MODEL is always an architecture name (checked
        in the constructor), never a path, so nothing else can point outside the bundle."""
        self.device = "auto"


# ================================================================================ head


@register
class ImageHeadModel(_ImageModel):
    """Frozen CNN features (computed once, kept in memory) + a softmax head with early stopping."""

    kind = "image_head"
    user_kind = "head"

    def __init__(
        self,
        model: str = "efficientnet_lite0",
        *,
        image_size: Optional[int] = None,
        pretrained: Optional[bool] = None,
        width: int = 16,
        embed_batch_size: int = 64,
        channels_last: bool = True,
        hidden: int = 0,
        dropout: float = 0.0,
        epochs: int = 100,
        lr: float = 1e-3,
        batch_size: int = 64,
        weight_decay: float = 1e-2,
        patience: int = 10,
        seed: int = 0,
        class_weight: Optional[str] = None,
        warm_start_epochs: int = 10,
        warm_start_lr: float = 3e-4,
        device: str = "auto",
        threads: Optional[int] = None,
    ) -> None:
        self.model = str(model).strip().lower()
        _check_common(self.model, image_size, width, class_weight)
        self.image_size = None if image_size is None else int(image_size)
        self.pretrained = None if pretrained is None else bool(pretrained)
        self.width = int(width)
        self.embed_batch_size = int(embed_batch_size)
        self.channels_last = bool(channels_last)
        self.hidden = int(hidden)
        self.dropout = float(dropout)
        self.epochs = int(epochs)
        self.lr = float(lr)
        self.batch_size = int(batch_size)
        self.weight_decay = float(weight_decay)
        self.patience = int(patience)
        self.seed = int(seed)
        self.class_weight = class_weight
        self.warm_start_epochs = int(warm_start_epochs)
        self.warm_start_lr = float(warm_start_lr)
        self.device = device
        self.threads = threads
        if self.epochs < 1 or self.batch_size < 1 or self.embed_batch_size < 1 or self.lr <= 0 or self.hidden < 0:
            raise ModelError("head needs epochs >= 1, batch_size >= 1, embed_batch_size >= 1, hidden >= 0 and lr > 0.")
        if not 0.0 <= self.dropout < 1.0:
            raise ModelError("dropout must be in [0, 1).")
        self.head_: Any = None
        self.mean_: Optional[np.ndarray] = None
        self.scale_: Optional[np.ndarray] = None
        self.history_: list[dict[str, Any]] = []
        self.best_val_accuracy_: Optional[float] = None
        #: Backbone forward passes (batches) run by this instance: lets tests and UIs see cache hits.
        self.backbone_calls_ = 0
        self._backbone: Any = None
        self._backbone_note: Optional[str] = None
        self._backbone_id = ""
        self._lock = threading.Lock()
        #: The in-process feature memory; None means the process's shared `EmbeddingMemory`.
        self.memory: Any = None

    def get_config(self) -> dict[str, Any]:
        return {
            "model": self.model, "image_size": self.image_size, "pretrained": self.pretrained, "width": self.width,
            "embed_batch_size": self.embed_batch_size, "channels_last": self.channels_last, "hidden": self.hidden,
            "dropout": self.dropout, "epochs": self.epochs, "lr": self.lr, "batch_size": self.batch_size,
            "weight_decay": self.weight_decay, "patience": self.patience, "seed": self.seed,
            "class_weight": self.class_weight, "warm_start_epochs": self.warm_start_epochs,
            "warm_start_lr": self.warm_start_lr, "device": self.device, "threads": self.threads,
        }

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state.pop("_lock", None)
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._lock = threading.Lock()

    # ------------------------------------------------------------------ features

    def _load_backbone(self) -> Any:
        """The frozen backbone, built once; `pretrained` becomes what was actually used."""
        with self._lock:
            if self._backbone is None:
                import torch

                with _seeded(self.seed):
                    backbone, loaded, note = build_backbone(self.model, self.size, self.pretrained, self.width)
                self.pretrained = loaded if self.arch.source != "none" else False
                self._backbone_note = note
                backbone.eval().requires_grad_(False)
                if self.channels_last:
                    backbone = backbone.to(memory_format=torch.channels_last)
                self._backbone = backbone
                self._backbone_id = uuid.uuid4().hex
            return self._backbone

    def _space(self) -> str:
        """Which features are interchangeable: architecture, weights, input size, pooling."""
        # random weights are only interchangeable with this very backbone object
        weights = "imagenet" if self.pretrained else f"random:{self._backbone_id}"
        return f"{self.model}|{weights}|{self.size}|{_FEATURES}"

    def features(self, split: Split, progress: Optional[Progress] = None,
                 batch_size: Optional[int] = None) -> np.ndarray:
        """Pooled backbone features (n, dim) float32. Each image's vector is kept in the in-process
        memory under its bytes' SHA-256, so another fold, a subset or a warm start on the same
        images skips the backbone (the memory is `EmbeddingMemory`, shared with the text heads)."""
        if not split.is_image:
            _pixels(split, self.size)  # the ModelError that says to pick a text model
        memory = SHARED_MEMORY if self.memory is None else self.memory
        space = self._space()
        keys = [hashlib.sha256(data).hexdigest() for data in split.images or []]
        known = memory.get_many(space, keys)
        todo = {key: i for i, key in enumerate(keys) if key not in known}  # one row per distinct image
        fresh: dict[str, np.ndarray] = {}
        if todo:
            backbone = self._load_backbone()
            device = _device(self.device)
            backbone.to(device)
            mean, std = self._mean_std(device)
            bs = batch_size or self.embed_batch_size
            part = split.subset(list(todo.values()))
            feats = _batched_forward(backbone, _pixels(part, self.size), mean, std, bs, device,
                                     self.channels_last and device.type == "cpu", progress)
            self.backbone_calls_ += math.ceil(len(part) / bs)
            fresh = dict(zip(todo, feats))
            if len(split) >= MIN_CACHED_INPUTS:  # one image routed live is not worth remembering
                memory.put_many(space, fresh)
        if not keys:
            return np.zeros((0, feature_dim(self.model, self.width)), dtype=np.float32)
        return _assemble(keys, known, fresh)

    # ------------------------------------------------------------------ training

    def _head_net(self, dim: int, k: int, generator: Any = None) -> Any:
        import torch.nn as nn

        from ea_core.models.seeded import SeededDropout, init_linear, uninitialised_linear

        if self.hidden > 0:
            layers = [SeededDropout(self.dropout), uninitialised_linear(dim, self.hidden), nn.GELU(),
                      SeededDropout(self.dropout), uninitialised_linear(self.hidden, k)]
        else:
            layers = [SeededDropout(self.dropout), uninitialised_linear(dim, k)]
        net = nn.Sequential(*layers)
        if generator is not None:
            for layer in net:
                if isinstance(layer, nn.Linear):
                    init_linear(layer, generator)
        return net

    def fit(self, train: Split, val: Optional[Split], labels: list[str], *,
            callback: Optional[ProgressCallback] = None, cancel: Optional[CancelToken] = None,
            warm_start: bool = False, stage: Optional[str] = None,
            select: Optional[EpochScore] = None) -> "ImageHeadModel":
        import torch

        from ea_core.models.seeded import set_generator

        check_training_data(labels, train, val)
        warm = warm_start and self.head_ is not None
        if warm:
            check_warm_labels(getattr(self, "labels_", None), labels)
        val = usable_val(val)
        name = stage or f"train:{self.spec}"
        feats = Progress(f"{name}:features", len(train), callback, cancel)
        self._load_backbone()
        self._warn(feats, self._backbone_note)
        xt = self.features(train, feats)
        xv = None if val is None else self.features(val)
        if not warm:
            self.mean_ = xt.mean(axis=0)
            self.scale_ = xt.std(axis=0) + 1e-6
        self.labels_ = list(labels)
        gen = torch.Generator().manual_seed(self.seed)
        if not warm:
            self.head_ = self._head_net(xt.shape[1], len(labels), gen)
        epochs = self.warm_start_epochs if warm else self.epochs
        lr = self.warm_start_lr if warm else self.lr
        progress = Progress(name, epochs, callback, cancel)
        std = lambda x: torch.from_numpy(((x - self.mean_) / self.scale_).astype(np.float32))  # noqa: E731
        set_generator(self.head_, gen)
        try:
            self._train(std(xt), torch.from_numpy(np.asarray(train.labels)), None if xv is None else std(xv),
                        None if val is None else np.asarray(val.labels), lr, epochs, progress, gen, select)
        finally:
            set_generator(self.head_, None)
        return self

    def _train(self, xt: Any, yt: Any, xv: Any, yv: Optional[np.ndarray], lr: float, epochs: int,
               progress: Progress, gen: Any, select: Optional[EpochScore] = None) -> None:
        import torch
        import torch.nn.functional as F

        head = self.head_
        weight = _class_weights(yt.numpy(), len(self.labels_), self.class_weight)
        optimizer = torch.optim.AdamW(head.parameters(), lr=lr, weight_decay=self.weight_decay)
        best = BestWeights(self.patience)
        self.history_ = []
        for epoch in range(epochs):
            progress.check()
            head.train()
            total, seen = 0.0, 0
            for idx in torch.randperm(len(xt), generator=gen).split(self.batch_size):
                loss = F.cross_entropy(head(xt[idx]), yt[idx], weight=weight)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                total += float(loss.detach()) * len(idx)
                seen += len(idx)
            val_acc = val_loss = None
            stop = False
            if xv is not None:
                head.eval()
                with torch.inference_mode():
                    logits = head(xv).numpy()
                val_acc = float((logits.argmax(axis=1) == yv).mean())
                val_loss = cross_entropy_np(logits, yv)
                stop = best.update(head, epoch_score(yv, logits, "accuracy", select), val_loss)
            self.history_.append({"epoch": epoch + 1, "loss": total / seen, "val_accuracy": val_acc,
                                  "val_loss": val_loss})
            progress.emit(epoch + 1, loss=total / seen, val_accuracy=val_acc, total=epoch + 1 if stop else None,
                          message="early stop" if stop else "training head")
            if stop:
                break
        self.best_val_accuracy_ = best.restore(head)
        head.eval()

    def predict_proba(self, split: Split, *, batch_size: Optional[int] = None) -> np.ndarray:
        import torch

        if self.head_ is None:
            raise ModelError(f"{self.spec} is not trained yet: call fit() or load_model() first.")
        if len(split) == 0:
            return np.zeros((0, len(self.labels_)))
        x = self.features(split, batch_size=batch_size)
        self.head_.eval()
        with torch.inference_mode():
            logits = self.head_(torch.from_numpy(((x - self.mean_) / self.scale_).astype(np.float32))).numpy()
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
        save_file(tensors, str(folder / HEAD_WEIGHTS), metadata={"features": _FEATURES})
        stale = folder / BACKBONE_WEIGHTS
        if not self.pretrained:  # a random backbone cannot be fetched again: keep it
            backbone = self._load_backbone()
            save_file({k: v.detach().cpu().contiguous() for k, v in backbone.state_dict().items()}, str(stale))
        elif stale.exists():
            stale.unlink()

    def _load_weights(self, folder: Path) -> None:
        path = folder / HEAD_WEIGHTS
        tensors = read_tensors(path, framework="pt")
        for name in ("mean", "scale"):
            if name not in tensors:
                raise damaged(path, f"tensor {name!r} is missing")
        dim, k = feature_dim(self.model, self.width), len(self.labels_)
        check_tensor(path, "mean", tensors["mean"], (dim,))
        check_tensor(path, "scale", tensors["scale"], (dim,))
        if self.hidden > 0:
            expected = {"1.weight": (self.hidden, dim), "1.bias": (self.hidden,), "4.weight": (k, self.hidden),
                        "4.bias": (k,)}
        else:
            expected = {"1.weight": (k, dim), "1.bias": (k,)}
        if set(tensors) != {"mean", "scale"} | {f"head.{n}" for n in expected}:
            raise damaged(path, f"tensors {sorted(tensors)} do not match a head with hidden={self.hidden} over "
                                f"{dim}-dim {self.model} features")
        for name, shape in expected.items():
            check_tensor(path, f"head.{name}", tensors[f"head.{name}"], shape)
        if float(tensors["scale"].min()) <= 0:
            raise damaged(path, "tensor 'scale' must be positive")
        self.mean_ = tensors["mean"].float().numpy()
        self.scale_ = tensors["scale"].float().numpy()
        self.head_ = self._head_net(dim, k)
        self.head_.load_state_dict({n: tensors[f"head.{n}"].float() for n in expected})
        self.head_.eval()
        bb = folder / BACKBONE_WEIGHTS
        if not self.pretrained:
            if not bb.is_file():
                raise damaged(folder / "model.json", f"a head over a random backbone needs {BACKBONE_WEIGHTS}")
            self._backbone = _load_net_weights(bb, lambda: build_backbone(self.model, self.size, False, self.width)[0])
            self._backbone.eval().requires_grad_(False)
            self._backbone_id = uuid.uuid4().hex
            if self.channels_last:
                import torch

                self._backbone = self._backbone.to(memory_format=torch.channels_last)


def _load_net_weights(path: Path, build: Any) -> Any:
    """A module from `build()` (random init, caller's RNG untouched) with the weights of `path`,
    every tensor's name, shape and finiteness checked first (ModelError naming the file)."""
    import torch

    tensors = read_tensors(path, framework="pt")
    with torch.random.fork_rng(devices=[]):
        module = build()
    expected = module.state_dict()
    if set(tensors) != set(expected):
        missing, extra = sorted(set(expected) - set(tensors))[:3], sorted(set(tensors) - set(expected))[:3]
        raise damaged(path, f"tensor names do not match the architecture (missing {missing}, unexpected {extra})")
    for name, ref in expected.items():
        value = tensors[name]
        if ref.dtype.is_floating_point:
            check_tensor(path, name, value, tuple(ref.shape))
        elif tuple(value.shape) != tuple(ref.shape) or value.dtype.is_floating_point:
            raise damaged(path, f"tensor {name!r} has shape {tuple(value.shape)} / dtype {value.dtype}")
    module.load_state_dict({n: t.to(expected[n].dtype) for n, t in tensors.items()})
    return module


# ================================================================================ finetune


@register
class ImageFineTuneModel(_ImageModel):
    """Every weight of a CNN trained on the task, with augmentations and early stopping."""

    kind = "image_finetune"
    user_kind = "finetune"

    def __init__(
        self,
        model: str = "efficientnet_lite0",
        *,
        image_size: Optional[int] = None,
        pretrained: Optional[bool] = None,
        width: int = 16,
        augment: Optional[str] = "crop",
        channels_last: bool = True,
        dropout: float = 0.2,
        epochs: int = 10,
        lr: float = 1e-3,
        batch_size: int = 32,
        eval_batch_size: int = 128,
        weight_decay: float = 1e-4,
        patience: int = 3,
        grad_clip: float = 5.0,
        seed: int = 0,
        class_weight: Optional[str] = None,
        warm_start_epochs: Optional[int] = None,
        warm_start_lr: Optional[float] = None,
        device: str = "auto",
        threads: Optional[int] = None,
    ) -> None:
        self.model = str(model).strip().lower()
        _check_common(self.model, image_size, width, class_weight)
        _parse_augment(augment)
        self.image_size = None if image_size is None else int(image_size)
        self.pretrained = None if pretrained is None else bool(pretrained)
        self.width = int(width)
        self.augment = "none" if augment in (None, "", False) else str(augment)
        self.channels_last = bool(channels_last)
        self.dropout = float(dropout)
        self.epochs = int(epochs)
        self.lr = float(lr)
        self.batch_size = int(batch_size)
        self.eval_batch_size = int(eval_batch_size)
        self.weight_decay = float(weight_decay)
        self.patience = int(patience)
        self.grad_clip = float(grad_clip)
        self.seed = int(seed)
        self.class_weight = class_weight
        self.warm_start_epochs = None if warm_start_epochs is None else int(warm_start_epochs)
        self.warm_start_lr = None if warm_start_lr is None else float(warm_start_lr)
        self.device = device
        self.threads = threads
        if self.epochs < 1 or self.batch_size < 1 or self.eval_batch_size < 1 or self.lr <= 0:
            raise ModelError("finetune needs epochs >= 1, batch_size >= 1, eval_batch_size >= 1 and lr > 0.")
        if not 0.0 <= self.dropout < 1.0:
            raise ModelError("dropout must be in [0, 1).")
        self.model_: Any = None
        self.history_: list[dict[str, Any]] = []
        self.best_val_accuracy_: Optional[float] = None
        self._pixel_cache: OrderedDict[str, np.ndarray] = OrderedDict()

    def get_config(self) -> dict[str, Any]:
        return {
            "model": self.model, "image_size": self.image_size, "pretrained": self.pretrained, "width": self.width,
            "augment": self.augment, "channels_last": self.channels_last, "dropout": self.dropout,
            "epochs": self.epochs, "lr": self.lr, "batch_size": self.batch_size,
            "eval_batch_size": self.eval_batch_size, "weight_decay": self.weight_decay, "patience": self.patience,
            "grad_clip": self.grad_clip, "seed": self.seed, "class_weight": self.class_weight,
            "warm_start_epochs": self.warm_start_epochs, "warm_start_lr": self.warm_start_lr,
            "device": self.device, "threads": self.threads,
        }

    def _pixels(self, split: Split) -> np.ndarray:
        """Decoded, resized pixels; the last few splits are kept (fit decodes train and val once)."""
        key = _content_key(split) if split.is_image else ""
        found = self._pixel_cache.get(key)
        if found is None:
            found = _pixels(split, self.size)
            self._pixel_cache[key] = found
            while len(self._pixel_cache) > 3:
                self._pixel_cache.popitem(last=False)
        return found

    def _augment(self, x: Any, gen: Any) -> Any:
        """Random resized crop (scale 0.7-1, aspect 3/4-4/3) and/or horizontal flip, per image."""
        import torch
        import torch.nn.functional as F

        parts = _parse_augment(self.augment)
        if not parts:
            return x
        n, _, h, w = x.shape
        if "crop" in parts:
            out = torch.empty_like(x)
            for i in range(n):
                r = torch.rand(4, generator=gen).tolist()
                area = (0.7 + 0.3 * r[0]) * h * w
                aspect = math.exp(math.log(3 / 4) + (math.log(4 / 3) - math.log(3 / 4)) * r[1])
                ch = min(h, max(1, round(math.sqrt(area / aspect))))
                cw = min(w, max(1, round(math.sqrt(area * aspect))))
                top, left = int(r[2] * (h - ch + 1)), int(r[3] * (w - cw + 1))
                crop = x[i:i + 1, :, top:top + ch, left:left + cw]
                out[i:i + 1] = F.interpolate(crop, size=(h, w), mode="bilinear", align_corners=False)
            x = out
        if "flip" in parts:
            flip = torch.rand(n, generator=gen) < 0.5
            x = torch.where(flip.view(n, 1, 1, 1), x.flip(3), x)
        return x

    def fit(self, train: Split, val: Optional[Split], labels: list[str], *,
            callback: Optional[ProgressCallback] = None, cancel: Optional[CancelToken] = None,
            warm_start: bool = False, stage: Optional[str] = None,
            select: Optional[EpochScore] = None) -> "ImageFineTuneModel":
        import torch
        import torch.nn.functional as F

        check_training_data(labels, train, val)
        warm = warm_start and self.model_ is not None
        if warm:
            check_warm_labels(getattr(self, "labels_", None), labels)
        val = usable_val(val)
        device = _device(self.device)
        cl = self.channels_last and device.type == "cpu"
        name = stage or f"train:{self.spec}"
        epochs = (self.warm_start_epochs or self.epochs) if warm else self.epochs
        lr = (self.warm_start_lr or self.lr) if warm else self.lr
        steps_per_epoch = math.ceil(len(train) / self.batch_size)
        total = epochs * steps_per_epoch
        progress = Progress(name, total, callback, cancel)
        with _seeded(self.seed):
            if not warm:
                net, loaded, note = build_net(self.model, len(labels), self.size, self.pretrained, self.width,
                                              self.dropout)
                self.pretrained = loaded if self.arch.source != "none" else False
                self._warn(progress, note)
                self.model_ = net
            self.labels_ = list(labels)
            net = self.model_.to(device)
            if cl:
                net = net.to(memory_format=torch.channels_last)
            xt, yt = self._pixels(train), torch.from_numpy(np.asarray(train.labels))
            xv = None if val is None else self._pixels(val)
            mean, std = self._mean_std(device)
            weight = _class_weights(yt.numpy(), len(labels), self.class_weight)
            weight = None if weight is None else weight.to(device)
            try:
                optimizer = torch.optim.AdamW(net.parameters(), lr=lr, weight_decay=self.weight_decay,
                                              fused=device.type in ("cpu", "cuda"))
            except (RuntimeError, TypeError, ValueError):
                optimizer = torch.optim.AdamW(net.parameters(), lr=lr, weight_decay=self.weight_decay)
            scheduler = torch.optim.lr_scheduler.LambdaLR(
                optimizer, lambda s: 0.5 * (1 + math.cos(math.pi * min(s, total) / total)))
            gen = torch.Generator().manual_seed(self.seed)
            best, step, stop = BestWeights(self.patience), 0, False
            self.history_ = []
            for epoch in range(epochs):
                running, seen = 0.0, 0
                for idx in torch.randperm(len(xt), generator=gen).split(self.batch_size):
                    progress.check()
                    net.train()
                    x = self._augment(_normalise(torch.from_numpy(xt[idx.numpy()]), mean.cpu(), std.cpu(), False), gen)
                    x = x.to(device).contiguous(memory_format=torch.channels_last if cl else torch.contiguous_format)
                    loss = F.cross_entropy(net(x), yt[idx].to(device), weight=weight)
                    optimizer.zero_grad(set_to_none=True)
                    loss.backward()
                    if self.grad_clip > 0:
                        torch.nn.utils.clip_grad_norm_(net.parameters(), self.grad_clip)
                    optimizer.step()
                    scheduler.step()
                    step += 1
                    running += float(loss.detach()) * len(idx)
                    seen += len(idx)
                    last = seen >= len(xt)
                    val_acc = None
                    if last and xv is not None:
                        logits = _batched_forward(net, xv, mean, std, self.eval_batch_size, device, cl)
                        val_acc = float((logits.argmax(axis=1) == val.labels).mean())
                        val_loss = cross_entropy_np(logits, val.labels)
                        self.history_.append({"step": step, "epoch": epoch + 1, "loss": running / seen,
                                              "val_loss": val_loss, "val_accuracy": val_acc})
                        stop = best.update(net, epoch_score(val.labels, logits, "accuracy", select), val_loss)
                    progress.emit(step, loss=running / seen, val_accuracy=val_acc,
                                  total=step if stop else None,
                                  message="early stop" if stop else f"epoch {epoch + 1}/{epochs}")
                if stop:
                    break
        self.best_val_accuracy_ = best.restore(net)
        net.eval()
        return self

    def predict_proba(self, split: Split, *, batch_size: Optional[int] = None) -> np.ndarray:
        import torch

        if self.model_ is None:
            raise ModelError(f"{self.spec} is not trained yet: call fit() or load_model() first.")
        if len(split) == 0:
            return np.zeros((0, len(self.labels_)))
        device = _device(self.device)
        cl = self.channels_last and device.type == "cpu"
        net = self.model_.to(device)
        if cl:
            net = net.to(memory_format=torch.channels_last)
        mean, std = self._mean_std(device)
        logits = _batched_forward(net, self._pixels(split), mean, std, batch_size or self.eval_batch_size, device, cl)
        return softmax_np(logits)

    def _save_weights(self, folder: Path) -> None:
        from safetensors.torch import save_file

        if self.model_ is None:
            raise ModelError(f"{self.spec} is not trained yet: nothing to save.")
        save_file({k: v.detach().cpu().contiguous() for k, v in self.model_.state_dict().items()},
                  str(folder / NET_WEIGHTS), metadata={"architecture": self.model})

    def _load_weights(self, folder: Path) -> None:
        k = len(self.labels_)
        self.model_ = _load_net_weights(
            folder / NET_WEIGHTS, lambda: build_net(self.model, k, self.size, False, self.width, self.dropout)[0])
        self.model_.eval()


__all__ = ["ImageFineTuneModel", "ImageHeadModel", "default_image_size"]
