"""The LM a user chose, parsed once (`LMSpec`): what kind it is, where it runs, where its key
comes from, and what it costs.

Why one value: "is this LM local, does it need a key, is its price known" used to be decided by
hand in many places, and one of them got money wrong: any endpoint on this machine passed as
free, so a local proxy that forwards to a paid API spent with no price and a budget that capped
nothing. Every such question is answered here, from what the user gave (the CLI flags or a
`RunConfig`, the app's Large model fields, a bundle's LM settings).

The price rule (`Price`): prices the user gave win (0 and 0 means "free, as you said"); else the
price table's for the model, also through a proxy on this machine; else free for an in-process
model or a self-hosted server preset (Ollama, vLLM, llama.cpp); else unknown. An address on this
machine alone says nothing about money.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Optional, Union

from ea_core.llm.cost import PriceTable
from ea_core.llm.presets import PRESETS, Preset, get_preset, is_local_url
from ea_core.llm.secrets import Secret
from ea_core.llm.urls import strip_userinfo, userinfo_secret

#: Kinds of LM.
ENDPOINT, LOCAL_TEXT, LOCAL_IMAGE, NONE = "endpoint", "local_text", "local_image", "none"
#: Where the key comes from.
KEY_ENV, KEY_PASTED, KEY_URL, KEY_NONE = "env", "pasted", "url", "none"
#: Price cases, and why each holds.
KNOWN, FREE, UNKNOWN = "known", "free", "unknown"
FROM_TABLE, FROM_USER, SAID_FREE = "price table", "your prices", "self-hosted, as you said"
IN_PROCESS, SELF_HOSTED_PRESET, NO_LM = "in-process model", "self-hosted server preset", "no LM"

#: The spec of the offline image stand-in, and the names it is known by after ``local:``.
IMAGE_KNN_SPEC = "local:image-knn"
_IMAGE_KNN_NAMES = ("image-knn", "imageknn", "image_knn")
DEFAULT_KEY_ENV = "OPENAI_API_KEY"

Prices = Union[PriceTable, Mapping[str, Any], str, Path, None]


def _usd(x: float) -> str:
    return f"${x:.2f}" if round(x, 2) == x else f"${x:g}"


@dataclass(frozen=True)
class Price:
    """What the LM costs: `status` KNOWN (USD per 1M input/output tokens), FREE (because the user
    said so, or an in-process model) or UNKNOWN; `source` says why."""

    status: str
    per_1m: Optional[tuple[float, float]] = None
    source: str = ""

    @property
    def known(self) -> bool:
        """Whether money can be counted (free counts as known: 0 per answer)."""
        return self.status != UNKNOWN

    @property
    def free(self) -> bool:
        return self.status == FREE

    def label(self) -> str:
        """For people: "$0.15 / $0.60 per 1M tokens (price table)", "free (in-process model)" ..."""
        if self.status == KNOWN and self.per_1m is not None:
            return f"{_usd(self.per_1m[0])} / {_usd(self.per_1m[1])} per 1M tokens ({self.source})"
        if self.status == FREE:
            return f"free ({self.source})"
        return "unknown: give prices or tick self-hosted"

    def cost(self, prompt_tokens: int, completion_tokens: int) -> float:
        """USD for the given usage; 0 when free or unknown (check `known`)."""
        if self.status != KNOWN or self.per_1m is None:
            return 0.0
        return (prompt_tokens * self.per_1m[0] + completion_tokens * self.per_1m[1]) / 1_000_000

    def estimate_note(self) -> Optional[str]:
        """What a cost estimate shows instead of dollars (None: dollars)."""
        if self.status == FREE:
            return "free (local model)" if self.source == IN_PROCESS else "free (self-hosted endpoint)"
        return "price unknown: give prices" if self.status == UNKNOWN else None

    def describe(self) -> Union[dict[str, Any], str]:
        """As a provider's ``describe()["price_usd_per_1m"]``."""
        if self.status == KNOWN and self.per_1m is not None:
            return {"input": self.per_1m[0], "output": self.per_1m[1]}
        if self.status == FREE:
            return {"input": 0.0, "output": 0.0, "note": self.source}
        return "price unknown"


