"""The wire format: request bodies to `ServeInput`s, results to OpenAI-shaped replies, errors.

Parsing is by hand, not by a schema, so that unknown fields are ignored as OpenAI's API ignores
them and every malformed body is a 400 with a message (never a 422 or a 500). Every limit that
a body can break is a 413.
"""

from __future__ import annotations

import base64
import binascii
import json
import re
import time
from typing import Any, Optional

from ea_core.serve.engine import Routed, ServeInput
from ea_core.serve.settings import ServeSettings

try:  # orjson (a Gradio dependency) parses and writes JSON several times faster
    import orjson as _orjson
except ImportError:  # pragma: no cover
    _orjson = None


class ApiError(Exception):
    """An error reply in OpenAI's shape: ``{"error": {"message", "type", "param", "code"}}``."""

    def __init__(self, status: int, message: str, *, type_: str = "invalid_request_error",
                 code: Optional[str] = None, param: Optional[str] = None) -> None:
        super().__init__(message)
        self.status, self.message, self.type, self.code, self.param = status, message, type_, code, param

    def body(self) -> dict[str, Any]:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}


def too_large(what: str, limit: str) -> ApiError:
    return ApiError(413, f"{what} is larger than this server accepts ({limit}).", code="request_too_large")


def dumps(value: Any) -> bytes:
    if _orjson is not None:
        return _orjson.dumps(value, option=_orjson.OPT_SERIALIZE_NUMPY)
    return json.dumps(value, ensure_ascii=False).encode()


def loads_body(raw: bytes) -> dict[str, Any]:
    """A request body as a JSON object, or a 400 saying what is wrong."""
    if not raw.strip():
        raise ApiError(400, "The request body is empty: send a JSON object.")
    try:
        value = _orjson.loads(raw) if _orjson is not None else json.loads(raw)
    except (ValueError, RecursionError, UnicodeDecodeError) as err:
        raise ApiError(400, f"The request body is not valid JSON ({str(err)[:120]}).") from None
    if not isinstance(value, dict):
        raise ApiError(400, f"The request body must be a JSON object, not {type(value).__name__}.")
    return value


# ------------------------------------------------------------------------------------ inputs


def _text(value: Any, where: str, settings: ServeSettings) -> str:
    if not isinstance(value, str):
        raise ApiError(400, f"{where} must be a string, not {type(value).__name__}.")
    if len(value) > settings.max_input_chars:
        raise too_large(f"{where} ({len(value):,} characters)", f"{settings.max_input_chars:,} characters")
    if not value.strip():
        raise ApiError(400, f"{where} is empty: there is nothing to classify.")
    return value


_DATA_URL = re.compile(r"^data:(image/[\w.+-]+)?(;[\w=.+-]+)*;base64,", re.IGNORECASE)


def decode_image(value: Any, where: str, settings: ServeSettings) -> bytes:
    """An image given as a data URL (``data:image/png;base64,...``) or bare base64, checked and
    converted like training images (`convert_image`); the server never fetches a URL."""
    from ea_core.data.images import Unreadable, convert_image
    from ea_core.errors import DataError

    if not isinstance(value, str):
        raise ApiError(400, f"{where} must be a data URL string (data:image/png;base64,...).")
    if value.lower().startswith(("http://", "https://", "file:", "ftp:")):
        raise ApiError(400, f"{where}: this server does not fetch image URLs; send the image itself as a data URL "
                            "(data:image/png;base64,...).")
    m = _DATA_URL.match(value)
    payload = value[m.end():] if m else value
    if len(payload) * 3 // 4 > settings.max_image_bytes:
        raise too_large(f"{where}", f"{settings.max_image_bytes:,} bytes per image")
    try:
        data = base64.b64decode(payload, validate=True)
    except (binascii.Error, ValueError):
        raise ApiError(400, f"{where} is not base64 (send data:image/png;base64,...).") from None
    try:
        return convert_image(data, where)
    except (Unreadable, DataError) as err:
        raise ApiError(400, f"{where} is not a readable image ({err}).") from None


