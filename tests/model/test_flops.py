import dataclasses
from unittest import mock

import torch
from torch.utils.flop_counter import FlopCounterMode

from omnitrain.model import attention
from omnitrain.model.attention import force_backend
from omnitrain.model.config import ModelConfig
from omnitrain.model.flops import TokenCounts, forward_flops, training_flops
from omnitrain.model.mmdit import MMDiT
from omnitrain.model.packing import SampleRecord, pack

# hidden 8, 1 block, 2 heads, mlp 16, 1 latent channel, patch (1,1,1) -> patch_dim 1, text_dim 3, freq 4
CFG = ModelConfig(
    hidden_size=8,
    depth=1,
    num_heads=2,
    mlp_ratio=2.0,
    latent_channels=1,
    patch_size=(1, 1, 1),
    text_dim=3,
    frequency_embedding_size=4,
)


def test_hand_count_tiny_config():
    # two samples: 2 text + 3 video tokens, 1 text + 4 video tokens -> lengths 5, 5; 10 tokens
    c = TokenCounts.from_lengths([2, 1], [3, 4])
    assert (c.text, c.patches, c.samples, c.sum_sq_seqlens, c.tokens) == (3, 7, 2, 50, 10)
    embed = 2 * 3 * 3 * 8 + 2 * 7 * 1 * 8 + 2 * 2 * (4 * 8 + 8 * 8)  # 144 + 112 + 384
    block = (
        2 * 2 * 8 * 48  # adaLN 8 -> 48, once per sample (2 samples), not per token
        + 4 * 2 * 10 * 8 * 8  # q k v o
        + 2 * 2 * 10 * 8 * 16  # fc1 fc2
        + 2 * 2 * 50 * 8
    )  # QK^T and AV over 5^2 + 5^2 pairs
    head = 2 * 2 * 8 * 16 + 2 * 10 * 8 * 1
    assert forward_flops(CFG, c) == embed + block + head == 640 + 1536 + 5120 + 5120 + 1600 + 512 + 160
    assert training_flops(CFG, c) == 3 * forward_flops(CFG, c)


def test_matches_flop_counter_on_the_real_model():
    cfg = ModelConfig(hidden_size=32, depth=2, num_heads=4, latent_channels=4, text_dim=16)
    gen = torch.Generator().manual_seed(0)
    recs = [
        SampleRecord(
            text=torch.randn(5, 16, generator=gen),
            video=torch.randn(4, 2, 4, 4, generator=gen),
            reference=torch.randn(4, 1, 4, 4, generator=gen),
        ),
        SampleRecord(
            text=torch.randn(3, 16, generator=gen),
            video=torch.randn(4, 3, 2, 6, generator=gen),
            context=torch.randn(4, 3, 2, 6, generator=gen),
        ),
    ]
    batch = pack(recs, cfg.patch_size)
    model = MMDiT(cfg)
    t = torch.rand(2, generator=gen)
    with force_backend("math"), FlopCounterMode(display=False) as counter:  # attention as countable matmuls
        model(batch, t)
    assert counter.get_total_flops() == forward_flops(cfg, TokenCounts.of_batch(batch))

    # conditionAttention: causal: condition queries skip the video keys (the split path computes exactly the needed
    # pairs), and the clean (t = 0) row adds one modulation row
    causal = dataclasses.replace(cfg, condition_attention="causal")
    with (
        force_backend("math"),
        mock.patch.object(attention, "SPLIT_MIN_TOKENS", 0),
        FlopCounterMode(display=False) as counter,
    ):
        MMDiT(causal)(batch, t)
    counts = TokenCounts.of_batch(batch)
    assert counter.get_total_flops() == forward_flops(causal, counts)
    # sample 1: 5 text + 4 reference conditions x 8 video; sample 2: 3 text + 9 context x 9 video
    assert counts.condition_video_pairs == 9 * 8 + 12 * 9
    assert forward_flops(causal, counts) < forward_flops(cfg, counts)


def test_no_per_token_modulation_term_at_the_14b_preset():
    """One more token (same samples, same attention pairs) costs only q/k/v/o and the MLP: 2 x (4 h^2 + 2 h mlp);
    adaLN's 12 h^2 is paid per sample."""
    from omnitrain.model.config import PRESETS
    from omnitrain.model.flops import block_flops

    cfg = PRESETS["14b"]
    h = cfg.hidden_size

    def at(tokens: int, samples: int) -> int:
        return block_flops(cfg, TokenCounts(text=0, patches=tokens, samples=samples, sum_sq_seqlens=10**6))

    assert at(1001, 1) - at(1000, 1) == 2 * (4 * h * h + 2 * h * cfg.mlp_hidden)
    assert at(1000, 2) - at(1000, 1) == 2 * h * 6 * h
