"""Gradient all-reduce in buckets, launched during the last micro-batch's backward (replicated data/Ulysses path).

Parameters are bucketed in reverse registration order (roughly the order backward produces their gradients). A
post-accumulate-grad hook marks a parameter ready; a bucket is launched (one async all_reduce of its flattened
gradients) once all its parameters are ready AND every earlier bucket has been launched, so every rank issues the
same buckets in the same order whatever its graph looked like (elastic Ulysses gives ranks different last
micro-batches; multi-modal batches leave parameters unused on some ranks). `finish` launches what is left, with
zeros for gradients this rank has not got, waits for everything, and leaves gradients exactly as the coalesced
path does (ParallelPlan._reduce_gradients): summed over data x ulysses, divided by the data degree, None where no
rank used the parameter.

Its own process group: async work on the group the Ulysses all-to-alls use would interleave with them in an
order that depends on each rank's graph.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
from torch import nn


class OverlappedGradReducer:
    def __init__(self, model: nn.Module, group, data_degree: int, bucket_bytes: int = 25 << 20):
        self.group, self.data_degree = group, data_degree
        params = [p for p in model.parameters() if p.requires_grad]
        self.params = params
        self.buckets: list[list[nn.Parameter]] = []
        size = 0
        for p in reversed(params):
            nbytes = p.numel() * p.element_size()
            if not self.buckets or size + nbytes > bucket_bytes or p.dtype != self.buckets[-1][0].dtype:
                self.buckets.append([])
                size = 0
            self.buckets[-1].append(p)
            size += nbytes
        self._bucket_of = {id(p): b for b, bucket in enumerate(self.buckets) for p in bucket}
        self._armed = False
        self._ready: list[set[int]] = []
        self._launched: list = []  # (flat buffer, work) per launched bucket, in bucket order
        self.launched_during_backward = 0  # of the last step (tests, benchmarks)
        for p in params:
            p.register_post_accumulate_grad_hook(self._on_grad)

    def arm(self) -> None:
        """Call before the backward of this rank's last micro-batch of the step: gradients final from here on."""
        self._armed = True
        self._ready = [set() for _ in self.buckets]
        self._launched = []

    def _on_grad(self, p: torch.Tensor) -> None:
        if not self._armed:
            return
        self._ready[self._bucket_of[id(p)]].add(id(p))
        while len(self._launched) < len(self.buckets):
            b = len(self._launched)
            if len(self._ready[b]) < len(self.buckets[b]):
                break
            self._launch(b)

    def _launch(self, b: int) -> None:
        flat = torch.cat([p.grad.reshape(-1) for p in self.buckets[b]])
        self._launched.append((flat, dist.all_reduce(flat, group=self.group, async_op=True)))

    @torch.no_grad()
    def finish(self) -> None:
        """Launch the remaining buckets, wait for all, write the reduced gradients back."""
        if not self._armed:  # this rank ran no backward this step
            self._ready = [set() for _ in self.buckets]
            self._launched = []
        self.launched_during_backward = len(self._launched)
        had = torch.tensor([p.grad is not None for p in self.params], dtype=torch.float32)
        for b in range(len(self._launched), len(self.buckets)):
            for p in self.buckets[b]:
                if p.grad is None:  # used on another rank: take part with zeros
                    p.grad = torch.zeros_like(p)
            self._launch(b)
        used = had.to(self.params[0].device)
        dist.all_reduce(used, op=dist.ReduceOp.MAX, group=self.group)
        for (flat, work), bucket in zip(self._launched, self.buckets):
            work.wait()
            if self.data_degree > 1:
                flat.mul_(1.0 / self.data_degree)
            offset = 0
            for p in bucket:
                p.grad.copy_(flat[offset : offset + p.numel()].view_as(p))
                offset += p.numel()
        for p, u in zip(self.params, used.tolist()):
            if not u:  # nobody used it: no gradient, as in one process (AdamW skips it)
                p.grad = None
        self._armed = False
        self._launched = []
