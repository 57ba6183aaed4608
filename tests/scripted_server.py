"""A scripted OpenAI-compatible chat server on 127.0.0.1, for tests and benchmarks.

Real LM endpoints cannot be reached here (and would cost money), so tests talk to this server.
It answers ``POST /v1/chat/completions`` the way an endpoint would: the gold label of the input
(looked up by the input text inside the last user message), or what `answer_fn` says, with or
without token log-probs and JSON structured output. `Fault`s script failures: 429 with
Retry-After, 500, 400, 401, a hang past the client's timeout, a dropped or reset connection, a
200 that is no answer (no choices, null content, a body that is not JSON), a wrong or unparseable
answer; each for all requests, the first N, a random share (seeded), or inputs containing some
text. Everything is recorded: ``.requests`` (bodies, headers, the fault met), ``.count``,
``.per_input``.

    with ScriptedServer(gold={"I love it": "positive"}) as srv:
        provider = OpenAIProvider("test-model", base_url=srv.url, api_key="x")
"""

from __future__ import annotations

import json
import math
import random
import re
import socket
import struct
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Callable, Optional, Sequence, Union

FAULT_KINDS = {"429", "500", "503", "400", "401", "hang", "drop", "reset", "empty_choices", "null_content",
               "bad_json", "wrong", "unparseable", "no_logprobs"}
#: Faults after which the request has no answer (the client must retry): all but the answers.
TRANSIENT_FAULTS = {"429", "500", "503", "hang", "drop", "reset", "empty_choices", "null_content", "bad_json"}


@dataclass
class Fault:
    """A scripted misbehaviour.

    kind: one of FAULT_KINDS. times: how many matching requests it hits (None: every one);
    with per_input=True the count is per distinct input. match: only inputs whose text contains
    this. share: hit only this share of the matching requests (drawn from the server's seeded
    random numbers). retry_after: the Retry-After header (seconds) sent with a 429/503. hang_s:
    how long a "hang" waits before answering normally (the client should have timed out by then).
    """

    kind: str
    times: Optional[int] = None
    match: Optional[str] = None
    retry_after: Optional[float] = None
    hang_s: float = 30.0
    per_input: bool = False
    message: str = ""
    share: Optional[float] = None
    hits: int = 0
    _per: Counter = field(default_factory=Counter)

    def __post_init__(self) -> None:
        if self.kind not in FAULT_KINDS:
            raise ValueError(f"unknown fault kind {self.kind!r}; known: {sorted(FAULT_KINDS)}")

    def applies(self, text: str, rng: Optional[random.Random] = None) -> bool:
        if self.match is not None and self.match not in text:
            return False
        if self.times is not None and (self._per[text] if self.per_input else self.hits) >= self.times:
            return False
        if self.share is not None:
            return (rng or random).random() < self.share
        return True

    def take(self, text: str) -> None:
        self.hits += 1
        self._per[text] += 1


@dataclass
class ScriptedRequest:
    """One received request as the server saw it."""

    path: str
    headers: dict[str, str]
    body: dict[str, Any]
    text: str  # the last user message
    time: float
    status: int = 0
    fault: Optional[str] = None  # the fault kind this request met (None: answered normally)


AnswerFn = Callable[[ScriptedRequest], Optional[str]]


