"""MM-DiT for video: text, reference, context and noisy video tokens of a sample in one sequence, adaLN-Zero
timestep modulation, QK RMSNorm and 3D RoPE. Knows nothing about parallelism (docs/contracts.md).

Attention follows `config.condition_attention`: "full" (every token sees its sample), or "causal" (condition tokens
see only their sample's condition tokens and are modulated as clean, t = 0: omnitrain.model.attention's rule),
the view in which the serving cache of condition keys/values is exact."""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from omnitrain.model.attention import AttentionCore
from omnitrain.model.config import ModelConfig
from omnitrain.model.packing import CONTEXT, REFERENCE, TEXT, VIDEO, PackedBatch
from omnitrain.model.rope import apply_rope, rope_cos_sin


@dataclass
class BlockContext:
    """What every block needs besides x. Per-token tensors have tokens as their first dimension (sequence
    parallelism cuts those); cu_seqlens/max_seqlen describe the whole packed sequence.

    The timestep conditioning is per sample, not per token: every token of a sample shares its timestep, so each
    adaLN Linear runs on the `sample_cond` rows and its output is gathered per token by `cond_row`. Per token that
    Linear was 12 x hidden^2 FLOPs a block (a third of the block at 1,000 tokens per sample) spent recomputing one
    row per sample."""

    sample_cond: torch.Tensor  # [rows, hidden]: one conditioning vector per sample (and per way it is modulated)
    cond_row: torch.Tensor  # [L] int64: the row of sample_cond each token is modulated by
    cos: torch.Tensor  # [L, head_dim // 2]
    sin: torch.Tensor
    cu_seqlens: torch.Tensor  # [n + 1] int32
    max_seqlen: int
    # [L] bool over the WHOLE packed sequence (not cut by sequence parallelism: attention runs on the whole
    # sequence); set under condition-causal attention, None under full attention.
    is_condition: torch.Tensor | None = None


def timestep_embedding(t: torch.Tensor, dim: int, max_period: float = 10000.0) -> torch.Tensor:
    """Sinusoidal embedding of t in [0, 1] (scaled by 1000 like the usual integer diffusion steps): [n, dim]."""
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, dtype=torch.float32, device=t.device) / half)
    args = t.float()[:, None] * 1000.0 * freqs[None]
    emb = torch.cat((torch.cos(args), torch.sin(args)), dim=-1)
    return F.pad(emb, (0, dim % 2))


