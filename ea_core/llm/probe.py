"""What an endpoint accepts, learnt from its replies: structured output, log-probs, temperature,
``max_tokens``.

Why: endpoints differ, and the features that make answers parseable and confidences usable are
worth sending wherever they are taken. A feature set to "auto" is sent until the endpoint rejects
it (HTTP 400 naming the parameter); the provider then falls back and remembers that, in itself (two
providers, or two users' runs, learn independently) and in the answer cache's capability table,
which is how providers sharing a cache, and later processes, learn from each other. What a probe
learns never changes a prompt's cache key.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass
from typing import Any, Optional, Union

from ea_core.errors import ConfigError
from ea_core.llm.transport import error_text

log = logging.getLogger("ea_core.llm")

#: A feature setting: "auto" (use when accepted), True (always send), False (never send).
Mode = Union[str, bool]


def check_mode(name: str, value: Mode) -> Mode:
    if value not in ("auto", True, False):
        raise ConfigError(f"{name} must be 'auto', True or False, not {value!r}.")
    return value


@dataclass(frozen=True)
class RequestMode:
    """What one request sends."""

    structured: bool
    logprobs: bool
    temperature: bool = True  # False: the endpoint rejects `temperature` (some reasoning models)
    max_tokens: bool = True  # False: send `max_completion_tokens` instead (newer OpenAI models)


def rejects_image(exc: BaseException) -> bool:
    """Whether a 400/422 complains about the image (not about an optional parameter)."""
    text = error_text(exc)
    params = ("response_format", "json_schema", "logprob", "max_tokens", "max_completion_tokens", "temperature")
    return ("image" in text or "vision" in text or "multimodal" in text) and not any(p in text for p in params)


class CapabilityProbe:
    """What one endpoint and model accept, as learnt so far; `store` (an `AnswerStore`) keeps it
    across providers and processes when it has a cache. Thread-safe: `classify` may run in several threads."""

    def __init__(self, store: Any, structured: Mode = "auto", logprobs: Mode = "auto") -> None:
        self.store = store
        self.structured = check_mode("use_structured_output", structured)
        self.logprobs = check_mode("use_logprobs", logprobs)
        self._known: dict[str, bool] = {}
        self._lock = threading.Lock()
        self._loaded = False  # the store's table is read on first use, then once per classify

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["_known"] = self.known()
        del state["_lock"]
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._lock = threading.Lock()

    def known(self) -> dict[str, bool]:
        """A copy of what is known: {"structured", "logprobs", "temperature", "max_tokens"} -> bool."""
        if not self._loaded:
            self.load()
        with self._lock:
            return dict(self._known)

    def load(self) -> None:
        """Add what the store's table knows and this probe does not (another provider, or an earlier
        process, may have learnt it); what this probe learnt itself wins. One small query."""
        saved = self.store.capabilities()
        with self._lock:
            for name, value in saved.items():
                if isinstance(value, (bool, int)):
                    self._known.setdefault(name, bool(value))
            self._loaded = True

    def set(self, name: str, value: bool) -> None:
        with self._lock:
            old = self._known.get(name)
            self._known[name] = value
        if old != value:
            log.info("LM endpoint %s model %s: %s supported = %s", self.store.endpoint, self.store.model, name, value)
            self.store.set_capability(name, value)

    def mode(self) -> RequestMode:
        """What the next request sends."""
        caps = self.known()

        def on(setting: Mode, name: str) -> bool:
            return setting is True or (setting == "auto" and caps.get(name) is not False)

        return RequestMode(on(self.structured, "structured"), on(self.logprobs, "logprobs"),
                           temperature=caps.get("temperature") is not False,
                           max_tokens=caps.get("max_tokens") is not False)

    def unknown(self, mode: RequestMode) -> bool:
        """Whether `mode` sends an "auto" feature whose support is not known yet (ask one at a time)."""
        caps = self.known()
        return (mode.structured and self.structured == "auto" and "structured" not in caps) or (
            mode.logprobs and self.logprobs == "auto" and "logprobs" not in caps)

    def learn_from_reply(self, mode: RequestMode, tokens: Any) -> None:
        """A reply came: what it sent was accepted (log-probs accepted but absent count as unsupported)."""
        if mode.structured and self.structured == "auto":
            self.set("structured", True)
        if mode.logprobs and self.logprobs == "auto":
            self.set("logprobs", bool(tokens))

    def rejected_feature(self, exc: BaseException, mode: RequestMode, max_tokens: Optional[int]) -> Optional[str]:
        """Which optional feature a 400/422 complains about (None: not a capability issue, or a
        feature forced on, whose rejection is a failure)."""
        text = error_text(exc)
        auto_s = mode.structured and self.structured == "auto"
        auto_l = mode.logprobs and self.logprobs == "auto"
        structured_words = ("response_format", "json_schema", "response format", "structured")
        if mode.structured and any(w in text for w in structured_words):
            return "structured" if auto_s else None
        if mode.logprobs and "logprob" in text:
            return "logprobs" if auto_l else None
        if max_tokens and mode.max_tokens and "max_tokens" in text and "max_completion_tokens" in text:
            return "max_tokens"
        if mode.temperature and "temperature" in text:
            return "temperature"
        generic = ("unsupported", "not support", "unknown param", "unrecognized", "extra", "not allowed",
                   "invalid param")
        if any(w in text for w in generic) and not any(w in text for w in ("context", "too long", "maximum")):
            return "structured" if auto_s else ("logprobs" if auto_l else None)
        return None
