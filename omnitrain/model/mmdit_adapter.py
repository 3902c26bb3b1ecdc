"""MMDiT (omnitrain/model/mmdit.py) as a promotion model: condition tokens modulated as clean (t = 0) and attending
only to conditions, so their keys/values can be cached (exact for a model trained with conditionAttention: causal;
a view of a full-attention model otherwise, docs/promotion.md), and the PackedBatches the denoiser needs (full /
conditions only / video only) with the RoPE positions and packing of `omnitrain.model.packing` (`pack_parts`, the
same as training's `pack`: text at 0, reference at t = -1, context and video on the patch grid), so positions do
not depend on which tokens share the batch.

`build_mmdit` is the factory named in model files ("omnitrain.model.mmdit_adapter:build_mmdit"); the parameter
names are MMDiT's own, so a trained MMDiT state dict loads unchanged.
"""

from __future__ import annotations

import torch

from omnitrain.model.conditions import Conditions
from omnitrain.model.config import ModelConfig
from omnitrain.model.mmdit import Embedder, MMDiT
from omnitrain.model.packing import (
    VIDEO,
    PackedBatch,
    Part,
    context_part,
    pack_parts,
    reference_part,
    text_part,
    video_part,
)


class CleanConditionEmbedder(Embedder):
    """MMDiT's embedder in its condition-causal view whatever the model was trained with: condition tokens get the
    modulation of t = 0 at every sampling step and attend only to conditions (Embedder.clean_conditions, the one
    place that view is defined). For a model trained with conditionAttention: causal this IS the trained model."""

    def __init__(self, cfg: ModelConfig):
        super().__init__(cfg)
        self.condition_causal = True


def _grid_for(tokens: torch.Tensor, grid, name: str):
    if grid is None:
        raise ValueError(f"{name}: MMDiT needs the patch grid of the latent (Conditions.{name}_grid)")
    if grid[0] * grid[1] * grid[2] != tokens.shape[0]:
        raise ValueError(f"{name}: grid {grid} does not match {tokens.shape[0]} tokens")
    return grid


class MMDiTAdapter:
    def __init__(self, cfg: ModelConfig):
        self.cfg = cfg

    def _condition_parts(self, c: Conditions) -> list[Part]:
        parts = [text_part(c.text)]
        if c.reference is not None:
            parts.append(reference_part(c.reference, _grid_for(c.reference, c.reference_grid, "reference")))
        if c.context is not None:
            parts.append(context_part(c.context, _grid_for(c.context, c.context_grid, "context")))
        return parts

    def _video_part(self, c: Conditions, x: torch.Tensor) -> Part:
        return video_part(x, _grid_for(x, c.video_grid, "video"))

    def _pack(self, samples: list[list[Part]], grids) -> PackedBatch:
        return pack_parts(samples, text_dim=self.cfg.text_dim, patch_dim=self.cfg.patch_dim, video_grids=grids)

    def full_batch(self, conds: list[Conditions], videos: list[torch.Tensor]):
        batch = self._pack(
            [self._condition_parts(c) + [self._video_part(c, x)] for c, x in zip(conds, videos)],
            [c.video_grid for c in conds],
        )
        return batch, batch.kind == VIDEO

    def condition_batch(self, conds: list[Conditions]) -> PackedBatch:
        return self._pack([self._condition_parts(c) for c in conds], [])

    def video_batch(self, conds: list[Conditions], videos: list[torch.Tensor]) -> PackedBatch:
        return self._pack([[self._video_part(c, x)] for c, x in zip(conds, videos)], [c.video_grid for c in conds])


def build_mmdit(config: ModelConfig):
    model = MMDiT(config)
    embed = CleanConditionEmbedder(config)
    embed.load_state_dict(model.embed.state_dict())
    model.embed = embed
    return model, MMDiTAdapter(config)


__all__ = ["CleanConditionEmbedder", "MMDiTAdapter", "build_mmdit"]
