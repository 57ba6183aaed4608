"""Talking to an OpenAI-compatible endpoint: the client, what an error means, and how long to wait.

Why its own piece: every provider that sends HTTP requests (the chat API today, a server
tomorrow) needs the same answers to "retry this?", "how long to wait?" and "is anything
listening?", and the same care that the key never shows in a message. This module is the only
one that knows the `openai` SDK's error classes: callers see `Rejected`, `Refused`, `Transient`,
`Unreachable` and `Fatal`.

Retries are done by the caller with a `RetryPolicy` (the SDK's own ``max_retries`` is 0):
exponential backoff with jitter on 429, 5xx, timeouts and dropped connections, honouring
``Retry-After``. A reply that carries no answer (`BadReply`) is transient like a 5xx.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import email.utils
import json
import random
import time
from dataclasses import dataclass
from typing import Any, AsyncIterator, Optional

from ea_core.errors import ConfigError, LMError
from ea_core.llm.endpoints import EndpointPolicy, EndpointRefused, refusal_in
from ea_core.llm.secrets import Secret, scrub

RETRY_STATUSES = {408, 409, 425, 429, 500, 502, 503, 504, 520, 522, 524, 529}
FATAL_STATUSES = {401, 403, 404}
#: Connection failures in a row (no HTTP reply in between) after which a stage stops; the default
#: is max(this, 2 x concurrency), so one burst of parallel timeouts is not taken for a dead endpoint.
MAX_CONNECTION_FAILURES = 8


class Fatal(Exception):
    """An error every further request would hit too (bad key, unknown model, nothing listening)."""


class BadReply(Exception):
    """An HTTP 200 that carries no answer (no choices, null content, not JSON): retried like a 5xx."""


class SendError(Exception):
    """A request that got no answer; `cause` is the SDK's error (or a `BadReply`)."""

    def __init__(self, cause: Exception) -> None:
        super().__init__(str(cause))
        self.cause = cause

    @property
    def text(self) -> str:
        return describe_error(self.cause)


class Rejected(SendError):
    """HTTP 400 / 422: the request as sent is refused (an optional parameter, an image ...)."""


class Refused(SendError):
    """Another 4xx that no retry will fix (401/403/404 are `Fatal`)."""


class Transient(SendError):
    """Worth retrying: 408/409/425/429/5xx, or a reply with no answer."""


class Unreachable(SendError):
    """No HTTP reply at all: a timeout or a dropped connection."""


def describe_error(exc: BaseException) -> str:
    """One line naming the error (its class, HTTP status and message); may hold what a server
    echoed, so scrub it before showing."""
    if isinstance(exc, BadReply):
        return str(exc)[:500]
    status = getattr(exc, "status_code", None)
    message = str(getattr(exc, "message", "") or exc) or type(exc).__name__
    return f"{type(exc).__name__}{f' ({status})' if status else ''}: {message}"[:500]


def error_text(exc: BaseException) -> str:
    """An HTTP error's message and body, lower case (what capability and image checks read)."""
    body = getattr(exc, "body", None)
    return (str(getattr(exc, "message", "")) + " " + (json.dumps(body) if body is not None else "")).lower()


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


