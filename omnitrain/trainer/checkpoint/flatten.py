"""Split a nested training state into its tensors and a small picklable skeleton, and join them back.

The tensors go through preallocated shared-memory buffers to the writer process; the skeleton (step, data loader
position, Python/numpy RNG state, optimizer hyper-parameters...) is pickled with each request.
"""

from __future__ import annotations

from typing import Any

import torch

from omnitrain.checkpoint_format import TensorRef, slice_of


def flatten_state(state: Any) -> tuple[Any, list[torch.Tensor]]:
    """DTensor shards (FSDP, TP) become this rank's local piece; their TensorRef says where it lies in the global
    tensor (the shard file's index lets another layout read it)."""
    tensors: list[torch.Tensor] = []

    def walk(node):
        if isinstance(node, torch.Tensor):
            if hasattr(node, "to_local"):
                global_shape, offsets = slice_of(node)
                tensors.append(node.to_local().detach())
                return TensorRef(len(tensors) - 1, global_shape, offsets)
            tensors.append(node.detach())
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