def _structured(text: str) -> Optional[dict[str, Any]]:
    """`{"text": ..., "text_pair": ...}` written as a message, else None."""
    if not text.startswith("{"):
        return None
    try:
        value = json.loads(text)
    except ValueError:
        return None
    if isinstance(value, dict) and isinstance(value.get("text"), str) and set(value) <= {"text", "text_pair", "pair"}:
        return value
    return None


def _from_fields(fields: dict[str, Any], where: str, pair_task: bool, image_task: bool,
                 settings: ServeSettings) -> ServeInput:
    """An input from an object: {"text", "text_pair"} or {"image"}."""
    if image_task:
        if "image" not in fields:
            raise ApiError(400, f"{where}: this system classifies images: give "
                                "{\"image\": \"data:image/png;base64,...\"}.")
        name = fields.get("name") if isinstance(fields.get("name"), str) else "image"
        return ServeInput(name[:200], image=decode_image(fields["image"], f"{where}.image", settings))
    if "text" not in fields:
        raise ApiError(400, f"{where} has no \"text\".")
    text = _text(fields["text"], f"{where}.text", settings)
    pair_value = fields.get("text_pair", fields.get("pair"))
    if pair_task:
        if pair_value is None:
            raise ApiError(400, f"{where}: this system classifies text pairs: give \"text\" and \"text_pair\".")
        return ServeInput(text, _text(pair_value, f"{where}.text_pair", settings))
    return ServeInput(text)


def classify_inputs(body: dict[str, Any], pair_task: bool, image_task: bool,
                    settings: ServeSettings) -> list[ServeInput]:
    """``{"inputs": [...]}``: strings, ``{"text", "text_pair"}`` objects, or ``{"image"}`` objects."""
    inputs = body.get("inputs")
    if not isinstance(inputs, list) or not inputs:
        raise ApiError(400, "Give the inputs as a non-empty list: {\"inputs\": [\"a text\", ...]}.", param="inputs")
    if len(inputs) > settings.max_batch_inputs:
        raise too_large(f"The batch of {len(inputs)} inputs", f"{settings.max_batch_inputs} inputs per request")
    out = []
    for i, value in enumerate(inputs):
        where = f"inputs[{i}]"
        if isinstance(value, str) and not image_task:
            fields = _structured(value) if pair_task else None
            if fields is None:
                if pair_task:
                    raise ApiError(400, f"{where}: this system classifies text pairs: give "
                                        "{\"text\": ..., \"text_pair\": ...}.")
                out.append(ServeInput(_text(value, where, settings)))
                continue
            value = fields
        if isinstance(value, str) and image_task:
            value = {"image": value}
        if not isinstance(value, dict):
            raise ApiError(400, f"{where} must be a string or an object, not {type(value).__name__}.")
        out.append(_from_fields(value, where, pair_task, image_task, settings))
    return out


def _parts(content: Any, where: str) -> list[dict[str, Any]]:
    """A message's content as content parts."""
    if isinstance(content, str):
        return [{"type": "text", "text": content}]
    if isinstance(content, list):
        parts = []
        for j, part in enumerate(content):
            if isinstance(part, str):
                parts.append({"type": "text", "text": part})
            elif isinstance(part, dict):
                parts.append(part)
            else:
                raise ApiError(400, f"{where}.content[{j}] must be a content part object.")
        return parts
    if content is None:
        return []
    raise ApiError(400, f"{where}.content must be a string or a list of content parts.")


def chat_input(body: dict[str, Any], pair_task: bool, image_task: bool, settings: ServeSettings) -> ServeInput:
    """The input of a chat request: the last user message (a pair: the last two user messages, or
    a JSON body {"text", "text_pair"} as the last one; an image: an ``image_url`` part)."""
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise ApiError(400, "Give \"messages\": a non-empty list with at least one user message.", param="messages")
    users: list[tuple[str, list[dict[str, Any]]]] = []
    for i, m in enumerate(messages):
        if not isinstance(m, dict):
            raise ApiError(400, f"messages[{i}] must be an object.", param="messages")
        if m.get("role") == "user":
            users.append((f"messages[{i}]", _parts(m.get("content"), f"messages[{i}]")))
    if not users:
        raise ApiError(400, "No user message: the last user message is the input to classify.", param="messages")
    where, parts = users[-1]
    if image_task:
        images = [p for p in parts if p.get("type") == "image_url"]
        if not images:
            raise ApiError(400, f"{where}: this system classifies images: send an image_url content part "
                                "(data:image/png;base64,...).", param="messages")
        url = images[-1].get("image_url")
        url = url.get("url") if isinstance(url, dict) else url
        return ServeInput("image", image=decode_image(url, f"{where} image_url", settings))
    text = _message_text(parts, where, settings)
    fields = _structured(text.strip())
    if fields is not None and (pair_task or set(fields) == {"text"}):
        return _from_fields(fields, where, pair_task, False, settings)
    if not pair_task:
        return ServeInput(text)
    if len(users) < 2:
        raise ApiError(400, "This system classifies text pairs: send the two texts as two user messages, or one "
                            "user message holding {\"text\": ..., \"text_pair\": ...}.", param="messages")
    first = _message_text(users[-2][1], users[-2][0], settings)
    return ServeInput(first, text)


