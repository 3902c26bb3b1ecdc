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


def rewrap_like(template: Any, loaded: Any) -> Any:
    """Give loaded plain tensors back the DTensor form of the same entries in `template` (the live state's
    state_dict): a shard saved as this rank's local piece becomes a DTensor on the live mesh and placements again.
    Same layout only (restore refuses sharded layout changes)."""
    if hasattr(template, "to_local") and isinstance(loaded, torch.Tensor) and not hasattr(loaded, "to_local"):
        from torch.distributed.tensor import DTensor

        local = template.to_local()
        if tuple(loaded.shape) != tuple(local.shape):
            raise ValueError(
                f"saved shard of shape {tuple(loaded.shape)} does not fit the live shard {tuple(local.shape)}"
            )
        return DTensor.from_local(
            loaded.to(device=local.device, dtype=local.dtype),
            template.device_mesh,
            template.placements,
            run_check=False,
            shape=template.shape,
            stride=template.stride(),
        )
    if isinstance(template, dict) and isinstance(loaded, dict):
        return {k: rewrap_like(template[k], v) if k in template else v for k, v in loaded.items()}
    if isinstance(template, (list, tuple)) and isinstance(loaded, (list, tuple)) and len(template) == len(loaded):
        return type(loaded)(rewrap_like(t, v) for t, v in zip(template, loaded))
    return loaded
