"""Classify with any OpenAI-compatible chat API (OpenAI, DeepSeek, Qwen, GLM, Ollama, vLLM ...).

Why it is built this way:

* LM answers cost money, so each one is written to the `AnswerCache` as soon as it arrives and
  a rerun pays for nothing twice. A request that still fails after retries becomes a `FAILED`
  answer (never lost, never cached) so a later run asks again.
* Endpoints differ in what they accept. Structured output (a JSON schema whose ``label`` is an
  enum of the labels) and token log-probs are used when an endpoint takes them; when it rejects
  them (HTTP 400 naming the parameter) the provider falls back and remembers that for its
  endpoint and model: in the provider instance (not in the process: two providers, or two users'
  runs, learn independently) and in the cache's capability table, which is how providers sharing
  an `AnswerCache` (and later processes) learn from each other. What a probe learns never changes a
  prompt's cache key (the key holds the request as asked for), so an answer bought once is found
  again by every later run, whatever the endpoint turned out to take. While support is unknown the first
  requests go one at a time, so a rejection is met once, not once per parallel request.
* Retries are done here, not by the SDK (its ``max_retries`` is 0): exponential backoff with
  jitter on 429, 5xx, timeouts and dropped connections, honouring ``Retry-After``.
* A reply that is no answer (``choices: []``, ``content: null``, a body that is not JSON) is a
  transient failure like a 5xx: retried, never cached. A reply that names no label is an answer:
  cached, counted as unparseable. So `LMUsage.failures` (asked again next run) and
  `LMUsage.unparseable` (paid for, kept) never mix.
* Nothing listening is noticed: `check_endpoint` (one free ``GET /models``) before a run, and a
  stage stops with `LMError` after `max_connection_failures` connection failures in a row instead
  of retrying every input for minutes.
* Processes sharing a cache do not buy a prompt twice: a key is claimed in the cache before its
  request is sent, and a process that finds another's live claim waits for that answer.
* A cache that cannot be written (full disk) stops the stage with an `LMError` that says how much
  space is needed; answers received meanwhile stay in the provider's memory and are written (and
  served) by its next `classify`.
* A kill -9 loses only the requests in flight (at most `concurrency`): they may be billed but
  their answers never arrived; every answer that arrived is in the cache.
* Images (vision LMs): an `ImageInput` is downscaled to ``image_max_side`` and sent as a base64
  data URL in an ``image_url`` content part; the prompt is keyed on the SHA-256 of the bytes sent,
  never the file name (see `ea_core.llm.images`). A model known to be text-only
  (`ea_core.llm.presets.model_accepts_images`) or ``vision=False`` refuses images with a
  `ConfigError` before any request; an endpoint that rejects the image stops the stage with an
  `LMError` saying it may be a text model.
* The API key lives only in memory: it is never written to the cache, a log, `describe()`,
  `repr()` or an error message (error texts are scrubbed of it). A key given in the base URL
  (``http://user:KEY@host/v1``) is taken out of the URL before the URL is stored or shown, and
  used as the key when no other is given.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import email.utils
import json
import logging
import math
import os
import random
import re
import secrets
import sqlite3
import threading
import time
from dataclasses import dataclass
from typing import Any, Optional, Sequence, Union

from ea_core.errors import Cancelled, ConfigError, LMError
from ea_core.events import CancelToken, ProgressCallback
from ea_core.llm._progress import UsageTracker
from ea_core.llm.base import (FAILED, LMAnswer, LMInput, LMProvider, LMUsage, has_images, normalize_request,
                               refuse_images)
from ea_core.llm.cache import ANSWERED, BUSY, AnswerCache, CachedAnswer, human_bytes, is_disk_full, make_key
from ea_core.llm.cost import Budget, CostEstimate, PriceTable, estimate_tokens, message_tokens
from ea_core.llm.images import DEFAULT_IMAGE_MAX_SIDE, ImagePrep, ImageSettings, has_image_parts
from ea_core.llm.presets import is_local_url, model_accepts_images
from ea_core.llm.urls import strip_userinfo, userinfo_secret
from ea_core.llm.prompt import Example, PromptTemplate, find_label

log = logging.getLogger("ea_core.llm")

DEFAULT_BASE_URL = "https://api.openai.com/v1"
RETRY_STATUSES = {408, 409, 425, 429, 500, 502, 503, 504, 520, 522, 524, 529}
FATAL_STATUSES = {401, 403, 404}
#: Connection failures in a row (no HTTP reply in between) after which a stage stops; the
#: provider's default is max(this, 2 x concurrency), so one burst of parallel timeouts is not
#: mistaken for a dead endpoint.
MAX_CONNECTION_FAILURES = 8
Mode = Union[str, bool]

class _Secret:
    """Holds the API key; prints as *** and refuses to be pickled."""

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        self._value = value

    def reveal(self) -> str:
        return self._value

    def __repr__(self) -> str:
        return "'***'"

    __str__ = __repr__

    def __reduce__(self) -> Any:
        raise TypeError("The API key is not picklable.")


class _Fatal(Exception):
    """An error every further request would hit too (bad key, unknown model, nothing listening)."""


class BadReply(Exception):
    """An HTTP 200 that carries no answer (no choices, null content, not JSON): retried like a 5xx."""


@dataclass(frozen=True)
class _Wait:
    """Another process has claimed this prompt's key: wait for its answer instead of buying it."""

    key: str


@dataclass(frozen=True)
class _Mode:
    structured: bool
    logprobs: bool
    temperature: bool = True  # False: the endpoint rejects `temperature` (some reasoning models)
    max_tokens: bool = True  # False: send `max_completion_tokens` instead (newer OpenAI models)


def _check_mode(name: str, value: Mode) -> Mode:
    if value not in ("auto", True, False):
        raise ConfigError(f"{name} must be 'auto', True or False, not {value!r}.")
    return value


