"""The HTTP surface of a served system: a FastAPI app over a `ServeEngine`.

Endpoints: ``POST /v1/chat/completions`` (OpenAI-compatible; the label is the reply), ``POST
/v1/classify`` (a batch), ``POST /v1/feedback`` (a gold label for a served answer), ``GET
/v1/models``, ``/healthz``, ``/readyz``, ``/metrics``. With a key every endpoint but the two
probes needs ``Authorization: Bearer KEY``. Errors have OpenAI's shape; nothing a client sends
is logged or used as a metric label.
"""

from __future__ import annotations

import asyncio
import hmac
import logging
import secrets
import time
import traceback
from contextlib import asynccontextmanager
from typing import Any, Awaitable, Callable, Optional

from fastapi import FastAPI, Request
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import ClientDisconnect
from starlette.responses import Response

from ea_core.serve.engine import Routed, ServeEngine, ServeInput
from ea_core.serve.metrics import ServeMetrics
from ea_core.serve.protocol import (ApiError, chat_chunk, chat_input, chat_reply, classify_inputs, classify_result,
                                    dumps, loads_body, route_headers, too_large)
from ea_core.serve.reqlog import RequestLog
from ea_core.serve.settings import ServeSettings

log = logging.getLogger("ea_core.serve")

#: The error kind counted for a status (503 "no answer" is counted where it happens, by the engine's observer).
ERROR_KIND = {400: "bad_request", 401: "unauthorized", 404: "not_found", 405: "not_found", 413: "too_large",
              500: "internal", 503: None}


class ServedSystem:
    """Everything one server holds: the engine, its metrics, the request log, readiness."""

    def __init__(self, engine: ServeEngine, metrics: ServeMetrics, settings: ServeSettings, *,
                 model_ids: list[str], request_log: Optional[RequestLog] = None,
                 lm_check: Optional[Callable[[], Any]] = None, description: str = "") -> None:
        self.engine = engine
        self.metrics = metrics
        self.settings = settings
        self.model_ids = model_ids
        self.request_log = request_log
        self.lm_check = lm_check  # a blocking call that raises when the LM endpoint is unreachable
        self.description = description
        self.started = time.time()
        self._lm_ok: Optional[bool] = None
        self._lm_checked = 0.0
        self._lm_lock: Optional[asyncio.Lock] = None

    async def lm_reachable(self) -> Optional[bool]:
        """Whether the LM endpoint answers (None: no endpoint to check), re-checked at most every
        `ready_check_s`."""
        if self.lm_check is None:
            return None
        if self._lm_lock is None:
            self._lm_lock = asyncio.Lock()
        async with self._lm_lock:
            if self._lm_ok is None or time.monotonic() - self._lm_checked > self.settings.ready_check_s:
                try:
                    await asyncio.to_thread(self.lm_check)
                    self._lm_ok = True
                except Exception as err:  # noqa: BLE001 - reported, never raised
                    if self._lm_ok is not False:
                        log.warning("The LM endpoint is not reachable: %s", err)
                    self._lm_ok = False
                self._lm_checked = time.monotonic()
            return self._lm_ok


def _error_response(err: ApiError) -> Response:
    headers = {"www-authenticate": "Bearer"} if err.status == 401 else None
    return Response(dumps(err.body()), status_code=err.status, media_type="application/json", headers=headers)


def _json(value: Any, status: int = 200, headers: Optional[dict[str, str]] = None) -> Response:
    return Response(dumps(value), status_code=status, media_type="application/json", headers=headers)


