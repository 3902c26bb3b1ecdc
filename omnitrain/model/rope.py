"""3D rotary position embedding: head_dim/2 rotation pairs split over the t, h and w axes.

Pairs go to the axes as h: n//3, w: n//3, t: the rest (time gets the remainder because clips are long in time at
high resolution only after patchify along h/w). Pairs are interleaved (x[0::2], x[1::2])."""

from __future__ import annotations

import torch

THETA = 10000.0


def axis_pairs(head_dim: int) -> tuple[int, int, int]:
    if head_dim % 2:
        raise ValueError(f"head_dim {head_dim} must be even for rotary embeddings; change hiddenSize or numHeads")
    n = head_dim // 2
    return n - 2 * (n // 3), n // 3, n // 3


def rope_angles(positions: torch.Tensor, head_dim: int) -> torch.Tensor:
    """positions [L, 3] (t, h, w) -> rotation angles [L, head_dim // 2]."""
    parts = []
    for axis, pairs in enumerate(axis_pairs(head_dim)):
        if pairs == 0:
            continue
        inv_freq = THETA ** (-torch.arange(pairs, dtype=torch.float32, device=positions.device) / pairs)
        parts.append(positions[:, axis : axis + 1].float() * inv_freq)
    return torch.cat(parts, dim=-1)


def rope_cos_sin(positions: torch.Tensor, head_dim: int) -> tuple[torch.Tensor, torch.Tensor]:
    angles = rope_angles(positions, head_dim)
    return angles.cos(), angles.sin()


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """x [L, heads, head_dim]; cos/sin [L, head_dim // 2]."""
    x1, x2 = x[..., 0::2], x[..., 1::2]
    c, s = cos[:, None, :].to(x.dtype), sin[:, None, :].to(x.dtype)
    return torch.stack((x1 * c - x2 * s, x1 * s + x2 * c), dim=-1).flatten(-2)
