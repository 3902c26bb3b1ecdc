"""One packing rule: training's `pack` (from latents) and the serving adapter's batches (from condition tokens) build
the same PackedBatch for the same samples, through `pack_parts`."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from omnitrain.model.conditions import Conditions
from omnitrain.model.config import PRESETS
from omnitrain.model.mmdit_adapter import MMDiTAdapter
from omnitrain.model.packing import CONTEXT, REFERENCE, TEXT, VIDEO, SampleRecord, pack, pack_parts
from omnitrain.model.patchify import patch_grid, patchify

CFG = PRESETS["tiny"]


def _records() -> list[SampleRecord]:
    g = torch.Generator().manual_seed(0)
    pt, ph, pw = CFG.patch_size
    c = CFG.latent_channels

    def latent(t, h, w):
        return torch.randn(c, t * pt, h * ph, w * pw, generator=g)

    return [
        SampleRecord(text=torch.randn(3, CFG.text_dim, generator=g), video=latent(2, 2, 2), reference=latent(1, 1, 2)),
        SampleRecord(text=torch.randn(2, CFG.text_dim, generator=g), video=latent(1, 2, 1), context=latent(1, 2, 1)),
    ]


def _conditions(rec: SampleRecord) -> Conditions:
    def tokens(x):
        return None if x is None else patchify(x, CFG.patch_size)

    def grid(x):
        return None if x is None else patch_grid(tuple(x.shape), CFG.patch_size)

    return Conditions(
        text=rec.text,
        reference=tokens(rec.reference),
        context=tokens(rec.context),
        reference_grid=grid(rec.reference),
        context_grid=grid(rec.context),
        video_grid=grid(rec.video),
    )


def _assert_same(a, b):
    for f in dataclasses.fields(a):
        x, y = getattr(a, f.name), getattr(b, f.name)
        if isinstance(x, torch.Tensor):
            assert x.dtype == y.dtype and torch.equal(x, y), f.name
        else:
            assert x == y, f.name


def test_serving_batches_equal_training_packing():
    records = _records()
    conds = [_conditions(r) for r in records]
    videos = [patchify(r.video, CFG.patch_size) for r in records]
    adapter = MMDiTAdapter(CFG)
    trained = pack(records, CFG.patch_size)
    full, is_video = adapter.full_batch(conds, videos)
    _assert_same(full, trained)
    assert torch.equal(is_video, trained.kind == VIDEO)
    assert trained.kind.tolist()[:3] == [TEXT] * 3 and REFERENCE in trained.kind and CONTEXT in trained.kind
    # the condition-only and video-only batches are the two halves of each sample, positions unchanged
    cond_batch, video_batch = adapter.condition_batch(conds), adapter.video_batch(conds, videos)
    assert torch.equal(cond_batch.positions, trained.positions[trained.kind != VIDEO])
    assert torch.equal(video_batch.positions, trained.positions[trained.kind == VIDEO])
    assert cond_batch.video.shape == (0, CFG.patch_dim) and video_batch.text.shape == (0, CFG.text_dim)
    assert video_batch.video_grids == trained.video_grids and cond_batch.video_grids == []


def test_empty_batches_are_refused():
    with pytest.raises(ValueError, match="empty"):
        pack([], CFG.patch_size)
    with pytest.raises(ValueError, match="empty"):
        pack_parts([], text_dim=CFG.text_dim, patch_dim=CFG.patch_dim)