def endpoint_price(model: Optional[str], *, preset: Optional[Preset] = None, prices: Prices = None,
                   price_in: Optional[float] = None, price_out: Optional[float] = None,
                   free: bool = False) -> Price:
    """The price of `model` at an endpoint, by the rule in the module docstring."""
    if free or (price_in == 0 and price_out == 0):
        return Price(FREE, (0.0, 0.0), SAID_FREE)
    if price_in is not None and price_out is not None:
        return Price(KNOWN, (float(price_in), float(price_out)), FROM_USER)
    found = PriceTable.coerce(prices).price(model) if model else None
    if found is not None:
        if found == PriceTable().price(str(model)):
            return Price(KNOWN, found, FROM_TABLE)
        return Price(FREE, (0.0, 0.0), SAID_FREE) if found == (0.0, 0.0) else Price(KNOWN, found, FROM_USER)
    if preset is not None and preset.key_env is None:
        return Price(FREE, (0.0, 0.0), SELF_HOSTED_PRESET)
    return Price(UNKNOWN)


@dataclass(frozen=True)
class LMSpec:
    """One LM as the user gave it. Build with `LMSpec.parse` or `LMSpec.from_config`.

    `spec` is what `ea_core.llm.make_provider` takes; `base_url` is the endpoint called (None in
    process), never with a ``user:KEY@``; `given_url` is the user's URL as settings store it,
    without one (None: the preset's). The key itself (pasted, from `key_env`, or split out of the
    URL) is held in memory only: `key`.
    """

    kind: str
    spec: str = ""
    preset: Optional[str] = None
    model: Optional[str] = None
    base_url: Optional[str] = None
    given_url: Optional[str] = None
    key_env: str = ""
    key_source: str = KEY_NONE
    price: Price = Price(UNKNOWN)
    secret: Optional[Secret] = field(default=None, repr=False, compare=False)  # the key to send
    url_key: Optional[Secret] = field(default=None, repr=False, compare=False)  # what the URL carried

    # -- parsing ---------------------------------------------------------------------------
    @classmethod
    def parse(cls, lm: Optional[str], *, model: Optional[str] = None, base_url: Optional[str] = None,
              key_env: Optional[str] = DEFAULT_KEY_ENV, api_key: Optional[str] = None, prices: Prices = None,
              price_in: Optional[float] = None, price_out: Optional[float] = None, free: bool = False,
              environ: Optional[Mapping[str, str]] = None) -> "LMSpec":
        """`lm`: ``openai``, a preset (``deepseek``, ``openai:deepseek``, ``ollama`` ...), ``local``,
        ``local:PATH_OR_ID``, ``local:image-knn``, or None / "" for no LM. `key_env` "" reads no
        variable; the default ``OPENAI_API_KEY`` stands for the preset's own variable. `prices`: a
        price table or the user's entries; `price_in`/`price_out` and `free` as the user gave them."""
        text = (lm or "").strip()
        head, _, rest = text.partition(":")
        kind = head.strip().lower()
        given = (base_url or "").strip() or None
        url_key = userinfo_secret(given)
        given = strip_userinfo(given) if given else None  # stored without a key, whatever the kind
        if not kind or kind == "none":
            return cls(NONE, given_url=given, price=Price(FREE, (0.0, 0.0), NO_LM))
        if kind == "local":
            name = rest.strip()
            if name.lower() in _IMAGE_KNN_NAMES:
                return cls(LOCAL_IMAGE, IMAGE_KNN_SPEC, given_url=given, price=Price(FREE, (0.0, 0.0), IN_PROCESS))
            chosen = name or (str(model).strip() if model else None) or None
            return cls(LOCAL_TEXT, text, model=chosen, given_url=given, price=Price(FREE, (0.0, 0.0), IN_PROCESS))
        preset = None if kind == "openai" and not rest else get_preset(rest if kind == "openai" else head)
        url = (given or (preset or PRESETS["openai"]).base_url).rstrip("/")
        env = DEFAULT_KEY_ENV if key_env is None else key_env
        if preset is not None and preset.key_env and env == DEFAULT_KEY_ENV:
            env = preset.key_env
        chosen = (str(model).strip() if model else None) or (
            preset.example_model if preset else (None if given else PRESETS["openai"].example_model))
        environ = os.environ if environ is None else environ
        key, source = None, KEY_NONE
        for value, where in ((api_key, KEY_PASTED), (environ.get(env) if env else None, KEY_ENV), (url_key, KEY_URL)):
            if value and value.strip():
                key, source = value.strip(), where
                break
        price = endpoint_price(chosen, preset=preset, prices=prices, price_in=price_in, price_out=price_out, free=free)
        return cls(ENDPOINT, text, preset.name if preset else None, chosen, url, given, env, source, price,
                   Secret(key) if key else None, Secret(url_key) if url_key else None)

    @classmethod
    def from_config(cls, cfg: Any, api_key: Optional[str] = None, *, key_env: Optional[str] = None,
                    environ: Optional[Mapping[str, str]] = None) -> "LMSpec":
        """The LM of a `RunConfig` (or anything with its ``lm*`` and ``price_*`` fields)."""
        return cls.parse(getattr(cfg, "lm", None), model=getattr(cfg, "lm_model", None),
                         base_url=getattr(cfg, "lm_base_url", None),
                         key_env=getattr(cfg, "lm_key_env", DEFAULT_KEY_ENV) if key_env is None else key_env,
                         api_key=api_key, price_in=getattr(cfg, "price_in", None),
                         price_out=getattr(cfg, "price_out", None), environ=environ)

    # -- what it is ------------------------------------------------------------------------
    @property
    def is_local(self) -> bool:
        """An in-process model (no endpoint, no key, no money)."""
        return self.kind in (LOCAL_TEXT, LOCAL_IMAGE)

    @property
    def is_endpoint(self) -> bool:
        return self.kind == ENDPOINT

    @property
    def is_loopback(self) -> bool:
        """An endpoint on this machine (needs no key; says nothing about its price)."""
        return self.kind == ENDPOINT and is_local_url(self.base_url)

    @property
    def needs_key(self) -> bool:
        return self.kind == ENDPOINT and not self.is_loopback

    @property
    def missing_key(self) -> bool:
        return self.needs_key and self.secret is None

    @property
    def key(self) -> Optional[str]:
        """The key to send (memory only), None when there is none."""
        return self.secret.reveal() if self.secret is not None else None

    def check_endpoint(self, policy: Any) -> None:
        """Refuse (`ea_core.llm.endpoints.EndpointRefused`) an endpoint that `policy` (an
        `EndpointPolicy`; None: any) does not allow; an in-process model is always allowed."""
        if self.kind == ENDPOINT and policy is not None:
            policy.check_url(self.base_url)

    def without_key(self) -> "LMSpec":
        """The same spec holding no key (what may be pickled: a `Secret` refuses to be)."""
        return LMSpec(self.kind, self.spec, self.preset, self.model, self.base_url, self.given_url, self.key_env,
                      self.key_source, self.price)

    def to_dict(self) -> dict[str, Any]:
        """Everything but the key."""
        return {"kind": self.kind, "spec": self.spec, "preset": self.preset, "model": self.model,
                "base_url": self.base_url, "key_env": self.key_env, "key_source": self.key_source,
                "is_local": self.is_local, "is_loopback": self.is_loopback, "needs_key": self.needs_key,
                "price": {"status": self.price.status, "per_1m": self.price.per_1m, "source": self.price.source}}
