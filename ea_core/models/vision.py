"""Image small models: ``head:ARCH`` (frozen CNN + the shared head) and ``finetune:ARCH`` (whole CNN).

The user-facing specs are the text ones (``head:efficientnet_lite0``, ``finetune:resnet34``); when
ARCH is an image architecture (see `ea_core.models.vision_backbones.ARCHITECTURES`),
`ea_core.models.make_model` builds these classes, registered as the kinds ``image_head`` and
``image_finetune`` in ``model.json``.

* `ImageHeadModel` — the fast CPU mode: `ea_core.models.head.HeadModel` over a `CnnBackbone`, run
  once per image, batched, without autograd, channels-last on CPU; its pooled features are
  remembered under the images' bytes.
* `ImageFineTuneModel` — every weight trained: AdamW with cosine decay, settable augmentations
  (random resized crop, horizontal flip: off by default, wrong for digits and text), early
  stopping on validation accuracy keeping the best weights, batched channels-last evaluation.

Images are decoded and resized (bilinear) to ``image_size`` by `ea_core.imaging.to_array`, then
normalised with the architecture's mean/std. The ``pretrained`` setting saved is what was actually
used (True: ImageNet weights; False: random init), so a model trained offline on a random backbone
never reloads onto ImageNet weights elsewhere; a head over a random backbone saves the backbone too.
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
from ea_core.models.head import ExtractorSetting, FeatureExtractor, HeadModel
from ea_core.models.hf_common import pick_device
from ea_core.models.memory import EmbeddingMemory
from ea_core.models.vision_backbones import ARCHITECTURES, architecture, build_backbone, build_net, feature_dim
from ea_core.splits import Split

BACKBONE_WEIGHTS = "backbone.safetensors"
NET_WEIGHTS = "model.safetensors"
_FEATURES = "pool-v1"  # bump when the feature computation changes

#: Values of the ``augment`` setting: none, or ``+``-joined parts ``crop`` (random resized crop,
#: scale 0.7-1, aspect 3/4-4/3) and ``flip`` (horizontal; wrong for digits, letters, text).
AUGMENT_PARTS = ("crop", "flip")
#: ``class_weight`` values: None (plain cross-entropy) or ``balanced`` (n / (K * count)).
CLASS_WEIGHTS = (None, "balanced")
#: The input size of the pretrained CNNs when ``image_size`` is not set (see `default_image_size`).
DEFAULT_PRETRAINED_SIZE = 96


def default_image_size(arch: str, pretrained: Optional[bool] = None) -> int:
    """The input size used when ``image_size`` is not set: 32 px for ``tiny_cnn``, else 96 px, where
    frozen features of small images are as good as at 224 px for a fraction of the time
    (bench/bench_vision.py); pass ``image_size=224`` for photos where fine detail matters."""
    a = ARCHITECTURES[arch]
    return 32 if a.source == "none" else DEFAULT_PRETRAINED_SIZE


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


def _check_arch(arch: str, image_size: Optional[int], width: int) -> None:
    a = architecture(arch)
    if a is None:
        raise ModelError(f"Unknown image architecture {arch!r}; known: {', '.join(ARCHITECTURES)}.")
    if image_size is not None and not (a.min_size <= int(image_size) <= 1024):
        raise ModelError(f"image_size={image_size} is out of range for {arch}: use {a.min_size}..1024 pixels.")
    if int(width) < 1:
        raise ModelError("width must be >= 1.")


def _check_class_weight(class_weight: Optional[str]) -> Optional[str]:
    if class_weight not in CLASS_WEIGHTS:
        raise ModelError(f"class_weight={class_weight!r}: use None or 'balanced'.")
    return class_weight


def _image_size(arch: str, image_size: Optional[int], pretrained: Optional[bool]) -> int:
    return int(image_size) if image_size is not None else default_image_size(arch, pretrained)


def _mean_std(arch: str, device: Any) -> tuple[Any, Any]:
    """The architecture's input normalisation as (1, 3, 1, 1) tensors on `device`."""
    import torch

    a = ARCHITECTURES[arch]
    return (torch.tensor(a.mean, dtype=torch.float32).view(1, 3, 1, 1).to(device),
            torch.tensor(a.std, dtype=torch.float32).view(1, 3, 1, 1).to(device))


