"""Reusable host buffers the training step copies its tensors into before a background write.

One flat shared-memory buffer per dtype holds every tensor of a rank's state (a few file descriptors to hand to the
writer process, however many parameters; torch.save writes each buffer once), allocated once and reused while the
tensors' shapes stay the same. With a GPU the buffers are registered as pinned memory so the device->host copy is
a DMA at full bandwidth.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass

import torch

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class LeafSpec:
    shape: tuple[int, ...]
    dtype: torch.dtype
    offset: int  # elements into the buffer of its dtype

    @property
    def numel(self) -> int:
        return math.prod(self.shape)


def plan_leaves(tensors: list[torch.Tensor]) -> tuple[list[LeafSpec], dict[torch.dtype, int]]:
    """Where each tensor sits in its dtype's buffer, and the element count of each buffer."""
    specs, sizes = [], {}
    for t in tensors:
        offset = sizes.get(t.dtype, 0)
        specs.append(LeafSpec(tuple(t.shape), t.dtype, offset))
        sizes[t.dtype] = offset + t.numel()
    return specs, sizes


def leaf_views(buffers: dict[torch.dtype, torch.Tensor], specs: list[LeafSpec]) -> list[torch.Tensor]:
    """Tensors viewing the flat buffers, one per leaf spec (no copies)."""
    return [buffers[s.dtype][s.offset : s.offset + s.numel].view(s.shape) for s in specs]


def _pin(buffer: torch.Tensor) -> bool:
    """Page-lock a shared buffer for fast device->host copies; only where a CUDA device exists."""
    if not torch.cuda.is_available() or buffer.numel() == 0:
        return False
    err = torch.cuda.cudart().cudaHostRegister(buffer.data_ptr(), buffer.numel() * buffer.element_size(), 0)
    return int(getattr(err, "value", err)) == 0


def copy_to_host(views: list[torch.Tensor], tensors: list[torch.Tensor], pinned: bool) -> None:
    """Copy each tensor into its host view; with pinned views the copies are queued without blocking and one
    synchronise waits for them all (the step blocks once, not once per tensor)."""
    for view, t in zip(views, tensors):
        view.copy_(t, non_blocking=pinned)
    if pinned:
        torch.cuda.synchronize()


class HostStaging:
    """The buffers and the views the current state's tensors are copied into."""

    def __init__(self) -> None:
        self.buffers: dict[torch.dtype, torch.Tensor] = {}
        self.specs: list[LeafSpec] = []
        self.views: list[torch.Tensor] = []
        self.pinned = False
        self.generation = 0  # bumped on every (re)allocation so the writer knows to remap

    @property
    def bytes_held(self) -> int:
        return sum(b.numel() * b.element_size() for b in self.buffers.values())

    def fits(self, tensors: list[torch.Tensor]) -> bool:
        return len(tensors) == len(self.specs) and all(
            tuple(t.shape) == s.shape and t.dtype == s.dtype for t, s in zip(tensors, self.specs)
        )

    def allocate_for(self, tensors: list[torch.Tensor]) -> None:
        specs, sizes = plan_leaves(tensors)
        if self.buffers:
            log.info("checkpoint staging: state shapes changed, reallocating")
        self.release()
        self.buffers = {dtype: torch.empty(n, dtype=dtype).share_memory_() for dtype, n in sizes.items()}
        self.pinned = all([_pin(b) for b in self.buffers.values()]) and bool(self.buffers)
        self.specs, self.views = specs, leaf_views(self.buffers, specs)
        self.generation += 1
        log.info(
            "checkpoint staging: %.1f MiB of host memory for %d tensors (pinned=%s)",
            self.bytes_held / 2**20,
            len(specs),
            self.pinned,
        )

    def copy_in(self, tensors: list[torch.Tensor]) -> None:
        """Device->host copy of every tensor; returns when the host buffers hold them."""
        copy_to_host(self.views, tensors, self.pinned)

    def release(self) -> None:
        if self.pinned:
            for b in self.buffers.values():
                torch.cuda.cudart().cudaHostUnregister(b.data_ptr())
        self.buffers, self.specs, self.views, self.pinned = {}, [], [], False
