"""A synthetic dataset with variable lengths and structure a model can learn: the text embedding names one of a few
classes and the latent is that class's pattern (per-channel amplitude, spatial frequency, temporal phase) plus noise.
i2v rows carry the first frame as reference, v2v rows a context clip (the negated video), every row a DPO loser
(the video with heavy noise). Rows are shuffled before writing, so readers read sequentially."""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import torch

from omnitrain.trainer.data.reader import MANIFEST
from omnitrain.trainer.data.schema import SCHEMA, DataSample, encode

CLASSES = 8


@dataclass(frozen=True)
class SynthSpec:
    samples: int = 256
    shards: int = 4
    seed: int = 0
    max_frames: int = 4
    max_side: int = 8
    latent_channels: int = 4
    text_dim: int = 32
    patch_size: tuple[int, int, int] = (1, 2, 2)
    row_group_size: int = 32
    # > 0: a mixed-length dataset (what elastic Ulysses is for): this fraction of rows are long clips of the maximal
    # size; the others draw frames and sides up to half the maximum.
    long_fraction: float = 0.0


def _sample(key: int, spec: SynthSpec, classes: dict, gen: torch.Generator) -> DataSample:
    k = int(torch.randint(CLASSES, (1,), generator=gen))
    pt, ph, pw = spec.patch_size
    # the draw only happens for mixed-length datasets, so existing datasets stay what they were
    long = spec.long_fraction > 0 and float(torch.rand(1, generator=gen)) < spec.long_fraction
    div = 1 if spec.long_fraction == 0 else 2

    def size(most: int, patch: int) -> int:
        if long:
            return patch * max(1, most // patch)
        return patch * int(torch.randint(1, max(1, most // patch // div) + 1, (1,), generator=gen))

    frames = size(spec.max_frames, pt)
    sides = [size(spec.max_side, ph), size(spec.max_side, pw)]
    text_len = int(torch.randint(4, 17, (1,), generator=gen))
    text = classes["text"][k] + 0.1 * torch.randn(text_len, spec.text_dim, generator=gen)
    t = torch.arange(frames, dtype=torch.float32)[:, None, None]
    h = torch.arange(sides[0], dtype=torch.float32)[None, :, None]
    w = torch.arange(sides[1], dtype=torch.float32)[None, None, :]
    wave = torch.cos(classes["freq"][k] * (h + w) + classes["phase"][k] * t)
    video = classes["amp"][k][:, None, None, None] * wave + 0.1 * torch.randn(
        spec.latent_channels, frames, *sides, generator=gen
    )
    task = ("t2v", "t2v", "i2v", "v2v")[int(torch.randint(4, (1,), generator=gen))]
    loser = video + torch.randn(video.shape, generator=gen)
    return DataSample(
        key=key,
        task=task,
        text=text,
        video=video,
        reference=video[:, :1].clone() if task == "i2v" else None,
        context=-video + 0.05 * torch.randn(video.shape, generator=gen) if task == "v2v" else None,
        loser=loser,
    )


def write_synthetic(out: str | Path, spec: SynthSpec, log=print) -> list[Path]:
    """Write spec.shards Parquet shards atomically (each file appears complete or not at all), manifest last."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    gen = torch.Generator().manual_seed(spec.seed)
    classes = {
        "text": torch.randn(CLASSES, spec.text_dim, generator=gen),
        "amp": torch.randn(CLASSES, spec.latent_channels, generator=gen),
        "freq": torch.rand(CLASSES, generator=gen) * math.pi / 2,
        "phase": torch.rand(CLASSES, generator=gen) * math.pi,
    }
    order = torch.randperm(spec.samples, generator=gen).tolist()  # the shuffle happens here, once
    per_shard = -(-spec.samples // spec.shards)
    paths = []
    for shard in range(spec.shards):
        keys = order[shard * per_shard : (shard + 1) * per_shard]
        rows = [
            encode(_sample(key, spec, classes, torch.Generator().manual_seed(spec.seed * 1_000_003 + key)))
            for key in keys
        ]
        path = out / f"shard-{shard:05d}.parquet"
        tmp = out / f".{path.name}.tmp-{os.getpid()}"
        pq.write_table(pa.Table.from_pylist(rows, schema=SCHEMA), tmp, row_group_size=spec.row_group_size)
        os.replace(tmp, path)
        paths.append(path)
        log(f"data synth: shard {shard + 1}/{spec.shards} ({len(rows)} samples) -> {path}")
    (out / MANIFEST).write_text(json.dumps({"samples": spec.samples, "shards": spec.shards, "seed": spec.seed}))
    return paths
