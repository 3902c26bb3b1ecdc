import math

import torch

from omnitrain.model.config import PRESETS
from omnitrain.model.mmdit import MMDiT, randomize_
from omnitrain.model.packing import SampleRecord, pack
from omnitrain.trainer.objectives import (
    DiffusionDPOLoss,
    FlowMatchingLoss,
    dpo_inputs,
    dpo_loss,
    flow_matching_inputs,
    flow_matching_loss,
    noise_batch,
    per_sample_error,
    sample_timesteps,
    shift_timesteps,
)

CFG = PRESETS["tiny"]


def _batch(gen, pairs=False):
    recs = []
    for frames, side in ((1, 2), (2, 2)):
        text = torch.randn(3, CFG.text_dim, generator=gen)
        video = torch.randn(CFG.latent_channels, frames, side, side, generator=gen)
        recs.append(SampleRecord(text=text, video=video))
        if pairs:
            recs.append(SampleRecord(text=text, video=video + torch.randn(video.shape, generator=gen)))
    return pack(recs, CFG.patch_size)


def test_shift_and_timestep_distribution():
    s = torch.tensor([0.0, 0.25, 0.5, 1.0])
    torch.testing.assert_close(shift_timesteps(s, 3.0), torch.tensor([0.0, 0.75 / 1.5, 1.5 / 2.0, 1.0]))
    gen = torch.Generator().manual_seed(0)
    draws = sample_timesteps(20000, gen, mean=0.0, std=1.0)
    assert 0 < draws.min() and draws.max() < 1 and abs(draws.median() - 0.5) < 0.02
    shifted = sample_timesteps(20000, torch.Generator().manual_seed(0), shift=3.0)
    torch.testing.assert_close(shifted, shift_timesteps(draws, 3.0))


def test_flow_matching_hand_computed():
    gen = torch.Generator().manual_seed(1)
    batch = _batch(gen)  # 1 + 2 video tokens of 16 values
    s = torch.tensor([0.25, 0.5])
    eps = torch.ones(batch.video.shape)
    noisy = noise_batch(batch, s, eps)
    x0 = batch.video
    torch.testing.assert_close(noisy.video[0], 0.75 * x0[0] + 0.25)
    torch.testing.assert_close(noisy.video[1:], 0.5 * x0[1:] + 0.5)
    torch.testing.assert_close(noisy.target, 1 - x0)
    # prediction: zeros on video tokens, garbage on conditioning tokens (must not count)
    pred = torch.full((batch.num_tokens, CFG.patch_dim), 100.0)
    pred[batch.target_mask] = 0.0
    expected = (1 - x0).square().mean()
    torch.testing.assert_close(flow_matching_loss(pred, noisy), expected)
    per = per_sample_error(pred, noisy)
    torch.testing.assert_close(per, torch.stack([(1 - x0[0]).square().mean(), (1 - x0[1:]).square().mean()]))


def test_dpo_loss_hand_computed_and_log2_when_policy_is_reference():
    ew, el, rw, rl = torch.tensor([1.0]), torch.tensor([3.0]), torch.tensor([2.0]), torch.tensor([2.5])
    # margin = (1 - 2) - (3 - 2.5) = -1.5; loss = -log sigmoid(0.1 / 2 * 1.5)
    torch.testing.assert_close(dpo_loss(ew, el, rw, rl, beta=0.1), torch.tensor(math.log1p(math.exp(-0.075))))
    gen = torch.Generator().manual_seed(2)
    policy = randomize_(MMDiT(CFG), torch.Generator().manual_seed(3))
    reference = randomize_(MMDiT(CFG), torch.Generator().manual_seed(3))
    noisy, s = dpo_inputs(_batch(gen, pairs=True), gen)
    loss = DiffusionDPOLoss(reference, beta=500.0)(policy(noisy, s), (noisy, s))
    torch.testing.assert_close(loss, torch.tensor(math.log(2.0)))


def test_dpo_pairs_share_noise_and_timestep():
    gen = torch.Generator().manual_seed(4)
    batch = _batch(gen, pairs=True)
    noisy, s = dpo_inputs(batch, gen)
    assert torch.equal(s[0::2], s[1::2])
    vid = batch.video_sample_id()
    for pair in range(2):
        w, lose = vid == 2 * pair, vid == 2 * pair + 1
        eps_w = noisy.target[w] + batch.video[w]
        eps_l = noisy.target[lose] + batch.video[lose]
        torch.testing.assert_close(eps_w, eps_l)


def test_flow_matching_loss_fn_trains():
    gen = torch.Generator().manual_seed(5)
    batch = _batch(gen)
    noisy, s = flow_matching_inputs(batch, gen)
    model = MMDiT(CFG)
    loss = FlowMatchingLoss()(model(noisy, s), (noisy, s))
    torch.testing.assert_close(loss, noisy.target.square().mean())  # zero-initialised head predicts 0
