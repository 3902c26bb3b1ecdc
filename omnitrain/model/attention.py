"""Block-diagonal (per-sample) full attention over a packed token sequence: the one attention function of the model.

Backends, selected per call by capability (never assumed):
- "flash": flash_attn_varlen_func, when flash-attn is importable, the tensors are on CUDA and fp16/bf16.
- "sdpa_mask": GPU without flash-attn: PyTorch SDPA over the whole packed sequence with a block-diagonal boolean mask
  (one kernel call instead of one per sample; the mask costs L^2 bytes, so it is used up to MASK_MAX_TOKENS).
- "sdpa_loop": CPU (and long GPU sequences): PyTorch SDPA once per sample; no wasted cross-sample scores.
- "math": explicit matmul + softmax per sample; the numerical reference, and countable by FlopCounterMode.
"""

from __future__ import annotations

import contextlib
import importlib.util
from collections.abc import Iterator

import torch
import torch.nn.functional as F

MASK_MAX_TOKENS = 8192
BACKENDS = ("flash", "sdpa_mask", "sdpa_loop", "math")
_forced: str | None = None


def flash_available() -> bool:
    return importlib.util.find_spec("flash_attn") is not None


def select_backend(q: torch.Tensor) -> str:
    if _forced is not None:
        return _forced
    if not q.is_cuda:
        return "sdpa_loop"  # CPU: the mask path computes every cross-sample score too (3x slower, bench/train.py)
    if q.dtype in (torch.float16, torch.bfloat16) and flash_available():
        return "flash"
    return "sdpa_mask" if q.shape[0] <= MASK_MAX_TOKENS else "sdpa_loop"


@contextlib.contextmanager
def force_backend(name: str | None) -> Iterator[None]:
    """Use one backend inside the block (tests, benchmarks, FLOP counting)."""
    global _forced
    if name is not None and name not in BACKENDS:
        raise ValueError(f"unknown attention backend {name!r}; choose one of {BACKENDS}")
    previous, _forced = _forced, name
    try:
        yield
    finally:
        _forced = previous


def _segments(cu_seqlens: torch.Tensor, tokens: int) -> list[tuple[int, int]]:
    """Sample boundaries; tokens past cu_seqlens[-1] (sequence-parallel padding) form their own segment."""
    cu = [int(c) for c in cu_seqlens.tolist()]
    segs = [(s, e) for s, e in zip(cu[:-1], cu[1:]) if e > s]
    if tokens > cu[-1]:
        segs.append((cu[-1], tokens))
    return segs


def _segment_ids(cu_seqlens: torch.Tensor, tokens: int, device) -> torch.Tensor:
    ids = torch.full((tokens,), -1, dtype=torch.long, device=device)
    for i, (s, e) in enumerate(_segments(cu_seqlens, tokens)):
        ids[s:e] = i
    return ids


def _math(q, k, v):
    # [L, H, D] -> [H, L, D]
    qh, kh, vh = q.transpose(0, 1), k.transpose(0, 1), v.transpose(0, 1)
    scores = torch.matmul(qh, kh.transpose(1, 2)) * q.shape[-1] ** -0.5
    return torch.matmul(scores.softmax(dim=-1), vh).transpose(0, 1)


def _sdpa(q, k, v, mask=None):
    out = F.scaled_dot_product_attention(q.transpose(0, 1), k.transpose(0, 1), v.transpose(0, 1), attn_mask=mask)
    return out.transpose(0, 1)


def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, ctx) -> torch.Tensor:
    """q, k, v: [tokens, heads, head_dim] (heads from the shape, so a tensor-parallel shard works unchanged);
    ctx.cu_seqlens (int32, n+1) and ctx.max_seqlen. Returns [tokens, heads, head_dim]."""
    backend = select_backend(q)
    tokens = q.shape[0]
    if backend == "flash":
        from flash_attn import flash_attn_varlen_func

        cu = ctx.cu_seqlens.to(device=q.device, dtype=torch.int32)
        longest = int(ctx.max_seqlen)
        if tokens > int(cu[-1]):  # sequence-parallel padding attends only to itself
            longest = max(longest, tokens - int(cu[-1]))
            cu = torch.cat((cu, cu.new_tensor([tokens])))
        return flash_attn_varlen_func(q, k, v, cu, cu, longest, longest)
    segs = _segments(ctx.cu_seqlens, tokens)
    if backend == "sdpa_mask" and len(segs) > 1:
        ids = _segment_ids(ctx.cu_seqlens, tokens, q.device)
        mask = ids[:, None] == ids[None, :]
        return _sdpa(q, k, v, mask)
    if len(segs) == 1 and backend != "math":
        return _sdpa(q, k, v)
    run = _math if backend == "math" else _sdpa
    return torch.cat([run(q[s:e], k[s:e], v[s:e]) for s, e in segs])


class AttentionCore(torch.nn.Module):
    """`attention` as a module, so sequence parallelism (Ulysses) can wrap it in place."""

    def forward(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, ctx) -> torch.Tensor:
        return attention(q, k, v, ctx)
