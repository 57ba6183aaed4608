"""Specific Small Models (SSMs): build one from a spec string, load a saved one.

A spec names the kind and, for the transformer kinds, the MODEL:

* ``tfidf`` — TF-IDF n-grams + logistic regression (seconds on a CPU);
* ``head:MODEL`` — frozen pretrained encoder, cached mean-pooled embeddings, trained softmax head
  (the fast CPU mode);
* ``finetune:MODEL`` — full fine-tuning of a sequence classifier (most accurate, GPU advised).

MODEL is a catalog name (``minilm`` is packaged and works offline), a local folder written by
``save_pretrained``, or a Hugging Face hub id. When MODEL is an image architecture of the catalog
(``efficientnet_lite0`` is packaged with ImageNet weights; ``mobilenet_v2``, ``resnet34``,
``squeezenet1_0``, ...), ``head:``/``finetune:`` build the image kinds ``image_head`` /
``image_finetune`` (`ea_core.models.vision`); `spec_modality` tells which data a spec takes and
`spec_kind` which registered kind (and so which settings) it builds. Every kind registers itself
with `ea_core.models.base` on import, so `load_model` finds it from ``model.json``. Both ``head``
kinds are `HeadModel` over a feature extractor; the `EmbeddingMemory` they remember vectors in
belongs to the caller (`make_model(..., memory=...)`), not to the process.
"""

from __future__ import annotations

from typing import Any, Optional

from ea_core.errors import ConfigError
from ea_core.models import encoder_head, finetune, tfidf, vision  # noqa: F401  (registers every kind)
from ea_core.models.base import SmallModel, load_model, registered_kinds
from ea_core.models.catalog import CATALOG, catalog_names, model_modality, resolve_model
from ea_core.models.encoder_head import EncoderHeadModel
from ea_core.models.finetune import FineTuneModel
from ea_core.models.head import HeadModel
from ea_core.models.hf_common import load_pretrained
from ea_core.models.memory import EmbeddingMemory
from ea_core.models.tfidf import TfidfModel
from ea_core.models.vision import ImageFineTuneModel, ImageHeadModel

#: Imported by `base.registered_kinds`; importing this package registered every kind.
_load_all = True

SPEC_FORMS = ("tfidf", "head:MODEL", "finetune:MODEL")

__all__ = [
    "CATALOG",
    "EmbeddingMemory",
    "EncoderHeadModel",
    "FineTuneModel",
    "HeadModel",
    "ImageFineTuneModel",
    "ImageHeadModel",
    "SPEC_FORMS",
    "SmallModel",
    "check_spec_for_data",
    "TfidfModel",
    "load_model",
    "make_model",
    "parse_spec",
    "resolve_model",
    "spec_kind",
    "spec_modality",
]


def _spec_help() -> str:
    return (
        f"valid forms: {', '.join(SPEC_FORMS)}; MODEL is a catalog name (text: {', '.join(catalog_names('text'))}; "
        f"image: {', '.join(catalog_names('image'))}), a local folder or a Hugging Face id "
        "(e.g. head:minilm, finetune:roberta-base, head:efficientnet_lite0)"
    )


def parse_spec(spec: str) -> tuple[str, Optional[str]]:
    """Split a spec into (kind, MODEL or None); raise ConfigError on anything else."""
    if not isinstance(spec, str) or not spec.strip():
        raise ConfigError(f"Empty model spec; {_spec_help()}.")
    kind, sep, model = spec.strip().partition(":")
    kind = kind.strip().lower()
    model = model.strip()
    if kind == "tfidf" and not model:
        return kind, None
    if kind in ("head", "finetune"):
        if not model:
            raise ConfigError(f"Model spec {spec!r} names no MODEL; {_spec_help()}.")
        return kind, model
    raise ConfigError(f"Unknown model spec {spec!r}; {_spec_help()}.")


def spec_modality(spec: str) -> str:
    """``image`` when the spec builds an image model (MODEL is an image architecture of the
    catalog), else ``text`` (tfidf and the transformer encoders, which also take text pairs).
    ConfigError on a malformed spec. Lets a pipeline refuse a text model on image data (and the
    reverse) before training anything."""
    kind, model = parse_spec(spec)
    return "text" if model is None else model_modality(model)


def spec_kind(spec: str) -> str:
    """The registered kind a spec builds (``tfidf``, ``head``, ``finetune``, ``image_head``,
    ``image_finetune``): the class whose constructor settings `make_model` accepts."""
    kind, model = parse_spec(spec)
    return f"image_{kind}" if model is not None and model_modality(model) == "image" else kind


def check_spec_for_data(spec: str, data_modality: str) -> None:
    """ConfigError when `spec` cannot take data of `data_modality` (``text``, ``pair``, ``image``:
    `TaskData.modality`), naming the specs that can."""
    want = "image" if data_modality == "image" else "text"
    if spec_modality(spec) == want:
        return
    if want == "image":
        raise ConfigError(f"{spec!r} is a text model but the data holds images; pick an image model "
                          f"(e.g. head:efficientnet_lite0, finetune:mobilenet_v2; catalog: "
                          f"{', '.join(catalog_names('image'))}).")
    raise ConfigError(f"{spec!r} is an image model but the data holds texts; pick a text model "
                      "(e.g. tfidf, head:minilm, finetune:minilm).")


def _check_settings(cls: type[SmallModel], settings: dict[str, Any]) -> None:
    valid = [p for p in cls.setting_names() if p != "model"]
    unknown = sorted(set(settings) - set(valid))
    if unknown:
        raise ConfigError(
            f"Unknown setting(s) {', '.join(unknown)} for {cls.kind!r} models; valid: {', '.join(valid)}."
        )


def make_model(spec: str, labels: Optional[list[str]] = None, *, memory: Optional[EmbeddingMemory] = None,
               **settings: Any) -> SmallModel:
    """Build an untrained model from a spec (``tfidf``, ``head:MODEL``, ``finetune:MODEL``).

    Settings are the kind's constructor arguments (see each class); settings equal to None are
    ignored so callers can pass optional values through. `memory`: the caller's, shared by the
    head models it builds (other kinds ignore it); None gives a head model its own. For the
    transformer kinds the MODEL's config is looked up now, so an unknown or unreachable model
    fails here with a ModelError.
    """
    kind, model = parse_spec(spec)
    settings = {k: v for k, v in settings.items() if v is not None}
    cls = registered_kinds()[spec_kind(spec)]
    _check_settings(cls, settings)
    if memory is not None and "memory" in cls.runtime_params:
        settings["memory"] = memory
    if model is None:
        built = cls(**settings)
    elif spec_modality(spec) == "image":
        built = cls(resolve_model(model), **settings)  # the architecture name; built at fit
    else:
        if settings.get("from_config") is None:
            _check_model(model)
        built = cls(model, **settings)
    if labels is not None:
        built.labels_ = list(labels)
    return built


def _check_model(model: str) -> None:
    """Fail fast (ModelError) when MODEL can't be found: reads only its config."""
    from transformers import AutoConfig

    load_pretrained(AutoConfig, model, resolve_model(model), builds_model=False)