class Embedder(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.cfg = cfg
        # Condition tokens modulated as clean (t = 0) and attending only to conditions: condition-causal training,
        # and serving's cached view of any MMDiT (omnitrain/model/mmdit_adapter.py). Not a parameter: the state
        # dict is the same in both modes.
        self.condition_causal = cfg.condition_attention == "causal"
        self.text = nn.Linear(cfg.text_dim, cfg.hidden_size)
        self.patch = nn.Linear(cfg.patch_dim, cfg.hidden_size)  # shared by reference, context and video latents
        self.kind = nn.Embedding(4, cfg.hidden_size)  # which kind of token
        self.time = nn.Sequential(
            nn.Linear(cfg.frequency_embedding_size, cfg.hidden_size),
            nn.SiLU(),
            nn.Linear(cfg.hidden_size, cfg.hidden_size),
        )
        nn.init.normal_(self.kind.weight, std=0.02)

    def forward(self, batch: PackedBatch, t: torch.Tensor) -> tuple[torch.Tensor, BlockContext]:
        kind = batch.kind
        x = self.text.weight.new_zeros(batch.num_tokens, self.cfg.hidden_size)
        for k, inputs, proj in (
            (TEXT, batch.text, self.text),
            (REFERENCE, batch.reference, self.patch),
            (CONTEXT, batch.context, self.patch),
            (VIDEO, batch.video, self.patch),
        ):
            if inputs.shape[0]:
                # under autocast the projection comes back in bf16; the residual stream keeps the weights' dtype
                x = x.index_put((torch.nonzero(kind == k).squeeze(1),), proj(inputs.to(x.dtype)).to(x.dtype))
        x = x + self.kind(kind)
        sample_cond = self.time(timestep_embedding(t, self.cfg.frequency_embedding_size).to(x.dtype))
        cos, sin = rope_cos_sin(batch.positions, self.cfg.head_dim)
        ctx = BlockContext(
            sample_cond=sample_cond,
            cond_row=batch.sample_id.long(),
            cos=cos,
            sin=sin,
            cu_seqlens=batch.cu_seqlens,
            max_seqlen=batch.max_seqlen,
        )
        return x, (self.clean_conditions(batch, ctx) if self.condition_causal else ctx)

    def clean_conditions(self, batch: PackedBatch, ctx: BlockContext) -> BlockContext:
        """Condition tokens get the modulation of t = 0 (one more conditioning row, shared by every sample's
        condition tokens) and the condition-causal attention rule."""
        x_dtype = ctx.sample_cond.dtype
        zero = torch.zeros(1, device=ctx.sample_cond.device)
        clean = self.time(timestep_embedding(zero, self.cfg.frequency_embedding_size).to(x_dtype))
        is_video = batch.kind == VIDEO
        clean_row = torch.full_like(ctx.cond_row, ctx.sample_cond.shape[0])
        return dataclasses.replace(
            ctx,
            sample_cond=torch.cat((ctx.sample_cond, clean)),
            cond_row=torch.where(is_video, ctx.cond_row, clean_row),
            is_condition=~is_video,
        )


class SelfAttention(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        h = cfg.hidden_size
        self.head_dim = cfg.head_dim
        self.q, self.k, self.v, self.o = (nn.Linear(h, h) for _ in range(4))
        self.q_norm = nn.RMSNorm(cfg.head_dim, eps=1e-6) if cfg.qk_norm else nn.Identity()
        self.k_norm = nn.RMSNorm(cfg.head_dim, eps=1e-6) if cfg.qk_norm else nn.Identity()
        self.core = AttentionCore()

    def forward(self, x: torch.Tensor, ctx: BlockContext) -> torch.Tensor:
        n = x.shape[0]
        q = self.q_norm(self.q(x).view(n, -1, self.head_dim))  # heads from the shape: a TP shard has fewer
        k = self.k_norm(self.k(x).view(n, -1, self.head_dim))
        v = self.v(x).view(n, -1, self.head_dim)
        q, k = apply_rope(q, ctx.cos, ctx.sin), apply_rope(k, ctx.cos, ctx.sin)
        # autocast runs RMSNorm in fp32: bring q/k back to v's (bf16) dtype so flash-attn can be selected
        q, k = q.to(v.dtype), k.to(v.dtype)
        return self.o(self.core(q, k, v, ctx).reshape(n, -1))


class Mlp(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.fc1 = nn.Linear(cfg.hidden_size, cfg.mlp_hidden)
        self.fc2 = nn.Linear(cfg.mlp_hidden, cfg.hidden_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(F.gelu(self.fc1(x), approximate="tanh"))


def modulate(x: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    return x * (1 + scale) + shift


def modulation(adaln: nn.Linear, ctx: BlockContext) -> torch.Tensor:
    """adaLN's shift/scale/gate for every token: the Linear on the per-sample rows, then a gather per token."""
    return adaln(F.silu(ctx.sample_cond))[ctx.cond_row]


class DiTBlock(nn.Module):
    """adaLN-Zero block: shift/scale/gate for attention and for the MLP from the conditioning of the token's sample."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.norm1 = nn.LayerNorm(cfg.hidden_size, elementwise_affine=False, eps=1e-6)
        self.norm2 = nn.LayerNorm(cfg.hidden_size, elementwise_affine=False, eps=1e-6)
        self.attn = SelfAttention(cfg)
        self.mlp = Mlp(cfg)
        self.adaln = nn.Linear(cfg.hidden_size, 6 * cfg.hidden_size)
        nn.init.zeros_(self.adaln.weight)  # adaLN-Zero: every block starts as the identity
        nn.init.zeros_(self.adaln.bias)

    def forward(self, x: torch.Tensor, ctx: BlockContext) -> torch.Tensor:
        shift1, scale1, gate1, shift2, scale2, gate2 = modulation(self.adaln, ctx).chunk(6, dim=-1)
        x = x + gate1 * self.attn(modulate(self.norm1(x), shift1, scale1), ctx)
        return x + gate2 * self.mlp(modulate(self.norm2(x), shift2, scale2))


class FinalLayer(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.norm = nn.LayerNorm(cfg.hidden_size, elementwise_affine=False, eps=1e-6)
        self.adaln = nn.Linear(cfg.hidden_size, 2 * cfg.hidden_size)
        self.proj = nn.Linear(cfg.hidden_size, cfg.patch_dim)
        for layer in (self.adaln, self.proj):
            nn.init.zeros_(layer.weight)
            nn.init.zeros_(layer.bias)

    def forward(self, x: torch.Tensor, ctx: BlockContext) -> torch.Tensor:
        shift, scale = modulation(self.adaln, ctx).chunk(2, dim=-1)
        return self.proj(modulate(self.norm(x), shift, scale))


class MMDiT(nn.Module):
    def __init__(self, config: ModelConfig):
        super().__init__()
        if config.hidden_size % config.num_heads:
            raise ValueError(f"hidden_size={config.hidden_size} is not divisible by num_heads={config.num_heads}")
        self.config = config
        self.embed = Embedder(config)
        self.blocks = nn.ModuleList(DiTBlock(config) for _ in range(config.depth))
        self.head = FinalLayer(config)

    def forward(self, batch: PackedBatch, t: torch.Tensor) -> torch.Tensor:
        """Prediction [tokens, patch_dim] for every token of the packed sequence (the loss picks video tokens)."""
        x, ctx = self.embed(batch, t)
        for block in self.blocks:
            x = block(x, ctx)
        return self.head(x, ctx)


def randomize_(model: nn.Module, generator: torch.Generator, std: float = 0.05) -> nn.Module:
    """Fill every parameter with noise (tests: the zero-initialised adaLN-Zero model would predict 0 everywhere)."""
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=generator) * std)
    return model
