"""ParallelPlan: one rank's view of the parallel layout and the step that runs under it.

The training loop only calls run_step / parameters_for_optimizer / clip_grad_norm_ / full_state_dict; what the
layout does to the model (tensor-parallel shards, Ulysses wrappers, pipeline chunks, FSDP) is applied once in
setup_parallel (parallelize.py). Gradient semantics, whatever the layout: after run_step, every rank's gradients
are those of  mean over data-parallel ranks of  mean over its micro-batches of loss_fn(prediction, micro_batch),
exactly what one process computes over all micro-batches.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

from omnitrain.trainer.memory.recompute import run_block
from omnitrain.trainer.parallel.layout import ParallelLayout, RankCoords
from omnitrain.trainer.parallel.ulysses import (
    UlyssesAttention,
    gather_sequence,
    padded_length,
    shard_context,
    shard_sequence,
)

LossFn = Callable[[torch.Tensor, Any], torch.Tensor]


def _is_dtensor(t) -> bool:
    from torch.distributed.tensor import DTensor

    return isinstance(t, DTensor)


def param_owner(name: str) -> str:
    """'block:<i>', 'head' or 'shared' (replicated on every pipeline rank, e.g. the embedder)."""
    parts = name.split(".")
    if parts[0] == "blocks":
        return f"block:{parts[1]}"
    if parts[0] == "head":
        return "head"
    return "shared"


@dataclass
class ParallelPlan:
    model: nn.Module
    layout: ParallelLayout
    coords: RankCoords
    rank: int = 0
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    mesh: Any = None  # DeviceMesh over MESH_DIMS, None in one process
    chunk_blocks: dict[int, range] = field(default_factory=dict)  # this rank's pipeline chunks -> block indices
    dp_group: Any = None
    pp_group: Any = None
    ulysses_group: Any = None
    grad_group: Any = None  # data x ulysses: where replicated gradients are summed
    fsdp: bool = False
    tp_group: Any = None
    tp_partial_names: list[str] = field(default_factory=list)  # replicated params inside the TP region
    runner: nn.Module | None = None  # ChunkRunner: the module the step calls (the FSDP root when sharded)
    elastic_groups: dict[int, Any] = field(default_factory=dict)  # elastic Ulysses: degree -> my sub-group
    grad_reducer: Any = None  # OverlappedGradReducer when layout.grad_reduce == "overlapped"
    memory: Any = None  # ActivationMemory (omnitrain.trainer.memory) when activations are offloaded

    # ---- where this rank sits -------------------------------------------------------------------------------
    @property
    def dp_rank(self) -> int:
        return self.coords.dp

    @property
    def pp_rank(self) -> int:
        return self.coords.pp

    @property
    def tp_rank(self) -> int:
        return self.coords.tp

    @property
    def ulysses_rank(self) -> int:
        return self.coords.ulysses

    @property
    def dp_size(self) -> int:
        return self.layout.dp

    @property
    def pp_size(self) -> int:
        return self.layout.pp

    @property
    def tp_size(self) -> int:
        return self.layout.tp

    @property
    def ulysses_size(self) -> int:
        return self.layout.ulysses

    @property
    def data_shard(self) -> tuple[int, int]:
        """(index, count) of the data shard this rank reads: ranks of one data-parallel replica read the same."""
        return self.coords.dp, self.layout.dp

    @property
    def is_first_stage(self) -> bool:
        return self.coords.pp == 0

    @property
    def is_last_stage(self) -> bool:
        return self.coords.pp == self.layout.pp - 1

    @property
    def num_chunks(self) -> int:
        return self.layout.pp * self.layout.virtual_stages

    @property
    def loss_scale(self) -> float:
        """Factor on the loss before backward: FSDP averages gradients over data x ulysses, but Ulysses ranks hold
        partial sums over their tokens that must be added, not averaged."""
        return float(self.layout.ulysses) if self.fsdp else 1.0

    def describe(self) -> str:
        c, lay = self.coords, self.layout
        return (
            f"rank {self.rank}: dp {c.dp}/{lay.dp} pp {c.pp}/{lay.pp} ulysses {c.ulysses}/{lay.ulysses} "
            f"tp {c.tp}/{lay.tp} chunks {sorted(self.chunk_blocks)} "
            f"blocks {[list(r) for _, r in sorted(self.chunk_blocks.items())]} sharding {lay.data_sharding} "
            f"gradients {lay.grad_reduce}{' elastic ulysses' if lay.elastic_ulysses else ''}"
        )

    # ---- the step -----------------------------------------------------------------------------------------------
    def forward_chunk(
        self, chunk: int, args, x_in: Callable | None, loss_fn: LossFn, last: bool, micro_batch: int | None = None
    ):
        """x_in: None on the first chunk, else a function (shape, dtype) -> the activation received for it.
        micro_batch: its index in this step's schedule, so that its saved activations can be offloaded."""
        if self.memory is None or micro_batch is None:
            return self.runner(chunk, args, x_in, loss_fn, last)
        with self.memory.forward(chunk, micro_batch):
            return self.runner(chunk, args, x_in, loss_fn, last)

    def before_backward(self, chunk: int, micro_batch: int) -> None:
        if self.memory is not None:  # brings offloaded activations back (policy.offload_plan says when)
            self.memory.before_backward(chunk, micro_batch)

    def after_backward(self, chunk: int, micro_batch: int) -> None:
        if self.memory is not None:
            self.memory.after_backward(chunk, micro_batch)

    def run_step(self, microbatches: Sequence[Any], loss_fn: LossFn, schedule=None) -> torch.Tensor:
        """Forward + backward over this rank's micro-batches (each a tuple of model.embed arguments); gradients are
        reduced and ready for optimizer.step(). Returns the step's mean loss over all data-parallel ranks.
        schedule: an elastic.ElasticSchedule (layout.elastic_ulysses) saying which micro-batches of the Ulysses
        group this rank runs at which degree."""
        if not microbatches:
            raise ValueError("run_step needs at least one micro-batch")
        arm = self.grad_reducer.arm if self.grad_reducer is not None else None
        if self.memory is not None and schedule is None:
            from omnitrain.trainer.parallel.schedule import build_schedule

            lay = self.layout
            self.memory.start_step(
                build_schedule(
                    self.pp_rank, lay.pp, lay.virtual_stages if lay.pp > 1 else 1, len(microbatches), lay.schedule
                )
            )
        if schedule is not None:
            from omnitrain.trainer.parallel.elastic import run_elastic_step

            loss = run_elastic_step(self, microbatches, loss_fn, schedule, before_last_backward=arm)
            if self.layout.ulysses > 1:  # each rank holds its micro-batches' share of the group's loss
                dist.all_reduce(loss, group=self.ulysses_group)
        elif self.layout.pp > 1:
            from omnitrain.trainer.parallel.pipeline import run_pipeline

            loss = run_pipeline(self, microbatches, loss_fn)
        else:
            loss = None
            m = len(microbatches)
            for j, args in enumerate(microbatches):
                if self.fsdp:
                    self.runner.set_requires_gradient_sync(j == m - 1)
                mb_loss = self.forward_chunk(0, args, None, loss_fn, last=True, micro_batch=j) / m
                if arm is not None and j == m - 1:
                    arm()
                self.before_backward(0, j)
                (mb_loss * self.loss_scale).backward()
                self.after_backward(0, j)
                loss = mb_loss.detach() if loss is None else loss + mb_loss.detach()
        self._reduce_gradients()
        return self._report_loss(loss)

    def _report_loss(self, loss: torch.Tensor | None) -> torch.Tensor:
        if loss is None:
            loss = torch.zeros((), device=self.device)
        if self.layout.pp > 1:  # only the last stage computed it
            dist.broadcast(loss, group=self.pp_group, group_src=self.layout.pp - 1)
        if self.layout.dp > 1:
            dist.all_reduce(loss, group=self.dp_group)
            loss = loss / self.layout.dp
        return loss

    def _reduce_gradients(self) -> None:
        if self.mesh is None:
            return
        if self.grad_reducer is not None:  # launched during backward (overlap.py); the coalesced path otherwise
            self.grad_reducer.finish()
            return
        named = [(n, p) for n, p in self.model.named_parameters() if p.requires_grad]
        live = []
        for (name, p), used in zip(named, self._used_anywhere(named)):
            if not used:  # no rank used it this step: no gradient, as in one process (AdamW skips it)
                p.grad = None
                continue
            if p.grad is None:  # used elsewhere: this rank still takes part in the collectives, with zeros
                p.grad = torch.zeros_like(p)
            live.append((name, p))
        partial = set(self.tp_partial_names)  # names, not objects: FSDP swaps the Parameter objects
        if partial:
            _all_reduce_coalesced([_local(p.grad) for n, p in live if n in partial], self.tp_group)
        if self.layout.pp > 1:
            _all_reduce_coalesced([_local(p.grad) for n, p in live if param_owner(n) == "shared"], self.pp_group)
        if not self.fsdp and self.layout.dp * self.layout.ulysses > 1:
            grads = [_local(p.grad) for _, p in live]
            _all_reduce_coalesced(grads, self.grad_group)
            if self.layout.dp > 1:
                torch._foreach_mul_(grads, 1.0 / self.layout.dp)

    def _used_anywhere(self, named) -> list[bool]:
        """Whether any rank holding a parameter got a gradient for it this step (multi-modal micro-batches leave
        e.g. the reference-image embedder unused on some ranks). FSDP has already reduced zeros for unused
        parameters, so there an all-zero gradient on every shard counts as unused."""
        if self.fsdp:
            flags = [p.grad is not None and bool(_local(p.grad).any()) for _, p in named]
        else:
            flags = [p.grad is not None for _, p in named]
        flags = torch.tensor(flags, dtype=torch.float32, device=self.device)
        if self.layout.tp > 1:
            dist.all_reduce(flags, op=dist.ReduceOp.MAX, group=self.tp_group)
        if self.layout.dp * self.layout.ulysses > 1:
            dist.all_reduce(flags, op=dist.ReduceOp.MAX, group=self.grad_group)
        if self.layout.pp > 1:
            shared = [i for i, (n, _) in enumerate(named) if param_owner(n) == "shared"]
            if shared:
                part = flags[shared].contiguous()
                dist.all_reduce(part, op=dist.ReduceOp.MAX, group=self.pp_group)
                flags[shared] = part
        return [bool(f) for f in flags.tolist()]

    # ---- optimizer helpers --------------------------------------------------------------------------------------
    def parameters_for_optimizer(self) -> list[dict]:
        """Two parameter groups, plain tensors then DTensors (TP/FSDP shards; either may be empty): the foreach
        optimizer kernels (the default on GPU) refuse a list that mixes both. Always two, so that optimizer state
        dicts keep their structure when only the data or Ulysses degree changes."""
        from torch.distributed.tensor import DTensor

        params = [p for p in self.model.parameters() if p.requires_grad]
        return [
            {"params": [p for p in params if not isinstance(p, DTensor)]},
            {"params": [p for p in params if isinstance(p, DTensor)]},
        ]

    @torch.no_grad()
    def grad_norm(self) -> torch.Tensor:
        """Global L2 norm of the gradients of the WHOLE model: shards (TP, FSDP) summed over their mesh dims,
        pipeline stages summed, replicated copies counted once."""
        plain = torch.zeros((), dtype=torch.float64, device=self.device)
        sharded: dict[tuple, list] = {}
        for name, p in self.model.named_parameters():
            if p.grad is None or not p.requires_grad:
                continue
            if self.layout.pp > 1 and param_owner(name) == "shared" and not self.is_first_stage:
                continue  # identical copy on every pipeline rank: count it on the first
            g = p.grad
            if _is_dtensor(g):
                dims = tuple(i for i, pl in enumerate(g.placements) if not pl.is_replicate())  # _StridedShard too
                key = (id(g.device_mesh), dims)
                entry = sharded.setdefault(key, [g.device_mesh, dims, torch.zeros_like(plain)])
                entry[2] += g.to_local().double().pow(2).sum()
            else:
                plain += g.double().pow(2).sum()
        total = plain
        for mesh, dims, sq in sharded.values():
            for d in dims:
                dist.all_reduce(sq, group=mesh.get_group(d))
            total = total + sq
        if self.layout.pp > 1:
            dist.all_reduce(total, group=self.pp_group)
        return total.sqrt()

    @torch.no_grad()
    def clip_grad_norm_(self, max_norm: float) -> torch.Tensor:
        """Scale gradients so the global norm is at most max_norm (0 disables); returns the norm before clipping."""
        norm = self.grad_norm()
        if max_norm > 0:
            coef = max_norm / (float(norm) + 1e-6)
            if coef < 1.0 and math.isfinite(coef):
                for p in self.model.parameters():
                    if p.grad is not None:
                        p.grad.mul_(coef)
        return norm.float()

    # ---- whole-model state (tests, checkpoint resharding) -------------------------------------------------------
    def _owns(self, name: str) -> bool:
        owner = param_owner(name)
        if owner == "shared":
            return self.is_first_stage
        if owner == "head":
            return self.is_last_stage
        block = int(owner.split(":")[1])
        return any(block in r for r in self.chunk_blocks.values())

    @torch.no_grad()
    def full_state_dict(self, grads: bool = False) -> dict[str, torch.Tensor]:
        """Unsharded CPU tensors of the whole model under the model's own names, on every rank (collective).
        grads=True gives the parameters' gradients instead (tests compare them with one process)."""
        mine = {}
        items = (
            ((n, p.grad) for n, p in self.model.named_parameters() if p.grad is not None)
            if grads
            else self.model.state_dict().items()
        )
        for name, value in items:
            if not self._owns(name):
                continue
            if _is_dtensor(value):
                value = value.full_tensor()
            mine[name] = value.detach().cpu().clone()
        if self.layout.pp == 1:
            return mine
        parts: list = [None] * self.layout.pp
        dist.all_gather_object(parts, mine, group=self.pp_group)
        merged = {}
        for part in parts:
            merged.update(part)
        return merged

    @torch.no_grad()
    def load_full_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        """Load unsharded tensors (e.g. saved by another layout); every rank takes its own shard. Checks every key
        first so a mismatching checkpoint changes nothing."""
        from torch.distributed.tensor import distribute_tensor

        targets = self.model.state_dict()
        missing = [n for n in targets if n not in state]
        wrong = [n for n, v in targets.items() if n in state and tuple(state[n].shape) != tuple(v.shape)]
        if missing or wrong:
            raise ValueError(f"state dict does not fit the model: missing {missing[:5]}, wrong shape {wrong[:5]}")
        for name, target in targets.items():
            full = state[name].to(device=self.device, dtype=target.dtype)
            if _is_dtensor(target):
                shard = distribute_tensor(full, target.device_mesh, target.placements, src_data_rank=None)
                target.to_local().copy_(shard.to_local())
            else:
                target.copy_(full)


