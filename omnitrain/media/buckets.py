"""Resolution and duration buckets: which (frames, height, width) a clip is trained at.

Clips of one bucket share a shape, so the VAE encodes them as one batch and their token counts are known before
decoding. A clip goes to the bucket whose aspect ratio is nearest its own, at the most frames it has (never more:
frames are not invented); frame counts are 1 + 4k, what a causal video VAE with 4x temporal compression (Wan 2.1)
maps to 1 + k latent frames. Pure functions over sizes; `fit.py` does the pixels."""

from __future__ import annotations

import math
from dataclasses import dataclass

from omnitrain.media.video import VideoInfo


@dataclass(frozen=True, order=True)
class Bucket:
    frames: int
    height: int
    width: int

    @property
    def aspect(self) -> float:
        return self.width / self.height

    def __str__(self) -> str:
        return f"{self.frames}x{self.height}x{self.width}"


def frame_counts(max_frames: int, temporal_stride: int = 4) -> list[int]:
    """1, 1 + s, 1 + 2s, ... up to max_frames."""
    return list(range(1, max_frames + 1, temporal_stride))


def bucket_grid(
    area: int, aspects: tuple[float, ...], max_frames: int, multiple: int = 16, temporal_stride: int = 4
) -> list[Bucket]:
    """Buckets of about `area` pixels per frame for each aspect ratio (width / height), sides a multiple of
    `multiple` (VAE downsampling x patch size), for every frame count up to max_frames."""
    buckets = set()
    for aspect in aspects:
        # sized as landscape and turned for portrait, so 16:9 and 9:16 are the same bucket on its side
        wide = max(aspect, 1 / aspect)
        short = max(multiple, round(math.sqrt(area / wide) / multiple) * multiple)
        long = max(multiple, round(short * wide / multiple) * multiple)
        height, width = (short, long) if aspect >= 1 else (long, short)
        for frames in frame_counts(max_frames, temporal_stride):
            buckets.add(Bucket(frames, height, width))
    return sorted(buckets)


def choose_bucket(info: VideoInfo, buckets: list[Bucket]) -> Bucket | None:
    """The bucket nearest the clip's aspect ratio (in log space, so 2:1 and 1:2 are equally far from 1:1) with the
    most frames the clip has; None when the clip is shorter than every bucket."""
    if info.height <= 0 or info.width <= 0:
        return None
    aspect = info.width / info.height
    fitting = [b for b in buckets if b.frames <= info.frames]
    if not fitting:
        return None
    nearest = min(abs(math.log(b.aspect / aspect)) for b in fitting)
    same_aspect = [b for b in fitting if math.isclose(abs(math.log(b.aspect / aspect)), nearest, abs_tol=1e-9)]
    return max(same_aspect, key=lambda b: (b.frames, b.height * b.width))