class ScriptedServer:
    """An OpenAI-compatible chat server in a background thread. Use as a context manager.

    gold: input text -> label (found inside the last user message). answer_fn(request): the reply
    text instead (None: fall back to gold). supports_response_format / supports_logprobs=False:
    a request using them gets a 400 naming the parameter; ignores_logprobs: accepted, none sent;
    ignores_response_format: accepted, answered in plain text as if it were not there.
    rejects: other body parameters answered with 400 "Unsupported parameter" (e.g. "max_tokens").
    confidence: probability put on the label's first token (a number or a function of the request).
    latency_s: delay before every reply. faults: see `Fault`; seed: for faults hitting a share.
    api_key: when set, any request (GET or POST) without ``Bearer api_key`` gets a 401.
    """

    def __init__(
        self,
        gold: Optional[dict[str, str]] = None,
        *,
        answer_fn: Optional[AnswerFn] = None,
        faults: Sequence[Fault] = (),
        labels: Optional[Sequence[str]] = None,
        latency_s: float = 0.0,
        supports_response_format: bool = True,
        supports_logprobs: bool = True,
        ignores_logprobs: bool = False,
        ignores_response_format: bool = False,
        rejects: Sequence[str] = (),
        confidence: Union[float, Callable[[ScriptedRequest], float]] = 0.9,
        send_usage: bool = True,
        default_answer: str = "I am not sure.",
        seed: int = 0,
        api_key: Optional[str] = None,
    ) -> None:
        self.gold = dict(gold or {})
        self._gold_sorted = sorted(self.gold, key=len, reverse=True)
        self.answer_fn = answer_fn
        self.faults = list(faults)
        self.labels = list(labels) if labels else None
        self.latency_s = latency_s
        self.supports_response_format = supports_response_format
        self.supports_logprobs = supports_logprobs
        self.ignores_logprobs = ignores_logprobs
        self.ignores_response_format = ignores_response_format
        self.rejects = list(rejects)
        self.confidence = confidence
        self.send_usage = send_usage
        self.default_answer = default_answer
        self.rng = random.Random(seed)
        self.api_key = api_key
        self.models_requests = 0  # GET /models
        self.requests: list[ScriptedRequest] = []
        self.per_input: Counter = Counter()
        self.responses_sent = 0
        self.status_counts: Counter = Counter()
        self.max_in_flight = 0
        self._in_flight = 0
        self._lock = threading.Lock()
        self._closing = threading.Event()
        self._httpd: Optional[ThreadingHTTPServer] = None
        self._thread: Optional[threading.Thread] = None
        self.batch_api = ScriptedBatches(self)

    # ------------------------------------------------------------------------- lifecycle

    def start(self, port: int = 0) -> "ScriptedServer":
        """Serve in a background thread on 127.0.0.1 (`port` 0: a free one)."""
        server = self

        class Handler(_Handler):
            owner = server

        class Server(ThreadingHTTPServer):
            daemon_threads = True
            request_queue_size = 512
            allow_reuse_address = True

        self._httpd = Server(("127.0.0.1", port), Handler)
        self._thread = threading.Thread(target=self._httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        self._thread.start()
        return self

    def close(self) -> None:
        self._closing.set()
        if self._httpd is not None:
            self._httpd.shutdown()
            self._httpd.server_close()
            self._httpd = None

    def __enter__(self) -> "ScriptedServer":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def port(self) -> int:
        assert self._httpd is not None, "server not started"
        return int(self._httpd.server_address[1])

    @property
    def url(self) -> str:
        """The base URL to give an OpenAI client (ends in /v1)."""
        return f"http://127.0.0.1:{self.port}/v1"

    @property
    def count(self) -> int:
        """Chat requests received so far."""
        with self._lock:
            return len(self.requests)

    def count_for(self, text: str) -> int:
        """Requests whose input contained `text`."""
        with self._lock:
            return sum(1 for r in self.requests if text in r.text)

    def reset_counts(self) -> None:
        with self._lock:
            self.requests.clear()
            self.per_input.clear()
            self.status_counts.clear()
            self.responses_sent = 0

    # ------------------------------------------------------------------------- answering

    def learn(self, gold: dict[str, str]) -> None:
        """Know these texts' labels too (inputs a test predicts after the run)."""
        self.gold.update(gold)
        self._gold_sorted = sorted(self.gold, key=len, reverse=True)

    def gold_for(self, text: str) -> Optional[str]:
        for g in self._gold_sorted:
            if g in text:
                return self.gold[g]
        return None

    def _labels(self, body: dict[str, Any]) -> list[str]:
        try:
            return list(body["response_format"]["json_schema"]["schema"]["properties"]["label"]["enum"])
        except (KeyError, TypeError):
            pass
        if self.labels:
            return list(self.labels)
        return sorted(set(self.gold.values()))

    def _fault_for(self, text: str) -> Optional[Fault]:
        with self._lock:
            for fault in self.faults:
                if fault.applies(text, self.rng):
                    fault.take(text)
                    return fault
        return None

    def handle(self, handler: "_Handler", body: dict[str, Any], req: ScriptedRequest) -> None:
        if self.latency_s:
            self._closing.wait(self.latency_s)
        if "response_format" in body and not self.supports_response_format:
            return handler.send_json(
                400,
                _error("response_format is not supported by this model", "invalid_request_error", "response_format"),
            )
        if body.get("logprobs") and not self.supports_logprobs:
            return handler.send_json(400, _error("logprobs is not supported by this model", "invalid_request_error", "logprobs"))

        for param in self.rejects:
            if param in body:
                hint = " Use 'max_completion_tokens' instead." if param == "max_tokens" else ""
                msg = f"Unsupported parameter: '{param}' is not supported with this model.{hint}"
                return handler.send_json(400, _error(msg, "invalid_request_error", param))
        fault = self._fault_for(req.text)
        kind = fault.kind if fault else None
        req.fault = kind
        if kind in ("429", "503"):
            headers = {} if fault.retry_after is None else {"Retry-After": f"{fault.retry_after:g}"}  # type: ignore[union-attr]
            msg = "Rate limit reached, slow down" if kind == "429" else "Service unavailable"
            return handler.send_json(int(kind), _error(msg, "rate_limit_error"), headers)
        if kind == "500":
            return handler.send_json(500, _error("The server had an error", "server_error"))
        if kind == "400":
            return handler.send_json(400, _error(fault.message or "Bad request", "invalid_request_error"))  # type: ignore[union-attr]
        if kind == "401":
            auth = req.headers.get("authorization", "")
            msg = fault.message or f"Incorrect API key provided: {auth.removeprefix('Bearer ')}"  # type: ignore[union-attr]
            return handler.send_json(401, _error(msg, "invalid_request_error"))
        if kind == "drop":
            handler.drop()
            return None
        if kind == "reset":
            handler.reset()
            return None
        if kind == "bad_json":
            return handler.send_raw(200, b'{"id": "chatcmpl-x", "choices": [{"message": {"content": "posi')
        if kind == "empty_choices":
            return handler.send_json(200, {"id": "chatcmpl-x", "object": "chat.completion", "choices": []})
        if kind == "null_content":
            choice = {"index": 0, "message": {"role": "assistant", "content": None}, "finish_reason": "stop"}
            return handler.send_json(200, {"id": "chatcmpl-x", "object": "chat.completion", "choices": [choice]})
        if kind == "hang":
            self._closing.wait(fault.hang_s)  # type: ignore[union-attr]
            if self._closing.is_set():
                handler.drop()
                return None

        labels = self._labels(body)
        answer = self.answer_fn(req) if self.answer_fn else None
        if answer is None:
            answer = self.gold_for(req.text) or self.default_answer
        if kind == "wrong":
            others = [lab for lab in labels if lab != answer]
            answer = others[0] if others else "WRONG"
        elif kind == "unparseable":
            answer = "I cannot decide between these."
        structured = "response_format" in body and not self.ignores_response_format
        label_like = answer in labels
        content = json.dumps({"label": answer}) if structured and label_like else answer
        choice: dict[str, Any] = {
            "index": 0,
            "message": {"role": "assistant", "content": content},
            "finish_reason": "stop",
            "logprobs": None,
        }
        if body.get("logprobs") and not self.ignores_logprobs and kind != "no_logprobs":
            conf = self.confidence(req) if callable(self.confidence) else self.confidence
            choice["logprobs"] = {"content": _logprobs(content, answer, labels, conf, int(body.get("top_logprobs") or 0))}
        prompt_chars = sum(len(str(m.get("content", ""))) for m in body.get("messages", []))
        response = {
            "id": f"chatcmpl-{len(self.requests)}",
            "object": "chat.completion",
            "created": int(time.time()),
            "model": body.get("model", "scripted"),
            "choices": [choice],
        }
        if self.send_usage:
            pt, ct = max(1, prompt_chars // 4), max(1, len(content) // 4)
            response["usage"] = {"prompt_tokens": pt, "completion_tokens": ct, "total_tokens": pt + ct}
        return handler.send_json(200, response)


class _Capture:
    """Stands in for an HTTP handler: keeps what `ScriptedServer.handle` would send."""

    def __init__(self) -> None:
        self.status, self.payload = 0, None

    def send_json(self, status: int, payload: Any, headers: Optional[dict[str, str]] = None) -> None:
        self.status, self.payload = status, payload

    def send_raw(self, status: int, data: bytes, headers: Optional[dict[str, str]] = None) -> None:
        self.status, self.payload = status, data.decode("utf-8", "replace")

    def drop(self) -> None:
        self.status = 0

    reset = drop


class ScriptedBatches:
    """The Batch API of a `ScriptedServer`: ``POST /files`` (multipart, purpose=batch), ``POST
    /batches``, ``GET /batches/{id}`` and ``GET /files/{id}/content``. Each request line is answered
    like a chat request (gold, faults and all). Scripted: `polls` retrievals in progress before it
    ends; `expire_after` N: only the first N lines answered, then "expired"; `fail`: the whole batch
    "failed". Counts: `.created` (batches submitted), `.retrieved`."""

    def __init__(self, server: "ScriptedServer") -> None:
        self.server = server
        self.files: dict[str, bytes] = {}
        self.batches: dict[str, dict[str, Any]] = {}
        self.polls, self.expire_after, self.fail = 1, None, False
        self.created = self.retrieved = 0

    def handle(self, handler: "_Handler", method: str, raw: bytes) -> None:
        path = handler.path.split("?")[0].rstrip("/")
        if method == "POST" and path.endswith("/files"):
            return handler.send_json(200, self._upload(handler, raw))
        if method == "POST" and path.endswith("/batches"):
            return handler.send_json(200, self._create(json.loads(raw or b"{}")))
        if method == "GET" and "/batches/" in path:
            batch = self.batches.get(path.rsplit("/", 1)[1])
            return handler.send_json(200, self._advance(batch)) if batch else \
                handler.send_json(404, _error("no such batch", "not_found"))
        if method == "GET" and path.endswith("/content"):
            data = self.files.get(path.split("/")[-2])
            return handler.send_raw(200, data) if data is not None else \
                handler.send_json(404, _error("no such file", "not_found"))
        return handler.send_json(404, _error(f"unknown path {path}", "not_found"))

    def _upload(self, handler: "_Handler", raw: bytes) -> dict[str, Any]:
        from email.parser import BytesParser

        msg = BytesParser().parsebytes(b"Content-Type: " + handler.headers["Content-Type"].encode() + b"\r\n\r\n" + raw)
        data = next((part.get_payload(decode=True) for part in msg.get_payload()
                     if part.get_param("name", header="content-disposition") == "file"), b"")
        file_id = f"file-{len(self.files)}"
        self.files[file_id] = data
        return {"id": file_id, "object": "file", "bytes": len(data), "created_at": int(time.time()),
                "filename": "requests.jsonl", "purpose": "batch", "status": "processed"}

    def _create(self, body: dict[str, Any]) -> dict[str, Any]:
        self.created += 1
        batch_id = f"batch_{len(self.batches)}"
        lines = [ln for ln in self.files[body["input_file_id"]].decode().split("\n") if ln.strip()]
        self.batches[batch_id] = {"id": batch_id, "object": "batch", "endpoint": body.get("endpoint"),
                                  "input_file_id": body["input_file_id"], "completion_window": "24h",
                                  "status": "validating", "created_at": int(time.time()), "output_file_id": None,
                                  "error_file_id": None, "errors": None, "_lines": lines, "_polls": 0,
                                  "request_counts": {"total": len(lines), "completed": 0, "failed": 0}}
        return self._public(self.batches[batch_id])

    def _advance(self, batch: dict[str, Any]) -> dict[str, Any]:
        self.retrieved += 1
        batch["_polls"] += 1
        if batch["status"] in ("validating", "in_progress") and batch["_polls"] > self.polls:
            self._finish(batch)
        elif batch["status"] == "validating":
            batch["status"] = "in_progress"
        return self._public(batch)

    def _finish(self, batch: dict[str, Any]) -> None:
        if self.fail:
            batch["status"], batch["errors"] = "failed", {"data": [{"code": "invalid", "message": "scripted"}]}
            return
        out, err = [], []
        for n, line in enumerate(batch["_lines"]):
            if self.expire_after is not None and n >= self.expire_after:
                break
            row = json.loads(line)
            body = row["body"]
            users = [m for m in body.get("messages", []) if m.get("role") == "user"]
            text = str(users[-1].get("content", "")) if users else ""
            req = ScriptedRequest("/v1/chat/completions", {}, body, text, time.time())
            with self.server._lock:
                self.server.requests.append(req)
                self.server.per_input[text] += 1
            cap = _Capture()
            self.server.handle(cap, body, req)  # type: ignore[arg-type]
            entry = {"id": f"req_{n}", "custom_id": row["custom_id"],
                     "response": {"status_code": cap.status or 500, "body": cap.payload}}
            if cap.status == 200 and isinstance(cap.payload, dict):
                out.append(entry)
            else:
                err.append({**entry, "error": {"code": "scripted_fault", "message": f"status {cap.status}"}})
        for name, rows in (("output_file_id", out), ("error_file_id", err)):
            if rows:
                file_id = f"file-{len(self.files)}"
                self.files[file_id] = "".join(json.dumps(r) + "\n" for r in rows).encode()
                batch[name] = file_id
        batch["status"] = "expired" if self.expire_after is not None and len(batch["_lines"]) > self.expire_after \
            else "completed"
        batch["request_counts"] = {"total": len(batch["_lines"]), "completed": len(out), "failed": len(err)}

    @staticmethod
    def _public(batch: dict[str, Any]) -> dict[str, Any]:
        return {k: v for k, v in batch.items() if not k.startswith("_")}


def _error(message: str, type_: str, param: Optional[str] = None) -> dict[str, Any]:
    return {"error": {"message": message, "type": type_, "param": param, "code": None}}


def _logprobs(content: str, answer: str, labels: Sequence[str], conf: float, top: int) -> list[dict[str, Any]]:
    """Token log-probs for `content`: the label's first word carries log(conf), the rest ~0."""
    pieces = re.findall(r"\w+|[^\w]+", content)
    first_word = (re.findall(r"\w+", answer) or [""])[0]
    out = []
    label_done = False
    alts = [re.findall(r"\w+", lab)[0] for lab in labels if re.findall(r"\w+", lab) and lab != answer]
    for piece in pieces:
        if not label_done and piece == first_word:
            label_done = True
            lp = math.log(max(conf, 1e-9))
            rest = max(1.0 - conf, 1e-9) / max(len(alts), 1)
            tops = [{"token": piece, "logprob": lp, "bytes": list(piece.encode())}]
            tops += [{"token": a, "logprob": math.log(rest), "bytes": list(a.encode())} for a in alts]
        else:
            lp = -1e-4
            tops = [{"token": piece, "logprob": lp, "bytes": list(piece.encode())}]
        out.append({"token": piece, "logprob": lp, "bytes": list(piece.encode()), "top_logprobs": tops[: max(top, 0)]})
    return out


class _Handler(BaseHTTPRequestHandler):
    owner: ScriptedServer
    protocol_version = "HTTP/1.1"

    def setup(self) -> None:
        super().setup()
        # Headers and body go out in two writes: without TCP_NODELAY, Nagle's algorithm and the
        # client's delayed ACK add ~40 ms to every response on a kept-alive connection.
        self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - quiet
        pass

    def send_json(self, status: int, payload: Any, headers: Optional[dict[str, str]] = None) -> None:
        self.send_raw(status, json.dumps(payload).encode(), headers)

    def send_raw(self, status: int, data: bytes, headers: Optional[dict[str, str]] = None) -> None:
        try:
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            for k, v in (headers or {}).items():
                self.send_header(k, v)
            self.end_headers()
            self.wfile.write(data)
            self.wfile.flush()
        except (BrokenPipeError, ConnectionResetError):
            self.close_connection = True
            return
        with self.owner._lock:
            self.owner.responses_sent += 1
            self.owner.status_counts[status] += 1

    def drop(self) -> None:
        """Close the connection without answering."""
        self.close_connection = True
        try:
            self.connection.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass

    def reset(self) -> None:
        """Abort the connection with a TCP reset (SO_LINGER 0, then close): ECONNRESET at the client."""
        self.close_connection = True
        try:
            self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            self.connection.close()
        except OSError:
            pass

    def authorized(self) -> bool:
        """False (and a 401 sent) when the server wants a key and the request lacks it."""
        want = self.owner.api_key
        if want is None or self.headers.get("Authorization", "") == f"Bearer {want}":
            return True
        self.send_json(401, _error("Incorrect API key provided.", "invalid_request_error"))
        return False

    def do_GET(self) -> None:  # noqa: N802
        if "/files" in self.path or "/batches" in self.path:
            return self.owner.batch_api.handle(self, "GET", b"") if self.authorized() else None
        with self.owner._lock:
            self.owner.models_requests += 1
        if not self.authorized():
            return
        if self.path.rstrip("/").endswith("/models"):
            self.send_json(200, {"object": "list", "data": [{"id": "scripted", "object": "model"}]})
        else:
            self.send_json(404, _error("not found", "not_found"))

    def do_POST(self) -> None:  # noqa: N802
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length) if length else b""
        if "/files" in self.path or "/batches" in self.path:
            return self.owner.batch_api.handle(self, "POST", raw) if self.authorized() else None
        try:
            body = json.loads(raw or b"{}")
        except ValueError:
            return self.send_json(400, _error("invalid JSON body", "invalid_request_error"))
        if not self.path.rstrip("/").endswith("/chat/completions"):
            return self.send_json(404, _error(f"unknown path {self.path}", "not_found"))
        if not self.authorized():
            return
        users = [m for m in body.get("messages", []) if m.get("role") == "user"]
        text = str(users[-1].get("content", "")) if users else ""
        req = ScriptedRequest(self.path, {k.lower(): v for k, v in self.headers.items()}, body, text, time.time())
        owner = self.owner
        with owner._lock:
            owner.requests.append(req)
            owner.per_input[text] += 1
            owner._in_flight += 1
            owner.max_in_flight = max(owner.max_in_flight, owner._in_flight)
        try:
            owner.handle(self, body, req)
        finally:
            with owner._lock:
                owner._in_flight -= 1


# ----------------------------------------------------------------------------------------------
# A small gold-labelled task and a provider aimed at a scripted server, shared by the LM tests.

LABELS = ["positive", "negative", "neutral"]
GOLD = {
    "I love this phone": "positive",
    "What a wonderful day": "positive",
    "Best purchase ever": "positive",
    "I hate waiting in line": "negative",
    "This is the worst service": "negative",
    "My order arrived broken": "negative",
    "The store opens at nine": "neutral",
    "It is a blue car": "neutral",
    "The meeting is on Tuesday": "neutral",
    "Water boils at 100 degrees": "neutral",
}
TEXTS = list(GOLD)
INPUTS = [(t, None) for t in TEXTS]
GOLD_IDX = [LABELS.index(GOLD[t]) for t in TEXTS]


def make_inputs(n: int) -> tuple[list[tuple[str, None]], dict[str, str]]:
    """`n` distinct inputs with a gold label each."""
    gold = {f"sample text number {i:04d} end": LABELS[i % 3] for i in range(n)}
    return [(t, None) for t in gold], gold


def provider_for(server: "ScriptedServer", cache: Any = None, api_key: str = "sk-test-key", **kw: Any) -> Any:
    """An `OpenAIProvider` aimed at `server` with fast retries (for tests)."""
    from ea_core.llm.openai_api import OpenAIProvider

    kw.setdefault("backoff_base_s", 0.02)
    kw.setdefault("timeout_s", 10)
    return OpenAIProvider("test-model", base_url=server.url, api_key=api_key, cache=cache, **kw)


try:  # a fixture other test modules can import: `from tests.scripted_server import scripted_server`
    import pytest

    @pytest.fixture
    def scripted_server() -> Any:
        """Factory: ``scripted_server(gold, **options)`` starts a server, closed after the test."""
        started: list[ScriptedServer] = []

        def start(gold: Optional[dict[str, str]] = None, **options: Any) -> ScriptedServer:
            srv = ScriptedServer(gold, **options).start()
            started.append(srv)
            return srv

        yield start
        for srv in started:
            srv.close()

except ImportError:  # pragma: no cover - pytest absent (benchmarks)
    pass


def main() -> None:
    """Serve by hand, e.g. to point the UI at a fake endpoint: python -m tests.scripted_server --port 8011."""
    import argparse

    ap = argparse.ArgumentParser(description=main.__doc__)
    ap.add_argument("--port", type=int, default=8011)
    ap.add_argument("--latency", type=float, default=0.0)
    ap.add_argument("--answer", default=None, help="always answer this (default: the first label offered)")
    args = ap.parse_args()

    def answer(req: ScriptedRequest) -> Optional[str]:
        if args.answer:
            return args.answer
        try:
            return str(req.body["response_format"]["json_schema"]["schema"]["properties"]["label"]["enum"][0])
        except (KeyError, TypeError, IndexError):
            return None

    srv = ScriptedServer(answer_fn=answer, latency_s=args.latency).start(args.port)
    print(f"scripted OpenAI-compatible server on {srv.url} (Ctrl+C to stop)", flush=True)
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        srv.close()


if __name__ == "__main__":
    main()
