"""Runs a pipeline schedule (schedule.py) over packed micro-batches.

Our own executor rather than torch.distributed.pipelining: its stages allocate receive buffers from the shapes
seen at the first step, but packed micro-batches have a different token count each time, and the per-token
context (conditioning vector, RoPE tables, cu_seqlens) is not a tensor it can pass. Here every chunk recomputes
the context from the micro-batch with `model.embed` (the embedder is replicated on every pipeline rank and its
gradients are summed over the pipeline group), so only the [tokens, hidden] activation and its gradient travel
between stages, and the receiver knows their shape from the micro-batch it holds. Messages carry tags (gloo
matches by tag); NCCL ignores tags and pairs messages in order, which these schedules keep
(schedule.messages_in_order, tested).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
import torch.distributed as dist

from omnitrain.trainer.parallel.schedule import Action, build_schedule


def _tag(kind: str, chunk: int, micro_batch: int, chunks: int, micro_batches: int) -> int:
    return ((0 if kind == "F" else 1) * chunks + chunk) * micro_batches + micro_batch


def run_pipeline(plan, microbatches: Sequence[Any], loss_fn: Callable) -> torch.Tensor | None:
    """Forward and backward of all micro-batches on this pipeline rank. Returns the summed (already 1/m scaled)
    loss on the last stage, None elsewhere."""
    layout = plan.layout
    pp, m = layout.pp, len(microbatches)
    chunks = pp * layout.virtual_stages
    actions = build_schedule(plan.pp_rank, pp, layout.virtual_stages, m, layout.schedule)
    group = plan.pp_group
    pending: list = []
    stash: dict[tuple[int, int], tuple[torch.Tensor | None, torch.Tensor]] = {}
    loss_sum = None
    last_backward = [a for a in actions if a.kind == "B"][-1]

    def send(tensor: torch.Tensor, chunk: int, kind: str, mb: int) -> None:
        # Non-blocking: a send never waits for its receiver, so the schedule order alone cannot deadlock.
        pending.append(
            dist.isend(tensor.contiguous(), group=group, group_dst=chunk % pp, tag=_tag(kind, chunk, mb, chunks, m))
        )

    def recv(shape, dtype, chunk_from: int, chunk_tag: int, kind: str, mb: int) -> torch.Tensor:
        buf = torch.empty(shape, dtype=dtype, device=plan.device)
        dist.recv(buf, group=group, group_src=chunk_from % pp, tag=_tag(kind, chunk_tag, mb, chunks, m))
        return buf

    for action in actions:
        c, j = action.chunk, action.micro_batch
        args = microbatches[j]
        if action.kind == "F":
            received: list[torch.Tensor] = []

            def receive(shape, dtype, c=c, j=j, received=received):
                received.append(recv(shape, dtype, c - 1, c, "F", j).requires_grad_())
                return received[0]

            out = plan.forward_chunk(
                c, args, receive if c > 0 else None, loss_fn, last=(c == chunks - 1), micro_batch=j
            )
            x_in = received[0] if received else None
            if c == chunks - 1:
                out = out / m
                loss_sum = out.detach() if loss_sum is None else loss_sum + out.detach()
            else:
                send(out.detach(), c + 1, "F", j)
            stash[(c, j)] = (x_in, out)
        else:
            x_in, out = stash.pop((c, j))
            plan.before_backward(c, j)  # before the gradient's receive: a prefetch overlaps the wait
            if plan.fsdp:
                # Reduce-scatter a chunk's gradients once, after its last micro-batch (backwards run in micro-batch
                # order per chunk); the embedder/head (the FSDP root) after this rank's very last backward.
                for i in plan.chunk_blocks[c]:
                    plan.model.blocks[i].set_requires_gradient_sync(j == m - 1, recurse=False)
                plan.runner.set_requires_gradient_sync(action is last_backward, recurse=False)
            if c == chunks - 1:
                (out * plan.loss_scale).backward()
            else:
                grad = recv(out.shape, out.dtype, c + 1, c, "B", j)
                torch.autograd.backward(out, grad)
            plan.after_backward(c, j)
            if c > 0:
                send(x_in.grad, c - 1, "B", j)
    for work in pending:
        work.wait()
    return loss_sum


__all__ = ["Action", "run_pipeline"]