def create_app(served: ServedSystem) -> FastAPI:
    """The FastAPI app of `served`."""
    settings, engine, metrics = served.settings, served.engine, served.metrics

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        yield
        engine.close()

    app = FastAPI(title="Easy Adaptation: served system", docs_url=None, redoc_url=None, openapi_url=None,
                  lifespan=lifespan)
    key = settings.api_key.encode() if settings.api_key else None

    def authorize(request: Request) -> None:
        if key is None:
            return
        given = request.headers.get("authorization", "")
        scheme, _, token = given.partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(token.strip().encode(), key):
            raise ApiError(401, "Incorrect or missing API key: send Authorization: Bearer <key>.",
                           code="invalid_api_key")

    async def read_body(request: Request) -> dict[str, Any]:
        limit = settings.max_body_bytes
        length = request.headers.get("content-length")
        if length is not None and length.isdigit() and int(length) > limit:
            raise too_large("The request body", f"{limit:,} bytes")
        raw = bytearray()
        async for chunk in request.stream():
            raw += chunk
            if len(raw) > limit:
                raise too_large("The request body", f"{limit:,} bytes")
        return loads_body(bytes(raw))

    Handler = Callable[[Request], Awaitable[Response]]

    def endpoint(name: str, timed: bool = False, open_: bool = False) -> Callable[[Handler], Handler]:
        """Auth, error replies in OpenAI's shape, the HTTP counter and (timed) the duration."""

        def wrap(fn: Handler) -> Handler:
            async def handler(request: Request) -> Response:
                t0 = time.perf_counter()
                try:
                    if not open_:
                        authorize(request)
                    response = await fn(request)
                except ApiError as err:
                    kind = ERROR_KIND.get(err.status, "bad_request")
                    if kind is not None:
                        metrics.errors.labels(kind=kind).inc()
                    response = _error_response(err)
                except ClientDisconnect:  # the client left mid-body: nobody to answer
                    response = Response(status_code=499)
                except Exception as err:  # noqa: BLE001 - a bug: a 500 in OpenAI's shape, logged without inputs
                    metrics.errors.labels(kind="internal").inc()
                    log.error("Internal error in %s: %s\n%s", name, type(err).__name__,
                              "".join(traceback.format_tb(err.__traceback__)))
                    response = _error_response(ApiError(500, "Internal error (see the server log).",
                                                        type_="server_error"))
                metrics.http.labels(endpoint=name, code=str(response.status_code)).inc()
                if timed:
                    metrics.duration.labels(endpoint=name).observe(time.perf_counter() - t0)
                return response

            handler.__name__ = fn.__name__
            return handler

        return wrap

    def served_model(body: dict[str, Any]) -> str:
        model = body.get("model")
        return model if isinstance(model, str) and model.strip() else served.model_ids[0]

    def no_answer(r: Routed) -> None:
        if r.prediction is None:
            raise ApiError(503, f"No answer: {r.note or 'no stage answered'}.", type_="server_error",
                           code="no_answer")

    def remember(rid: str, endpoint_name: str, item: ServeInput, r: Routed) -> None:
        if served.request_log is not None:
            try:
                served.request_log.request(rid, endpoint_name, item, r)
            except OSError as err:
                metrics.errors.labels(kind="internal").inc()
                log.error("Cannot write the request log: %s", err.strerror)

    @app.post("/v1/chat/completions")
    @endpoint("chat", timed=True)
    async def chat_completions(request: Request) -> Response:
        body = await read_body(request)
        item = chat_input(body, engine.pair_task, engine.image_task, settings)
        (r,) = await engine.route([item])
        no_answer(r)
        rid = "chatcmpl-" + secrets.token_hex(12)
        remember(rid, "chat", item, r)
        headers = route_headers(rid, r)
        model = served_model(body)
        if body.get("stream") is True:
            data = b"data: " + dumps(chat_chunk(rid, model, r)) + b"\n\ndata: [DONE]\n\n"
            return Response(data, media_type="text/event-stream", headers={**headers, "cache-control": "no-cache"})
        return _json(chat_reply(rid, model, r), headers=headers)

    @app.post("/v1/classify")
    @endpoint("classify", timed=True)
    async def classify(request: Request) -> Response:
        body = await read_body(request)
        items = classify_inputs(body, engine.pair_task, engine.image_task, settings)
        routed = await engine.route(items)
        results = []
        for item, r in zip(items, routed):
            rid = "ea-" + secrets.token_hex(12)
            remember(rid, "classify", item, r)
            results.append(classify_result(rid, r))
        totals = {k: sum(res["usage"][k] for res in results)
                  for k in ("prompt_tokens", "completion_tokens", "total_tokens")}
        return _json({"object": "list", "model": served_model(body), "results": results, "usage": totals})

    @app.post("/v1/feedback")
    @endpoint("feedback")
    async def feedback(request: Request) -> Response:
        from ea_core.data import normalize_label

        body = await read_body(request)
        if not engine.labels:
            raise ApiError(400, "This system writes summaries: feedback takes a label, and summaries have none.",
                           code="no_labels")
        if served.request_log is None:
            raise ApiError(400, "This server keeps no request log, so feedback has nowhere to go: start it with "
                                "--log-dir DIR.", code="no_request_log")
        rid, label = body.get("id"), body.get("label")
        if not isinstance(rid, str) or not rid:
            raise ApiError(400, "Give the id of a served answer (the reply's \"id\").", param="id")
        try:
            gold = normalize_label(label)
        except ValueError:
            gold = None
        if gold not in engine.labels:
            raise ApiError(400, f"Unknown label {str(label)[:50]!r}: this system's labels are "
                                f"{', '.join(engine.labels)}.", param="label")
        row = await asyncio.to_thread(served.request_log.find, rid)
        if row is None:
            raise ApiError(404, f"No served answer with id {rid[:60]!r} in the request log.", code="not_found")
        served.request_log.feedback(row, gold)
        metrics.feedback.labels(correct=str(row.get("prediction") == gold).lower()).inc()
        return _json({"id": rid, "label": gold, "recorded": True, "was_correct": row.get("prediction") == gold})

    @app.get("/v1/models")
    @endpoint("models")
    async def models(request: Request) -> Response:
        created = int(served.started)
        return _json({"object": "list", "data": [{"id": m, "object": "model", "created": created,
                                                  "owned_by": "easy-adaptation"} for m in served.model_ids]})

    @app.get("/healthz")
    @endpoint("healthz", open_=True)
    async def healthz(request: Request) -> Response:
        return _json({"status": "ok"})

    @app.get("/readyz")
    @endpoint("readyz", open_=True)
    async def readyz(request: Request) -> Response:
        lm_ok = await served.lm_reachable() if engine.has_lm else None
        ready = lm_ok is not False
        drift = metrics.drift
        bounds = drift.interval()
        return _json({
            "ready": ready, "models_loaded": True, "lm_stage": engine.has_lm, "lm_reachable": lm_ok,
            "lm_share": {"live": drift.share, "window": drift.n, "tuned": drift.tuned,
                         "expected": None if bounds is None else list(bounds),
                         "drift": drift.check() if drift.watched else None},
        }, status=200 if ready else 503)

    @app.get("/metrics")
    @endpoint("metrics")
    async def prometheus(request: Request) -> Response:
        budget = engine.budget()
        if budget is not None:
            metrics.spent.set(float(budget.spent))
        from prometheus_client import CONTENT_TYPE_LATEST

        return Response(metrics.render(), media_type=CONTENT_TYPE_LATEST)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> Response:
        kind = ERROR_KIND.get(exc.status_code, "bad_request")
        if kind is not None:
            metrics.errors.labels(kind=kind).inc()
        message = "Not found." if exc.status_code == 404 else str(exc.detail)
        return _error_response(ApiError(exc.status_code, message, code="not_found" if exc.status_code == 404 else None))

    return app