def run_sync(factory: Any) -> Any:
    """Run the coroutine made by `factory()` to completion from sync code.

    Works in a thread without an event loop; when called from inside a running loop (a notebook,
    an async web handler) it runs the coroutine on a fresh loop in a helper thread and blocks.
    """
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(factory())
    with concurrent.futures.ThreadPoolExecutor(max_workers=1) as pool:
        return pool.submit(lambda: asyncio.run(factory())).result()


class OpenAIProvider(LMProvider):
    """An LM behind an OpenAI-compatible ``/chat/completions`` endpoint, via the `openai` SDK.

    ``use_structured_output`` / ``use_logprobs``: ``"auto"`` (use when accepted, detect and
    remember a rejection), True (always send; a rejection is a failure) or False (never send).

    Confidence (`LMAnswer.confidence`, only with log-probs): the probability the LM gave to the
    tokens spelling the chosen label, given the reply so far, i.e. exp(sum of their log-probs).
    For labels that differ in their first token this is the LM's probability of that label
    (greedy decoding picks the label at its first token); for labels sharing a prefix it is a
    slightly conservative approximation.

    Cancellation: when the `CancelToken` is set, no further requests are sent, requests in flight
    are abandoned, `classify` returns what was answered (and cached) so far, and every other input
    gets ``FAILED`` with error ``"cancelled"``; call ``cancel.check()`` afterwards to raise.

    Budget: before each request the shared `Budget` is checked; once spent, the remaining inputs
    get ``FAILED`` with error ``"budget exhausted"`` and ``LMUsage.budget_exhausted`` is set.
    Cached answers are still served. Answers from the cache have ``cached=True`` and
    ``cost_usd=0`` (their token counts are those of the original call).
    """

    def __init__(
        self,
        model: str,
        base_url: Optional[str] = None,
        api_key: Optional[str] = None,
        key_env: str = "OPENAI_API_KEY",
        cache: Optional[AnswerCache] = None,
        concurrency: int = 8,
        max_retries: int = 5,
        timeout_s: float = 30.0,
        prompt: Optional[PromptTemplate] = None,
        few_shot: Optional[Sequence[Example]] = None,
        temperature: float = 0.0,
        prices: Union[PriceTable, dict[str, Any], str, None] = None,
        budget: Optional[Budget] = None,
        use_structured_output: Mode = "auto",
        use_logprobs: Mode = "auto",
        max_tokens: Optional[int] = 64,
        backoff_base_s: float = 1.0,
        backoff_max_s: float = 60.0,
        max_retry_after_s: float = 300.0,
        max_connection_failures: Optional[int] = None,
        claim_poll_s: float = 0.2,
        image_max_side: int = DEFAULT_IMAGE_MAX_SIDE,
        image_detail: str = "auto",
        image_format: str = "PNG",
        vision: Mode = "auto",
    ) -> None:
        if not model or not str(model).strip():
            raise ConfigError("Name the LM model to use (e.g. --lm-model gpt-4o-mini).")
        if int(concurrency) < 1:
            raise ConfigError("LM concurrency must be at least 1.")
        self.model = str(model).strip()
        given_url = (base_url or DEFAULT_BASE_URL).strip()
        url_secret = userinfo_secret(given_url)
        self.base_url = strip_userinfo(given_url).rstrip("/")  # what is stored and shown: never a key
        self.key_env = key_env
        self.local = is_local_url(self.base_url)
        key = api_key or (os.environ.get(key_env) if key_env else None) or url_secret or ""
        if not key.strip():
            if not self.local:
                raise LMError(
                    f"No API key for {self.base_url}: set the {key_env or 'OPENAI_API_KEY'} environment variable "
                    "(or name the variable that holds your key with --lm-key-env)."
                )
            key = "not-needed"  # local servers (Ollama, vLLM, llama.cpp) ignore the key
        self._key = _Secret(key.strip())
        self._url_secret = _Secret(url_secret) if url_secret else None  # masked in messages too
        self.cache = cache
        self.concurrency = int(concurrency)
        self.max_retries = max(int(max_retries), 0)
        self.timeout_s = float(timeout_s)
        self.prompt = prompt or PromptTemplate()
        if few_shot:
            self.prompt = self.prompt.with_examples(few_shot)
        self.temperature = temperature
        self.prices = PriceTable.coerce(prices)
        self.budget = budget
        self.use_structured_output = _check_mode("use_structured_output", use_structured_output)
        self.use_logprobs = _check_mode("use_logprobs", use_logprobs)
        self.max_tokens = max_tokens
        self.backoff_base_s = float(backoff_base_s)
        self.backoff_max_s = float(backoff_max_s)
        self.max_retry_after_s = float(max_retry_after_s)
        self.max_connection_failures = (
            max(MAX_CONNECTION_FAILURES, 2 * self.concurrency) if max_connection_failures is None
            else max(int(max_connection_failures), 1)
        )
        self.claim_poll_s = float(claim_poll_s)
        # Images: sent at most image_max_side px on the longer side (see ea_core.llm.images).
        # vision: "auto" (refuse images only for models known to be text-only), True, False.
        self.images = ImageSettings(int(image_max_side), str(image_detail), str(image_format))
        self.vision = _check_mode("vision", vision)
        # A claim is refreshed at every attempt; one older than the longest wait between two
        # attempts (plus a margin) belongs to a process that stopped working on it.
        self.claim_ttl_s = self.timeout_s + max(self.backoff_max_s, self.max_retry_after_s) + 30.0
        self.top_logprobs = 5
        # Answers received but not yet written to the cache (its disk was full): key -> answer.
        # Served to later `classify` calls and written by them as soon as the cache takes them.
        self._unsaved: dict[str, CachedAnswer] = {}
        self._unsaved_lock = threading.Lock()
        # What this provider learnt about its endpoint: {"structured": bool, "logprobs": bool,
        # "temperature": bool, "max_tokens": bool}; guarded by a lock because `classify` may be
        # called from several threads (each runs its own event loop).
        self._capabilities: dict[str, bool] = {}
        self._caps_lock = threading.Lock()
        self._caps_loaded = False  # the cache's table is read on first use, then once per classify

    # ------------------------------------------------------------------------ identity

    @property
    def gives_confidence(self) -> bool:  # type: ignore[override]
        return self._mode().logprobs

    @property
    def price_known(self) -> bool:
        return self.prices.known(self.model) or self.local

    @property
    def accepts_images(self) -> bool:  # type: ignore[override]
        """Whether images are sent: ``vision=True``, or "auto" and the model is not known to be text-only."""
        return self.vision is True or (self.vision == "auto" and model_accepts_images(self.model) is not False)

    def describe(self) -> dict[str, Any]:
        """Settings that identify this LM (never the key)."""
        price = self.prices.price(self.model)
        self._load_caps()
        caps = self._caps()
        return {
            "provider": "openai-compatible",
            "model": self.model,
            "base_url": self.base_url,
            "key_env": self.key_env,
            "concurrency": self.concurrency,
            "max_retries": self.max_retries,
            "timeout_s": self.timeout_s,
            "temperature": self.temperature,
            "max_tokens": self.max_tokens,
            "structured_output": {"setting": self.use_structured_output, "supported": caps.get("structured")},
            "logprobs": {"setting": self.use_logprobs, "supported": caps.get("logprobs")},
            "price_usd_per_1m": (
                {"input": price[0], "output": price[1]}
                if price
                else ({"input": 0.0, "output": 0.0, "note": "local endpoint"} if self.local else "price unknown")
            ),
            "budget_usd": None if self.budget is None else self.budget.max_usd,
            "images": {**self.images.to_dict(), "vision": self.vision, "accepts_images": self.accepts_images},
            "prompt": self.prompt.to_dict(image_data=False),
        }

    def __repr__(self) -> str:
        return f"OpenAIProvider(model={self.model!r}, base_url={self.base_url!r}, key_env={self.key_env!r})"

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["_key"] = None  # never pickle the key; re-read from the environment on load
        state["_url_secret"] = None
        state["cache"] = None
        state.pop("_caps_lock", None)  # locks do not pickle; the copy gets its own
        state.pop("_unsaved_lock", None)
        state["_unsaved"] = {}
        state["_capabilities"] = self._caps()
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._caps_lock = threading.Lock()
        self._unsaved_lock = threading.Lock()
        key = os.environ.get(self.key_env or "", "") or ("not-needed" if self.local else "")
        self._key = _Secret(key)

    def scrub(self, text: str) -> str:
        """`text` with the API key (and anything that looks like a key) masked."""
        for secret in (self._key, getattr(self, "_url_secret", None)):
            value = secret.reveal() if secret else ""
            if value and len(value) >= 4:
                text = text.replace(value, "***")
        text = re.sub(r"(Bearer\s+)\S+", r"\1***", text, flags=re.I)
        return re.sub(r"\b(sk-[A-Za-z0-9]*-?)[A-Za-z0-9_\-\*\.]{6,}", r"\1***", text)

    # ---------------------------------------------------------------------- capabilities

    def _caps(self) -> dict[str, bool]:
        """A copy of what this provider knows about its endpoint's capabilities."""
        if not self._caps_loaded:
            self._load_caps()
        with self._caps_lock:
            return dict(self._capabilities)

    def _load_caps(self) -> None:
        """Add what the cache's capability table knows and this provider does not yet (another
        provider on the same cache, or an earlier process, may have learnt it). What this provider
        learnt itself wins. Called at the start of each `classify` / `estimate`: one small query."""
        saved = self.cache.capabilities(self.base_url, self.model) if self.cache is not None else {}
        with self._caps_lock:
            for name, value in saved.items():
                if isinstance(value, (bool, int)):
                    self._capabilities.setdefault(name, bool(value))
            self._caps_loaded = True

    def _set_cap(self, name: str, value: bool) -> None:
        with self._caps_lock:
            old = self._capabilities.get(name)
            self._capabilities[name] = value
        if old != value:
            log.info("LM endpoint %s model %s: %s supported = %s", self.base_url, self.model, name, value)
            if self.cache is not None:
                self.cache.set_capability(self.base_url, self.model, name, value)

    def _mode(self) -> _Mode:
        caps = self._caps()

        def on(setting: Mode, name: str) -> bool:
            return setting is True or (setting == "auto" and caps.get(name) is not False)

        return _Mode(
            on(self.use_structured_output, "structured"),
            on(self.use_logprobs, "logprobs"),
            temperature=caps.get("temperature") is not False,
            max_tokens=caps.get("max_tokens") is not False,
        )

    def _unknown(self, mode: _Mode) -> bool:
        caps = self._caps()
        return (mode.structured and self.use_structured_output == "auto" and "structured" not in caps) or (
            mode.logprobs and self.use_logprobs == "auto" and "logprobs" not in caps
        )

    # --------------------------------------------------------------------------- requests

    def _settings(self, labels: Sequence[str], mode: Optional[_Mode] = None) -> dict[str, Any]:
        """What a cache key holds: the request as the user asked for it (`mode` None), never what a
        probe learnt the endpoint takes, so an answer is found again whatever later probes learn.
        With `mode`: the settings as keyed before that rule (`_legacy_key`)."""
        if mode is None:
            return {
                "temperature": self.temperature,
                "max_tokens": self.max_tokens,
                "structured": list(labels) if self.use_structured_output is not False else False,
                "logprobs": self.top_logprobs if self.use_logprobs is not False else False,
            }
        return {
            "temperature": self.temperature if mode.temperature else None,
            "max_tokens": self.max_tokens,
            "structured": list(labels) if mode.structured else False,
            "logprobs": self.top_logprobs if mode.logprobs else False,
        }

    def _key_for(self, messages: list[dict[str, str]], labels: Sequence[str]) -> str:
        """The prompt's cache key: the same before and after any capability probe."""
        return make_key(self.base_url, self.model, messages, self._settings(labels))

    def _legacy_key(self, messages: list[dict[str, str]], labels: Sequence[str], mode: _Mode) -> Optional[str]:
        """The key an answer got when keys followed the probed mode (caches written before): looked
        up on a miss so those answers are not bought again. None when it is the current key."""
        old = make_key(self.base_url, self.model, messages, self._settings(labels, mode))
        return None if old == self._key_for(messages, labels) else old

    def _lookup(self, keys: dict[str, str], legacy: dict[str, Optional[str]]) -> dict[str, CachedAnswer]:
        """Cached answers by current key (id -> key / legacy key), legacy keys tried on a miss."""
        if self.cache is None:
            return {}
        hits = self.cache.get_many(keys.values())
        missing = {legacy[i]: keys[i] for i in keys if keys[i] not in hits and legacy.get(i)}
        if missing:
            for old, record in self.cache.get_many(missing).items():
                hits[missing[old]] = record
        return hits

    def _body(self, messages: list[dict[str, str]], labels: Sequence[str], mode: _Mode) -> dict[str, Any]:
        body: dict[str, Any] = {"model": self.model, "messages": messages}
        if mode.temperature:
            body["temperature"] = self.temperature
        if self.max_tokens:
            body["max_tokens" if mode.max_tokens else "max_completion_tokens"] = self.max_tokens
        if mode.structured:
            body["response_format"] = {
                "type": "json_schema",
                "json_schema": {
                    "name": "classification",
                    "strict": True,
                    "schema": {
                        "type": "object",
                        "properties": {"label": {"type": "string", "enum": [str(lab) for lab in labels]}},
                        "required": ["label"],
                        "additionalProperties": False,
                    },
                },
            }
        if mode.logprobs:
            body["logprobs"] = True
            body["top_logprobs"] = self.top_logprobs
        return body

    def _rejected_feature(self, exc: Exception, mode: _Mode) -> Optional[str]:
        """Which optional feature a 400/422 error complains about (None: not a capability issue)."""
        body = getattr(exc, "body", None)
        text = (str(getattr(exc, "message", "")) + " " + (json.dumps(body) if body is not None else "")).lower()
        auto_s = mode.structured and self.use_structured_output == "auto"
        auto_l = mode.logprobs and self.use_logprobs == "auto"
        if mode.structured and any(w in text for w in ("response_format", "json_schema", "response format", "structured")):
            return "structured" if auto_s else None  # forced on (True): a rejection is a failure
        if mode.logprobs and "logprob" in text:
            return "logprobs" if auto_l else None
        if self.max_tokens and mode.max_tokens and "max_tokens" in text and "max_completion_tokens" in text:
            return "max_tokens"
        if mode.temperature and "temperature" in text:
            return "temperature"
        generic = ("unsupported", "not support", "unknown param", "unrecognized", "extra", "not allowed", "invalid param")
        if any(w in text for w in generic) and not any(w in text for w in ("context", "too long", "maximum")):
            return "structured" if auto_s else ("logprobs" if auto_l else None)
        return None

    def _retry_after(self, exc: Exception) -> Optional[float]:
        response = getattr(exc, "response", None)
        headers = getattr(response, "headers", None)
        if headers is None:
            return None
        for name, scale in (("retry-after-ms", 0.001), ("retry-after", 1.0)):
            value = headers.get(name)
            if value is None:
                continue
            try:
                return min(max(float(value) * scale, 0.0), self.max_retry_after_s)
            except ValueError:
                pass
            parsed = email.utils.parsedate_tz(value)
            if parsed is not None:
                return min(max(email.utils.mktime_tz(parsed) - time.time(), 0.0), self.max_retry_after_s)
        return None

    def _backoff(self, attempt: int) -> float:
        return min(self.backoff_max_s, self.backoff_base_s * (2**attempt)) * (0.5 + random.random() / 2)

    def _from_cache(self, hit: CachedAnswer, labels: Sequence[str]) -> Optional[LMAnswer]:
        if hit.label_str is None:
            label = find_label(hit.raw, labels)[0]
        elif hit.label_str in labels:
            label = list(labels).index(hit.label_str)
        else:
            return None
        return LMAnswer(
            label=label,
            confidence=hit.confidence,
            raw=hit.raw,
            prompt_tokens=hit.prompt_tokens,
            completion_tokens=hit.completion_tokens,
            cost_usd=0.0,
            latency_s=0.0,
            cached=True,
        )

    async def _request(
        self, client: Any, messages: list[dict[str, str]], labels: Sequence[str], state: "_RunState"
    ) -> Union[LMAnswer, _Wait]:
        """One input: send (with fallbacks and retries) until answered, or FAILED.

        With a cache, the prompt's key is claimed before each attempt (`AnswerCache.claim`): an
        answer another process stored meanwhile is used, and a key another process is asking
        about returns `_Wait` (the caller polls for that answer). The claim is dropped when the
        answer is stored, or released when the request fails.
        """
        import openai

        attempt = 0
        claimed: Optional[str] = None
        try:
            while True:
                mode = self._mode()
                probing = self._unknown(mode)
                if probing:
                    await state.probe_lock.acquire()
                    mode = self._mode()
                    probing = self._unknown(mode)
                    if not probing:
                        state.probe_lock.release()
                try:
                    if state.stopped:
                        return LMAnswer(label=FAILED, error=state.stop_reason)
                    key = self._key_for(messages, labels)
                    kept = self._unsaved_answer(key, labels)
                    if kept is not None:
                        return kept
                    if self.cache is not None and claimed is None:
                        try:
                            found = self.cache.claim(key, state.owner, self.claim_ttl_s)
                        except (sqlite3.Error, OSError) as exc:
                            self._storage_failed(state, exc)
                            return LMAnswer(label=FAILED, error=state.stop_reason)
                        if found == BUSY:
                            return _Wait(key)
                        if found == ANSWERED:
                            hit = self.cache.get(key)
                            answer = self._from_cache(hit, labels) if hit is not None else None
                            if answer is not None:
                                return answer
                            # stored under a label this task does not have: ask again, unclaimed
                        else:
                            claimed = key
                    elif claimed is not None:
                        self._refresh_claim(claimed, state)
                    if self.budget is not None and self.budget.exhausted:
                        state.budget_hit = True
                        return LMAnswer(label=FAILED, error="budget exhausted")
                    t0 = time.perf_counter()
                    try:
                        resp = await self._post(client, self._body(state.images.expand(messages), labels, mode))
                        state.connection_ok()
                        answer, record = self._answer(resp, messages, labels, mode, time.perf_counter() - t0)
                    except (openai.BadRequestError, openai.UnprocessableEntityError) as exc:
                        state.connection_ok()
                        if has_image_parts(messages) and _rejects_image(exc):
                            raise _Fatal(self._image_rejected_message(exc)) from None
                        feature = self._rejected_feature(exc, mode)
                        if feature is None:
                            return LMAnswer(label=FAILED, error=self.scrub(f"rejected by the endpoint: {_describe(exc)}"))
                        self._set_cap(feature, False)
                        continue  # a fallback, not a retry
                    except openai.APIStatusError as exc:
                        state.connection_ok()
                        if exc.status_code in FATAL_STATUSES:
                            raise _Fatal(self._fatal_message(exc)) from None
                        if exc.status_code not in RETRY_STATUSES and exc.status_code < 500:
                            return LMAnswer(label=FAILED, error=self.scrub(_describe(exc)))
                        error: Exception = exc
                    except (openai.APITimeoutError, openai.APIConnectionError) as exc:
                        if state.connection_failed() >= self.max_connection_failures:
                            raise _Fatal(self._unreachable_message(exc, state.connection_failures)) from None
                        error = exc
                    except (BadReply, openai.APIResponseValidationError) as exc:
                        state.connection_ok()
                        error = exc if isinstance(exc, BadReply) else BadReply(f"unreadable reply: {exc}")
                    else:
                        if self._store([key], record, state):
                            claimed = None  # storing it dropped the claim
                        return answer
                finally:
                    if probing:
                        state.probe_lock.release()
                if attempt >= self.max_retries:
                    return LMAnswer(
                        label=FAILED, error=self.scrub(f"{_describe(error)} (after {attempt + 1} attempts)")
                    )
                wait = self._retry_after(error)
                wait = self._backoff(attempt) if wait is None else wait * (1.0 + 0.1 * random.random())
                log.debug("LM request failed (%s); retry %d in %.2fs", type(error).__name__, attempt + 1, wait)
                attempt += 1
                await asyncio.sleep(wait)
        finally:
            if claimed is not None:
                self._release(claimed, state)

    # ------------------------------------------------------------------- claims and storage

    def _release(self, key: str, state: "_RunState") -> None:
        """Give up a claim (the request failed or moved to another key): others may try it."""
        if self.cache is None:
            return
        try:
            self.cache.release(key, state.owner)
        except (sqlite3.Error, OSError):
            pass  # a claim that cannot be dropped goes stale when this process ends

    def _refresh_claim(self, key: str, state: "_RunState") -> None:
        """Renew the claim's time before another attempt (a long retry must not look abandoned)."""
        assert self.cache is not None
        try:
            self.cache.claim(key, state.owner, self.claim_ttl_s)
        except (sqlite3.Error, OSError):
            pass

    def _unsaved_answer(self, key: str, labels: Sequence[str]) -> Optional[LMAnswer]:
        with self._unsaved_lock:
            record = self._unsaved.get(key)
        return None if record is None else self._from_cache(record, labels)

    def _store(self, keys: list[str], record: CachedAnswer, state: "_RunState") -> bool:
        """Record the spend and write the answer to the cache under `keys`; True when written.

        A write that fails (full disk, read-only) keeps the answer in memory (`_unsaved`) and
        stops the stage: buying answers that cannot be kept would waste money.
        """
        if self.budget is not None:
            try:
                self.budget.add(record.cost_usd, note=keys[0][:16])
            except OSError as exc:  # the ledger's disk: the amount still counts in memory
                ledger = getattr(self.budget, "ledger", None)
                self._storage_failed(state, exc, str(getattr(ledger, "path", "the spend ledger")))
        if self.cache is None:
            return True
        try:
            for key in keys:
                self.cache.put(key, record, endpoint=self.base_url, model=self.model)
            return True
        except (sqlite3.Error, OSError) as exc:
            with self._unsaved_lock:
                for key in keys:
                    self._unsaved[key] = record
            self._storage_failed(state, exc)
            return False

    def _storage_failed(self, state: "_RunState", exc: BaseException, where: Optional[str] = None) -> None:
        where = where or f"The LM answer cache {getattr(self.cache, 'path', '?')}"
        log.warning("%s cannot be written: %s", where, exc)
        if state.store_error is None:
            state.store_error, state.store_where = exc, where
        state.stop("stopped: the answer cache cannot be written")

    def flush_unsaved(self) -> int:
        """Write answers kept in memory (the cache's disk was full) to the cache; how many are still unsaved."""
        with self._unsaved_lock:
            pending = dict(self._unsaved)
        if not pending or self.cache is None:
            return len(pending)
        try:
            for key, record in pending.items():
                self.cache.put(key, record, endpoint=self.base_url, model=self.model)
                with self._unsaved_lock:
                    self._unsaved.pop(key, None)
        except (sqlite3.Error, OSError):
            pass
        with self._unsaved_lock:
            return len(self._unsaved)

    def _storage_message(self, exc: BaseException, where: str, still_to_ask: int) -> str:
        """What could not be written, how much space the cache needs, and what was kept."""
        path = getattr(self.cache, "path", "?")
        with self._unsaved_lock:
            kept = list(self._unsaved.values())
        size = sum(r.size_bytes() for r in kept)
        per_answer = size / len(kept) if kept else 600.0
        # the kept answers and the rest of the stage, twice over (WAL copy, then the database)
        need = max(2 * (size + per_answer * still_to_ask) + 1_000_000, 1_000_000)
        disk = f"{path}" if path == ":memory:" else f"the disk holding {path}"
        reason = ("the disk is full" if is_disk_full(exc) else f"{type(exc).__name__}: {exc}")
        text = f"{where} cannot be written ({reason}), so the stage stopped instead of buying answers it cannot keep. "
        if kept:
            text += (f"{len(kept)} paid answers ({human_bytes(size)}) are kept in memory and written as soon as "
                     "the cache takes them, if this process asks again. ")
        text += (f"Free at least {human_bytes(need)} on {disk} (or give --cache a path on another disk) and run "
                 "again: answers already in the cache are not bought twice.")
        return self.scrub(text)

    def _image_rejected_message(self, exc: Exception) -> str:
        return self.scrub(
            f"The LM endpoint {self.base_url} refused an image for model {self.model!r} ({_describe(exc)}). "
            f"{self.model!r} may be a text model; image tasks need a vision LM (e.g. gpt-4o-mini, qwen-vl-plus, "
            "glm-4v-flash, LLaVA or Qwen2-VL behind Ollama / vLLM), or --lm local:image-knn offline."
        )

    def _image_prep(self, inputs: Sequence[LMInput]) -> ImagePrep:
        """What downscales this call's images; ConfigError first when the model cannot take them."""
        if has_images(inputs) and not self.accepts_images:
            why = "(vision=False)" if self.vision is False else "(known text-only)"
            refuse_images(inputs, f"The LM {self.model!r} {why}")
        return ImagePrep(self.images)

    def _unreachable_message(self, exc: Exception, times: int) -> str:
        return self.scrub(
            f"The LM endpoint {self.base_url} could not be reached {times} times in a row "
            f"({_describe(exc)}); stopped instead of retrying. Check that the server is running and that the "
            "URL (--lm-base-url) is right, then run again: answers received so far are kept."
        )

    # ------------------------------------------------------------------------------ check

    def check_endpoint(self) -> dict[str, Any]:
        """Is anything listening at the endpoint, and does it take the key? One free request.

        ``GET /models`` (no tokens, no money, no cache entry): raises `LMError` when nothing
        answers (after 3 quick tries) or the key is refused (401/403). Any other reply means the
        server is up; ``models`` lists the ids it names (None if it has no such route).
        """
        return run_sync(self._acheck_endpoint)

    async def _acheck_endpoint(self) -> dict[str, Any]:
        import openai

        timeout = min(self.timeout_s, 20.0)
        client = openai.AsyncOpenAI(api_key=self._key.reveal(), base_url=self.base_url, max_retries=0, timeout=timeout)
        try:
            tries = 3
            for attempt in range(tries):
                t0 = time.perf_counter()
                try:
                    text = await client.get("/models", cast_to=str, options={"timeout": timeout})
                except openai.APIStatusError as exc:
                    if exc.status_code in (401, 403):
                        raise LMError(self._fatal_message(exc)) from None
                    return {"reachable": True, "status": exc.status_code, "models": None,
                            "latency_s": time.perf_counter() - t0}
                except openai.APIConnectionError as exc:
                    if attempt + 1 >= tries:
                        raise LMError(self._unreachable_message(exc, tries)) from None
                    await asyncio.sleep(min(self._backoff(attempt), 2.0))
                    continue
                try:
                    data = json.loads(text)
                    models = [str(m.get("id")) for m in data.get("data", []) if isinstance(m, dict)]
                except (ValueError, AttributeError, TypeError):
                    models = None
                return {"reachable": True, "status": 200, "models": models, "latency_s": time.perf_counter() - t0}
            raise AssertionError("unreachable")
        finally:
            await client.close()

    async def _post(self, client: Any, body: dict[str, Any]) -> dict[str, Any]:
        """POST /chat/completions and return the JSON reply as a dict (`BadReply` if it is none).

        The SDK's client does the transport (auth, URL, timeouts, error classes), but the body goes
        through ``client.post`` (the SDK's route for raw requests) rather than
        ``chat.completions.create``: its typed-parameter transform and response models cost a few
        ms of CPU per call, enough to keep 16 parallel requests well under the ideal rate on 2 cores.
        """
        text = await client.post("/chat/completions", body=body, cast_to=str, options={"timeout": self.timeout_s})
        try:
            data = json.loads(text)
        except ValueError:
            raise BadReply(f"the endpoint's reply is not JSON: {str(text)[:80]!r}") from None
        if not isinstance(data, dict):
            raise BadReply("the endpoint did not answer with a JSON object")
        return data

    def _fatal_message(self, exc: Any) -> str:
        status = exc.status_code
        detail = self.scrub(_describe(exc))
        if status == 401:
            return (
                f"The LM endpoint {self.base_url} rejected the API key (401). Check the key in "
                f"{self.key_env or 'OPENAI_API_KEY'} (or --lm-key-env). Details: {detail}"
            )
        if status == 404:
            return f"The LM endpoint {self.base_url} does not know model {self.model!r} (404). Details: {detail}"
        return f"The LM endpoint {self.base_url} refused the request ({status}). Details: {detail}"

    def _answer(
        self, resp: dict[str, Any], messages: Any, labels: Sequence[str], mode: _Mode, latency: float
    ) -> tuple[LMAnswer, CachedAnswer]:
        """The answer in a reply and what to cache (`BadReply` for a reply that carries no answer)."""
        choices = resp.get("choices")
        if not isinstance(choices, list) or not choices or not isinstance(choices[0], dict):
            raise BadReply("the endpoint answered with no choices")
        message = choices[0].get("message")
        if not isinstance(message, dict):
            raise BadReply("the endpoint's reply has no message")
        content = message.get("content")
        if content is None and message.get("refusal"):
            content = str(message["refusal"])  # a refusal is an answer (naming no label)
        if content is None:
            raise BadReply("the endpoint answered with empty content (null)")
        content = str(content)
        choice = choices[0]
        if mode.structured and self.use_structured_output == "auto":
            self._set_cap("structured", True)
        tokens = (choice.get("logprobs") or {}).get("content") if isinstance(choice.get("logprobs"), dict) else None
        if mode.logprobs and self.use_logprobs == "auto":
            self._set_cap("logprobs", bool(tokens))  # accepted but ignored counts as unsupported
        label, span = find_label(content, labels)
        confidence = _label_confidence(content, span, tokens) if label >= 0 and tokens else None
        usage = resp.get("usage") if isinstance(resp.get("usage"), dict) else None
        pt = int((usage or {}).get("prompt_tokens") or 0)
        ct = int((usage or {}).get("completion_tokens") or 0)
        if usage is None:  # some servers omit usage: estimate so costs stay visible
            pt = sum(message_tokens(m, self.model) for m in messages)
            ct = estimate_tokens(content)
        cost = self.prices.cost(self.model, pt, ct)
        answer = LMAnswer(
            label=label,
            confidence=confidence,
            raw=content,
            prompt_tokens=pt,
            completion_tokens=ct,
            cost_usd=cost,
            latency_s=latency,
        )
        record = CachedAnswer(
            label_str=str(labels[label]) if label >= 0 else None,
            confidence=confidence,
            raw=content,
            prompt_tokens=pt,
            completion_tokens=ct,
            cost_usd=cost,
            latency_s=latency,
        )
        return answer, record

    # ---------------------------------------------------------------------------- classify

    def classify(
        self,
        inputs: Sequence[LMInput],
        labels: Sequence[str],
        *,
        stage: str = "lm",
        callback: Optional[ProgressCallback] = None,
        cancel: Optional[CancelToken] = None,
    ) -> tuple[list[LMAnswer], LMUsage]:
        """Classify every input (cache first, then the endpoint); one answer per input, in order."""
        return run_sync(lambda: self.aclassify(inputs, labels, stage=stage, callback=callback, cancel=cancel))

    async def aclassify(
        self,
        inputs: Sequence[LMInput],
        labels: Sequence[str],
        *,
        stage: str = "lm",
        callback: Optional[ProgressCallback] = None,
        cancel: Optional[CancelToken] = None,
    ) -> tuple[list[LMAnswer], LMUsage]:
        """The async form of `classify`."""
        import openai

        inputs, labels = normalize_request(inputs, labels)
        prep = self._image_prep(inputs)
        n = len(inputs)
        usage = LMUsage(price_unknown=not self.price_known)
        tracker = UsageTracker(stage, n, callback, usage)
        answers: list[Optional[LMAnswer]] = [None] * n

        # Identical prompts are asked once (an image: the same bytes sent, whatever its name).
        groups: dict[str, list[int]] = {}
        prompts: dict[str, list[dict[str, Any]]] = {}
        for i, (text, pair) in enumerate(inputs):
            messages = self.prompt.render(text, pair, labels, image_part=prep.part)
            gid = json.dumps(messages, ensure_ascii=False)
            groups.setdefault(gid, []).append(i)
            prompts[gid] = messages

        self._load_caps()
        mode = self._mode()
        state = _RunState({gid: self._key_for(m, labels) for gid, m in prompts.items()}, prep)
        self.flush_unsaved()  # answers kept in memory by an earlier call whose disk was full

        def emit(force: bool = False) -> None:
            try:
                tracker.emit(force=force)
            except Cancelled:  # a callback may cancel by raising, like `cancel.check()`
                state.stop("cancelled")

        hits = self._lookup(state.keys, {gid: self._legacy_key(m, labels, mode) for gid, m in prompts.items()})
        with self._unsaved_lock:
            hits.update({k: self._unsaved[k] for k in state.keys.values() if k in self._unsaved})
        pending: list[str] = []
        for gid, idx in groups.items():
            hit = hits.get(state.keys[gid])
            answer = self._from_cache(hit, labels) if hit is not None else None
            if answer is None:
                pending.append(gid)
                continue
            for i in idx:
                answers[i] = answer if i == idx[0] else LMAnswer(**{**answer.to_dict(), "cached": True})
                tracker.record(answers[i], paid=False)
        emit(force=True)

        fatal: list[str] = []
        if cancel is not None and cancel.cancelled:
            state.stop("cancelled")
        if pending and not state.stopped:
            queue: asyncio.Queue[str] = asyncio.Queue()
            for gid in pending:
                queue.put_nowait(gid)
            client = openai.AsyncOpenAI(
                api_key=self._key.reveal(), base_url=self.base_url, max_retries=0, timeout=self.timeout_s
            )

            def finish(gid: str, answer: LMAnswer) -> None:
                idx = groups[gid]
                paid = not answer.cached and answer.label != FAILED
                for j, i in enumerate(idx):
                    copy = answer if j == 0 else LMAnswer(**{**answer.to_dict(), "cached": True, "cost_usd": 0.0})
                    answers[i] = copy
                    tracker.record(copy, paid=paid and j == 0)
                if answer.error == "budget exhausted":
                    usage.budget_exhausted = True
                    state.stop("budget exhausted")
                emit()

            waiting: dict[str, str] = {}  # prompt -> key another process is asking about

            def look_again() -> None:
                """Take the answers other processes stored for the prompts we wait on; the rest
                go back in the queue (a claim given up, or gone stale, is then taken over)."""
                if not waiting or self.cache is None:
                    return
                found = self.cache.get_many(waiting.values())
                for gid, key in list(waiting.items()):
                    del waiting[gid]
                    hit = found.get(key)
                    answer = self._from_cache(hit, labels) if hit is not None else None
                    if answer is not None:
                        finish(gid, answer)
                    else:
                        queue.put_nowait(gid)

            async def worker() -> None:
                while not state.stopped:
                    if cancel is not None and cancel.cancelled:
                        state.stop("cancelled")
                        return
                    try:
                        gid = queue.get_nowait()
                    except asyncio.QueueEmpty:
                        if not waiting:
                            return
                        await asyncio.sleep(self.claim_poll_s)
                        look_again()
                        continue
                    try:
                        answer = await self._request(client, prompts[gid], labels, state)
                    except _Fatal as exc:
                        fatal.append(str(exc))
                        state.stop("stopped: " + str(exc))
                        return
                    if isinstance(answer, _Wait):
                        waiting[gid] = answer.key
                        continue
                    finish(gid, answer)

            async def watch_cancel(tasks: list[asyncio.Task[None]]) -> None:
                while True:
                    await asyncio.sleep(0.05)
                    if cancel is not None and cancel.cancelled:
                        state.stop("cancelled")
                        for task in tasks:
                            task.cancel()
                        return

            try:
                tasks = [asyncio.create_task(worker()) for _ in range(min(self.concurrency, len(pending)))]
                watcher = asyncio.create_task(watch_cancel(tasks))
                await asyncio.gather(*tasks, return_exceptions=True)
                watcher.cancel()
                for task in tasks:
                    if not task.cancelled() and task.exception() is not None:
                        exc = task.exception()
                        if isinstance(exc, Cancelled):
                            state.stop("cancelled")
                        else:
                            raise exc  # type: ignore[misc]
            finally:
                await client.close()

        reason = state.stop_reason or "not answered"
        for i in range(n):
            if answers[i] is None:
                answers[i] = LMAnswer(label=FAILED, error=reason)
                tracker.record(answers[i], paid=False)  # type: ignore[arg-type]
        if state.budget_hit:
            usage.budget_exhausted = True
        emit(force=True)
        if fatal:
            raise LMError(fatal[0])
        if state.store_error is not None:
            self.flush_unsaved()  # the disk may have room again already
            unanswered = sum(1 for a in answers if a is not None and a.label == FAILED)
            raise LMError(self._storage_message(state.store_error, state.store_where, unanswered))
        return [a for a in answers if a is not None], usage

    # ---------------------------------------------------------------------------- estimate

    def estimate(self, inputs: Sequence[LMInput], labels: Sequence[str]) -> CostEstimate:
        """Expected calls, tokens (about 4 characters each) and USD before a stage starts.

        Cache hits and repeated inputs are not counted as calls.
        """
        inputs, labels = normalize_request(inputs, labels)
        prep = self._image_prep(inputs)
        self._load_caps()
        mode = self._mode()
        keys: dict[str, tuple[str, list[dict[str, Any]]]] = {}
        for text, pair in inputs:
            messages = self.prompt.render(text, pair, labels, image_part=prep.part)
            keys.setdefault(self._key_for(messages, labels), (json.dumps(messages), messages))
        cached_keys = set(self._lookup({k: k for k in keys}, {k: self._legacy_key(m, labels, mode)
                                                              for k, (_, m) in keys.items()}))
        todo = [m for k, (_, m) in keys.items() if k not in cached_keys]
        per_answer = sum(estimate_tokens(lab) for lab in labels) / len(labels) + (8 if mode.structured else 1)
        pt = sum(sum(message_tokens(msg, self.model) for msg in m) for m in todo)
        if mode.structured:
            pt += len(todo) * (40 + sum(estimate_tokens(lab) for lab in labels))  # the schema
        ct = int(round(per_answer * len(todo)))
        return CostEstimate(
            calls=len(todo),
            cached=len(inputs) - len(todo),
            prompt_tokens=int(pt),
            completion_tokens=ct,
            usd=self.prices.cost(self.model, int(pt), ct),
            price_known=self.price_known,
        )