@dataclass(frozen=True)
class RetryPolicy:
    """How long a request may take and how often, and how long to wait between tries."""

    max_retries: int = 5
    timeout_s: float = 30.0
    backoff_base_s: float = 1.0
    backoff_max_s: float = 60.0
    max_retry_after_s: float = 300.0
    max_connection_failures: int = MAX_CONNECTION_FAILURES

    @classmethod
    def of(cls, concurrency: int = 1, *, max_retries: int = 5, timeout_s: float = 30.0, backoff_base_s: float = 1.0,
           backoff_max_s: float = 60.0, max_retry_after_s: float = 300.0,
           max_connection_failures: Optional[int] = None) -> "RetryPolicy":
        """A policy from loose settings; the connection-failure limit defaults to
        max(`MAX_CONNECTION_FAILURES`, 2 x `concurrency`)."""
        limit = (max(MAX_CONNECTION_FAILURES, 2 * int(concurrency)) if max_connection_failures is None
                 else max(int(max_connection_failures), 1))
        return cls(max(int(max_retries), 0), float(timeout_s), float(backoff_base_s), float(backoff_max_s),
                   float(max_retry_after_s), limit)

    @property
    def claim_ttl_s(self) -> float:
        """How old a claim may get before others take it over: the longest wait between two
        attempts, plus a margin (a claim is refreshed at every attempt)."""
        return self.timeout_s + max(self.backoff_max_s, self.max_retry_after_s) + 30.0

    def backoff(self, attempt: int) -> float:
        return min(self.backoff_max_s, self.backoff_base_s * (2**attempt)) * (0.5 + random.random() / 2)

    def retry_after(self, exc: BaseException) -> Optional[float]:
        """Seconds the server asked to wait (``Retry-After`` / ``retry-after-ms``), capped; None if it did not."""
        headers = getattr(getattr(exc, "response", None), "headers", None)
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

    def wait_s(self, exc: BaseException, attempt: int) -> float:
        """How long to wait before retry `attempt` + 1 after `exc`."""
        wait = self.retry_after(exc)
        return self.backoff(attempt) if wait is None else wait * (1.0 + 0.1 * random.random())


class ConnectionStreak:
    """Connection failures in a row: any HTTP reply resets the count."""

    def __init__(self) -> None:
        self.count = 0

    def ok(self) -> None:
        self.count = 0

    def failed(self) -> int:
        self.count += 1
        return self.count


