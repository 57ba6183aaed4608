"""Large-model (LM) providers: build one from a spec string.

A spec names where the LM runs:

* ``openai`` — any OpenAI-compatible chat API (`OpenAIProvider`); ``--lm-base-url`` picks the
  endpoint, the key comes from an environment variable (``OPENAI_API_KEY`` unless told);
* a preset name (``deepseek``, ``qwen``, ``glm``, ``doubao``, ``openrouter``, ``together``,
  ``ollama``, ``vllm``, ``llamacpp``) — the same with that provider's URL and key variable;
* ``local`` — the packaged offline SmolLM2 stand-in, scoring labels in-process (`LocalHFProvider`);
* ``local:PATH_OR_ID`` — any local causal LM folder, ``.gguf`` file, or cached hub id;
* ``local:image-knn`` — for image tasks offline: a few-shot nearest-neighbour stand-in over a
  pretrained image encoder's features of the prompt's example images (`ImageKNNProvider`); not a
  language model, and it says so.

Images: the API providers send an image task's inputs to vision LMs (settings ``image_max_side``,
``image_detail``, ``image_format``, ``vision``: see `OpenAIProvider`); text-only providers (the
local causal LM, a model known to be text-only) refuse them with a `ConfigError`.

Every provider caches its answers in an `AnswerCache`, so an answer is paid for once (also across
processes sharing the cache: prompts in flight are claimed there). What a spec means (kind,
endpoint, key source, price) is decided once, in `LMSpec`; a key pasted into a base URL
(``http://user:KEY@host``) is taken out of the URL there and used as the key, in memory only.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Optional, Sequence, Union

from ea_core.errors import ConfigError
from ea_core.llm.base import FAILED, UNPARSEABLE, LMAnswer, LMInput, LMProvider, LMUsage
from ea_core.llm.cache import AnswerCache, CachedAnswer, make_key
from ea_core.llm.cost import DEFAULT_PRICES, CostEstimate, PriceTable, estimate_tokens
from ea_core.llm.images import DEFAULT_IMAGE_MAX_SIDE, IMAGE_DETAILS, ImageSettings
from ea_core.llm.openai_api import OpenAIProvider
from ea_core.llm.presets import PRESETS, Preset, get_preset, is_local_url, model_accepts_images
from ea_core.llm.prompt import (Example, PromptTemplate, example_from_json, example_to_json, find_label, parse_answer,
                                select_examples)
from ea_core.llm.spec import IMAGE_KNN_SPEC, LOCAL_IMAGE, LOCAL_TEXT, NONE, LMSpec, Price
from ea_core.llm.spend import Budget, SpendLedger

__all__ = [
    "FAILED",
    "UNPARSEABLE",
    "AnswerCache",
    "Budget",
    "DEFAULT_IMAGE_MAX_SIDE",
    "IMAGE_DETAILS",
    "IMAGE_KNN_SPEC",
    "ImageKNNProvider",
    "ImageSettings",
    "example_from_json",
    "example_to_json",
    "model_accepts_images",
    "CachedAnswer",
    "CostEstimate",
    "DEFAULT_PRICES",
    "Example",
    "LMAnswer",
    "LMInput",
    "LMProvider",
    "LMSpec",
    "LMUsage",
    "LocalHFProvider",
    "OpenAIProvider",
    "PRESETS",
    "Preset",
    "Price",
    "PriceTable",
    "PromptTemplate",
    "SpendLedger",
    "estimate_tokens",
    "find_label",
    "get_preset",
    "is_local_url",
    "make_key",
    "make_provider",
    "api_model",
    "price_known",
    "parse_answer",
    "select_examples",
]


def __getattr__(name: str) -> Any:
    # The local provider pulls in torch/transformers: import it only when asked for.
    if name == "LocalHFProvider":
        from ea_core.llm.local_hf import LocalHFProvider

        return LocalHFProvider
    if name == "ImageKNNProvider":
        from ea_core.llm.local_image import ImageKNNProvider

        return ImageKNNProvider
    raise AttributeError(name)


def price_known(
    spec: str,
    *,
    model: Optional[str] = None,
    base_url: Optional[str] = None,
    prices: Union[PriceTable, dict[str, Any], str, Path, None] = None,
) -> bool:
    """Whether the money the LM a spec names costs is known (`LMSpec`'s price rule: free when the
    user said so or in process, else the user's or the table's price; an endpoint on this machine is
    not free by itself). A money cap on an unknown price would never run out: callers refuse it."""
    return LMSpec.parse(spec, model=model, base_url=base_url, prices=prices, environ={}).price.known


def api_model(spec: str, model: Optional[str] = None, base_url: Optional[str] = None) -> Optional[str]:
    """The model an API spec calls: `model`, else its preset's example (OpenAI's for plain 'openai'
    without a base URL); None for a local spec or when nothing names one."""
    parsed = LMSpec.parse(spec, model=model, base_url=base_url, environ={})
    return parsed.model if parsed.is_endpoint else None


def make_provider(
    spec: str,
    *,
    model: Optional[str] = None,
    base_url: Optional[str] = None,
    key_env: str = "OPENAI_API_KEY",
    api_key: Optional[str] = None,
    cache: Optional[AnswerCache] = None,
    concurrency: int = 8,
    budget_usd: Optional[float] = None,
    prices: Union[PriceTable, dict[str, Any], str, Path, None] = None,
    prompt: Optional[PromptTemplate] = None,
    few_shot_examples: Optional[Sequence[Example]] = None,
    **options: Any,
) -> LMProvider:
    """The LM provider a spec names (see the module docstring).

    For API specs `model` is required (a preset supplies an example default); `base_url`
    overrides the preset's URL. `budget_usd` caps the spend of this provider (share a `Budget`
    between providers by passing ``budget=`` in `options`). ``endpoint_policy=`` (an
    `ea_core.llm.endpoints.EndpointPolicy`) limits where an endpoint provider may send requests.
    Other `options` go to the provider.
    """
    parsed = LMSpec.parse(spec, model=model, base_url=base_url, key_env=key_env, api_key=api_key, prices=prices)
    endpoint_policy = options.pop("endpoint_policy", None)  # an `EndpointPolicy`: endpoints only
    if parsed.kind == NONE:
        raise ConfigError("Choose an LM: 'openai' (or a preset such as 'deepseek'), 'local' or 'local:PATH'.")
    if parsed.kind == LOCAL_IMAGE:
        from ea_core.llm.local_image import ImageKNNProvider

        return ImageKNNProvider(few_shot_examples, prompt=prompt, cache=cache, **options)
    if parsed.kind == LOCAL_TEXT:
        from ea_core.llm.local_hf import LocalHFProvider

        return LocalHFProvider(parsed.model, cache=cache, prompt=prompt, few_shot=few_shot_examples, **options)
    if not parsed.model:
        raise ConfigError("Name the LM model to use (e.g. --lm-model gpt-4o-mini).")
    budget = options.pop("budget", None)
    if budget is None and budget_usd is not None:
        budget = Budget(budget_usd)
    return OpenAIProvider(
        parsed.model,
        base_url=base_url or parsed.base_url,
        api_key=api_key,
        key_env=parsed.key_env,
        cache=cache,
        concurrency=concurrency,
        prompt=prompt,
        few_shot=few_shot_examples,
        prices=PriceTable.coerce(prices),
        budget=budget,
        preset=parsed.preset,
        endpoint_policy=endpoint_policy,
        **options,
    )