class _RunState:
    """Per-`classify` state shared by the workers (all on one event loop)."""

    def __init__(self, keys: dict[str, str], images: Optional[ImagePrep] = None) -> None:
        self.keys = keys
        self.images = images or ImagePrep()  # expands the image references of prompts when sending
        self.owner = f"{os.getpid()}-{secrets.token_hex(6)}"  # whose claims these are in the cache
        self.probe_lock = asyncio.Lock()
        self.stopped = False
        self.stop_reason: Optional[str] = None
        self.budget_hit = False
        self.connection_failures = 0  # in a row: any HTTP reply resets it
        self.store_error: Optional[BaseException] = None
        self.store_where = ""  # what could not be written (the cache, the spend ledger)

    def connection_ok(self) -> None:
        self.connection_failures = 0

    def connection_failed(self) -> int:
        self.connection_failures += 1
        return self.connection_failures

    def stop(self, reason: str) -> None:
        if not self.stopped:
            self.stopped = True
            self.stop_reason = reason


def _describe(exc: Exception) -> str:
    if isinstance(exc, BadReply):
        return str(exc)[:500]
    status = getattr(exc, "status_code", None)
    message = str(getattr(exc, "message", "") or exc) or type(exc).__name__
    return f"{type(exc).__name__}{f' ({status})' if status else ''}: {message}"[:500]


