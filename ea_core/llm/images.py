"""Images as a vision LM is asked about them: downscaled, keyed by their bytes, sent as data URLs.

Why it is built this way:

* An image is downscaled (`ea_core.imaging.downscale`, deterministic) to at most `max_side`
  pixels on its longer side before it is sent: a vision LM bills by pixels (OpenAI's GPT-4o
  family: 170 tokens per 512 px tile), so the size bounds tokens and money. The default, 512, is
  one GPT-4o tile at detail "high" (255 tokens an image) and ~330 tokens for Qwen-VL's 28 px
  patches; small images (CIFAR's 32 px, digits' 8 px) are never enlarged.
* The rendered prompt does not hold the image itself but a reference (`ea-image:SHA256:WxH:MIME`)
  naming the SHA-256 of the downscaled bytes: the answer cache's key is built from it (what is
  sent, never the file name or path), so the same picture under another name is a cache hit, and
  a stage over thousands of images keeps hashes, not megabytes of base64, in memory. Just before a
  request is sent the reference is expanded into the OpenAI content part
  ``{"type": "image_url", "image_url": {"url": "data:image/png;base64,..."}}``
  (the openai SDK's ``ChatCompletionContentPartImageParam``), adding ``"detail"`` only when it is
  not "auto" (the API's default; some OpenAI-compatible servers reject unknown fields).
"""

from __future__ import annotations

import base64
import copy
import hashlib
import io
import re
import threading
from collections import OrderedDict
from dataclasses import asdict, dataclass
from typing import Any, Optional

from ea_core.errors import ConfigError
from ea_core.imaging import downscale
from ea_core.splits import ImageInput

#: Longer side, in pixels, an image is downscaled to before a vision LM sees it (see the module doc).
DEFAULT_IMAGE_MAX_SIDE = 512
#: OpenAI's image detail levels: "low" (one 512 px view, fixed cost), "high" (tiles), "auto".
IMAGE_DETAILS = ("auto", "low", "high")
IMAGE_FORMATS = {"PNG": "image/png", "JPEG": "image/jpeg"}
REF_PREFIX = "ea-image:"
_REF = re.compile(r"^ea-image:([0-9a-f]{64}):(\d+)x(\d+):(image/[a-z]+)$")


@dataclass(frozen=True)
class ImageSettings:
    """How images are sent: longer side at most `max_side` px, OpenAI `detail`, encoded as `fmt`
    (PNG: lossless, for drawings and small images; JPEG q90: a smaller upload for photos)."""

    max_side: int = DEFAULT_IMAGE_MAX_SIDE
    detail: str = "auto"
    fmt: str = "PNG"

    def __post_init__(self) -> None:
        if not isinstance(self.max_side, int) or isinstance(self.max_side, bool) or self.max_side < 8:
            raise ConfigError(f"image_max_side must be a whole number of pixels, at least 8 (not {self.max_side!r}).")
        if self.detail not in IMAGE_DETAILS:
            raise ConfigError(f"image_detail must be one of {', '.join(IMAGE_DETAILS)} (not {self.detail!r}).")
        if str(self.fmt).upper() not in IMAGE_FORMATS:
            raise ConfigError(f"image_format must be PNG or JPEG (not {self.fmt!r}).")
        object.__setattr__(self, "fmt", str(self.fmt).upper())

    @property
    def mime(self) -> str:
        return IMAGE_FORMATS[self.fmt]

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def make_ref(digest: str, width: int, height: int, mime: str) -> str:
    return f"{REF_PREFIX}{digest}:{int(width)}x{int(height)}:{mime}"


def parse_ref(url: str) -> Optional[tuple[str, int, int, str]]:
    """(sha256, width, height, mime) of an image reference; None for anything else (a data URL)."""
    m = _REF.match(str(url))
    return None if m is None else (m.group(1), int(m.group(2)), int(m.group(3)), m.group(4))


def image_part(url: str, detail: str = "auto") -> dict[str, Any]:
    """An OpenAI chat content part holding an image URL (a reference until `ImagePrep.expand`)."""
    inner: dict[str, Any] = {"url": url}
    if detail != "auto":
        inner["detail"] = detail
    return {"type": "image_url", "image_url": inner}