def _message_text(parts: list[dict[str, Any]], where: str, settings: ServeSettings) -> str:
    texts = [p.get("text") for p in parts if p.get("type") == "text"]
    if any(p.get("type") == "image_url" for p in parts) and not texts:
        raise ApiError(400, f"{where}: this system classifies text, not images.", param="messages")
    if not all(isinstance(t, str) for t in texts):
        raise ApiError(400, f"{where}: a text content part must hold a string.", param="messages")
    return _text("\n".join(texts), f"{where}.content", settings)


# ----------------------------------------------------------------------------------- replies


def usage(r: Routed) -> dict[str, int]:
    """The LM's tokens for this input (zero when it was not called or answered from the cache)."""
    return {"prompt_tokens": r.prompt_tokens, "completion_tokens": r.completion_tokens,
            "total_tokens": r.prompt_tokens + r.completion_tokens}


def chat_reply(rid: str, model: str, r: Routed) -> dict[str, Any]:
    return {
        "id": rid, "object": "chat.completion", "created": int(time.time()), "model": model,
        "choices": [{"index": 0, "message": {"role": "assistant", "content": r.prediction},
                     "finish_reason": "stop", "logprobs": None}],
        "usage": usage(r), "ea": {"id": rid, **r.route()},
    }


def chat_chunk(rid: str, model: str, r: Routed) -> dict[str, Any]:
    return {
        "id": rid, "object": "chat.completion.chunk", "created": int(time.time()), "model": model,
        "choices": [{"index": 0, "delta": {"role": "assistant", "content": r.prediction},
                     "finish_reason": "stop", "logprobs": None}],
        "usage": usage(r), "ea": {"id": rid, **r.route()},
    }


def classify_result(rid: str, r: Routed) -> dict[str, Any]:
    return {"id": rid, "label": r.prediction, "confidence": r.confidence, "answered_by": r.answered_by,
            "probabilities": r.probabilities, "probabilities_from": r.probabilities_from,
            "usage": usage(r), "route": r.route()}


_UNSAFE = re.compile(r"[^\x20-\x7e]")


def header_value(value: Any, limit: int = 200) -> str:
    """Printable ASCII only (stage names come from the bundle: no line breaks into the headers)."""
    return _UNSAFE.sub("?", str(value))[:limit]


def route_headers(rid: str, r: Routed) -> dict[str, str]:
    """The route in ``x-ea-*`` response headers."""
    route = ";".join(
        f"{s.stage}={'-' if s.confidence is None else f'{s.confidence:.3f}'}/{s.threshold:.3f}"
        f"{'*' if s.took else ''}" for s in r.stages)
    headers = {
        "x-ea-id": rid,
        "x-ea-answered-by": r.answered_by,
        "x-ea-confidence": "" if r.confidence is None else f"{r.confidence:.4f}",
        "x-ea-lm-called": "true" if r.lm_called else "false",
        "x-ea-lm-reached": "true" if r.lm_reached else "false",
        "x-ea-cache-hit": "true" if r.cache_hit else "false",
        "x-ea-cost-usd": f"{r.cost_usd:.6f}",
        "x-ea-latency-ms": f"{r.latency_s * 1000:.2f}",
        "x-ea-route": route,
    }
    if r.note:
        headers["x-ea-note"] = r.note
    return {k: header_value(v, 500) for k, v in headers.items()}
