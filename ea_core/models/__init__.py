"""Specific Small Models (SSMs): build one from a spec string, load a saved one.

A spec names the kind and, for the transformer kinds, the MODEL:

* ``tfidf`` — TF-IDF n-grams + logistic regression (seconds on a CPU);
* ``head:MODEL`` — frozen pretrained encoder, cached mean-pooled embeddings, trained softmax head
  (the fast CPU mode);
* ``finetune:MODEL`` — full fine-tuning of a sequence classifier (most accurate, GPU advised).

MODEL is a catalog name (``minilm`` is packaged and works offline), a local folder written by
``save_pretrained``, or a Hugging Face hub id. Every kind registers itself with
`ea_core.models.base` on import, so `load_model` finds it from ``model.json``.
"""

from __future__ import annotations

import inspect
from typing import Any, Optional

from ea_core.errors import ConfigError
from ea_core.models import encoder_head, finetune, tfidf  # noqa: F401  (registers every kind)
from ea_core.models.base import SmallModel, load_model, registered_kinds
from ea_core.models.catalog import CATALOG, catalog_names, resolve_model
from ea_core.models.encoder_head import EncoderHeadModel
from ea_core.models.finetune import FineTuneModel
from ea_core.models.tfidf import TfidfModel

#: Imported by `base.registered_kinds`; importing this package registered every kind.
_load_all = True

SPEC_FORMS = ("tfidf", "head:MODEL", "finetune:MODEL")

__all__ = [
    "CATALOG",
    "EncoderHeadModel",
    "FineTuneModel",
    "SPEC_FORMS",
    "SmallModel",
    "TfidfModel",
    "load_model",
    "make_model",
    "parse_spec",
    "resolve_model",
]


def _spec_help() -> str:
    return (
        f"valid forms: {', '.join(SPEC_FORMS)}; MODEL is a catalog name ({', '.join(catalog_names())}), "
        "a local folder or a Hugging Face id (e.g. head:minilm, finetune:roberta-base)"
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


def _check_settings(cls: type[SmallModel], settings: dict[str, Any]) -> None:
    params = inspect.signature(cls.__init__).parameters
    valid = [p for p in params if p not in ("self", "model")]
    unknown = sorted(set(settings) - set(valid))
    if unknown:
        raise ConfigError(
            f"Unknown setting(s) {', '.join(unknown)} for {cls.kind!r} models; valid: {', '.join(valid)}."
        )


def make_model(spec: str, labels: Optional[list[str]] = None, **settings: Any) -> SmallModel:
    """Build an untrained model from a spec (``tfidf``, ``head:MODEL``, ``finetune:MODEL``).

    Settings are the kind's constructor arguments (see each class); settings equal to None are
    ignored so callers can pass optional values through. For the transformer kinds the MODEL's
    config is looked up now, so an unknown or unreachable model fails here with a ModelError.
    """
    kind, model = parse_spec(spec)
    settings = {k: v for k, v in settings.items() if v is not None}
    cls = registered_kinds()[kind]
    _check_settings(cls, settings)
    if model is None:
        built = cls(**settings)
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

    from ea_core.models.hf_common import load_pretrained

    load_pretrained(AutoConfig, model, resolve_model(model), builds_model=False)
