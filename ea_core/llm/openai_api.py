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
  an `AnswerCache` (and later processes) learn from each other. While support is unknown the first
  requests go one at a time, so a rejection is met once, not once per parallel request.
* Retries are done here, not by the SDK (its ``max_retries`` is 0): exponential backoff with
  jitter on 429, 5xx, timeouts and dropped connections, honouring ``Retry-After``.
* The API key lives only in memory: it is never written to the cache, a log, `describe()`,
  `repr()` or an error message (error texts are scrubbed of it).
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
import threading
import time
from dataclasses import dataclass
from typing import Any, Optional, Sequence, Union

from ea_core.errors import Cancelled, ConfigError, LMError
from ea_core.events import CancelToken, ProgressCallback
from ea_core.llm._progress import UsageTracker
from ea_core.llm.base import FAILED, LMAnswer, LMInput, LMProvider, LMUsage, normalize_request
from ea_core.llm.cache import AnswerCache, CachedAnswer, make_key
from ea_core.llm.cost import Budget, CostEstimate, PriceTable, estimate_tokens
from ea_core.llm.presets import is_local_url
from ea_core.llm.prompt import Example, PromptTemplate, find_label

log = logging.getLogger("ea_core.llm")

DEFAULT_BASE_URL = "https://api.openai.com/v1"
RETRY_STATUSES = {408, 409, 425, 429, 500, 502, 503, 504, 520, 522, 524, 529}
FATAL_STATUSES = {401, 403, 404}
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
    """An error every further request would hit too (bad key, unknown model)."""


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
    ) -> None:
        if not model or not str(model).strip():
            raise ConfigError("Name the LM model to use (e.g. --lm-model gpt-4o-mini).")
        if int(concurrency) < 1:
            raise ConfigError("LM concurrency must be at least 1.")
        self.model = str(model).strip()
        self.base_url = (base_url or DEFAULT_BASE_URL).strip().rstrip("/")
        self.key_env = key_env
        self.local = is_local_url(self.base_url)
        key = api_key or (os.environ.get(key_env) if key_env else None) or ""
        if not key.strip():
            if not self.local:
                raise LMError(
                    f"No API key for {self.base_url}: set the {key_env or 'OPENAI_API_KEY'} environment variable "
                    "(or name the variable that holds your key with --lm-key-env)."
                )
            key = "not-needed"  # local servers (Ollama, vLLM, llama.cpp) ignore the key
        self._key = _Secret(key.strip())
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
        self.top_logprobs = 5
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
            "prompt": self.prompt.to_dict(),
        }

    def __repr__(self) -> str:
        return f"OpenAIProvider(model={self.model!r}, base_url={self.base_url!r}, key_env={self.key_env!r})"

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["_key"] = None  # never pickle the key; re-read from the environment on load
        state["cache"] = None
        state.pop("_caps_lock", None)  # locks do not pickle; the copy gets its own
        state["_capabilities"] = self._caps()
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._caps_lock = threading.Lock()
        key = os.environ.get(self.key_env or "", "") or ("not-needed" if self.local else "")
        self._key = _Secret(key)

    def scrub(self, text: str) -> str:
        """`text` with the API key (and anything that looks like a key) masked."""
        key = self._key.reveal() if self._key else ""
        if key and len(key) >= 4:
            text = text.replace(key, "***")
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

    def _settings(self, labels: Sequence[str], mode: _Mode) -> dict[str, Any]:
        return {
            "temperature": self.temperature if mode.temperature else None,
            "max_tokens": self.max_tokens,
            "structured": list(labels) if mode.structured else False,
            "logprobs": self.top_logprobs if mode.logprobs else False,
        }

    def _key_for(self, messages: list[dict[str, str]], labels: Sequence[str], mode: _Mode) -> str:
        return make_key(self.base_url, self.model, messages, self._settings(labels, mode))

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
    ) -> LMAnswer:
        """One input: send (with fallbacks and retries) until answered, or FAILED."""
        import openai

        attempt = 0
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
                key = self._key_for(messages, labels, mode)
                if key != state.first_key(messages) and self.cache is not None:
                    hit = self.cache.get(key)
                    if hit is not None:
                        answer = self._from_cache(hit, labels)
                        if answer is not None:
                            return answer
                if self.budget is not None and self.budget.exhausted:
                    state.budget_hit = True
                    return LMAnswer(label=FAILED, error="budget exhausted")
                if state.stopped:
                    return LMAnswer(label=FAILED, error=state.stop_reason)
                t0 = time.perf_counter()
                try:
                    resp = await self._post(client, self._body(messages, labels, mode))
                except (openai.BadRequestError, openai.UnprocessableEntityError) as exc:
                    feature = self._rejected_feature(exc, mode)
                    if feature is None:
                        return LMAnswer(label=FAILED, error=self.scrub(f"rejected by the endpoint: {_describe(exc)}"))
                    self._set_cap(feature, False)
                    continue  # a fallback, not a retry
                except openai.APIStatusError as exc:
                    if exc.status_code in FATAL_STATUSES:
                        raise _Fatal(self._fatal_message(exc)) from None
                    if exc.status_code not in RETRY_STATUSES and exc.status_code < 500:
                        return LMAnswer(label=FAILED, error=self.scrub(_describe(exc)))
                    error: Exception = exc
                except (openai.APITimeoutError, openai.APIConnectionError) as exc:
                    error = exc
                except (openai.APIResponseValidationError, ValueError) as exc:
                    return LMAnswer(label=FAILED, error=self.scrub(f"unreadable response: {_describe(exc)}"))
                else:
                    return self._answer(resp, messages, labels, mode, time.perf_counter() - t0, key)
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

    async def _post(self, client: Any, body: dict[str, Any]) -> dict[str, Any]:
        """POST /chat/completions and return the JSON reply as a dict.

        The SDK's client does the transport (auth, URL, timeouts, error classes), but the body goes
        through ``client.post`` (the SDK's route for raw requests) rather than
        ``chat.completions.create``: its typed-parameter transform and response models cost a few
        ms of CPU per call, enough to keep 16 parallel requests well under the ideal rate on 2 cores.
        """
        text = await client.post("/chat/completions", body=body, cast_to=str, options={"timeout": self.timeout_s})
        data = json.loads(text)
        if not isinstance(data, dict):
            raise ValueError("the endpoint did not answer with a JSON object")
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
        self, resp: dict[str, Any], messages: Any, labels: Sequence[str], mode: _Mode, latency: float, key: str
    ) -> LMAnswer:
        choices = resp.get("choices") or [{}]
        choice = choices[0] if isinstance(choices[0], dict) else {}
        content = str((choice.get("message") or {}).get("content") or "")
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
            pt = sum(estimate_tokens(m["content"]) + 4 for m in messages)
            ct = estimate_tokens(content)
        cost = self.prices.cost(self.model, pt, ct)
        if self.budget is not None:
            self.budget.add(cost)
        answer = LMAnswer(
            label=label,
            confidence=confidence,
            raw=content,
            prompt_tokens=pt,
            completion_tokens=ct,
            cost_usd=cost,
            latency_s=latency,
        )
        if self.cache is not None:
            self.cache.put(
                key,
                CachedAnswer(
                    label_str=str(labels[label]) if label >= 0 else None,
                    confidence=confidence,
                    raw=content,
                    prompt_tokens=pt,
                    completion_tokens=ct,
                    cost_usd=cost,
                    latency_s=latency,
                ),
                endpoint=self.base_url,
                model=self.model,
            )
        return answer

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
        n = len(inputs)
        usage = LMUsage(price_unknown=not self.price_known)
        tracker = UsageTracker(stage, n, callback, usage)
        answers: list[Optional[LMAnswer]] = [None] * n

        # Identical prompts are asked once.
        groups: dict[str, list[int]] = {}
        prompts: dict[str, list[dict[str, str]]] = {}
        for i, (text, pair) in enumerate(inputs):
            messages = self.prompt.render(text, pair, labels)
            gid = json.dumps(messages, ensure_ascii=False)
            groups.setdefault(gid, []).append(i)
            prompts[gid] = messages

        self._load_caps()
        mode = self._mode()
        state = _RunState({gid: self._key_for(m, labels, mode) for gid, m in prompts.items()})

        def emit(force: bool = False) -> None:
            try:
                tracker.emit(force=force)
            except Cancelled:  # a callback may cancel by raising, like `cancel.check()`
                state.stop("cancelled")

        hits = self.cache.get_many(state.keys.values()) if self.cache is not None else {}
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

            async def worker() -> None:
                while not state.stopped:
                    if cancel is not None and cancel.cancelled:
                        state.stop("cancelled")
                        return
                    try:
                        gid = queue.get_nowait()
                    except asyncio.QueueEmpty:
                        return
                    try:
                        answer = await self._request(client, prompts[gid], labels, state)
                    except _Fatal as exc:
                        fatal.append(str(exc))
                        state.stop("stopped: " + str(exc))
                        return
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
        return [a for a in answers if a is not None], usage

    # ---------------------------------------------------------------------------- estimate

    def estimate(self, inputs: Sequence[LMInput], labels: Sequence[str]) -> CostEstimate:
        """Expected calls, tokens (about 4 characters each) and USD before a stage starts.

        Cache hits and repeated inputs are not counted as calls.
        """
        labels = [str(lab) for lab in labels]
        self._load_caps()
        mode = self._mode()
        keys: dict[str, tuple[str, list[dict[str, str]]]] = {}
        for text, pair in inputs:
            messages = self.prompt.render(str(text), None if pair is None else str(pair), labels)
            keys.setdefault(self._key_for(messages, labels, mode), (json.dumps(messages), messages))
        cached_keys = set(self.cache.get_many(keys)) if self.cache is not None else set()
        todo = [m for k, (_, m) in keys.items() if k not in cached_keys]
        per_answer = sum(estimate_tokens(lab) for lab in labels) / len(labels) + (8 if mode.structured else 1)
        pt = sum(sum(estimate_tokens(msg["content"]) + 4 for msg in m) for m in todo)
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

    def __init__(self, keys: dict[str, str]) -> None:
        self.keys = keys
        self._first = keys
        self.probe_lock = asyncio.Lock()
        self.stopped = False
        self.stop_reason: Optional[str] = None
        self.budget_hit = False

    def first_key(self, messages: list[dict[str, str]]) -> Optional[str]:
        return self._first.get(json.dumps(messages, ensure_ascii=False))

    def stop(self, reason: str) -> None:
        if not self.stopped:
            self.stopped = True
            self.stop_reason = reason


def _describe(exc: Exception) -> str:
    status = getattr(exc, "status_code", None)
    message = str(getattr(exc, "message", "") or exc) or type(exc).__name__
    return f"{type(exc).__name__}{f' ({status})' if status else ''}: {message}"[:500]


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
