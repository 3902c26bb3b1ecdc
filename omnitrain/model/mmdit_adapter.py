"""MMDiT (omnitrain/model/mmdit.py) as a promotion model: condition tokens modulated as clean (t = 0) so their
keys/values can be cached, and the PackedBatches the denoiser needs (full / conditions only / video only) with the
RoPE positions `omnitrain.model.packing.pack` gives (text at 0, reference at t = -1, context and video on the patch
grid), so positions do not depend on which tokens share the batch.

`build_mmdit` is the factory named in model files ("omnitrain.model.mmdit_adapter:build_mmdit"); the parameter
names are MMDiT's own, so a trained MMDiT state dict loads unchanged.
"""

from __future__ import annotations

import dataclasses

import torch

from omnitrain.model.conditions import Conditions
from omnitrain.model.config import ModelConfig
from omnitrain.model.mmdit import MMDiT, Embedder, timestep_embedding
from omnitrain.model.packing import CONTEXT, REFERENCE, TEXT, VIDEO, PackedBatch
from omnitrain.model.patchify import grid_positions


class CleanConditionEmbedder(Embedder):
    """MMDiT's embedder, except that condition tokens get the modulation of t = 0 at every sampling step."""

    def forward(self, batch: PackedBatch, t: torch.Tensor):
        x, ctx = super().forward(batch, t)
        clean = self.time(timestep_embedding(torch.zeros(1), self.cfg.frequency_embedding_size).to(x.dtype))
        cond = torch.where((batch.kind == VIDEO)[:, None], ctx.cond, clean.expand_as(ctx.cond))
        return x, dataclasses.replace(ctx, cond=cond)


def _grid_for(tokens: torch.Tensor, grid, name: str):
    if grid is None:
        raise ValueError(f"{name}: MMDiT needs the patch grid of the latent (Conditions.{name}_grid)")
    if grid[0] * grid[1] * grid[2] != tokens.shape[0]:
        raise ValueError(f"{name}: grid {grid} does not match {tokens.shape[0]} tokens")
    return grid


class MMDiTAdapter:
    def __init__(self, cfg: ModelConfig):
        self.cfg = cfg

    def _condition_parts(self, c: Conditions):
        parts = [(TEXT, c.text, torch.zeros(c.text.shape[0], 3))]
        if c.reference is not None:
            g = _grid_for(c.reference, c.reference_grid, "reference")
            parts.append((REFERENCE, c.reference, grid_positions(g, t_offset=-g[0])))
        if c.context is not None:
            parts.append((CONTEXT, c.context, grid_positions(_grid_for(c.context, c.context_grid, "context"))))
        return parts

    def _video_part(self, c: Conditions, x: torch.Tensor):
        return (VIDEO, x, grid_positions(_grid_for(x, c.video_grid, "video")))

    def _pack(self, samples, grids) -> PackedBatch:
        per_kind = {TEXT: [], REFERENCE: [], CONTEXT: [], VIDEO: []}
        kinds, sample_ids, positions, lengths = [], [], [], []
        for i, parts in enumerate(samples):
            n = 0
            for kind, tokens, pos in parts:
                per_kind[kind].append(tokens.float())
                kinds.append(torch.full((tokens.shape[0],), kind, dtype=torch.long))
                positions.append(pos)
                n += tokens.shape[0]
            sample_ids.append(torch.full((n,), i, dtype=torch.long))
            lengths.append(n)
        cu = torch.zeros(len(samples) + 1, dtype=torch.int32)
        cu[1:] = torch.cumsum(torch.tensor(lengths), 0)
        widths = {TEXT: self.cfg.text_dim, REFERENCE: self.cfg.patch_dim, CONTEXT: self.cfg.patch_dim,
                  VIDEO: self.cfg.patch_dim}

        def cat(kind):
            return torch.cat(per_kind[kind]) if per_kind[kind] else torch.zeros(0, widths[kind])
        return PackedBatch(text=cat(TEXT), reference=cat(REFERENCE), context=cat(CONTEXT), video=cat(VIDEO),
                           kind=torch.cat(kinds), sample_id=torch.cat(sample_ids), positions=torch.cat(positions),
                           cu_seqlens=cu, video_grids=grids)

    def full_batch(self, conds: list[Conditions], videos: list[torch.Tensor]):
        batch = self._pack([self._condition_parts(c) + [self._video_part(c, x)] for c, x in zip(conds, videos)],
                           [c.video_grid for c in conds])
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
