"""A clip's frames on one PNG, in rows, for people to look at (the demo's output, the README)."""

from __future__ import annotations

import math

import numpy as np

from omnitrain.media.image import encode_png


def contact_sheet(frames: np.ndarray, columns: int | None = None, scale: int = 4, gap: int = 2) -> bytes:
    """uint8 [T, H, W, 3] -> PNG: the frames left to right, top to bottom, each enlarged `scale` times (nearest:
    a 64-pixel frame stays sharp), `gap` pixels of white between them."""
    frames = np.asarray(frames, dtype=np.uint8)
    t, h, w, _ = frames.shape
    columns = columns or min(t, 9)
    rows = math.ceil(t / columns)
    big = frames.repeat(scale, axis=1).repeat(scale, axis=2)
    hh, ww = h * scale, w * scale
    sheet = np.full((rows * hh + (rows + 1) * gap, columns * ww + (columns + 1) * gap, 3), 255, dtype=np.uint8)
    for i in range(t):
        r, c = divmod(i, columns)
        top, left = gap + r * (hh + gap), gap + c * (ww + gap)
        sheet[top : top + hh, left : left + ww] = big[i]
    return encode_png(sheet)
