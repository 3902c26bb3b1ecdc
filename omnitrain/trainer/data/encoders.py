"""One raw sample -> the encoded sample the DiT trains on, through the frozen encoders (omnitrain/encoders.py).

One function, `encode_raw_sample`, serves the pre-encoding Job (`omnitrain data encode`) and online encoding in the
training job, so both paths give the same latents for the same input and seed: every sample is encoded on its own
(batch composition changes padded attention and conv results in the last bits), at a fixed CPU thread count, and
its latent is drawn with a generator seeded by (spec.seed, key)."""

from __future__ import annotations

from pathlib import Path

import torch

from omnitrain.encoders import Encoders, intra_op_threads
from omnitrain.media.buckets import Bucket, choose_bucket
from omnitrain.media.fit import fit_frames
from omnitrain.media.image import decode_image
from omnitrain.media.video import DEFAULT_LIMITS, MediaError, MediaLimits, VideoInfo, decode_video
from omnitrain.trainer.data.raw import RawSample
from omnitrain.trainer.data.schema import DataSample


class SkipSample(ValueError):
    """A raw sample that cannot be encoded (bad media, too short for every bucket); the message names the file."""


def bucket_of(info: VideoInfo, buckets: list[Bucket], source: str) -> Bucket:
    bucket = choose_bucket(info, buckets)
    if bucket is None:
        raise SkipSample(f"{source}: {info.frames} frames, fewer than every bucket needs ({min(buckets).frames})")
    return bucket


def context_bucket_of(frames: int, bucket: Bucket, buckets: list[Bucket], source: str) -> Bucket:
    """A context clip is fitted to its clip's resolution, at the most frames it has."""
    same_size = [b for b in buckets if (b.height, b.width) == (bucket.height, bucket.width)]
    return bucket_of(VideoInfo(frames, bucket.height, bucket.width, 0.0), same_size, f"{source} (context)")


def encode_raw_sample(
    raw: RawSample, encoders: Encoders, root: str | Path, limits: MediaLimits = DEFAULT_LIMITS
) -> DataSample:
    """Decode, bucket, fit and encode one raw sample; raises SkipSample naming the file when it cannot."""
    with intra_op_threads(encoders.spec.cpu_threads, encoders.video.device):
        return _encode_raw_sample(raw, encoders, root, limits)


def _encode_raw_sample(raw: RawSample, encoders: Encoders, root: str | Path, limits: MediaLimits) -> DataSample:
    bucket = bucket_of(raw.info, encoders.buckets, raw.source)
    generator = (
        torch.Generator().manual_seed(encoders.spec.seed * 1_000_003 + raw.key) if encoders.spec.vae.sample else None
    )
    try:
        clip = decode_video(raw.video_bytes(root), limits, take=bucket.frames)
        if clip.frames.shape[0] < bucket.frames:  # the probe's count was wrong (a file changed since packing)
            raise MediaError(f"{clip.frames.shape[0]} frames decoded, the row says {raw.info.frames}")
        video = encoders.video(fit_frames(clip.frames, bucket), generator)
        reference = None
        if raw.references:
            still = Bucket(1, bucket.height, bucket.width)
            images = [fit_frames(decode_image(data, limits)[None], still) for data in raw.references]
            reference = torch.cat([encoders.video(image, generator) for image in images], dim=1)
        context = None
        if raw.context is not None:
            context_clip = decode_video(raw.context, limits)
            frames = context_clip.frames.shape[0]
            context_bucket = context_bucket_of(frames, bucket, encoders.buckets, raw.source)
            context = encoders.video(fit_frames(context_clip.frames, context_bucket), generator)
    except MediaError as error:
        raise SkipSample(f"{raw.source}: {error}") from error
    return DataSample(
        key=raw.key, task=raw.task, text=encoders.text(raw.caption), video=video, reference=reference, context=context
    )
