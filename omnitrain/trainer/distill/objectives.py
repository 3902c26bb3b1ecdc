"""Losses of the two distillation phases (pure functions over tensors)."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def trajectory_loss(
    student_velocity: torch.Tensor, x_start: torch.Tensor, teacher_end: torch.Tensor, start: float, end: float
) -> torch.Tensor:
    """Phase consistency: one student Euler step x + (end - start) v must land on the teacher's phase end (a
    stop-grad target). Written in velocity units so every phase weighs alike however long it is."""
    target = (teacher_end - x_start) / (end - start)
    return F.mse_loss(student_velocity, target.detach())


def x0_from_velocity(x: torch.Tensor, s: float | torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """x_s = (1 - s) x0 + s eps and v = eps - x0 give x0 = x_s - s v."""
    return x - s * v


def distribution_matching_loss(
    x0_student: torch.Tensor, x0_teacher: torch.Tensor, x0_fake: torch.Tensor
) -> torch.Tensor:
    """DMD/TDM: the gradient of the reverse KL between student and teacher distributions at a noise level is
    (fake score - teacher score); in x0 terms the student sample moves by x0_teacher - x0_fake. Normalised by the
    mean distance to the teacher's denoised sample (DMD), so the step size does not depend on the noise level."""
    with torch.no_grad():
        weight = (x0_student - x0_teacher).abs().mean().clamp(min=1e-6)
        target = x0_student - (x0_fake - x0_teacher) / weight
    return 0.5 * F.mse_loss(x0_student, target)


def flow_matching_loss(velocity: torch.Tensor, x0: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
    """The training objective (target eps - x0); also what trains the fake-score model on student samples."""
    return F.mse_loss(velocity, noise - x0)


__all__ = ["distribution_matching_loss", "flow_matching_loss", "trajectory_loss", "x0_from_velocity"]
