"""Activation recompute per transformer block: torch.utils.checkpoint (non-reentrant), whole or selective.

- "none": autograd keeps what it saves.
- "full": a block keeps only its inputs; the backward re-runs the whole block.
- "selective": per op (torch.utils.checkpoint.create_selective_checkpoint_contexts): outputs of matmuls and
  attention kernels are kept (expensive to redo), everything else (norms, modulation, RoPE, activations,
  reshapes) is recomputed. Functional collectives are kept too: re-running them would add communication; the
  in-place c10d collectives (Ulysses' all_to_all_single writes into a buffer) must re-run, since a cached return
  value would not fill the buffer, and they do so in the same order on every rank of the group.

The block's context (conditioning, RoPE tables) is passed to checkpoint as explicit tensor arguments, so that the
inputs a block keeps go through autograd's saved-tensor hooks (offload.py sees, counts and can offload them).
"""

from __future__ import annotations

import dataclasses

import torch
from torch.utils.checkpoint import CheckpointPolicy, checkpoint, create_selective_checkpoint_contexts

from omnitrain.trainer.memory import offload

RECOMPUTE_MODES = ("none", "selective", "full")

_aten = torch.ops.aten
_KEEP = {
    _aten.mm,
    _aten.addmm,
    _aten.bmm,
    _aten.baddbmm,
    _aten._scaled_dot_product_flash_attention,
    _aten._scaled_dot_product_efficient_attention,
    _aten._scaled_dot_product_cudnn_attention,
    _aten._scaled_dot_product_flash_attention_for_cpu,
    _aten._flash_attention_forward,
    _aten._efficient_attention_forward,
}
# Per-call module state a block reads besides its arguments; the recomputation must see the forward's values
# (in 1F1B other micro-batches' forwards run before this one's backward).
_CALL_STATE = ("packed_tokens", "degree", "group")


def keeps_output(op) -> bool:
    """The selective policy: True for ops whose outputs are kept rather than recomputed."""
    packet = getattr(op, "overloadpacket", op)
    if packet in _KEEP:
        return True
    name = str(op)
    return "flash_attn" in name or name.startswith("_c10d_functional.")


def _policy(ctx, op, *args, **kwargs):
    if keeps_output(op):
        memory = offload.active()
        if memory is not None:
            for out in ctx.op_output if isinstance(ctx.op_output, (tuple, list)) else (ctx.op_output,):
                if isinstance(out, torch.Tensor):
                    memory.note_kept(out)
        return CheckpointPolicy.MUST_SAVE
    return CheckpointPolicy.PREFER_RECOMPUTE


def _selective_contexts():
    return create_selective_checkpoint_contexts(_policy)


def _split_context(ctx) -> tuple[list[str], list[torch.Tensor]]:
    if isinstance(ctx, dict):
        items = ctx.items()
    elif dataclasses.is_dataclass(ctx):
        items = ((f.name, getattr(ctx, f.name)) for f in dataclasses.fields(ctx) if f.init)
    else:
        return [], []
    pairs = [(name, value) for name, value in items if isinstance(value, torch.Tensor)]
    return [n for n, _ in pairs], [v for _, v in pairs]


def _join_context(ctx, names: list[str], tensors) -> object:
    if not names:
        return ctx
    if isinstance(ctx, dict):
        return {**ctx, **dict(zip(names, tensors))}
    return dataclasses.replace(ctx, **dict(zip(names, tensors)))


def _call_state(block: torch.nn.Module) -> list[tuple[torch.nn.Module, dict]]:
    return [
        (m, {a: getattr(m, a) for a in _CALL_STATE if hasattr(m, a)})
        for m in block.modules()
        if hasattr(m, "packed_tokens")
    ]


def _set_call_state(state) -> None:
    for module, values in state:
        for attr, value in values.items():
            setattr(module, attr, value)


def run_block(block: torch.nn.Module, x: torch.Tensor, ctx, mode: str) -> torch.Tensor:
    """block(x, ctx) under the recompute mode."""
    if mode == "none" or not torch.is_grad_enabled():
        return block(x, ctx)
    if mode not in RECOMPUTE_MODES:
        raise ValueError(f"unknown recompute mode {mode!r}; choose one of {RECOMPUTE_MODES}")
    names, tensors = _split_context(ctx)
    state = _call_state(block)

    def run(x, *tensors):
        now = _call_state(block)
        _set_call_state(state)
        try:
            return block(x, _join_context(ctx, names, tensors))
        finally:
            _set_call_state(now)

    context_fn = _selective_contexts if mode == "selective" else None
    kwargs = {"context_fn": context_fn} if context_fn else {}
    return checkpoint(run, x, *tensors, use_reentrant=False, **kwargs)


__all__ = ["RECOMPUTE_MODES", "keeps_output", "run_block"]
