"""Classify with any OpenAI-compatible chat API (OpenAI, DeepSeek, Qwen, GLM, Ollama, vLLM ...).

`OpenAIProvider` composes the shared pieces: `Transport` (the endpoint, its key, what an error
means, `RetryPolicy`), `AnswerStore` (the answer cache with claims), the `Budget` and its ledger
(`ea_core.llm.spend`), `CapabilityProbe` (structured output, log-probs ...) and `BatchRun` (one
classify call). What stays here is the chat protocol: the request body, the answer in a reply,
and the loop that sends one prompt until it is answered.

Why it behaves as it does:

* Each answer is written to the cache the moment it arrives, so a rerun pays for nothing twice;
  a request that still fails after retries is a `FAILED` answer (never cached), asked again by
  the next run. A kill -9 loses only the requests in flight.
* A reply that is no answer (no choices, null content, not JSON) is retried like a 5xx; a reply
  naming no label is an answer, paid for and cached: `LMUsage.failures` and
  `LMUsage.unparseable` never mix.
* Nothing listening is noticed: `check_endpoint` (one free ``GET /models``) before a run, and a
  stage stops after a run of connection failures instead of retrying every input for minutes.
* A cache (or ledger) that cannot be written stops the stage with an `LMError` saying how much
  space is needed; answers received meanwhile stay in memory and are written by a later call.
* Images go as base64 data URLs, downscaled, keyed on the bytes sent; a model known to be
  text-only refuses them before any request (`ea_core.llm.images`, `ea_core.llm.presets`).
* The key lives in memory only (`ea_core.llm.secrets`); a key written in the base URL is split out
  by `LMSpec` and the URL is stored and shown without it.
"""

from __future__ import annotations

import asyncio
import logging
import math
import os
import sqlite3
import time
from pathlib import Path
from typing import Any, Optional, Sequence, Union

from ea_core.errors import ConfigError, LMError
from ea_core.events import CancelToken, EventKind, ProgressCallback, ProgressEvent
from ea_core.llm.base import (FAILED, LMAnswer, LMInput, LMProvider, LMUsage, has_images, normalize_request,
                               refuse_images)
from ea_core.llm.batch import BUDGET_EXHAUSTED, BatchRun, Wait
from ea_core.llm.batch_api import BATCH_PRICE_FACTOR, CHAT_PATH, FINAL_STATUSES, BatchRecord, read_results, request_lines
from ea_core.llm.cache import ANSWERED, BUSY, AnswerCache, CachedAnswer, make_key
from ea_core.llm.cost import CostEstimate, PriceTable, estimate_tokens, message_tokens
from ea_core.llm.endpoints import EndpointPolicy
from ea_core.llm.images import DEFAULT_IMAGE_MAX_SIDE, ImagePrep, ImageSettings, has_image_parts
from ea_core.llm.presets import PRESETS, model_accepts_images
from ea_core.llm.probe import CapabilityProbe, Mode, RequestMode, check_mode, rejects_image
from ea_core.llm.prompt import Example, PromptTemplate, find_label
from ea_core.llm.secrets import Secret
from ea_core.llm.spec import DEFAULT_KEY_ENV, LMSpec
from ea_core.llm.spend import Budget
from ea_core.llm.store import AnswerStore, to_answer
from ea_core.llm.transport import (BadReply, Fatal, Refused, Rejected, RetryPolicy, SendError, Transient, Transport,
                                   Unreachable, describe_error, run_sync)

log = logging.getLogger("ea_core.llm")

DEFAULT_BASE_URL = PRESETS["openai"].base_url
_RETRY_SETTINGS = ("max_retries", "timeout_s", "backoff_base_s", "backoff_max_s", "max_retry_after_s",
                   "max_connection_failures")
_IMAGE_SETTINGS = {"image_max_side": DEFAULT_IMAGE_MAX_SIDE, "image_detail": "auto", "image_format": "PNG"}

__all__ = ["DEFAULT_BASE_URL", "OpenAIProvider", "run_sync"]


