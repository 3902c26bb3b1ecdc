"""A tiny conditional DiT with the block structure docs/contracts.md promises for MMDiT (embed -> blocks with
adaln, attn.q/k/v/o, attn.core, mlp.fc1/fc2 -> head): a test helper for the promotion tests and benchmarks.
Production never defaults to it; model files that hold it name it as their factory (FACTORY), so `omnitrain serve`
and `omnitrain distill` run them too.

Condition tokens (text, reference image, video context) get the modulation of timestep 0 whatever the sampling
timestep, so with condition-causal attention their keys/values are the same at every step (omnitrain.model.
condcache). Positions: one 1D RoPE index per token, conditions first, then video tokens.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from omnitrain.model.conditions import Conditions
from omnitrain.model.config import ModelConfig

KIND_TEXT, KIND_REFERENCE, KIND_CONTEXT, KIND_VIDEO = 0, 1, 2, 3


@dataclass
class OmniBatch:
    """Packed token sequence of several samples: conditions and/or video tokens (see TinyOmniAdapter)."""

    text: torch.Tensor  # [L, text_dim] (zero rows where kind != text)
    patches: torch.Tensor  # [L, patch_dim] (zero rows where kind == text)
    kind: torch.Tensor  # [L] long
    position: torch.Tensor  # [L] float
    sample_id: torch.Tensor  # [L] long
    cu_seqlens: torch.Tensor  # [n + 1] int32


@dataclass
class OmniCtx:
    cond: torch.Tensor  # [L, hidden] per-token modulation input
    cos: torch.Tensor
    sin: torch.Tensor
    cu_seqlens: torch.Tensor
    max_seqlen: int


def timestep_embedding(t: torch.Tensor, dim: int) -> torch.Tensor:
    half = dim // 2
    freqs = torch.exp(-math.log(10000.0) * torch.arange(half, dtype=torch.float32) / half)
    args = 1000.0 * t.float()[:, None] * freqs[None]
    return torch.cat([torch.cos(args), torch.sin(args)], dim=-1)


def rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    x1, x2 = x[..., 0::2], x[..., 1::2]
    c, s = cos[:, None, :], sin[:, None, :]
    return torch.stack((x1 * c - x2 * s, x1 * s + x2 * c), dim=-1).flatten(-2)


class AttentionCore(nn.Module):
    """Block-diagonal attention over cu_seqlens (per-sample SDPA)."""

    def forward(self, q, k, v, ctx):
        cu = ctx.cu_seqlens.tolist()
        out = [
            F.scaled_dot_product_attention(
                q[s:e].transpose(0, 1), k[s:e].transpose(0, 1), v[s:e].transpose(0, 1)
            ).transpose(0, 1)
            for s, e in zip(cu[:-1], cu[1:])
        ]
        return torch.cat(out)


class Attention(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        h = cfg.hidden_size
        self.head_dim = cfg.head_dim
        self.q, self.k, self.v, self.o = (nn.Linear(h, h) for _ in range(4))
        self.q_norm = nn.RMSNorm(cfg.head_dim)
        self.k_norm = nn.RMSNorm(cfg.head_dim)
        self.core = AttentionCore()

    def forward(self, x, ctx):
        n = x.shape[0]
        q = self.q_norm(self.q(x).view(n, -1, self.head_dim))
        k = self.k_norm(self.k(x).view(n, -1, self.head_dim))
        v = self.v(x).view(n, -1, self.head_dim)
        q, k = rope(q, ctx.cos, ctx.sin), rope(k, ctx.cos, ctx.sin)
        return self.o(self.core(q, k, v, ctx).reshape(n, -1))


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
        self.text = nn.Linear(cfg.text_dim, cfg.hidden_size)
        self.patch = nn.Linear(cfg.patch_dim, cfg.hidden_size)
        self.kind = nn.Embedding(4, cfg.hidden_size)
        self.time = nn.Sequential(
            nn.Linear(cfg.frequency_embedding_size, cfg.hidden_size),
            nn.SiLU(),
            nn.Linear(cfg.hidden_size, cfg.hidden_size),
        )

    def forward(self, batch: OmniBatch, t: torch.Tensor):
        is_text = (batch.kind == KIND_TEXT)[:, None]
        x = torch.where(is_text, self.text(batch.text), self.patch(batch.patches)) + self.kind(batch.kind)
        # Conditions are modulated as clean (t = 0) at every step: what makes their keys/values cacheable.
        token_t = torch.where(batch.kind == KIND_VIDEO, t.float()[batch.sample_id], torch.zeros(()))
        cond = self.time(timestep_embedding(token_t, self.cfg.frequency_embedding_size))
        half = self.cfg.head_dim // 2
        rot = batch.position[:, None] * torch.exp(-math.log(10000.0) * torch.arange(half) / half)[None]
        lengths = batch.cu_seqlens[1:] - batch.cu_seqlens[:-1]
        ctx = OmniCtx(
            cond=cond,
            cos=rot.cos(),
            sin=rot.sin(),
            cu_seqlens=batch.cu_seqlens,
            max_seqlen=int(lengths.max()) if len(lengths) else 0,
        )
        return x, ctx


class Head(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.norm = nn.LayerNorm(cfg.hidden_size, elementwise_affine=False)
        self.adaln = nn.Linear(cfg.hidden_size, 2 * cfg.hidden_size)
        self.proj = nn.Linear(cfg.hidden_size, cfg.patch_dim)

    def forward(self, x, ctx):
        shift, scale = self.adaln(F.silu(ctx.cond)).chunk(2, dim=-1)
        return self.proj(self.norm(x) * (1 + scale) + shift)


class TinyOmniDiT(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.config = cfg
        self.embed = Embed(cfg)
        self.blocks = nn.ModuleList(DiTBlock(cfg) for _ in range(cfg.depth))
        self.head = Head(cfg)

    def forward(self, batch: OmniBatch, t: torch.Tensor) -> torch.Tensor:
        x, ctx = self.embed(batch, t)
        for block in self.blocks:
            x = block(x, ctx)
        return self.head(x, ctx)


class TinyOmniAdapter:
    """Builds TinyOmniDiT batches for the denoiser (omnitrain.model.denoiser.DenoiserAdapter)."""

    def __init__(self, cfg: ModelConfig):
        self.cfg = cfg

    def _pieces(self, c: Conditions):
        pieces = [(c.text, KIND_TEXT)]
        if c.reference is not None:
            pieces.append((c.reference, KIND_REFERENCE))
        if c.context is not None:
            pieces.append((c.context, KIND_CONTEXT))
        return pieces

    def _pack(self, samples: list[list[tuple[torch.Tensor, int, int]]]) -> OmniBatch:
        """samples: per sample, (tokens, kind, first position) pieces."""
        text, patches, kind, position, sample_id, lengths = [], [], [], [], [], []
        for i, pieces in enumerate(samples):
            n = 0
            for tokens, k, start in pieces:
                L = tokens.shape[0]
                if k == KIND_TEXT:
                    text.append(tokens.float())
                    patches.append(torch.zeros(L, self.cfg.patch_dim))
                else:
                    text.append(torch.zeros(L, self.cfg.text_dim))
                    patches.append(tokens.float())
                kind.append(torch.full((L,), k, dtype=torch.long))
                position.append(torch.arange(start, start + L, dtype=torch.float32))
                n += L
            sample_id.append(torch.full((n,), i, dtype=torch.long))
            lengths.append(n)
        cu = torch.zeros(len(samples) + 1, dtype=torch.int32)
        cu[1:] = torch.cumsum(torch.tensor(lengths), 0)
        return OmniBatch(
            text=torch.cat(text),
            patches=torch.cat(patches),
            kind=torch.cat(kind),
            position=torch.cat(position),
            sample_id=torch.cat(sample_id),
            cu_seqlens=cu,
        )

    def _condition_pieces(self, c: Conditions):
        out, start = [], 0
        for tokens, k in self._pieces(c):
            out.append((tokens, k, start))
            start += tokens.shape[0]
        return out, start

    def full_batch(self, conds: list[Conditions], videos: list[torch.Tensor]) -> tuple[OmniBatch, torch.Tensor]:
        """Conditions then video tokens per sample; also the per-token 'is video' mask."""
        samples = []
        for c, x in zip(conds, videos):
            pieces, start = self._condition_pieces(c)
            samples.append(pieces + [(x, KIND_VIDEO, start)])
        batch = self._pack(samples)
        return batch, batch.kind == KIND_VIDEO

    def condition_batch(self, conds: list[Conditions]) -> OmniBatch:
        return self._pack([self._condition_pieces(c)[0] for c in conds])

    def video_batch(self, conds: list[Conditions], videos: list[torch.Tensor]) -> OmniBatch:
        return self._pack([[(x, KIND_VIDEO, c.num_tokens)] for c, x in zip(conds, videos)])


# What model files of this test model name as their factory (ModelArtifact.factory); nothing defaults to it.
FACTORY = "omnitrain.serving.testing:build_tiny"


def build_tiny(config: ModelConfig) -> tuple[TinyOmniDiT, TinyOmniAdapter]:
    """The factory FACTORY names."""
    return TinyOmniDiT(config), TinyOmniAdapter(config)


__all__ = ["FACTORY", "OmniBatch", "TinyOmniAdapter", "TinyOmniDiT", "build_tiny"]
