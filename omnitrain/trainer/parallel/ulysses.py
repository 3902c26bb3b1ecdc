"""Ulysses sequence parallelism over packed variable-length sequences.

Each rank of a Ulysses group holds a contiguous slice of the micro-batch's packed token sequence (padded to a
multiple of the degree). Around attention, ONE all-to-all (q, k, v stacked) trades the sequence split for a head
split: every rank then sees the whole packed sequence for heads/U heads, so attention runs block-diagonally over
the FULL cu_seqlens exactly as in one process; a second all-to-all swaps back. Packing samples of different
lengths therefore needs nothing special (TorchTitan refuses varlen with context parallelism; we do not need to),
only that padding tokens are dropped before attention and re-added after.
"""

from __future__ import annotations

import copy
import dataclasses

import torch
import torch.distributed as dist
from torch import nn


def _exchange(x: torch.Tensor, group) -> torch.Tensor:
    # Both buffers contiguous: empty_like would copy a permuted gradient's strides, and the collective writes
    # plain row-major memory.
    x = x.contiguous()
    out = torch.empty(x.shape, dtype=x.dtype, device=x.device)
    dist.all_to_all_single(out, x, group=group)
    return out


class _AllToAll(torch.autograd.Function):
    """all_to_all_single over dim 0 in equal chunks. Its adjoint is the same exchange: chunk i came from rank i and
    its gradient goes back to rank i, to the slot it was sent from."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, group) -> torch.Tensor:
        ctx.group = group
        return _exchange(x, group)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        return _exchange(grad, ctx.group), None


def all_to_all(x: torch.Tensor, group) -> torch.Tensor:
    return _AllToAll.apply(x, group)


def seq_to_heads(x: torch.Tensor, degree: int, group) -> torch.Tensor:
    """[L/U, S, H, D] (local tokens, all local heads; S stacked tensors) -> [L, S, H/U, D] (all tokens, 1/U heads)."""
    local_tokens, stacked, heads, head_dim = x.shape
    x = x.reshape(local_tokens, stacked, degree, heads // degree, head_dim).permute(2, 0, 1, 3, 4)
    x = all_to_all(x.contiguous(), group)  # dim 0: head group out, sequence chunk in
    return x.reshape(degree * local_tokens, stacked, heads // degree, head_dim)


def heads_to_seq(x: torch.Tensor, degree: int, group) -> torch.Tensor:
    """[L, H/U, D] -> [L/U, H, D]: the inverse of seq_to_heads for the attention output."""
    tokens, heads, head_dim = x.shape
    x = x.reshape(degree, tokens // degree, heads, head_dim)
    x = all_to_all(x.contiguous(), group)  # dim 0: sequence chunk out, head group in
    return x.permute(1, 0, 2, 3).reshape(tokens // degree, degree * heads, head_dim)


def ctx_field(ctx, name: str):
    return ctx[name] if isinstance(ctx, dict) else getattr(ctx, name)


def packed_length(ctx) -> int:
    """Real (unpadded) tokens of the micro-batch: the last sample boundary."""
    return int(ctx_field(ctx, "cu_seqlens")[-1])


class UlyssesAttention(nn.Module):
    """Wraps a block's `attn.core` (attention(q, k, v, ctx) over [tokens, heads, head_dim])."""

    def __init__(self, core: nn.Module, degree: int, group):
        super().__init__()
        self.core = core
        self.degree = degree
        self.group = group
        # Real tokens of the micro-batch being run, set by the step before the blocks run, so that no block has to
        # read cu_seqlens[-1] back from the device; None falls back to reading it.
        self.packed_tokens: int | None = None

    def forward(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, ctx, *args, **kwargs) -> torch.Tensor:
        if self.degree == 1:  # elastic Ulysses runs short micro-batches whole on one rank (elastic.py)
            return self.core(q, k, v, ctx, *args, **kwargs)
        if q.shape[1] % self.degree:
            raise ValueError(
                f"{q.shape[1]} local heads do not split over ulysses={self.degree}; "
                "numHeads must divide by tensor x ulysses"
            )
        qkv = seq_to_heads(torch.stack((q, k, v), dim=1), self.degree, self.group)
        real = self.packed_tokens if self.packed_tokens is not None else packed_length(ctx)
        padded = qkv.shape[0]
        qkv = qkv[:real]
        out = self.core(qkv[:, 0], qkv[:, 1], qkv[:, 2], ctx, *args, **kwargs)
        if padded > real:  # padding tokens attend to nothing; they are dropped when predictions are gathered
            out = torch.cat((out, out.new_zeros((padded - real,) + tuple(out.shape[1:]))))
        return heads_to_seq(out, self.degree, self.group)


