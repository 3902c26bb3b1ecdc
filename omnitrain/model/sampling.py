"""Flow-matching samplers over a velocity prediction.

The objective (omnitrain.trainer.objectives) trains the model on x_s = (1 - s) x0 + s eps with target
v = eps - x0 = dx/ds, so sampling integrates the ODE dx/ds = v(x, s) from s = 1 (pure noise) to s = 0 (data).
The sampler only sees a velocity function `v(x, s) -> tensor`; which conditions (text, reference image, video
context) the model gets, and whether their keys/values come from a cache, is the caller's business
(omnitrain.serving.engine). Pure functions over tensors: no model, no device assumptions.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

import torch

VelocityFn = Callable[[torch.Tensor, float], torch.Tensor]
Method = Literal["euler", "heun"]


def shift_timestep(s: torch.Tensor | float, shift: float) -> torch.Tensor | float:
    """The resolution-dependent shift s' = a s / (1 + (a - 1) s) used in training (spec.training.timestepShift)."""
    return shift * s / (1 + (shift - 1) * s)


def timesteps(steps: int, shift: float = 1.0) -> list[float]:
    """steps + 1 noise levels from 1 down to 0: uniform in s, then shifted like the training distribution."""
    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    if shift <= 0:
        raise ValueError(f"shift must be > 0, got {shift}")
    uniform = torch.linspace(1.0, 0.0, steps + 1, dtype=torch.float64)
    return [float(x) for x in shift_timestep(uniform, shift)]


def guided(cond_fn: VelocityFn, uncond_fn: VelocityFn | None, scale: float) -> VelocityFn:
    """Classifier-free guidance: v_u + g (v_c - v_u). g = 1 (or no unconditional branch) is the plain model."""
    if uncond_fn is None or scale == 1.0:
        return cond_fn

    def velocity(x: torch.Tensor, s: float) -> torch.Tensor:
        v_c = cond_fn(x, s)
        v_u = uncond_fn(x, s)
        return v_u + scale * (v_c - v_u)

    return velocity


def euler_step(velocity: VelocityFn, x: torch.Tensor, s: float, s_next: float) -> torch.Tensor:
    return x + (s_next - s) * velocity(x, s)


def heun_step(velocity: VelocityFn, x: torch.Tensor, s: float, s_next: float) -> torch.Tensor:
    """Second order (trapezoid with an Euler predictor); the last step to s = 0 stays Euler, as in EDM, because the
    velocity at s = 0 is never trained on pure data in practice."""
    v = velocity(x, s)
    x_pred = x + (s_next - s) * v
    if s_next <= 0.0:
        return x_pred
    return x + (s_next - s) * 0.5 * (v + velocity(x_pred, s_next))


def function_evaluations(steps: int, method: Method) -> int:
    """Model calls per sample without guidance (double it with classifier-free guidance)."""
    return steps if method == "euler" else 2 * steps - 1


@dataclass(frozen=True)
class SamplerConfig:
    steps: int = 10
    method: Method = "euler"
    shift: float = 1.0
    guidance: float = 1.0

    def __post_init__(self):
        if self.steps < 1:
            raise ValueError(f"steps: must be >= 1, got {self.steps}")
        if self.method not in ("euler", "heun"):
            raise ValueError(f"method: must be 'euler' or 'heun', got {self.method!r}")
        if self.shift <= 0:
            raise ValueError(f"shift: must be > 0, got {self.shift}")


def sample(
    velocity: VelocityFn,
    noise: torch.Tensor,
    config: SamplerConfig,
    on_step: Callable[[int, float], None] | None = None,
) -> torch.Tensor:
    """Integrate from `noise` at s = 1 to s = 0 on the (shifted) schedule. `velocity` already includes guidance
    (see `guided`). `on_step(i, s)` is called after each step (progress lines)."""
    step = euler_step if config.method == "euler" else heun_step
    levels = timesteps(config.steps, config.shift)
    x = noise
    with torch.no_grad():
        for i, (s, s_next) in enumerate(zip(levels[:-1], levels[1:])):
            x = step(velocity, x, s, s_next)
            if on_step is not None:
                on_step(i, s_next)
    return x


__all__ = [
    "Method",
    "SamplerConfig",
    "VelocityFn",
    "euler_step",
    "function_evaluations",
    "guided",
    "heun_step",
    "sample",
    "shift_timestep",
    "timesteps",
]