def _rejects_image(exc: Exception) -> bool:
    """Whether a 400/422 complains about the image (not about an optional parameter)."""
    body = getattr(exc, "body", None)
    text = (str(getattr(exc, "message", "")) + " " + (json.dumps(body) if body is not None else "")).lower()
    params = ("response_format", "json_schema", "logprob", "max_tokens", "max_completion_tokens", "temperature")
    return ("image" in text or "vision" in text or "multimodal" in text) and not any(p in text for p in params)


def _label_confidence(content: str, span: Optional[tuple[int, int]], tokens: Any) -> Optional[float]:
    """exp(sum of log-probs of the reply tokens that overlap the label's characters)."""
    if span is None or not tokens:
        return None
    try:
        pieces = [(str(t.get("token", "")), float(t.get("logprob") or 0.0)) for t in tokens]
    except (AttributeError, TypeError, ValueError):
        return None
    rebuilt = "".join(p for p, _ in pieces)
    start, end = span
    if rebuilt != content:  # tokens don't spell the content exactly: find the label in them
        where = rebuilt.lower().find(content[start:end].lower())
        if where < 0:
            return None
        start, end = where, where + (end - start)
    pos, total, found = 0, 0.0, False
    for piece, logprob in pieces:
        lo, hi = pos, pos + len(piece)
        pos = hi
        if hi > start and lo < end:
            total += logprob
            found = True
    if not found or math.isnan(total):
        return None
    return float(min(1.0, max(0.0, math.exp(total))))
