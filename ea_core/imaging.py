"""Decode, resize and re-encode images: the one place pixels are touched.

Splits keep images as encoded bytes (see `ea_core.splits`); small models turn them into fixed-size
arrays with `to_array`, the large-model clients into a downscaled PNG/JPEG with `downscale`.
Pillow does the work; every function raises `DataError` with the image's name when the bytes are
not a readable image.
"""

from __future__ import annotations

import io
from typing import Optional, Sequence

import numpy as np

from ea_core.errors import DataError

#: Images larger than this many pixels are refused by Pillow's bomb check unless downscaled first.
MAX_PIXELS = 64_000_000


def open_image(data: bytes, name: str = "image"):
    """A loaded RGB `PIL.Image` from encoded bytes, or DataError naming the image."""
    from PIL import Image

    try:
        with Image.open(io.BytesIO(data)) as img:
            if img.width * img.height > MAX_PIXELS:
                raise DataError(f"{name}: {img.width}x{img.height} pixels is too large an image (limit {MAX_PIXELS:,}).")
            img.draft("RGB", (1024, 1024))  # JPEG: decode at a reduced scale when the image is huge
            return img.convert("RGB")
    except DataError:
        raise
    except Exception as err:  # Pillow raises many types for a damaged file
        raise DataError(f"{name}: not a readable image ({type(err).__name__}: {str(err)[:120]}).") from None


def to_array(images: Sequence[bytes], size: int, names: Optional[Sequence[str]] = None) -> np.ndarray:
    """Images as uint8 (n, size, size, 3), each resized (bilinear) to size x size, RGB."""
    from PIL import Image

    out = np.empty((len(images), size, size, 3), dtype=np.uint8)
    for i, data in enumerate(images):
        img = open_image(data, names[i] if names is not None else f"image {i}")
        out[i] = np.asarray(img.resize((size, size), Image.Resampling.BILINEAR), dtype=np.uint8)
    return out


def encode_png(array: np.ndarray) -> bytes:
    """Encode one uint8 array (h, w) or (h, w, 3) as PNG bytes."""
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(array, dtype=np.uint8)).save(buf, format="PNG", optimize=False)
    return buf.getvalue()


def downscale(data: bytes, max_side: int, name: str = "image", fmt: str = "PNG") -> bytes:
    """The image re-encoded (PNG or JPEG) with its longer side at most `max_side` pixels.

    Deterministic for the same bytes, so the LM answer cache keys on what is actually sent.
    """
    from PIL import Image

    img = open_image(data, name)
    if max(img.size) > max_side:
        scale = max_side / max(img.size)
        img = img.resize((max(1, round(img.width * scale)), max(1, round(img.height * scale))),
                         Image.Resampling.BICUBIC)
    buf = io.BytesIO()
    if fmt.upper() == "JPEG":
        img.save(buf, format="JPEG", quality=90)
    else:
        img.save(buf, format="PNG", optimize=False)
    return buf.getvalue()
