"""What LM calls cost, before (an estimate) and after (from each response's token usage).

Prices are a plain editable table in USD per million input/output tokens; the defaults are list
prices at the time of writing and will drift, so the table can be edited, saved and loaded from
JSON. A model missing from the table costs 0 and is flagged "price unknown" rather than guessed;
a money cap on such a model refuses to start, since it would never run out (which price holds for
an LM is decided in `ea_core.llm.spec`; the money paid is counted in `ea_core.llm.spend`).
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Mapping, Optional, Union

from ea_core.errors import ConfigError
from ea_core.llm.images import image_size, parse_ref

#: USD per 1M (input, output) tokens. List prices when written; edit or load your own.
DEFAULT_PRICES: dict[str, tuple[float, float]] = {
    "gpt-4o-mini": (0.15, 0.60),
    "gpt-4o": (2.50, 10.00),
    "gpt-4.1-nano": (0.10, 0.40),
    "gpt-4.1-mini": (0.40, 1.60),
    "gpt-4.1": (2.00, 8.00),
    "gpt-5-nano": (0.05, 0.40),
    "gpt-5-mini": (0.25, 2.00),
    "gpt-5": (1.25, 10.00),
    "deepseek-chat": (0.27, 1.10),
    "deepseek-reasoner": (0.55, 2.19),
    "qwen-turbo": (0.05, 0.20),
    "qwen-plus": (0.40, 1.20),
    "qwen-max": (1.60, 6.40),
    "glm-4-flash": (0.0, 0.0),
    "glm-4-plus": (0.70, 0.70),
    "meta-llama/Llama-3.3-70B-Instruct-Turbo": (0.88, 0.88),  # Together AI
}


def estimate_tokens(text: str) -> int:
    """A rough token count (about 4 characters per token for English text)."""
    return max(1, math.ceil(len(text) / 4)) if text else 0


#: Image tokens (base, per 512 px tile) by model-name prefix, from OpenAI's vision pricing notes
#: for the GPT-4o family: 85 + 170 per tile at detail "high", 85 at "low". gpt-4o-mini counts
#: more tokens per image (2833 + 5667 per tile) at a lower token price. Other vision models (Qwen-VL,
#: GLM-4V, LLaVA ...) count differently; the default is used for them as a rough estimate.
IMAGE_TOKENS: dict[str, tuple[int, int]] = {"gpt-4o-mini": (2833, 5667)}
DEFAULT_IMAGE_TOKENS = (85, 170)


def image_tokens(width: int, height: int, detail: str = "auto", model: str = "") -> int:
    """Estimated prompt tokens of one image of this size (OpenAI's tile formula, see `IMAGE_TOKENS`).

    "low": the base only. "high" and "auto" (an upper bound: "auto" may pick "low"): the image is
    fitted in 2048 x 2048, its shorter side brought down to 768 px, and counted in 512 px tiles.
    An estimate for budgets and the cost preview; what is billed comes from each response's usage.
    """
    tail = str(model).split("/", 1)[-1]
    best = max((k for k in IMAGE_TOKENS if tail.startswith(k)), key=len, default=None)
    base, tile = IMAGE_TOKENS[best] if best else DEFAULT_IMAGE_TOKENS
    if detail == "low":
        return base
    w, h = float(max(width, 1)), float(max(height, 1))
    if max(w, h) > 2048:
        s = 2048 / max(w, h)
        w, h = w * s, h * s
    if min(w, h) > 768:
        s = 768 / min(w, h)
        w, h = w * s, h * s
    return base + tile * math.ceil(w / 512) * math.ceil(h / 512)


def message_tokens(message: Mapping[str, Any], model: str = "") -> int:
    """Estimated prompt tokens of one chat message: ~4 characters a token for text, the tile
    formula (`image_tokens`) for each image part, plus 4 for the message's framing."""
    content = message.get("content")
    if not isinstance(content, list):
        return estimate_tokens(str(content or "")) + 4
    total = 4
    for part in content:
        if not isinstance(part, Mapping):
            continue
        if part.get("type") == "text":
            total += estimate_tokens(str(part.get("text", "")))
        elif part.get("type") == "image_url":
            inner = part.get("image_url") or {}
            url = str(inner.get("url", ""))
            ref = parse_ref(url)
            if ref is not None:
                w, h = ref[1], ref[2]
            elif url.startswith("data:") and "," in url:
                import base64

                try:
                    w, h = image_size(base64.b64decode(url.split(",", 1)[1]))
                except ValueError:
                    w, h = 512, 512
            else:
                w, h = 512, 512  # a remote URL: size unknown
            total += image_tokens(w, h, str(inner.get("detail", "auto")), model)
    return total


class PriceTable:
    """Per-model prices in USD per million input and output tokens.

    Lookup is by exact model name, then by the longest known name the model starts with
    (``gpt-4o-mini-2024-07-18`` -> ``gpt-4o-mini``), ignoring a ``vendor/`` prefix (OpenRouter).
    """

    def __init__(self, prices: Optional[Mapping[str, Any]] = None, *, defaults: bool = True) -> None:
        self._prices: dict[str, tuple[float, float]] = dict(DEFAULT_PRICES) if defaults else {}
        for model, value in (prices or {}).items():
            self.set(model, *_pair(model, value))

    def set(self, model: str, input_per_1m: float, output_per_1m: float) -> None:
        if input_per_1m < 0 or output_per_1m < 0:
            raise ConfigError(f"Prices for {model!r} must not be negative.")
        self._prices[str(model)] = (float(input_per_1m), float(output_per_1m))

    def price(self, model: str) -> Optional[tuple[float, float]]:
        """(input, output) USD per 1M tokens, or None when the model's price is unknown."""
        name = str(model)
        for candidate in (name, name.split("/", 1)[-1]):
            if candidate in self._prices:
                return self._prices[candidate]
        tail = name.split("/", 1)[-1]
        best = max((k for k in self._prices if tail.startswith(k)), key=len, default=None)
        return self._prices[best] if best else None

    def known(self, model: str) -> bool:
        return self.price(model) is not None

    def cost(self, model: str, prompt_tokens: int, completion_tokens: int) -> float:
        """USD for the given usage; 0.0 when the price is unknown (check `known`)."""
        p = self.price(model)
        if p is None:
            return 0.0
        return (prompt_tokens * p[0] + completion_tokens * p[1]) / 1_000_000

    def to_dict(self) -> dict[str, dict[str, float]]:
        return {m: {"input_per_1m": p[0], "output_per_1m": p[1]} for m, p in sorted(self._prices.items())}

    def save(self, path: Union[str, Path]) -> None:
        Path(path).write_text(json.dumps(self.to_dict(), indent=2), encoding="utf-8")

    @classmethod
    def load(cls, path: Union[str, Path], *, defaults: bool = True) -> "PriceTable":
        """Read ``{"model": {"input_per_1m": x, "output_per_1m": y}}`` (or ``"model": [x, y]``)."""
        try:
            data = json.loads(Path(path).read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise ConfigError(f"Cannot read the price table {path}: {exc}") from exc
        if not isinstance(data, dict):
            raise ConfigError(f"The price table {path} must be a JSON object of model -> prices.")
        return cls(data, defaults=defaults)

    @classmethod
    def coerce(cls, prices: Union["PriceTable", Mapping[str, Any], str, Path, None]) -> "PriceTable":
        """A table from a table, a mapping, a JSON file path, or None (the defaults)."""
        if isinstance(prices, PriceTable):
            return prices
        if isinstance(prices, (str, Path)):
            return cls.load(prices)
        return cls(prices)


def _pair(model: str, value: Any) -> tuple[float, float]:
    try:
        if isinstance(value, Mapping):
            return float(value["input_per_1m"]), float(value["output_per_1m"])
        a, b = value
        return float(a), float(b)
    except (KeyError, TypeError, ValueError) as exc:
        raise ConfigError(
            f"Bad price for {model!r}: give input_per_1m and output_per_1m in USD per million tokens."
        ) from exc


@dataclass
class CostEstimate:
    """What a stage is expected to cost before it starts. `calls` excludes cache hits."""

    calls: int
    cached: int
    prompt_tokens: int
    completion_tokens: int
    usd: float
    price_known: bool = True

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)
