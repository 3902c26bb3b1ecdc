"""A small stand-in with the structure docs/contracts.md promises for MMDiT (used until/unless the real model is
importable): embed(batch, t) -> (x, ctx), blocks[i](x, ctx) with adaln, attn.q/k/v/o, attn.core, mlp.fc1/fc2,
head(x, ctx). Attention is block-diagonal over cu_seqlens with per-token RoPE and per-head qk-norm."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from omnitrain.model.config import ModelConfig


@dataclass
class StandinBatch:
    tokens: torch.Tensor  # [L, patch_dim] input tokens (stand-in for text/video tokens)
    target: torch.Tensor  # [L, patch_dim]
    loss_mask: torch.Tensor  # [L] bool: video-target tokens
    positions: torch.Tensor  # [L] float positions for RoPE
    sample_id: torch.Tensor  # [L] long
    cu_seqlens: torch.Tensor  # [n + 1] int32


@dataclass
class StandinCtx:
    cond: torch.Tensor  # [L, hidden] per-token conditioning
    cos: torch.Tensor  # [L, head_dim // 2]
    sin: torch.Tensor
    cu_seqlens: torch.Tensor
    max_seqlen: int


def make_batch(lengths: list[int], config: ModelConfig, generator: torch.Generator) -> StandinBatch:
    total = sum(lengths)
    cu = torch.zeros(len(lengths) + 1, dtype=torch.int32)
    cu[1:] = torch.cumsum(torch.tensor(lengths), 0)
    positions = torch.cat([torch.arange(n, dtype=torch.float32) for n in lengths])
    sample_id = torch.cat([torch.full((n,), i) for i, n in enumerate(lengths)])
    mask = torch.cat([torch.arange(n) >= n // 3 for n in lengths])
    return StandinBatch(
        tokens=torch.randn(total, config.patch_dim, generator=generator),
        target=torch.randn(total, config.patch_dim, generator=generator),
        loss_mask=mask,
        positions=positions,
        sample_id=sample_id,
        cu_seqlens=cu,
    )


def varlen_attention(q, k, v, ctx):
    out = []
    cu = ctx.cu_seqlens.tolist()
    for s, e in zip(cu[:-1], cu[1:]):
        o = F.scaled_dot_product_attention(q[s:e].transpose(0, 1), k[s:e].transpose(0, 1), v[s:e].transpose(0, 1))
        out.append(o.transpose(0, 1))
    return torch.cat(out)


class Core(nn.Module):
    def forward(self, q, k, v, ctx):
        return varlen_attention(q, k, v, ctx)


def rope(x, cos, sin):
    x1, x2 = x[..., 0::2], x[..., 1::2]
    c, s = cos[:, None, :], sin[:, None, :]
    return torch.stack((x1 * c - x2 * s, x1 * s + x2 * c), dim=-1).flatten(-2)


class Attention(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        h = cfg.hidden_size
        self.head_dim = cfg.head_dim
        self.q, self.k, self.v, self.o = (nn.Linear(h, h) for _ in range(4))
        self.q_norm = nn.RMSNorm(cfg.head_dim)
        self.k_norm = nn.RMSNorm(cfg.head_dim)
        self.core = Core()

    def forward(self, x, ctx):
        L = x.shape[0]
        q = self.q_norm(self.q(x).view(L, -1, self.head_dim))  # heads from the shape: works on a TP shard
        k = self.k_norm(self.k(x).view(L, -1, self.head_dim))
        v = self.v(x).view(L, -1, self.head_dim)
        q, k = rope(q, ctx.cos, ctx.sin), rope(k, ctx.cos, ctx.sin)
        return self.o(self.core(q, k, v, ctx).reshape(L, -1))


class Mlp(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.fc1 = nn.Linear(cfg.hidden_size, cfg.mlp_hidden)
        self.fc2 = nn.Linear(cfg.mlp_hidden, cfg.hidden_size)

    def forward(self, x):
        return self.fc2(F.gelu(self.fc1(x), approximate="tanh"))


class DiTBlock(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.adaln = nn.Linear(cfg.hidden_size, 6 * cfg.hidden_size)
        self.norm1 = nn.LayerNorm(cfg.hidden_size, elementwise_affine=False)
        self.norm2 = nn.LayerNorm(cfg.hidden_size, elementwise_affine=False)
        self.attn = Attention(cfg)
        self.mlp = Mlp(cfg)

    def forward(self, x, ctx):
        s1, b1, g1, s2, b2, g2 = self.adaln(F.silu(ctx.cond)).chunk(6, dim=-1)
        x = x + g1 * self.attn(self.norm1(x) * (1 + s1) + b1, ctx)
        return x + g2 * self.mlp(self.norm2(x) * (1 + s2) + b2)


class Embed(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.cfg = cfg
        self.patch = nn.Linear(cfg.patch_dim, cfg.hidden_size)
        self.time = nn.Sequential(
            nn.Linear(cfg.frequency_embedding_size, cfg.hidden_size),
            nn.SiLU(),
            nn.Linear(cfg.hidden_size, cfg.hidden_size),
        )
        # Used only by some micro-batches (like a reference-image embedder when a batch has reference images), so
        # data-parallel ranks differ in which parameters got gradients.
        self.pair = nn.Linear(cfg.frequency_embedding_size, cfg.hidden_size)

    def forward(self, batch: StandinBatch, t: torch.Tensor):
        half = self.cfg.frequency_embedding_size // 2
        freqs = torch.exp(-torch.arange(half) * 9.2 / half)
        temb = torch.cat([torch.cos(t[:, None] * 1000 * freqs), torch.sin(t[:, None] * 1000 * freqs)], -1)
        cond = self.time(temb)[batch.sample_id]
        if len(t) == 2:
            cond = cond + self.pair(temb)[batch.sample_id]
        rot = batch.positions[:, None] * torch.exp(-torch.arange(self.cfg.head_dim // 2) * 2.0 / self.cfg.head_dim)
        lengths = batch.cu_seqlens[1:] - batch.cu_seqlens[:-1]
        ctx = StandinCtx(
            cond=cond, cos=rot.cos(), sin=rot.sin(), cu_seqlens=batch.cu_seqlens, max_seqlen=int(lengths.max())
        )
        return self.patch(batch.tokens), ctx


class Head(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.norm = nn.LayerNorm(cfg.hidden_size, elementwise_affine=False)
        self.adaln = nn.Linear(cfg.hidden_size, 2 * cfg.hidden_size)
        self.proj = nn.Linear(cfg.hidden_size, cfg.patch_dim)

    def forward(self, x, ctx):
        shift, scale = self.adaln(F.silu(ctx.cond)).chunk(2, dim=-1)
        return self.proj(self.norm(x) * (1 + scale) + shift)


class StandinDiT(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.config = cfg
        self.embed = Embed(cfg)
        self.blocks = nn.ModuleList(DiTBlock(cfg) for _ in range(cfg.depth))
        self.head = Head(cfg)

    def forward(self, batch, t):
        x, ctx = self.embed(batch, t)
        for block in self.blocks:
            x = block(x, ctx)
        return self.head(x, ctx)


def masked_mse(prediction: torch.Tensor, args) -> torch.Tensor:
    batch = args[0]
    return ((prediction - batch.target) ** 2)[batch.loss_mask].mean()