def wrap_attention_cores(blocks, degree: int, group) -> None:
    for block in blocks:
        if hasattr(block, "attn"):
            block.attn.core = UlyssesAttention(block.attn.core, degree, group)


def padded_length(tokens: int, degree: int) -> int:
    return -(-tokens // degree) * degree


def shard_sequence(x: torch.Tensor, degree: int, rank: int) -> torch.Tensor:
    """This rank's contiguous slice of a [tokens, ...] tensor, zero-padded to a multiple of the degree."""
    if degree == 1:
        return x
    tokens = x.shape[0]
    pad = padded_length(tokens, degree) - tokens
    if pad:
        x = torch.cat((x, x.new_zeros((pad,) + tuple(x.shape[1:]))))
    local = x.shape[0] // degree
    return x[rank * local : (rank + 1) * local]


# Fields of the model's context that are not one row per token: the whole packed sequence's boundaries, the
# per-sample conditioning rows (tokens pick theirs through the per-token cond_row, which is cut), and the
# condition-causal rule's per-token kinds, which attention reads over the WHOLE sequence after the all-to-all. By
# name, because a batch of one-token samples has as many sample rows as tokens.
_SEQUENCE_FIELDS = frozenset({"cu_seqlens", "max_seqlen", "sample_cond", "is_condition"})


def shard_context(ctx, tokens: int, degree: int, rank: int):
    """A copy of ctx with every per-token tensor (first dim == tokens) cut to this rank's slice; cu_seqlens and
    max_seqlen stay whole because attention runs over the full sequence after the all-to-all."""
    if degree == 1:
        return ctx

    def cut(name, value):
        if name in _SEQUENCE_FIELDS or not isinstance(value, torch.Tensor) or value.dim() == 0:
            return value
        if value.shape[0] != tokens:
            return value
        return shard_sequence(value, degree, rank)

    if isinstance(ctx, dict):
        return {name: cut(name, value) for name, value in ctx.items()}
    if dataclasses.is_dataclass(ctx):
        return dataclasses.replace(
            ctx, **{f.name: cut(f.name, getattr(ctx, f.name)) for f in dataclasses.fields(ctx) if f.init}
        )
    out = copy.copy(ctx)
    for name, value in vars(ctx).items():
        setattr(out, name, cut(name, value))
    return out


class _GatherSequence(torch.autograd.Function):
    """All-gather the token slices of a Ulysses group. Every rank then computes the SAME loss on the full
    prediction, so the adjoint is this rank's slice of the gradient (no sum: the loss is counted once)."""

    @staticmethod
    def forward(ctx, local: torch.Tensor, degree: int, rank: int, group) -> torch.Tensor:
        ctx.rank, ctx.local = rank, local.shape[0]
        local = local.contiguous()
        parts = [torch.empty(local.shape, dtype=local.dtype, device=local.device) for _ in range(degree)]
        dist.all_gather(parts, local, group=group)
        return torch.cat(parts)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        return grad[ctx.rank * ctx.local : (ctx.rank + 1) * ctx.local].contiguous(), None, None, None


def gather_sequence(local: torch.Tensor, tokens: int, degree: int, rank: int, group) -> torch.Tensor:
    """Inverse of shard_sequence (padding removed)."""
    if degree == 1:
        return local
    return _GatherSequence.apply(local, degree, rank, group)[:tokens]
