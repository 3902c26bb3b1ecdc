"""Row layout of a shard: one pre-encoded sample per row, tensors as float32 bytes plus their shape."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import torch

TASKS = ("t2v", "i2v", "v2v")
TENSOR_COLUMNS = ("text", "video", "reference", "context", "loser")  # text [L, text_dim], latents [C, T, H, W]

SCHEMA = pa.schema(
    [("key", pa.int64()), ("task", pa.string())]
    + [field for name in TENSOR_COLUMNS for field in ((name, pa.binary()), (f"{name}_shape", pa.list_(pa.int64())))]
)


class CorruptRow(ValueError):
    """A row whose bytes do not match its declared shape, or that lacks a required tensor."""


@dataclass
class DataSample:
    key: int
    task: str
    text: torch.Tensor
    video: torch.Tensor  # the clean latent (the DPO winner)
    reference: torch.Tensor | None = None
    context: torch.Tensor | None = None
    loser: torch.Tensor | None = None  # DPO: the rejected latent for the same condition


def encode(sample: DataSample) -> dict:
    row = {"key": sample.key, "task": sample.task}
    for name in TENSOR_COLUMNS:
        value = getattr(sample, name)
        row[name] = None if value is None else value.detach().float().contiguous().numpy().tobytes()
        row[f"{name}_shape"] = None if value is None else list(value.shape)
    return row


def _tensor(row: dict, name: str, required: bool, ndim: int) -> torch.Tensor | None:
    data, shape = row.get(name), row.get(f"{name}_shape")
    if data is None or shape is None:
        if required:
            raise CorruptRow(f"column {name!r} is missing")
        return None
    if len(shape) != ndim or any(d <= 0 for d in shape):
        raise CorruptRow(f"column {name!r} has shape {shape}, expected {ndim} positive dimensions")
    if len(data) != 4 * int(np.prod(shape)):
        raise CorruptRow(f"column {name!r} holds {len(data)} bytes but shape {shape} needs {4 * int(np.prod(shape))}")
    return torch.from_numpy(np.frombuffer(data, dtype=np.float32).reshape(shape).copy())


def decode(row: dict) -> DataSample:
    if row.get("task") not in TASKS:
        raise CorruptRow(f"task {row.get('task')!r} is not one of {TASKS}")
    sample = DataSample(
        key=int(row["key"]),
        task=row["task"],
        text=_tensor(row, "text", True, 2),
        video=_tensor(row, "video", True, 4),
        reference=_tensor(row, "reference", False, 4),
        context=_tensor(row, "context", False, 4),
        loser=_tensor(row, "loser", False, 4),
    )
    if sample.task == "i2v" and sample.reference is None:
        raise CorruptRow("an i2v row needs reference latents")
    if sample.task == "v2v" and sample.context is None:
        raise CorruptRow("a v2v row needs context latents")
    if sample.loser is not None and sample.loser.shape != sample.video.shape:
        raise CorruptRow(f"loser latent {list(sample.loser.shape)} differs from video {list(sample.video.shape)}")
    return sample
