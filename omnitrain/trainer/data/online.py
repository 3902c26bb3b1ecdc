"""Online encoding in the training job: raw shards in, the same packed batches as pre-encoded shards out.

Every rank reads the global stream and packs the same way (loader.py), so every rank must know each sample's
token count: a *planned* sample has the shapes its latents and text embedding will have (from the clip size probed
at pack time, its bucket and the tokenizer, no encoder run) as meta tensors that hold no memory. After the step's
samples are placed in bins, each data-parallel rank encodes only the samples of its own bins (`materialize`): the
encoding work is split across the data ranks and balanced by the attention cost the balancer already equalises
(bigger clips, more tokens, more VAE work). The encoders run per sample through `encode_raw_sample`, the function
`omnitrain data encode` uses, so both paths give the same bits."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from omnitrain.encoders import Encoders
from omnitrain.media.buckets import Bucket
from omnitrain.trainer.data.encoders import SkipSample, bucket_of, context_bucket_of, encode_raw_sample
from omnitrain.trainer.data.raw import RawSample, decode_raw
from omnitrain.trainer.data.reader import DataError
from omnitrain.trainer.data.schema import CorruptRow, DataSample

log = logging.getLogger(__name__)


@dataclass
class PlannedSample(DataSample):
    """A raw sample before encoding: tensors on the meta device with the encoded shapes."""

    raw: RawSample | None = None
    bucket: Bucket | None = None


def _meta(shape) -> torch.Tensor:
    return torch.empty(tuple(shape), device="meta")


class OnlineEncoding:
    def __init__(self, encoders: Encoders, root: str | Path, on_corrupt: str = "skip"):
        self.encoders, self.root, self.on_corrupt = encoders, Path(root), on_corrupt
        self.seconds = 0.0  # spent in the encoders, cumulative (the loop reads the difference per step)
        self.samples = 0  # encoded by this rank

    def plan(self, row: dict) -> PlannedSample:
        """A raw row as the loader sees it (the ShardReader's row decoder); CorruptRow when it cannot be planned."""
        raw = decode_raw(row)
        video = self.encoders.video
        try:
            bucket = bucket_of(raw.info, self.encoders.buckets, raw.source)
        except SkipSample as error:
            raise CorruptRow(str(error)) from error
        reference = context = None
        if raw.references:  # one latent frame per image
            channels, _, height, width = video.latent_shape(1, bucket.height, bucket.width)
            reference = _meta((channels, len(raw.references), height, width))
        if raw.context is not None:
            try:
                context_bucket = context_bucket_of(raw.context_frames or 0, bucket, self.encoders.buckets, raw.source)
            except SkipSample as error:
                raise CorruptRow(str(error)) from error
            context = _meta(video.latent_shape(context_bucket.frames, bucket.height, bucket.width))
        return PlannedSample(
            key=raw.key,
            task=raw.task,
            text=_meta((self.encoders.text.count_tokens(raw.caption), self.encoders.text.width)),
            video=_meta(video.latent_shape(bucket.frames, bucket.height, bucket.width)),
            reference=reference,
            context=context,
            raw=raw,
            bucket=bucket,
        )

    def materialize(self, sample: DataSample) -> DataSample | None:
        """The encoded sample (None: skipped, onCorrupt=skip); its shapes must be the planned ones, since every
        rank packed by them."""
        if not isinstance(sample, PlannedSample):
            return sample
        assert sample.raw is not None
        began = time.perf_counter()
        try:
            encoded = encode_raw_sample(sample.raw, self.encoders, self.root)
        except (SkipSample, CorruptRow) as error:
            if self.on_corrupt == "fail":
                raise DataError(f"{error} (set spec.data.onCorrupt=skip to skip it)") from error
            log.warning("skipping a sample that cannot be encoded: %s", error)
            return None
        finally:
            self.seconds += time.perf_counter() - began
        for name in ("text", "video", "reference", "context"):
            planned, got = getattr(sample, name), getattr(encoded, name)
            if (planned is None) != (got is None) or (planned is not None and planned.shape != got.shape):
                raise DataError(
                    f"{sample.raw.source}: {name} encoded to {None if got is None else list(got.shape)}, planned "
                    f"{None if planned is None else list(planned.shape)}; the raw row's size does not match its clip "
                    "(pack the folder again)"
                )
        self.samples += 1
        return encoded
