"""Shared pieces of the promotion tests: a tiny conditional DiT and request conditions."""

from __future__ import annotations

import torch

from omnitrain.model.conditions import Conditions
from omnitrain.model.config import ModelConfig
from omnitrain.serving.testing import build_tiny

TINY = ModelConfig(hidden_size=32, depth=2, num_heads=4, latent_channels=4, text_dim=16, frequency_embedding_size=32)


def tiny_model(seed: int = 0, config: ModelConfig = TINY):
    torch.manual_seed(seed)
    model, adapter = build_tiny(config)
    return model.eval(), adapter


def random_conditions(
    generator: torch.Generator, config: ModelConfig = TINY, text: int = 5, reference: int = 0, context: int = 0
) -> Conditions:
    def tokens(n, dim):
        return torch.randn(n, dim, generator=generator) if n else None

    return Conditions(
        text=tokens(text, config.text_dim),
        reference=tokens(reference, config.patch_dim),
        context=tokens(context, config.patch_dim),
    )