class ChunkRunner(nn.Module):
    """Runs one pipeline chunk (all blocks when pp == 1) of the wrapped model for one micro-batch: embed (for the
    context; the tokens too on chunk 0), this chunk's blocks, and on the last chunk the head and the loss over the
    whole packed sequence (gathered from the Ulysses group). A module so that FSDP can make it the root."""

    recompute = "none"  # spec.memory.recompute, per block (omnitrain.trainer.memory.recompute)

    def __init__(
        self, model: nn.Module, chunk_blocks: dict[int, range], ulysses: int, ulysses_rank: int, ulysses_group
    ):
        super().__init__()
        self.model = model
        self.chunk_blocks = chunk_blocks
        self.ulysses, self.ulysses_rank, self.ulysses_group = ulysses, ulysses_rank, ulysses_group

    def forward(self, chunk: int, args, x_in: Callable | None, loss_fn: LossFn, last: bool):
        u, ur = self.ulysses, self.ulysses_rank
        x_full, ctx = self.model.embed(*args)
        tokens = x_full.shape[0]
        ctx = shard_context(ctx, tokens, u, ur)
        if x_in is None:
            x = shard_sequence(x_full, u, ur)
        else:  # a receive from the previous stage: its shape follows from this micro-batch
            x = x_in((padded_length(tokens, u) // u, x_full.shape[1]), x_full.dtype)
        for i in self.chunk_blocks[chunk]:
            core = getattr(getattr(self.model.blocks[i], "attn", None), "core", None)
            if isinstance(core, UlyssesAttention):
                core.packed_tokens = tokens
            x = run_block(self.model.blocks[i], x, ctx, self.recompute)
        if not last:
            return x
        prediction = gather_sequence(self.model.head(x, ctx), tokens, u, ur, self.ulysses_group)
        return loss_fn(prediction, args)


def _local(t: torch.Tensor) -> torch.Tensor:
    return t.to_local() if _is_dtensor(t) else t


def _all_reduce_coalesced(tensors: list[torch.Tensor], group, bucket_elements: int = 1 << 24) -> None:
    """Sum tensors over a group in a few flat buckets (one collective per bucket instead of one per tensor)."""
    bucket: list[torch.Tensor] = []
    size = 0

    def flush():
        nonlocal bucket, size
        if not bucket:
            return
        flat = torch.cat([t.reshape(-1) for t in bucket])
        dist.all_reduce(flat, group=group)
        offset = 0
        for t in bucket:
            t.copy_(flat[offset : offset + t.numel()].view_as(t))
            offset += t.numel()
        bucket, size = [], 0

    for t in tensors:
        if bucket and (t.dtype != bucket[0].dtype or size + t.numel() > bucket_elements):
            flush()
        bucket.append(t)
        size += t.numel()
    flush()