def scaled_size(width: int, height: int, max_side: int) -> tuple[int, int]:
    """The size `ea_core.imaging.downscale` gives an image of this size."""
    if max(width, height) <= max_side:
        return int(width), int(height)
    scale = max_side / max(width, height)
    return max(1, round(width * scale)), max(1, round(height * scale))


def image_size(data: bytes) -> tuple[int, int]:
    """(width, height) from an image's header (nothing decoded); (512, 512) if unreadable."""
    from PIL import Image

    try:
        with Image.open(io.BytesIO(data)) as img:
            return int(img.width), int(img.height)
    except Exception:  # noqa: BLE001 - only for estimates; sending it raises DataError with its name
        return 512, 512


def estimate_part(image: ImageInput, settings: Optional[ImageSettings] = None) -> dict[str, Any]:
    """A content part for estimates and previews: the size the image will be sent at, without
    decoding it (its reference names the original bytes' hash, so it is no cache key)."""
    settings = settings or ImageSettings()
    w, h = scaled_size(*image_size(image.data), settings.max_side)
    return image_part(make_ref(image.sha256, w, h, settings.mime), settings.detail)


class ImagePrep:
    """Downscales the images of one `classify` call and expands their references when sending.

    `part(image)` downscales (a small LRU keeps the last few results, so expanding right after
    keying does not downscale twice) and returns the keyed content part; `expand(messages)` turns
    every reference back into a data URL of the same bytes.
    """

    def __init__(self, settings: Optional[ImageSettings] = None, keep: int = 64) -> None:
        self.settings = settings or ImageSettings()
        self._originals: dict[str, ImageInput] = {}  # sha256 of what is sent -> the image
        self._recent: OrderedDict[str, bytes] = OrderedDict()  # sha256 of the original -> sent bytes
        self._keep = max(int(keep), 1)
        self._lock = threading.Lock()

    def sent_bytes(self, image: ImageInput) -> bytes:
        """The bytes sent for `image`: downscaled and re-encoded (deterministic)."""
        src = image.sha256
        with self._lock:
            if src in self._recent:
                self._recent.move_to_end(src)
                return self._recent[src]
        data = downscale(image.data, self.settings.max_side, image.name or "image", self.settings.fmt)
        with self._lock:
            self._recent[src] = data
            while len(self._recent) > self._keep:
                self._recent.popitem(last=False)
        return data

    def part(self, image: ImageInput) -> dict[str, Any]:
        data = self.sent_bytes(image)
        digest = hashlib.sha256(data).hexdigest()
        with self._lock:
            self._originals[digest] = image
        w, h = image_size(data)
        return image_part(make_ref(digest, w, h, self.settings.mime), self.settings.detail)

    def data_url(self, digest: str) -> str:
        with self._lock:
            image = self._originals[digest]
        data = self.sent_bytes(image)
        if hashlib.sha256(data).hexdigest() != digest:  # downscale is deterministic: never expected
            raise RuntimeError(f"{image.name or 'an image'} re-encoded to other bytes than were keyed")
        return f"data:{self.settings.mime};base64,{base64.b64encode(data).decode('ascii')}"

    def expand(self, messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """`messages` with every image reference replaced by a data URL (the input is not changed)."""
        if not any(isinstance(m.get("content"), list) for m in messages):
            return messages
        out = copy.deepcopy(messages)
        for message in out:
            content = message.get("content")
            if not isinstance(content, list):
                continue
            for part in content:
                if isinstance(part, dict) and part.get("type") == "image_url":
                    ref = parse_ref(part["image_url"]["url"])
                    if ref is not None:
                        part["image_url"]["url"] = self.data_url(ref[0])
        return out


def message_images(message: dict[str, Any]) -> list[dict[str, Any]]:
    """The image parts of one chat message."""
    content = message.get("content")
    if not isinstance(content, list):
        return []
    return [p for p in content if isinstance(p, dict) and p.get("type") == "image_url"]


def has_image_parts(messages: list[dict[str, Any]]) -> bool:
    return any(message_images(m) for m in messages)