@contextlib.contextmanager
def _seeded(seed: int) -> Iterator[None]:
    """torch's global CPU generator seeded with `seed` inside, the caller's state put back after
    (torchvision's initialisations and dropout draw from it)."""
    import torch

    with torch.random.fork_rng(devices=[]):
        torch.random.default_generator.manual_seed(int(seed))
        yield


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


def _to_input(pixels: np.ndarray, mean: Any, std: Any, device: Any, channels_last: bool) -> Any:
    """uint8 pixels (N,S,S,3) as the network's input on `device`: moved there first (as uint8, a
    quarter of the bytes of floats), then normalised there with `mean`/`std` (already on `device`).
    Normalising on the CPU with mean/std on a GPU was the CUDA crash of every image model."""
    import torch

    return _normalise(torch.from_numpy(pixels).to(device, non_blocking=True), mean, std, channels_last)


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
            x = _to_input(pixels[start:start + batch_size], mean, std, device, channels_last)
            out.append(module(x).float().cpu().numpy())
            if progress is not None:
                progress.emit(min(start + batch_size, len(pixels)), message="extracting features")
    return np.concatenate(out).astype(np.float32, copy=False)


# ================================================================================ head


class CnnBackbone(FeatureExtractor):
    """A frozen CNN: pooled features of images, remembered under each image's SHA-256."""

    def __init__(self, model: str, *, image_size: Optional[int], pretrained: Optional[bool], width: int,
                 channels_last: bool, device: str, seed: int) -> None:
        self.model = str(model).strip().lower()
        _check_arch(self.model, image_size, width)
        self.image_size = None if image_size is None else int(image_size)
        self.pretrained = None if pretrained is None else bool(pretrained)
        self.width = int(width)
        self.channels_last = bool(channels_last)
        self.device = device
        self.seed = int(seed)
        self.calls = 0
        self.note: Optional[str] = None  # why the ImageNet weights could not be used, if so
        self.backbone_: Any = None
        self._id = ""  # this backbone object's identity: random weights match no other
        self._lock = threading.Lock()

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state.pop("_lock", None)
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._lock = threading.Lock()

    @property
    def size(self) -> int:
        return _image_size(self.model, self.image_size, self.pretrained)

    @property
    def dim(self) -> Optional[int]:
        return feature_dim(self.model, self.width)

    def load_backbone(self) -> Any:
        """The frozen backbone, built once; `pretrained` becomes what was actually used."""
        with self._lock:
            if self.backbone_ is None:
                import torch

                with _seeded(self.seed):
                    backbone, loaded, note = build_backbone(self.model, self.size, self.pretrained, self.width)
                self.pretrained = loaded if ARCHITECTURES[self.model].source != "none" else False
                self.note = note
                backbone.eval().requires_grad_(False)
                if self.channels_last:
                    backbone = backbone.to(memory_format=torch.channels_last)
                self.backbone_ = backbone
                self._id = uuid.uuid4().hex
            return self.backbone_

    def prepare(self, progress: Progress) -> None:
        self.load_backbone()
        if self.note:
            warn = Progress(f"{progress.stage}:features", 0, progress.callback, progress.cancel)
            warn.emit(0, total=0, message=f"warning: {self.note}")

    def check(self, split: Split) -> None:
        if not split.is_image:
            _pixels(split, self.size)  # the ModelError that says to pick a text model

    def keys(self, split: Split) -> list[str]:
        return [hashlib.sha256(data).hexdigest() for data in split.images or []]

    def space(self) -> str:
        if not self.pretrained:
            self.load_backbone()  # random (or not yet known) weights: only this very backbone's match
        weights = "imagenet" if self.pretrained else f"random:{self._id}"
        return f"{self.model}|{weights}|{self.size}|{_FEATURES}"

    def encode(self, split: Split, rows: list[int], progress: Optional[Progress], batch_size: int) -> np.ndarray:
        backbone = self.load_backbone()
        device = pick_device(self.device)
        backbone.to(device)
        mean, std = _mean_std(self.model, device)
        if progress is not None:
            progress = Progress(f"{progress.stage}:features", len(rows), progress.callback, progress.cancel)
        feats = _batched_forward(backbone, _pixels(split.subset(rows), self.size), mean, std, batch_size, device,
                                 self.channels_last and device.type == "cpu", progress)
        self.calls += math.ceil(len(rows) / batch_size)
        return feats

    def metadata(self) -> dict[str, str]:
        return {"features": _FEATURES}

    def save(self, folder: Path) -> None:
        from safetensors.torch import save_file

        stale = folder / BACKBONE_WEIGHTS
        if not self.pretrained:  # a random backbone cannot be fetched again: keep it
            backbone = self.load_backbone()
            save_file({k: v.detach().cpu().contiguous() for k, v in backbone.state_dict().items()}, str(stale))
        elif stale.exists():
            stale.unlink()

    def load(self, folder: Path) -> None:
        if self.pretrained:
            return
        path = folder / BACKBONE_WEIGHTS
        if not path.is_file():
            raise damaged(folder / "model.json", f"a head over a random backbone needs {BACKBONE_WEIGHTS}")
        backbone = _load_net_weights(path, lambda: build_backbone(self.model, self.size, False, self.width)[0])
        backbone.eval().requires_grad_(False)
        if self.channels_last:
            import torch

            backbone = backbone.to(memory_format=torch.channels_last)
        self.backbone_, self._id = backbone, uuid.uuid4().hex

    def confine(self, folder: Path) -> None:
        """From a bundle: the device is chosen here. MODEL is always an architecture name (checked
        in the constructor), never a path, so nothing else can point outside the bundle."""
        self.device = "auto"


