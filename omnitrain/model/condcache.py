"""Condition-causal attention and the condition key/value cache.

With the rule "condition tokens attend only to condition tokens (of their sample); video tokens attend to
everything" (`omnitrain.model.attention.condition_may_attend`, the one definition that condition-causal training
uses too), the condition tokens' hidden states never see the noisy video, so their keys/values in every layer are
the same at every sampling step (the model gives condition tokens a timestep-independent modulation). They are
computed once per request ("record": a forward over the condition tokens alone) and every sampling step runs only
the video tokens, whose queries attend to [cached condition K/V, own K/V] ("replay").

Model-agnostic: it only replaces each block's `attn.core` (docs/contracts.md: the block calls
`self.attn.core(q, k, v, ctx)` with q/k/v [tokens, heads, head_dim] and `ctx.cu_seqlens`), so the model's own
block code runs unchanged. Outside a `condition_attention(...)` context the wrapped core is the original one.
"""

from __future__ import annotations

import contextlib
import threading
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from omnitrain.model.attention import attention, with_condition_mask


@dataclass
class ConditionKV:
    """Per layer: condition keys/values of each sample of one request batch (computed once, reused every step)."""

    keys: list[list[torch.Tensor]] = field(default_factory=list)  # [layer][sample] -> [Lc, heads, head_dim]
    values: list[list[torch.Tensor]] = field(default_factory=list)

    @property
    def layers(self) -> int:
        return len(self.keys)

    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for layer in self.keys + self.values for t in layer)


@dataclass
class _Mode:
    name: str  # "mask" | "record" | "replay"
    is_condition: torch.Tensor | None = None  # [tokens] bool, mode "mask"
    cache: ConditionKV | None = None  # filled by "record", read by "replay"


def _sample_slices(cu_seqlens: torch.Tensor) -> list[tuple[int, int]]:
    cu = cu_seqlens.tolist()
    return list(zip(cu[:-1], cu[1:]))


def _sdpa(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """[Lq, H, D] x [Lk, H, D] -> [Lq, H, D], every query over every key given."""
    out = F.scaled_dot_product_attention(q.transpose(0, 1), k.transpose(0, 1), v.transpose(0, 1))
    return out.transpose(0, 1)


class _ModeState(threading.local):
    """The current mode, per thread. A deep copy of a model (student/fake-score copies of a teacher) gets a fresh,
    mode-less state shared by the copy's layers (deepcopy's memo keeps it shared)."""

    def __deepcopy__(self, memo):
        return _ModeState()


class ConditionAwareCore(nn.Module):
    """Wraps one block's attention core; which attention it computes is set by the `condition_attention` context
    of its owner (thread-local, so server threads do not see each other's modes)."""

    def __init__(self, inner: nn.Module, layer: int, state: _ModeState):
        super().__init__()
        self.inner = inner
        self.layer = layer
        self._state = state

    def forward(self, q, k, v, ctx):
        mode: _Mode | None = getattr(self._state, "mode", None)
        if mode is None:
            return self.inner(q, k, v, ctx)
        slices = _sample_slices(ctx.cu_seqlens)
        if mode.name == "mask":
            # The model's own attention function under the one condition-causal rule (omnitrain.model.attention),
            # whatever core the model has: the uncached reference is exactly what condition-causal training runs.
            return attention(q, k, v, with_condition_mask(ctx, mode.is_condition))
        if mode.name == "record":
            assert mode.cache is not None
            while mode.cache.layers <= self.layer:
                mode.cache.keys.append([])
                mode.cache.values.append([])
            mode.cache.keys[self.layer] = [k[s:e].detach() for s, e in slices]
            mode.cache.values[self.layer] = [v[s:e].detach() for s, e in slices]
            return torch.cat([_sdpa(q[s:e], k[s:e], v[s:e]) for s, e in slices])
        if mode.name == "replay":
            cache = mode.cache
            if cache is None or cache.layers <= self.layer or len(cache.keys[self.layer]) != len(slices):
                raise RuntimeError(
                    f"condition cache does not match this batch at layer {self.layer}: record the "
                    "conditions of exactly these samples first"
                )
            out = []
            for i, (s, e) in enumerate(slices):
                keys = torch.cat([cache.keys[self.layer][i].to(k.dtype), k[s:e]])
                values = torch.cat([cache.values[self.layer][i].to(v.dtype), v[s:e]])
                out.append(_sdpa(q[s:e], keys, values))
            return torch.cat(out)
        raise ValueError(f"unknown condition attention mode {mode.name!r}")


class ConditionAttention:
    """Installs ConditionAwareCore in every block of a contract model and switches its mode."""

    def __init__(self, model: nn.Module):
        installed = [b.attn.core for b in model.blocks if isinstance(b.attn.core, ConditionAwareCore)]
        # A second Denoiser over the same model shares the installed cores (and their mode).
        self._state = installed[0]._state if installed else _ModeState()
        for i, block in enumerate(model.blocks):
            if not isinstance(block.attn.core, ConditionAwareCore):
                block.attn.core = ConditionAwareCore(block.attn.core, i, self._state)

    @contextlib.contextmanager
    def _mode(self, mode: _Mode):
        previous = getattr(self._state, "mode", None)
        self._state.mode = mode
        try:
            yield mode
        finally:
            self._state.mode = previous

    def masked(self, is_condition: torch.Tensor):
        """Full sequences (conditions + video) with the condition-causal mask: the uncached reference, and what
        training uses so that a model is consistent with caching."""
        return self._mode(_Mode("mask", is_condition=is_condition.bool()))

    def record(self, cache: ConditionKV):
        """Forward over the condition tokens alone; their per-layer K/V land in `cache`."""
        return self._mode(_Mode("record", cache=cache))

    def replay(self, cache: ConditionKV):
        """Forward over the video tokens alone; attention prepends the cached condition K/V of each sample."""
        return self._mode(_Mode("replay", cache=cache))


__all__ = ["ConditionAttention", "ConditionAwareCore", "ConditionKV"]
