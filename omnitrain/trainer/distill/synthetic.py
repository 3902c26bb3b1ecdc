"""Conditions to distil on, and a synthetic conditional video task with a learnable structure.

Distillation is data-free (the student starts from noise): it only needs conditions. Jobs on synthetic data get
them from `SyntheticTask`, which also defines the clean videos so that tests and benchmarks can train a small
teacher that really learned something (the video depends on the text and the reference image).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from omnitrain.model.conditions import Conditions
from omnitrain.model.config import ModelConfig


@dataclass
class Request:
    conditions: Conditions
    video_tokens: int


class SyntheticTask:
    def __init__(
        self,
        config: ModelConfig,
        seed: int = 0,
        text_tokens: int = 4,
        video_tokens: int = 8,
        reference_tokens: int = 0,
        noise: float = 0.1,
    ):
        g = torch.Generator().manual_seed(seed)
        self.config = config
        self.text_tokens, self.video_tokens, self.reference_tokens = text_tokens, video_tokens, reference_tokens
        self.noise = noise
        d = config.patch_dim
        self._text_to_video = torch.randn(config.text_dim, d, generator=g) / math.sqrt(config.text_dim)
        self._position = torch.randn(video_tokens, d, generator=g) * 0.5

    def request(self, g: torch.Generator) -> Request:
        text = torch.randn(self.text_tokens, self.config.text_dim, generator=g)
        ref = torch.randn(self.reference_tokens, self.config.patch_dim, generator=g) if self.reference_tokens else None
        # Grids for models with 3D positions: the tokens as one row of patches.
        return Request(
            Conditions(
                text=text,
                reference=ref,
                video_grid=(1, 1, self.video_tokens),
                reference_grid=(1, 1, self.reference_tokens) if ref is not None else None,
            ),
            self.video_tokens,
        )

    def clean_video(self, request: Request, g: torch.Generator) -> torch.Tensor:
        c = request.conditions
        base = torch.tanh(c.text.mean(0) @ self._text_to_video)
        if c.reference is not None:
            base = base + 0.5 * c.reference.mean(0)
        x0 = base[None] + self._position[: request.video_tokens]
        return x0 + self.noise * torch.randn(x0.shape, generator=g)


def logit_normal(n: int, g: torch.Generator, mean: float = 0.0, std: float = 1.0) -> torch.Tensor:
    return torch.sigmoid(mean + std * torch.randn(n, generator=g))


def train_teacher(
    denoiser, task: SyntheticTask, steps: int, batch: int = 16, lr: float = 3e-3, seed: int = 0, log_every: int = 0
) -> list[float]:
    """Flow-matching training of `denoiser.model` on the task under the condition-causal mask (a small single-process
    trainer for tests, benchmarks and demos; jobs train with omnitrain train)."""
    from omnitrain.trainer.distill.objectives import flow_matching_loss

    g = torch.Generator().manual_seed(seed)
    model = denoiser.model.train()
    opt = torch.optim.AdamW(model.parameters(), lr=lr)
    losses = []
    for step in range(steps):
        reqs = [task.request(g) for _ in range(batch)]
        x0 = [task.clean_video(r, g) for r in reqs]
        eps = [torch.randn(x.shape, generator=g) for x in x0]
        s = logit_normal(batch, g)
        xs = [(1 - si) * a + si * e for si, a, e in zip(s, x0, eps)]
        v = denoiser.velocity_masked([r.conditions for r in reqs], xs, s)
        loss = flow_matching_loss(torch.cat(v), torch.cat(x0), torch.cat(eps))
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
        if log_every and (step + 1) % log_every == 0:
            print(f"teacher step {step + 1}/{steps} loss {loss.item():.4f}", flush=True)
    model.eval()
    return losses


__all__ = ["Request", "SyntheticTask", "logit_normal", "train_teacher"]
