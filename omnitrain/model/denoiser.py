"""A model + its batch adapter seen as a velocity function for the sampler, with the condition tokens either
recomputed every step under the condition-causal mask ("masked") or encoded once and replayed ("cached").

Videos of one request batch travel as ONE flat tensor [sum of video tokens, patch_dim] (the sampler's state), split
per sample by `lengths`, so requests with different video sizes batch together in one packed sequence.
"""

from __future__ import annotations

from typing import Literal, Protocol

import torch
from torch import nn

from omnitrain.model.condcache import ConditionAttention, ConditionKV
from omnitrain.model.conditions import Conditions
from omnitrain.model.sampling import SamplerConfig, VelocityFn, sample

Mode = Literal["masked", "cached"]


class DenoiserAdapter(Protocol):
    """How a model's packed batch is built (model-specific; positions of video tokens must not depend on whether
    the conditions are in the same batch)."""

    def full_batch(self, conds: list[Conditions], videos: list[torch.Tensor]) -> tuple[object, torch.Tensor]: ...
    def condition_batch(self, conds: list[Conditions]) -> object: ...
    def video_batch(self, conds: list[Conditions], videos: list[torch.Tensor]) -> object: ...


def _per_sample_t(s: float | torch.Tensor, n: int) -> torch.Tensor:
    if isinstance(s, torch.Tensor) and s.ndim == 1:
        return s.float()
    return torch.full((n,), float(s))


class Denoiser:
    def __init__(self, model: nn.Module, adapter: DenoiserAdapter):
        self.model = model
        self.adapter = adapter
        self.attention = ConditionAttention(model)

    # --- one model call ---------------------------------------------------------------------------------------
    def velocity_masked(
        self, conds: list[Conditions], videos: list[torch.Tensor], s: float | torch.Tensor
    ) -> list[torch.Tensor]:
        """Everything in one sequence under the condition-causal mask (training and the uncached reference)."""
        batch, is_video = self.adapter.full_batch(conds, videos)
        with self.attention.masked(~is_video):
            out = self.model(batch, _per_sample_t(s, len(conds)))
        return list(out[is_video].split([x.shape[0] for x in videos]))

    def encode_conditions(self, conds: list[Conditions]) -> ConditionKV:
        cache = ConditionKV()
        with torch.no_grad(), self.attention.record(cache):
            self.model(self.adapter.condition_batch(conds), torch.zeros(len(conds)))
        return cache

    def velocity_cached(
        self, conds: list[Conditions], videos: list[torch.Tensor], s: float | torch.Tensor, cache: ConditionKV
    ) -> list[torch.Tensor]:
        """Only the video tokens run; their attention sees the cached condition keys/values."""
        with self.attention.replay(cache):
            out = self.model(self.adapter.video_batch(conds, videos), _per_sample_t(s, len(conds)))
        return list(out.split([x.shape[0] for x in videos]))

    # --- a velocity function for the sampler -------------------------------------------------------------------
    def velocity_fn(
        self, conds: list[Conditions], lengths: list[int], guidance: float = 1.0, mode: Mode = "cached"
    ) -> VelocityFn:
        """v(x_flat, s) for these requests; classifier-free guidance batches the text-dropped branch with the
        conditional one (one model call per step, 2x the samples)."""
        branches = [conds] if guidance == 1.0 else [conds, [c.without_text() for c in conds]]
        all_conds = [c for branch in branches for c in branch]
        cache = self.encode_conditions(all_conds) if mode == "cached" else None
        n = len(conds)

        def run(x_flat: torch.Tensor, s: float) -> list[torch.Tensor]:
            videos = list(x_flat.split(lengths)) * len(branches)
            if cache is not None:
                return self.velocity_cached(all_conds, videos, s, cache)
            return self.velocity_masked(all_conds, videos, s)

        def cond_fn(x_flat, s):
            return torch.cat(run(x_flat, s)[:n])

        if guidance == 1.0:
            return cond_fn

        def velocity(x_flat: torch.Tensor, s: float) -> torch.Tensor:
            out = run(x_flat, s)
            v_c, v_u = torch.cat(out[:n]), torch.cat(out[n:])
            return v_u + guidance * (v_c - v_u)

        return velocity

    def generate(
        self,
        conds: list[Conditions],
        noise: list[torch.Tensor],
        config: SamplerConfig,
        mode: Mode = "cached",
        on_step=None,
    ) -> list[torch.Tensor]:
        """Latent video tokens for each request, from its noise tokens."""
        lengths = [x.shape[0] for x in noise]
        with torch.no_grad():
            velocity = self.velocity_fn(conds, lengths, config.guidance, mode)
            out = sample(velocity, torch.cat(noise), config, on_step=on_step)
        return list(out.split(lengths))


__all__ = ["Denoiser", "DenoiserAdapter", "Mode"]