class OpenAIProvider(LMProvider):
    """An LM behind an OpenAI-compatible ``/chat/completions`` endpoint, via the `openai` SDK.

    ``use_structured_output`` / ``use_logprobs`` / ``vision``: ``"auto"`` (use when accepted, or
    for images: unless the model is known to be text-only), True (always) or False (never).
    `settings`: the `RetryPolicy` fields (``max_retries``, ``timeout_s``, ``backoff_base_s``,
    ``backoff_max_s``, ``max_retry_after_s``, ``max_connection_failures``) and ``image_max_side``,
    ``image_detail``, ``image_format`` (`ImageSettings`). `preset` and `free` are as in `LMSpec`.
    `endpoint_policy`: where requests may go (None: the policy the server gave this process, see
    `ea_core.llm.endpoints`).

    Confidence (only with log-probs): exp(sum of the log-probs of the tokens spelling the chosen
    label): the LM's probability of that label when labels differ in their first token, a slightly
    conservative one when they share a prefix.

    Cancellation: when the `CancelToken` is set no further requests are sent, `classify` returns
    what was answered (and cached), every other input is ``FAILED`` ("cancelled"). Budget: once the
    shared `Budget` is spent the remaining inputs are ``FAILED`` ("budget exhausted") and
    ``LMUsage.budget_exhausted`` is set; cached answers are still served, at no cost.
    """

    def __init__(
        self,
        model: str,
        base_url: Optional[str] = None,
        api_key: Optional[str] = None,
        key_env: str = DEFAULT_KEY_ENV,
        cache: Optional[AnswerCache] = None,
        concurrency: int = 8,
        prompt: Optional[PromptTemplate] = None,
        few_shot: Optional[Sequence[Example]] = None,
        temperature: float = 0.0,
        prices: Union[PriceTable, dict[str, Any], str, None] = None,
        budget: Optional[Budget] = None,
        use_structured_output: Mode = "auto",
        use_logprobs: Mode = "auto",
        max_tokens: Optional[int] = 64,
        vision: Mode = "auto",
        claim_poll_s: float = 0.2,
        preset: Optional[str] = None,
        free: bool = False,
        endpoint_policy: Optional[EndpointPolicy] = None,
        **settings: Any,
    ) -> None:
        if not model or not str(model).strip():
            raise ConfigError("Name the LM model to use (e.g. --lm-model gpt-4o-mini).")
        if int(concurrency) < 1:
            raise ConfigError("LM concurrency must be at least 1.")
        unknown = sorted(set(settings) - set(_RETRY_SETTINGS) - set(_IMAGE_SETTINGS))
        if unknown:
            raise TypeError(f"OpenAIProvider got unexpected setting(s): {', '.join(unknown)}")
        self.concurrency = int(concurrency)
        self.retry = RetryPolicy.of(self.concurrency, **{k: settings[k] for k in _RETRY_SETTINGS if k in settings})
        image = {**_IMAGE_SETTINGS, **{k: settings[k] for k in _IMAGE_SETTINGS if k in settings}}
        self.images = ImageSettings(int(image["image_max_side"]), str(image["image_detail"]),
                                    str(image["image_format"]))
        self.prices = PriceTable.coerce(prices)
        self.spec = LMSpec.parse(preset or "openai", model=model, base_url=base_url, key_env=key_env or "",
                                 api_key=api_key, prices=self.prices, free=free)
        self.model = str(self.spec.model)
        self.base_url = str(self.spec.base_url)  # what is stored and shown: never a key
        self.key_env = key_env
        self.local = self.spec.is_loopback  # on this machine: no key needed (which says nothing about money)
        key = self.spec.key
        if key is None:
            if self.spec.needs_key:
                raise LMError(
                    f"No API key for {self.base_url}: set the {key_env or 'OPENAI_API_KEY'} environment variable "
                    "(or name the variable that holds your key with --lm-key-env)."
                )
            key = "not-needed"  # local servers (Ollama, vLLM, llama.cpp) ignore the key
        self.transport = Transport(self.base_url, self.model, Secret(key), key_env=key_env, retry=self.retry,
                                   mask=(self.spec.url_key,) if self.spec.url_key else (), policy=endpoint_policy)
        self.cache = cache
        self.store = AnswerStore(cache, self.base_url, self.model, claim_ttl_s=self.retry.claim_ttl_s)
        self.probe = CapabilityProbe(self.store, use_structured_output, use_logprobs)
        self.prompt = prompt or PromptTemplate()
        if few_shot:
            self.prompt = self.prompt.with_examples(few_shot)
        self.temperature = temperature
        self.budget = budget
        self.max_tokens = max_tokens
        self.vision = check_mode("vision", vision)
        self.claim_poll_s = float(claim_poll_s)
        self.top_logprobs = 5

    # ------------------------------------------------------------------------ identity

    @property
    def price(self) -> Any:
        """The model's `ea_core.llm.spec.Price` (known, free because the user said so, or unknown)."""
        return self.spec.price

    @property
    def price_known(self) -> bool:
        return self.spec.price.known

    @property
    def use_structured_output(self) -> Mode:
        return self.probe.structured

    @property
    def use_logprobs(self) -> Mode:
        return self.probe.logprobs

    @property
    def gives_confidence(self) -> bool:  # type: ignore[override]
        return self._mode().logprobs

    @property
    def accepts_images(self) -> bool:  # type: ignore[override]
        """Whether images are sent: ``vision=True``, or "auto" and the model is not known to be text-only."""
        return self.vision is True or (self.vision == "auto" and model_accepts_images(self.model) is not False)

    @property
    def _unsaved(self) -> dict[str, CachedAnswer]:
        return self.store.unsaved

    def describe(self) -> dict[str, Any]:
        """Settings that identify this LM (never the key)."""
        self._load_caps()
        caps = self.probe.known()
        return {
            "provider": "openai-compatible",
            "model": self.model,
            "base_url": self.base_url,
            "key_env": self.key_env,
            "concurrency": self.concurrency,
            "max_retries": self.retry.max_retries,
            "timeout_s": self.retry.timeout_s,
            "temperature": self.temperature,
            "max_tokens": self.max_tokens,
            "structured_output": {"setting": self.use_structured_output, "supported": caps.get("structured")},
            "logprobs": {"setting": self.use_logprobs, "supported": caps.get("logprobs")},
            "price_usd_per_1m": self.price.describe(),
            "budget_usd": None if self.budget is None else self.budget.max_usd,
            "images": {**self.images.to_dict(), "vision": self.vision, "accepts_images": self.accepts_images},
            "prompt": self.prompt.to_dict(image_data=False),
        }

    def __repr__(self) -> str:
        return f"OpenAIProvider(model={self.model!r}, base_url={self.base_url!r}, key_env={self.key_env!r})"

    def __getstate__(self) -> dict[str, Any]:
        # The pieces drop what must not travel: the transport its key, the store its cache and
        # the answers it kept in memory.
        state = self.__dict__.copy()
        state["cache"] = None
        state["spec"] = self.spec.without_key()
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        key = os.environ.get(self.key_env or "", "") or ("not-needed" if self.local else "")
        self.transport.set_key(Secret(key))  # re-read from the environment, never from the pickle

    def scrub(self, text: str) -> str:
        """`text` with the API key (and anything that looks like a key) masked."""
        return self.transport.scrub(text)

    # ---------------------------------------------------------------------- capabilities

    def _load_caps(self) -> None:
        self.probe.load()

    def _mode(self) -> RequestMode:
        return self.probe.mode()

    async def _mode_for_request(self, run: BatchRun) -> tuple[RequestMode, bool]:
        """What the next request sends; while an "auto" feature's support is unknown, requests go
        one at a time (then the probe lock is held: True), so a rejection is met once."""
        mode = self.probe.mode()
        if not self.probe.unknown(mode):
            return mode, False
        await run.probe_lock.acquire()
        mode = self.probe.mode()
        if self.probe.unknown(mode):
            return mode, True
        run.probe_lock.release()
        return mode, False

    # --------------------------------------------------------------------------- requests

    def _settings(self, labels: Sequence[str], mode: Optional[RequestMode] = None) -> dict[str, Any]:
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

    def _legacy_key(self, messages: list[dict[str, str]], labels: Sequence[str], mode: RequestMode) -> Optional[str]:
        """The key an answer got when keys followed the probed mode (caches written before): looked
        up on a miss so those answers are not bought again. None when it is the current key."""
        old = make_key(self.base_url, self.model, messages, self._settings(labels, mode))
        return None if old == self._key_for(messages, labels) else old

    def _body(self, messages: list[dict[str, str]], labels: Sequence[str], mode: RequestMode) -> dict[str, Any]:
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

    def _answer(
        self, resp: dict[str, Any], messages: Any, labels: Sequence[str], mode: RequestMode, latency: float
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
        tokens = (choice.get("logprobs") or {}).get("content") if isinstance(choice.get("logprobs"), dict) else None
        self.probe.learn_from_reply(mode, tokens)
        label, span = find_label(content, labels)
        confidence = _label_confidence(content, span, tokens) if label >= 0 and tokens else None
        usage = resp.get("usage") if isinstance(resp.get("usage"), dict) else None
        pt = int((usage or {}).get("prompt_tokens") or 0)
        ct = int((usage or {}).get("completion_tokens") or 0)
        if usage is None:  # some servers omit usage: estimate so costs stay visible
            pt = sum(message_tokens(m, self.model) for m in messages)
            ct = estimate_tokens(content)
        cost = self.price.cost(pt, ct)
        answer = LMAnswer(label=label, confidence=confidence, raw=content, prompt_tokens=pt, completion_tokens=ct,
                          cost_usd=cost, latency_s=latency)
        record = CachedAnswer(label_str=str(labels[label]) if label >= 0 else None, confidence=confidence, raw=content,
                              prompt_tokens=pt, completion_tokens=ct, cost_usd=cost, latency_s=latency)
        return answer, record

    async def _request(
        self, client: Any, messages: list[dict[str, str]], labels: Sequence[str], run: BatchRun
    ) -> Union[LMAnswer, Wait]:
        """One prompt: send (with fallbacks and retries) until answered, or FAILED.

        With a cache, the prompt's key is claimed before sending (`_claim`) and refreshed at each
        retry; the claim is dropped when the answer is stored, or released when the request fails.
        A capability fallback is not a retry; `Fatal` (bad key, unknown model, nothing listening,
        an image refused) stops the whole call.
        """
        attempt = 0
        claimed: Optional[str] = None
        error: SendError
        try:
            while True:
                mode, probing = await self._mode_for_request(run)
                try:
                    if run.stopped:
                        return LMAnswer(label=FAILED, error=run.stop_reason)
                    key = self._key_for(messages, labels)
                    kept = self.store.kept(key, labels)
                    if kept is not None:
                        return kept
                    if claimed is None:
                        got = self._claim(key, labels, run)
                        if not isinstance(got, bool):
                            return got
                        claimed = key if got else None
                    else:
                        self.store.refresh(claimed, run.owner)
                    if self.budget is not None and self.budget.exhausted:
                        run.budget_hit = True
                        return LMAnswer(label=FAILED, error=BUDGET_EXHAUSTED)
                    t0 = time.perf_counter()
                    try:
                        resp = await self.transport.post_chat(client, self._body(run.images.expand(messages), labels,
                                                                                 mode))
                        run.connections.ok()
                        answer, record = self._answer(resp, messages, labels, mode, time.perf_counter() - t0)
                    except Unreachable as exc:
                        if run.connections.failed() >= self.retry.max_connection_failures:
                            raise Fatal(self.transport.unreachable_message(exc.cause, run.connections.count)) from None
                        error = exc
                    except BadReply as exc:
                        error = Transient(exc)
                    except Rejected as exc:
                        run.connections.ok()
                        if has_image_parts(messages) and rejects_image(exc.cause):
                            raise Fatal(self._image_rejected_message(exc.cause)) from None
                        feature = self.probe.rejected_feature(exc.cause, mode, self.max_tokens)
                        if feature is None:
                            return LMAnswer(label=FAILED, error=self.scrub(f"rejected by the endpoint: {exc.text}"))
                        self.probe.set(feature, False)
                        continue  # a fallback, not a retry
                    except Refused as exc:
                        run.connections.ok()
                        return LMAnswer(label=FAILED, error=self.scrub(exc.text))
                    except Transient as exc:
                        run.connections.ok()
                        error = exc
                    else:
                        if self._keep(key, record, run):
                            claimed = None  # storing it dropped the claim
                        return answer
                finally:
                    if probing:
                        run.probe_lock.release()
                if attempt >= self.retry.max_retries:
                    return LMAnswer(label=FAILED, error=self.scrub(f"{error.text} (after {attempt + 1} attempts)"))
                wait = self.retry.wait_s(error.cause, attempt)
                log.debug("LM request failed (%s); retry %d in %.2fs", type(error.cause).__name__, attempt + 1, wait)
                attempt += 1
                await asyncio.sleep(wait)
        finally:
            if claimed is not None:
                self.store.release(claimed, run.owner)

    def _claim(self, key: str, labels: Sequence[str], run: BatchRun) -> Union[bool, LMAnswer, Wait]:
        """Claim the prompt's key before sending it: True (ours now), False (ask unclaimed: no cache,
        or an answer stored under a label this task lacks), or what to return instead: the answer
        another process stored, `Wait` (another process is asking), FAILED (the cache cannot be written)."""
        if self.cache is None:
            return False
        try:
            found = self.store.claim(key, run.owner)
        except (sqlite3.Error, OSError) as exc:
            run.storage_failed(exc, self.store.where)
            return LMAnswer(label=FAILED, error=run.stop_reason)
        if found == BUSY:
            return Wait(key)
        if found == ANSWERED:
            hit = self.store.get_many([key]).get(key)
            answer = to_answer(hit, labels) if hit is not None else None
            return answer if answer is not None else False
        return True

    def _keep(self, key: str, record: CachedAnswer, run: BatchRun) -> bool:
        """Record the spend and write the answer to the cache; True when written. A write that fails
        keeps the answer in memory and stops the stage: buying answers that cannot be kept wastes money."""
        if self.budget is not None:
            try:
                self.budget.add(record.cost_usd, note=key[:16])
            except OSError as exc:  # the ledger's disk: the amount still counts in memory
                ledger = getattr(self.budget, "ledger", None)
                run.storage_failed(exc, str(getattr(ledger, "path", "the spend ledger")))
        error = self.store.put([key], record)
        if error is not None:
            run.storage_failed(error, self.store.where)
            return False
        return True

    def flush_unsaved(self) -> int:
        """Write answers kept in memory (the cache's disk was full) to the cache; how many are still unsaved."""
        return self.store.flush()

    def _image_rejected_message(self, exc: BaseException) -> str:
        return self.scrub(
            f"The LM endpoint {self.base_url} refused an image for model {self.model!r} ({describe_error(exc)}). "
            f"{self.model!r} may be a text model; image tasks need a vision LM (e.g. gpt-4o-mini, qwen-vl-plus, "
            "glm-4v-flash, LLaVA or Qwen2-VL behind Ollama / vLLM), or --lm local:image-knn offline."
        )

    def _image_prep(self, inputs: Sequence[LMInput]) -> ImagePrep:
        """What downscales this call's images; ConfigError first when the model cannot take them."""
        if has_images(inputs) and not self.accepts_images:
            why = "(vision=False)" if self.vision is False else "(known text-only)"
            refuse_images(inputs, f"The LM {self.model!r} {why}")
        return ImagePrep(self.images)

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
        inputs, labels = normalize_request(inputs, labels)
        prep = self._image_prep(inputs)
        # Identical prompts are asked once (an image: the same bytes sent, whatever its name).
        run = BatchRun([self.prompt.render(text, pair, labels, image_part=prep.part) for text, pair in inputs],
                       stage, callback, LMUsage(price_unknown=not self.price_known), prep)
        self._load_caps()
        mode = self._mode()
        run.keys = {gid: self._key_for(m, labels) for gid, m in run.prompts.items()}
        self.flush_unsaved()  # answers kept in memory by an earlier call whose disk was full
        hits = self.store.lookup(run.keys, {gid: self._legacy_key(m, labels, mode) for gid, m in run.prompts.items()})
        hits.update(self.store.kept_many(run.keys.values()))
        pending = run.take_cached({gid: to_answer(hits[key], labels) if key in hits else None
                                   for gid, key in run.keys.items()})
        if cancel is not None and cancel.cancelled:
            run.stop("cancelled")
        if pending and not run.stopped:
            async with self.transport.session() as client:
                await run.work(pending, lambda gid: self._request(client, run.prompts[gid], labels, run),
                               lambda keys: self.store.found(keys, labels), concurrency=self.concurrency,
                               cancel=cancel, poll_s=self.claim_poll_s)
        answers = run.close()
        if run.fatal:
            raise LMError(run.fatal[0])
        if run.store_error is not None:
            self.flush_unsaved()  # the disk may have room again already
            unanswered = sum(1 for a in answers if a.label == FAILED)
            raise LMError(self.scrub(self.store.storage_message(run.store_error, run.store_where, unanswered)))
        return answers, run.usage

    # ---------------------------------------------------------------------------- batch API

    def classify_batch(self, inputs: Sequence[LMInput], labels: Sequence[str], *, state_path: str | os.PathLike,
                       stage: str = "lm", callback: Optional[ProgressCallback] = None,
                       cancel: Optional[CancelToken] = None, poll_s: float = 30.0,
                       max_wait_s: Optional[float] = None) -> tuple[list[LMAnswer], LMUsage]:
        """`classify` through the endpoint's Batch API (`ea_core.llm.batch_api`): cached answers are
        used, the rest go in one batch billed at `BATCH_PRICE_FACTOR` of the price, written to the
        cache as they are read back. The batch id is saved at `state_path`, so a call after a
        restart polls the batch already submitted. Requests the batch did not answer (errors,
        expiry, cancel, `max_wait_s` reached) are FAILED: never cached, asked again next time."""
        return run_sync(lambda: self._aclassify_batch(inputs, labels, Path(state_path), stage, callback, cancel,
                                                      float(poll_s), max_wait_s))

    async def _aclassify_batch(self, inputs: Sequence[LMInput], labels: Sequence[str], state_path: Path, stage: str,
                               callback: Optional[ProgressCallback], cancel: Optional[CancelToken], poll_s: float,
                               max_wait_s: Optional[float]) -> tuple[list[LMAnswer], LMUsage]:
        inputs, labels = normalize_request(inputs, labels)
        prep = self._image_prep(inputs)
        self._load_caps()
        mode = self._mode()
        prompts = [self.prompt.render(text, pair, labels, image_part=prep.part) for text, pair in inputs]
        keys = [self._key_for(m, labels) for m in prompts]
        usage = LMUsage(price_unknown=not self.price_known)
        hits = self.store.lookup(dict(enumerate(keys)), {i: self._legacy_key(m, labels, mode)
                                                         for i, m in enumerate(prompts)})
        found = {k: to_answer(hits[k], labels) for k in set(keys) if k in hits}
        pending = {k: m for k, m in zip(keys, prompts) if found.get(k) is None}
        usage.cache_hits = sum(1 for k in keys if found.get(k) is not None)
        reason = "not answered by the batch"
        if pending:
            est = self.estimate([inp for inp, k in zip(inputs, keys) if k in pending], labels)
            batch_usd = est.usd * BATCH_PRICE_FACTOR
            if self.budget is not None and self.budget.max_usd is not None and \
                    self.budget.spent + batch_usd > self.budget.max_usd:
                raise LMError(f"The batch of {len(pending)} requests would cost ~${batch_usd:.4f} (batch price) and "
                              f"the budget has ${max(self.budget.max_usd - self.budget.spent, 0):.4f} left: raise "
                              "--budget-usd or ask fewer inputs.")
            record = BatchRecord.load(state_path)
            t0 = time.monotonic()
            async with self.transport.session() as client:
                if record.batch_id is None or not set(pending) <= set(record.keys):
                    bodies = {k: self._body(m, labels, mode) for k, m in pending.items()}
                    upload = await client.files.create(file=("requests.jsonl", request_lines(bodies)), purpose="batch")
                    batch = await client.batches.create(input_file_id=upload.id, endpoint=CHAT_PATH,
                                                        completion_window="24h")
                    record.batch_id, record.keys = batch.id, sorted(pending)
                    record.save()
                while True:
                    batch = await client.batches.retrieve(record.batch_id)
                    counts = getattr(batch, "request_counts", None)
                    if callback is not None:
                        done = int(getattr(counts, "completed", 0) or 0) + int(getattr(counts, "failed", 0) or 0)
                        callback(ProgressEvent(stage=stage, step=done, total=len(record.keys), kind=EventKind.LM,
                                               lm_stage=stage.split(":")[-1],
                                               message=f"LM batch {batch.status}: {done} of {len(record.keys)}"))
                    if batch.status in FINAL_STATUSES:
                        break
                    if (cancel is not None and cancel.cancelled) or (
                            max_wait_s is not None and time.monotonic() - t0 >= max_wait_s):
                        reason = "the batch is still running (its id is saved: the next run collects it)"
                        batch = None
                        break
                    await asyncio.sleep(poll_s)
                if batch is not None:
                    output = (await client.files.content(batch.output_file_id)).text if batch.output_file_id else None
                    errors = (await client.files.content(batch.error_file_id)).text if batch.error_file_id else None
                    results = read_results(output, errors)
                    reason = f"the batch ended {batch.status} without this request"
                    for key, reply in results.replies.items():
                        if key not in pending:
                            continue
                        try:
                            answer, cached = self._answer(reply, pending[key], labels, mode, 0.0)
                        except BadReply:
                            continue
                        answer.cost_usd *= BATCH_PRICE_FACTOR
                        cached.cost_usd *= BATCH_PRICE_FACTOR
                        self.store.put([key], cached)
                        if self.budget is not None:
                            self.budget.add(answer.cost_usd, note=f"batch {record.batch_id}")
                        found[key] = answer
                        usage.calls += 1
                        usage.prompt_tokens += answer.prompt_tokens
                        usage.completion_tokens += answer.completion_tokens
                        usage.cost_usd += answer.cost_usd
                        usage.unparseable += answer.label < 0
                        usage.with_confidence += answer.label >= 0 and answer.confidence is not None
                    record.clear()  # collected: what it left unanswered goes in a new batch next time
        answers = []
        for key in keys:
            answer = found.get(key)
            if answer is None:
                usage.failures += 1
                answer = LMAnswer(label=FAILED, error=reason)
            answers.append(answer)
        return answers, usage

    # ---------------------------------------------------------------------------- estimate

    def estimate(self, inputs: Sequence[LMInput], labels: Sequence[str]) -> CostEstimate:
        """Expected calls, tokens (about 4 characters each) and USD before a stage starts.

        Cache hits and repeated inputs are not counted as calls.
        """
        inputs, labels = normalize_request(inputs, labels)
        prep = self._image_prep(inputs)
        self._load_caps()
        mode = self._mode()
        prompts: dict[str, list[dict[str, Any]]] = {}
        for text, pair in inputs:
            messages = self.prompt.render(text, pair, labels, image_part=prep.part)
            prompts.setdefault(self._key_for(messages, labels), messages)
        cached = set(self.store.lookup({k: k for k in prompts},
                                       {k: self._legacy_key(m, labels, mode) for k, m in prompts.items()}))
        todo = [m for k, m in prompts.items() if k not in cached]
        per_answer = sum(estimate_tokens(lab) for lab in labels) / len(labels) + (8 if mode.structured else 1)
        pt = sum(sum(message_tokens(msg, self.model) for msg in m) for m in todo)
        if mode.structured:
            pt += len(todo) * (40 + sum(estimate_tokens(lab) for lab in labels))  # the schema
        ct = int(round(per_answer * len(todo)))
        return CostEstimate(calls=len(todo), cached=len(inputs) - len(todo), prompt_tokens=int(pt),
                            completion_tokens=ct, usd=self.price.cost(int(pt), ct), price_known=self.price_known)

    # ------------------------------------------------------------------------------ check

    def check_endpoint(self) -> dict[str, Any]:
        """Is anything listening at the endpoint, and does it take the key? One free request
        (``GET /models``, see `Transport.check`); `LMError` if not."""
        return run_sync(self.transport.check)


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
