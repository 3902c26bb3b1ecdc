"""Split a nested training state into its tensors and a small picklable skeleton, and join them back.

The tensors go through preallocated shared-memory buffers to the writer process; the skeleton (step, data loader
position, Python/numpy RNG state, optimizer hyper-parameters...) is pickled with each request.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch


@dataclass(frozen=True)
class TensorRef:
    """Stands for the index-th tensor of the flattened state."""

    index: int


def _local(t: torch.Tensor) -> torch.Tensor:
    # DTensor shards are saved as this rank's local piece; the manifest's layout says how they were split.
    return t.to_local() if hasattr(t, "to_local") else t


def flatten_state(state: Any) -> tuple[Any, list[torch.Tensor]]:
    tensors: list[torch.Tensor] = []

    def walk(node):
        if isinstance(node, torch.Tensor):
            tensors.append(_local(node).detach())
            return TensorRef(len(tensors) - 1)
        if isinstance(node, dict):
            return {k: walk(v) for k, v in node.items()}
        if isinstance(node, list):
            return [walk(v) for v in node]
        if isinstance(node, tuple):
            return tuple(walk(v) for v in node)
        return node

    return walk(state), tensors


def unflatten_state(skeleton: Any, tensors: list[torch.Tensor]) -> Any:
    def walk(node):
        if isinstance(node, TensorRef):
            return tensors[node.index]
        if isinstance(node, dict):
            return {k: walk(v) for k, v in node.items()}
        if isinstance(node, list):
            return [walk(v) for v in node]
        if isinstance(node, tuple):
            return tuple(walk(v) for v in node)
        return node

    return walk(skeleton)
