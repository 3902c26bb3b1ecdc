"""PNG/JPEG (whatever Pillow reads) to RGB uint8 and back, with the same limits and errors as video."""

from __future__ import annotations

import io

import numpy as np

from omnitrain.media.video import DEFAULT_LIMITS, MediaError, MediaLimits


def decode_image(data: bytes, limits: MediaLimits = DEFAULT_LIMITS) -> np.ndarray:
    """uint8 [H, W, 3] RGB. The header's size is checked before the pixels are decoded (decompression bombs)."""
    from PIL import Image, UnidentifiedImageError

    if not data:
        raise MediaError("empty (0 bytes)")
    if len(data) > limits.max_bytes:
        raise MediaError(f"{len(data)} bytes, more than the limit of {limits.max_bytes}")
    try:
        with Image.open(io.BytesIO(data)) as image:
            width, height = image.size
            if width > limits.max_side or height > limits.max_side:
                raise MediaError(f"{width}x{height} pixels, more than the limit of {limits.max_side} on a side")
            pixels = np.array(image.convert("RGB"))  # a copy: Pillow's buffer is read-only
    except MediaError:
        raise
    except (UnidentifiedImageError, OSError, ValueError) as error:
        raise MediaError(f"not a readable image ({type(error).__name__}: {error})") from error
    if pixels.size == 0:
        raise MediaError("the image has no pixels")
    return pixels


def encode_png(pixels: np.ndarray) -> bytes:
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(np.asarray(pixels, dtype=np.uint8)).save(buffer, format="PNG")
    return buffer.getvalue()
