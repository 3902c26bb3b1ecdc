"""PackedBatch: the samples of one micro-batch as ONE token sequence, and packing it from per-sample records.

Layout of each sample, in order: text tokens, reference-image tokens, video-context tokens, noisy video tokens.
Samples follow each other; `cu_seqlens` marks the boundaries (attention is block-diagonal over them). Per-kind
inputs are stored densely (`text`, `reference`, `context`, `video`), in sequence order; `kind` says which rows of
the sequence each one fills. RoPE positions: video tokens (t, h, w) on the patch grid; context tokens on the same
grid (aligned with the video they condition); reference-image tokens at t = -1 (the frame before the clip); text
tokens at (0, 0, 0), i.e. no rotation: text order is already encoded by the text encoder.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

import torch

from omnitrain.model.patchify import grid_positions, patch_grid, patchify

TEXT, REFERENCE, CONTEXT, VIDEO = 0, 1, 2, 3
KINDS = ("text", "reference", "context", "video")


@dataclass
class SampleRecord:
    """One decoded sample: text embedding [Lt, text_dim], latents [C, T, H, W]."""

    text: torch.Tensor
    video: torch.Tensor
    reference: torch.Tensor | None = None
    context: torch.Tensor | None = None


@dataclass
class PackedBatch:
    text: torch.Tensor  # [N_text, text_dim]
    reference: torch.Tensor  # [N_ref, patch_dim]
    context: torch.Tensor  # [N_ctx, patch_dim]
    video: torch.Tensor  # [N_video, patch_dim] (noisy latents as model input)
    kind: torch.Tensor  # [L] long, TEXT/REFERENCE/CONTEXT/VIDEO
    sample_id: torch.Tensor  # [L] long
    positions: torch.Tensor  # [L, 3] float (t, h, w) RoPE positions
    cu_seqlens: torch.Tensor  # [n + 1] int32
    video_grids: list[tuple[int, int, int]] = field(default_factory=list)  # patch grid of each sample's video
    target: torch.Tensor | None = None  # [N_video, patch_dim] regression target, set by the objective

    @property
    def num_samples(self) -> int:
        return self.cu_seqlens.numel() - 1

    @property
    def num_tokens(self) -> int:
        return self.kind.numel()

    @property
    def seqlens(self) -> list[int]:
        return (self.cu_seqlens[1:] - self.cu_seqlens[:-1]).tolist()

    @property
    def max_seqlen(self) -> int:
        return max(self.seqlens) if self.num_samples else 0

    @property
    def target_mask(self) -> torch.Tensor:
        """[L] bool: the video tokens (the loss covers these)."""
        return self.kind == VIDEO

    def video_sample_id(self) -> torch.Tensor:
        """[N_video] sample of each video token."""
        return self.sample_id[self.target_mask]

    def token_counts(self) -> dict[str, int]:
        return {name: int((self.kind == i).sum()) for i, name in enumerate(KINDS)}

    def to(self, device) -> PackedBatch:
        moved = {
            f.name: getattr(self, f.name).to(device)
            for f in dataclasses.fields(self)
            if isinstance(getattr(self, f.name), torch.Tensor)
        }
        return dataclasses.replace(self, **moved)


def sample_tokens(record: SampleRecord, patch_size: tuple[int, int, int]) -> int:
    """Sequence length of one sample once packed."""
    n = record.text.shape[0]
    for latent in (record.reference, record.context, record.video):
        if latent is not None:
            gt, gh, gw = patch_grid(tuple(latent.shape), patch_size)
            n += gt * gh * gw
    return n


# One sample's tokens of one kind: (kind, tokens [n, width], RoPE positions [n, 3]).
Part = tuple[int, torch.Tensor, torch.Tensor]


def text_part(tokens: torch.Tensor) -> Part:
    return (TEXT, tokens, torch.zeros(tokens.shape[0], 3))


def reference_part(tokens: torch.Tensor, grid: tuple[int, int, int]) -> Part:
    return (REFERENCE, tokens, grid_positions(grid, t_offset=-grid[0]))


def context_part(tokens: torch.Tensor, grid: tuple[int, int, int]) -> Part:
    return (CONTEXT, tokens, grid_positions(grid))


def video_part(tokens: torch.Tensor, grid: tuple[int, int, int]) -> Part:
    return (VIDEO, tokens, grid_positions(grid))


def pack_parts(
    samples: list[list[Part]], *, text_dim: int, patch_dim: int, video_grids: list[tuple[int, int, int]] | None = None
) -> PackedBatch:
    """Concatenate samples, each a list of parts in sequence order, into one PackedBatch. The widths give the
    empty per-kind tensors their shape (a batch of conditions only has no video tokens, and so on)."""
    if not samples:
        raise ValueError("cannot pack an empty list of samples")
    per_kind: dict[int, list[torch.Tensor]] = {TEXT: [], REFERENCE: [], CONTEXT: [], VIDEO: []}
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
    widths = {TEXT: text_dim, REFERENCE: patch_dim, CONTEXT: patch_dim, VIDEO: patch_dim}

    def cat(kind: int) -> torch.Tensor:
        return torch.cat(per_kind[kind]) if per_kind[kind] else torch.zeros(0, widths[kind])

    return PackedBatch(
        text=cat(TEXT),
        reference=cat(REFERENCE),
        context=cat(CONTEXT),
        video=cat(VIDEO),
        kind=torch.cat(kinds),
        sample_id=torch.cat(sample_ids),
        positions=torch.cat(positions),
        cu_seqlens=cu,
        video_grids=list(video_grids or []),
    )


def pack(records: list[SampleRecord], patch_size: tuple[int, int, int]) -> PackedBatch:
    """Concatenate samples into one PackedBatch (no budget here: the data loader decides what goes together)."""
    if not records:
        raise ValueError("cannot pack an empty list of samples")
    samples, grids = [], []
    for rec in records:
        parts = [text_part(rec.text)]
        if rec.reference is not None:
            parts.append(
                reference_part(patchify(rec.reference, patch_size), patch_grid(tuple(rec.reference.shape), patch_size))
            )
        if rec.context is not None:
            parts.append(
                context_part(patchify(rec.context, patch_size), patch_grid(tuple(rec.context.shape), patch_size))
            )
        grid = patch_grid(tuple(rec.video.shape), patch_size)
        grids.append(grid)
        parts.append(video_part(patchify(rec.video, patch_size), grid))
        samples.append(parts)
    return pack_parts(
        samples, text_dim=records[0].text.shape[1], patch_dim=samples[0][-1][1].shape[1], video_grids=grids
    )


def video_tokens_of(batch: PackedBatch, values: torch.Tensor, sample: int) -> torch.Tensor:
    """The rows of a [N_video, ...] tensor that belong to one sample."""
    return values[batch.video_sample_id() == sample]