class Transport:
    """One OpenAI-compatible endpoint and its key: opens clients, posts chat requests, checks the
    endpoint for free, and words errors without the key."""

    def __init__(self, base_url: str, model: str, key: Optional[Secret], *, key_env: str = "",
                 retry: Optional[RetryPolicy] = None, mask: tuple[Secret, ...] = (),
                 policy: Optional[EndpointPolicy] = None) -> None:
        self.base_url = base_url
        self.model = model
        self.key_env = key_env
        self.retry = retry or RetryPolicy()
        self.policy = policy  # which endpoints may be called; None: the one the server gave this process
        self._key = key
        self._mask = mask  # other secrets to hide in messages (a key that came in the URL)

    def set_key(self, key: Optional[Secret]) -> None:
        self._key = key

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["_key"], state["_mask"] = None, ()  # never pickled: the provider reads its key again
        return state

    def scrub(self, text: str) -> str:
        return scrub(text, self._key, *self._mask)

    def endpoint_policy(self) -> EndpointPolicy:
        """Which endpoints may be called: the one given, else the server's (`EndpointPolicy.from_env`)."""
        return self.policy if self.policy is not None else EndpointPolicy.from_env()

    @contextlib.asynccontextmanager
    async def session(self, timeout_s: Optional[float] = None) -> AsyncIterator[Any]:
        """An SDK client for this endpoint (no SDK retries), closed on exit. An endpoint the
        server does not allow is an `LMError` before any request; under a restricting policy every
        request, redirects included, goes through the policy's guarded client."""
        import openai

        policy = self.endpoint_policy()
        if policy.restricts:
            try:
                await asyncio.to_thread(policy.check_url, self.base_url)  # DNS: off the event loop
            except ConfigError as err:  # EndpointRefused: a message for the user
                raise LMError(self.scrub(str(err))) from None
        timeout = self.retry.timeout_s if timeout_s is None else timeout_s
        client = openai.AsyncOpenAI(api_key=self._key.reveal() if self._key else "", base_url=self.base_url,
                                    max_retries=0, timeout=timeout, http_client=policy.guarded_client(timeout))
        try:
            yield client
        finally:
            await client.close()

    async def post_chat(self, client: Any, body: dict[str, Any]) -> dict[str, Any]:
        """POST /chat/completions; the JSON reply as a dict, or one of this module's errors.

        The body goes through ``client.post`` (the SDK's route for raw requests) rather than
        ``chat.completions.create``: its typed-parameter transform and response models cost a few
        ms of CPU per call, enough to keep 16 parallel requests well under the ideal rate on 2 cores.
        """
        import openai

        try:
            text = await client.post("/chat/completions", body=body, cast_to=str,
                                     options={"timeout": self.retry.timeout_s})
        except (openai.BadRequestError, openai.UnprocessableEntityError) as exc:
            raise Rejected(exc) from None
        except openai.APIStatusError as exc:
            if exc.status_code in FATAL_STATUSES:
                raise Fatal(self.fatal_message(exc)) from None
            if exc.status_code not in RETRY_STATUSES and exc.status_code < 500:
                raise Refused(exc) from None
            raise Transient(exc) from None
        except (openai.APITimeoutError, openai.APIConnectionError, EndpointRefused) as exc:
            refused = refusal_in(exc)
            if refused is not None:  # a redirect to an address this server does not call
                raise Fatal(self.scrub(str(refused))) from None
            raise Unreachable(exc) from None
        except openai.APIResponseValidationError as exc:
            raise Transient(BadReply(f"unreadable reply: {exc}")) from None
        try:
            data = json.loads(text)
        except ValueError:
            raise Transient(BadReply(f"the endpoint's reply is not JSON: {str(text)[:80]!r}")) from None
        if not isinstance(data, dict):
            raise Transient(BadReply("the endpoint did not answer with a JSON object"))
        return data

    async def check(self) -> dict[str, Any]:
        """``GET /models`` (no tokens, no money): `LMError` when nothing answers (after 3 quick
        tries) or the key is refused (401/403). Any other reply means the server is up; ``models``
        lists the ids it names (None if it has no such route)."""
        import openai

        timeout = min(self.retry.timeout_s, 20.0)
        async with self.session(timeout) as client:
            tries = 3
            for attempt in range(tries):
                t0 = time.perf_counter()
                try:
                    text = await client.get("/models", cast_to=str, options={"timeout": timeout})
                except openai.APIStatusError as exc:
                    if exc.status_code in (401, 403):
                        raise LMError(self.fatal_message(exc)) from None
                    return {"reachable": True, "status": exc.status_code, "models": None,
                            "latency_s": time.perf_counter() - t0}
                except (openai.APIConnectionError, EndpointRefused) as exc:
                    refused = refusal_in(exc)
                    if refused is not None:
                        raise LMError(self.scrub(str(refused))) from None
                    if attempt + 1 >= tries:
                        raise LMError(self.unreachable_message(exc, tries)) from None
                    await asyncio.sleep(min(self.retry.backoff(attempt), 2.0))
                    continue
                try:
                    data = json.loads(text)
                    models = [str(m.get("id")) for m in data.get("data", []) if isinstance(m, dict)]
                except (ValueError, AttributeError, TypeError):
                    models = None
                return {"reachable": True, "status": 200, "models": models, "latency_s": time.perf_counter() - t0}
        raise AssertionError("unreachable")

    # -- messages (never with the key) ---------------------------------------------------------
    def fatal_message(self, exc: Any) -> str:
        status = exc.status_code
        detail = self.scrub(describe_error(exc))
        if status == 401:
            return (
                f"The LM endpoint {self.base_url} rejected the API key (401). Check the key in "
                f"{self.key_env or 'OPENAI_API_KEY'} (or --lm-key-env). Details: {detail}"
            )
        if status == 404:
            return f"The LM endpoint {self.base_url} does not know model {self.model!r} (404). Details: {detail}"
        return f"The LM endpoint {self.base_url} refused the request ({status}). Details: {detail}"

    def unreachable_message(self, exc: BaseException, times: int) -> str:
        return self.scrub(
            f"The LM endpoint {self.base_url} could not be reached {times} times in a row "
            f"({describe_error(exc)}); stopped instead of retrying. Check that the server is running and that the "
            "URL (--lm-base-url) is right, then run again: answers received so far are kept."
        )
