"""Training objectives over PackedBatch: rectified-flow matching and Diffusion-DPO.

Flow matching: x_s = (1 - s) x0 + s eps, the model predicts the velocity eps - x0, s ~ sigmoid(N(mean, std)) shifted
by s' = a s / (1 + (a - 1) s). The loss is the MSE over video-target tokens only (text/reference/context tokens are
conditioning). Diffusion-DPO: winner w and loser l of a pair share noise and timestep; with per-sample errors
err = ||v_pred - v||^2 of the policy and ref_err of the frozen reference,
loss = -log sigmoid(-beta/2 [(err_w - ref_err_w) - (err_l - ref_err_l)]).
"""

from __future__ import annotations

import dataclasses

import torch
import torch.nn.functional as F

from omnitrain.model.packing import PackedBatch


def shift_timesteps(s: torch.Tensor, shift: float) -> torch.Tensor:
    return shift * s / (1 + (shift - 1) * s)


def sample_timesteps(
    n: int, generator: torch.Generator, mean: float = 0.0, std: float = 1.0, shift: float = 1.0
) -> torch.Tensor:
    """Logit-normal timesteps in (0, 1), shifted (a > 1 spends more steps at high noise)."""
    s = torch.sigmoid(mean + std * torch.randn(n, generator=generator))
    return shift_timesteps(s, shift)


def noise_batch(batch: PackedBatch, s: torch.Tensor, eps: torch.Tensor) -> PackedBatch:
    """The model input at timesteps s (one per sample): noisy video tokens, target velocity eps - x0."""
    x0 = batch.video
    s_tok = s.to(x0.dtype)[batch.video_sample_id()][:, None]
    return dataclasses.replace(batch, video=(1 - s_tok) * x0 + s_tok * eps, target=eps - x0)


def flow_matching_inputs(
    batch: PackedBatch, generator: torch.Generator, mean: float = 0.0, std: float = 1.0, shift: float = 1.0
) -> tuple[PackedBatch, torch.Tensor]:
    s = sample_timesteps(batch.num_samples, generator, mean, std, shift)
    eps = torch.randn(batch.video.shape, generator=generator)
    return noise_batch(batch, s, eps), s


def dpo_inputs(
    batch: PackedBatch, generator: torch.Generator, mean: float = 0.0, std: float = 1.0, shift: float = 1.0
) -> tuple[PackedBatch, torch.Tensor]:
    """Samples 2i (winner) and 2i+1 (loser) of `batch` form pair i: one timestep and one noise tensor per pair."""
    if batch.num_samples % 2:
        raise ValueError("a DPO batch holds (winner, loser) pairs: an even number of samples")
    s = sample_timesteps(batch.num_samples // 2, generator, mean, std, shift).repeat_interleave(2)
    vid = batch.video_sample_id()
    eps = torch.empty(batch.video.shape)
    for pair in range(batch.num_samples // 2):
        win, lose = vid == 2 * pair, vid == 2 * pair + 1
        if int(win.sum()) != int(lose.sum()):
            raise ValueError(f"pair {pair}: winner and loser latents differ in shape; DPO pairs need equal shapes")
        noise = torch.randn((int(win.sum()), batch.video.shape[1]), generator=generator)
        eps[win], eps[lose] = noise, noise
    return noise_batch(batch, s, eps), s


def video_prediction(prediction: torch.Tensor, batch: PackedBatch) -> torch.Tensor:
    return prediction[batch.target_mask]


def flow_matching_loss(prediction: torch.Tensor, batch: PackedBatch) -> torch.Tensor:
    """Mean squared error over all video-target elements of the packed batch."""
    return F.mse_loss(video_prediction(prediction, batch).float(), batch.target.float())


def per_sample_error(prediction: torch.Tensor, batch: PackedBatch) -> torch.Tensor:
    """[n] mean squared error of each sample's video tokens."""
    sq = (video_prediction(prediction, batch).float() - batch.target.float()).square().mean(dim=1)
    vid = batch.video_sample_id()
    total = torch.zeros(batch.num_samples, dtype=sq.dtype, device=sq.device).index_add(0, vid, sq)
    count = torch.zeros(batch.num_samples, dtype=sq.dtype, device=sq.device).index_add(0, vid, torch.ones_like(sq))
    return total / count


def dpo_pair_losses(
    err_w: torch.Tensor, err_l: torch.Tensor, ref_err_w: torch.Tensor, ref_err_l: torch.Tensor, beta: float
) -> torch.Tensor:
    """[pairs] Diffusion-DPO loss of each (winner, loser) pair."""
    margin = (err_w - ref_err_w) - (err_l - ref_err_l)
    return -F.logsigmoid(-beta / 2 * margin)


def dpo_loss(
    err_w: torch.Tensor, err_l: torch.Tensor, ref_err_w: torch.Tensor, ref_err_l: torch.Tensor, beta: float
) -> torch.Tensor:
    return dpo_pair_losses(err_w, err_l, ref_err_w, ref_err_l, beta).mean()


class FlowMatchingLoss:
    """loss_fn(prediction, microbatch) for the parallel plan; microbatch = (noisy batch, timesteps)."""

    def __call__(self, prediction: torch.Tensor, microbatch) -> torch.Tensor:
        return flow_matching_loss(prediction, microbatch[0])


class DiffusionDPOLoss:
    """loss_fn(prediction, microbatch) with a frozen reference model run on the same inputs."""

    def __init__(self, reference: torch.nn.Module, beta: float):
        self.reference = reference.eval().requires_grad_(False)
        self.beta = beta

    def __call__(self, prediction: torch.Tensor, microbatch) -> torch.Tensor:
        return self.pair_losses(prediction, microbatch).mean()

    def pair_losses(self, prediction: torch.Tensor, microbatch) -> torch.Tensor:
        """[pairs] the loss of each (winner, loser) pair of the micro-batch."""
        batch = microbatch[0]
        with torch.no_grad():
            ref = self.reference(*microbatch)
        err, ref_err = per_sample_error(prediction, batch), per_sample_error(ref, batch)
        return dpo_pair_losses(err[0::2], err[1::2], ref_err[0::2], ref_err[1::2], self.beta)
