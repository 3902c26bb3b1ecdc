"""A layout run with one attention backend pinned in every spawned rank (force_backend is per process)."""

from __future__ import annotations

import parallel_workers as workers

from omnitrain.model.attention import force_backend
from omnitrain.trainer.parallel import ParallelLayout


def train_with_backend(rank: int, world_size: int, layout: ParallelLayout, backend: str, kind: str = "mmdit") -> dict:
    with force_backend(backend):
        return workers.train(rank, world_size, layout, kind=kind)