@register
class ImageHeadModel(HeadModel):
    """Frozen CNN features (computed once, remembered) + a softmax head with early stopping."""

    kind = "image_head"
    # As before the heads were one class: features not L2-normalised, scale std + 1e-6, one
    # generator for the initial weights and the batch order, class weights kept in warm starts.
    scale_floor = False
    shared_generator = True
    weighted_warm_starts = True

    model = ExtractorSetting()
    image_size = ExtractorSetting()
    pretrained = ExtractorSetting()
    width = ExtractorSetting()
    channels_last = ExtractorSetting()
    device = ExtractorSetting()
    seed = ExtractorSetting()
    extractor: CnnBackbone

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
        memory: Optional[EmbeddingMemory] = None,
    ) -> None:
        self.extractor = CnnBackbone(model, image_size=image_size, pretrained=pretrained, width=width,
                                     channels_last=channels_last, device=device, seed=seed)
        self.class_weight = _check_class_weight(class_weight)
        self._set_head(embed_batch_size=embed_batch_size, hidden=hidden, dropout=dropout, epochs=epochs, lr=lr,
                       batch_size=batch_size, weight_decay=weight_decay, patience=patience,
                       warm_start_epochs=warm_start_epochs, warm_start_lr=warm_start_lr, threads=threads,
                       memory=memory)

    @property
    def backbone_calls_(self) -> int:
        """Backbone forward passes (batches) run by this model: lets tests and UIs see cache hits."""
        return self.extractor.calls


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
class ImageFineTuneModel(SmallModel):
    """Every weight of a CNN trained on the task, with augmentations and early stopping."""

    kind = "image_finetune"

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
        warmup_epochs: Optional[float] = None,
        device: str = "auto",
        threads: Optional[int] = None,
    ) -> None:
        self.model = str(model).strip().lower()
        _check_arch(self.model, image_size, width)
        _check_class_weight(class_weight)
        _parse_augment(augment)
        if warmup_epochs is not None and not 0 <= float(warmup_epochs) < int(epochs):
            raise ModelError(f"warmup_epochs must be from 0 to fewer than the {epochs} epochs, not {warmup_epochs}.")
        self.warmup_epochs = None if warmup_epochs is None else float(warmup_epochs)
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

    @property
    def spec(self) -> str:
        return f"finetune:{self.model}"

    @property
    def size(self) -> int:
        return _image_size(self.model, self.image_size, self.pretrained)

    def _confine(self, folder: Path, root: Path) -> None:
        """From a bundle: the device is chosen here. MODEL is always an architecture name (checked
        in the constructor), never a path, so nothing else can point outside the bundle."""
        self.device = "auto"

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

    def _warmup(self, warm: bool, loaded_now: bool) -> float:
        """Epochs of linear learning-rate warm-up: as set, else the architecture's own recipe for a
        network trained from random weights (`Architecture.scratch_warmup_epochs`), else none."""
        if self.warmup_epochs is not None:
            return self.warmup_epochs
        if warm or loaded_now:
            return 0.0
        return ARCHITECTURES[self.model].scratch_warmup_epochs

    def _train_input(self, pixels: np.ndarray, mean: Any, std: Any, device: Any, channels_last: bool,
                     gen: Any) -> Any:
        """A training batch on `device`: augmented on the CPU (drawn from the model's own generator)
        and then moved, or, without augmentation, moved as uint8 and normalised there."""
        import torch

        if _parse_augment(self.augment):
            cpu_mean, cpu_std = _mean_std(self.model, "cpu")
            x = self._augment(_normalise(torch.from_numpy(pixels), cpu_mean, cpu_std, False), gen).to(device)
        else:
            x = _to_input(pixels, mean, std, device, False)
        return x.contiguous(memory_format=torch.channels_last if channels_last else torch.contiguous_format)

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
        device = pick_device(self.device)
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
                self.pretrained = loaded if ARCHITECTURES[self.model].source != "none" else False
                if note:
                    progress.emit(0, total=0, message=f"warning: {note}")
                self.model_ = net
            self.labels_ = list(labels)
            net = self.model_.to(device)
            if cl:
                net = net.to(memory_format=torch.channels_last)
            xt, yt = self._pixels(train), torch.from_numpy(np.asarray(train.labels))
            xv = None if val is None else self._pixels(val)
            mean, std = _mean_std(self.model, device)
            weight = class_weights(yt.numpy(), len(labels), self.class_weight or "none")
            weight = None if weight is None else torch.tensor(weight, dtype=torch.float32).to(device)
            try:
                optimizer = torch.optim.AdamW(net.parameters(), lr=lr, weight_decay=self.weight_decay,
                                              fused=device.type in ("cpu", "cuda"))
            except (RuntimeError, TypeError, ValueError):
                optimizer = torch.optim.AdamW(net.parameters(), lr=lr, weight_decay=self.weight_decay)
            warmup = self._warmup(warm, loaded_now=not warm and bool(self.pretrained))
            ramp = min(int(round(warmup * steps_per_epoch)), total - 1)
            scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: (s + 1) / ramp if s < ramp else
                                                          0.5 * (1 + math.cos(math.pi * min(s - ramp, total - ramp)
                                                                              / (total - ramp))))
            gen = torch.Generator().manual_seed(self.seed)
            best, step, stop = BestWeights(self.patience), 0, False
            self.history_ = []
            for epoch in range(epochs):
                running, seen = 0.0, 0
                for idx in torch.randperm(len(xt), generator=gen).split(self.batch_size):
                    progress.check()
                    net.train()
                    x = self._train_input(xt[idx.numpy()], mean, std, device, cl, gen)
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
                        stop = best.update(net, epoch_score(val.labels, logits, "accuracy", select), val_loss) \
                            and epoch + 1 > warmup  # never stopped while the learning rate still ramps up
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
        device = pick_device(self.device)
        cl = self.channels_last and device.type == "cpu"
        net = self.model_.to(device)
        if cl:
            net = net.to(memory_format=torch.channels_last)
        mean, std = _mean_std(self.model, device)
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
