"""Exact matmul FLOPs of MMDiT (pure Python): what the model computes, counted from its config and token counts.

A multiply-add is 2 FLOPs. Attention is counted with the real per-sample lengths (sum of L_i^2), not the packed
length squared: block-diagonal attention does no cross-sample work (flash-attn varlen, or SDPA per sample). Under
condition-causal attention (`conditionAttention: causal`) condition queries do not attend to video keys: the
sample's condition x video pairs are not needed work and are not counted (a backend that computes them under a mask
wastes them, like cross-sample scores); the clean-condition (t = 0) row adds one modulation row per forward. Element-
wise work (norms, RoPE, softmax, activations) is not counted, as in FlopCounterMode and MFU conventions. A training
step is 3x the forward (backward = grad w.r.t. inputs + grad w.r.t. weights, each as large as the forward).
"""

from __future__ import annotations

from dataclasses import dataclass

from omnitrain.model.config import ModelConfig


@dataclass(frozen=True)
class TokenCounts:
    """Tokens of one packed batch (or of a whole step: the counts add up)."""

    text: int
    patches: int  # reference + context + video tokens (all go through the patch embedding)
    samples: int
    sum_sq_seqlens: int  # sum over samples of (sequence length)^2
    # sum over samples of condition tokens x video tokens: the query-key pairs condition-causal attention skips
    condition_video_pairs: int = 0

    @property
    def tokens(self) -> int:
        return self.text + self.patches

    @classmethod
    def from_lengths(
        cls, text_lengths: list[int], patch_lengths: list[int], video_lengths: list[int] | None = None
    ) -> TokenCounts:
        """Per sample: text tokens, patch tokens (reference + context + video) and, when known, video tokens."""
        seq = [a + b for a, b in zip(text_lengths, patch_lengths)]
        video = video_lengths if video_lengths is not None else seq  # unknown: no condition pairs
        return cls(
            text=sum(text_lengths),
            patches=sum(patch_lengths),
            samples=len(seq),
            sum_sq_seqlens=sum(n * n for n in seq),
            condition_video_pairs=sum((n - v) * v for n, v in zip(seq, video)),
        )

    @classmethod
    def of_batch(cls, batch) -> TokenCounts:
        """From a PackedBatch (omnitrain.model.packing)."""
        counts = batch.token_counts()
        video = batch.video_sample_id().bincount(minlength=batch.num_samples).tolist()
        return cls(
            text=counts["text"],
            patches=batch.num_tokens - counts["text"],
            samples=batch.num_samples,
            sum_sq_seqlens=sum(n * n for n in batch.seqlens),
            condition_video_pairs=sum((n - v) * v for n, v in zip(batch.seqlens, video)),
        )

    def __add__(self, other: TokenCounts) -> TokenCounts:
        return TokenCounts(
            self.text + other.text,
            self.patches + other.patches,
            self.samples + other.samples,
            self.sum_sq_seqlens + other.sum_sq_seqlens,
            self.condition_video_pairs + other.condition_video_pairs,
        )


def _causal(cfg: ModelConfig) -> bool:
    return cfg.condition_attention == "causal"


def modulation_rows(cfg: ModelConfig, c: TokenCounts) -> int:
    """Rows the timestep MLP and every adaLN Linear run on: one per sample, and the clean (t = 0) row of
    condition-causal models (mmdit.Embedder.clean_conditions), counted once per forward."""
    return c.samples + (1 if _causal(cfg) and c.samples else 0)


def embed_flops(cfg: ModelConfig, c: TokenCounts) -> int:
    h = cfg.hidden_size
    time_mlp = 2 * modulation_rows(cfg, c) * (cfg.frequency_embedding_size * h + h * h)
    return 2 * c.text * cfg.text_dim * h + 2 * c.patches * cfg.patch_dim * h + time_mlp


def attention_core_flops(cfg: ModelConfig, c: TokenCounts) -> int:
    """QK^T and AV of one block: 2 * (2 * pairs * hidden), pairs = sum L_i^2 (less the condition x video pairs
    under condition-causal attention)."""
    pairs = c.sum_sq_seqlens - (c.condition_video_pairs if _causal(cfg) else 0)
    return 4 * pairs * cfg.hidden_size


def block_flops(cfg: ModelConfig, c: TokenCounts) -> int:
    h, n = cfg.hidden_size, c.tokens
    adaln = (
        2 * modulation_rows(cfg, c) * h * 6 * h
    )  # once per sample, gathered per token (omnitrain.model.mmdit.modulation)
    projections = 4 * 2 * n * h * h  # q, k, v, o
    mlp = 2 * 2 * n * h * cfg.mlp_hidden
    return adaln + projections + mlp + attention_core_flops(cfg, c)


def head_flops(cfg: ModelConfig, c: TokenCounts) -> int:
    h, n = cfg.hidden_size, c.tokens
    return 2 * modulation_rows(cfg, c) * h * 2 * h + 2 * n * h * cfg.patch_dim


def forward_flops(cfg: ModelConfig, c: TokenCounts) -> int:
    return embed_flops(cfg, c) + cfg.depth * block_flops(cfg, c) + head_flops(cfg, c)


def training_flops(cfg: ModelConfig, c: TokenCounts) -> int:
    """Forward + backward of one pass over these tokens."""
    return 3 * forward_flops(cfg, c)
