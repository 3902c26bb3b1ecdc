"""The distillation loop: phase 1 trajectory matching (PCM-like), then phase 2 distribution matching (TDM/DMD-like)
with the phase-1 objective kept as a regulariser.

Data-free: every step draws conditions and noise, rolls the student out (no grad) to the start of a random phase
on its own few-step schedule, and trains the student's step from there:
- phase 1: the student's Euler step must land where the teacher's fine ODE steps land at the phase end;
- phase 2: additionally, the student's denoised sample x0 = x - s v, re-noised at a random level, is moved along
  (teacher x0 - fake x0), where the fake-score model is trained by flow matching on the student's own samples.
All models run under the condition-causal mask, so the student serves with cached condition keys/values.
"""

from __future__ import annotations

import copy
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from omnitrain.model.denoiser import Denoiser
from omnitrain.trainer.distill.objectives import (
    distribution_matching_loss,
    flow_matching_loss,
    trajectory_loss,
    x0_from_velocity,
)
from omnitrain.trainer.distill.phases import plan_phases, teacher_phase_end
from omnitrain.trainer.distill.synthetic import Request


@dataclass(frozen=True)
class DistillConfig:
    teacher_steps: int = 150
    student_steps: int = 10
    steps: int = 100  # optimizer steps of both phases together
    trajectory_steps: int | None = None  # phase-1 steps; None: half of `steps`
    batch_size: int = 8
    learning_rate: float = 1e-4
    fake_learning_rate: float | None = None  # None: learning_rate
    distribution_weight: float = 0.1
    regularizer_weight: float = 1.0
    guidance: float = 1.0  # the teacher's classifier-free guidance (baked into the student)
    shift: float = 1.0
    seed: int = 0
    log_every: int = 10

    @property
    def phase1_steps(self) -> int:
        return self.steps // 2 if self.trajectory_steps is None else min(self.trajectory_steps, self.steps)


@dataclass
class DistillStats:
    trajectory_loss: list[float] = field(default_factory=list)
    distribution_loss: list[float] = field(default_factory=list)
    fake_loss: list[float] = field(default_factory=list)
    seconds: float = 0.0


def _rollout(student: Denoiser, conds, lengths, x: torch.Tensor, phases, upto: int) -> torch.Tensor:
    velocity = student.velocity_fn(conds, lengths, mode="masked")
    with torch.no_grad():
        for phase in phases[:upto]:
            x = x + (phase.end - phase.start) * velocity(x, phase.start)
    return x


def distill(
    teacher: Denoiser,
    student: Denoiser,
    draw: Callable[[torch.Generator], Request],
    cfg: DistillConfig,
    log: Callable[[str], None] = print,
) -> DistillStats:
    """Trains `student.model` in place (start it as a copy of the teacher)."""
    phases = plan_phases(cfg.teacher_steps, cfg.student_steps, cfg.shift)
    g = torch.Generator().manual_seed(cfg.seed)
    teacher.model.eval().requires_grad_(False)
    student.model.requires_grad_(True).train()
    opt = torch.optim.AdamW(student.model.parameters(), lr=cfg.learning_rate, weight_decay=0.0)
    fake: Denoiser | None = None
    fake_opt = None
    stats = DistillStats()
    started = time.monotonic()
    for step in range(cfg.steps):
        in_phase2 = step >= cfg.phase1_steps and cfg.distribution_weight > 0
        if in_phase2 and fake is None:
            fake = Denoiser(copy.deepcopy(teacher.model).requires_grad_(True).train(), teacher.adapter)
            fake_opt = torch.optim.AdamW(fake.model.parameters(), lr=cfg.fake_learning_rate or cfg.learning_rate)
        reqs = [draw(g) for _ in range(cfg.batch_size)]
        conds, lengths = [r.conditions for r in reqs], [r.video_tokens for r in reqs]
        noise = torch.randn(sum(lengths), student.model.config.patch_dim, generator=g)
        # Phase 2 matches distributions on the student's final samples (the last phase ends at s = 0, where its
        # step IS the sample): half of its steps train that phase, the rest keep every phase on the trajectory.
        if in_phase2 and step % 2 == 0:
            phase = phases[-1]
        else:
            phase = phases[int(torch.randint(len(phases), (1,), generator=g))]
        with_dm = in_phase2 and phase.end == 0.0
        x = _rollout(student, conds, lengths, noise, phases, phase.index)
        teacher_v = teacher.velocity_fn(conds, lengths, cfg.guidance, mode="cached")
        target = teacher_phase_end(teacher_v, x, phase)
        v = torch.cat(student.velocity_masked(conds, list(x.split(lengths)), phase.start))
        loss = trajectory_loss(v, x, target, phase.start, phase.end)
        stats.trajectory_loss.append(loss.item())
        if with_dm:
            loss = cfg.regularizer_weight * loss
            x0 = x0_from_velocity(x, phase.start, v)  # = the student's sample: x + (0 - start) v
            s = float(torch.rand((), generator=g)) * 0.96 + 0.02
            eps = torch.randn(x0.shape, generator=g)
            noisy = (1 - s) * x0.detach() + s * eps
            with torch.no_grad():
                x0_teacher = x0_from_velocity(noisy, s, teacher_v(noisy, s))
                fake.model.eval()
                fake_velocity = fake.velocity_masked(conds, list(noisy.split(lengths)), s)
                x0_fake = x0_from_velocity(noisy, s, torch.cat(fake_velocity))
            dm = distribution_matching_loss(x0, x0_teacher, x0_fake)
            stats.distribution_loss.append(dm.item())
            loss = loss + cfg.distribution_weight * dm
        opt.zero_grad()
        loss.backward()
        opt.step()
        if with_dm:
            # The fake score follows the student's current samples (flow matching on them, one step per step).
            fake.model.train()
            s_f = torch.rand(len(reqs), generator=g) * 0.96 + 0.02
            x0_f = list(x0.detach().split(lengths))
            eps_f = [torch.randn(a.shape, generator=g) for a in x0_f]
            xs = [(1 - si) * a + si * e for si, a, e in zip(s_f, x0_f, eps_f)]
            fl = flow_matching_loss(torch.cat(fake.velocity_masked(conds, xs, s_f)), torch.cat(x0_f), torch.cat(eps_f))
            fake_opt.zero_grad()
            fl.backward()
            fake_opt.step()
            stats.fake_loss.append(fl.item())
        if cfg.log_every and ((step + 1) % cfg.log_every == 0 or step + 1 == cfg.steps):
            name = "distribution matching" if in_phase2 else "trajectory matching"
            extra = (
                f" dm {stats.distribution_loss[-1]:.4f} fake {stats.fake_loss[-1]:.4f}"
                if stats.distribution_loss
                else ""
            )
            log(
                f"distill step {step + 1}/{cfg.steps} ({name}) trajectory {stats.trajectory_loss[-1]:.4f}{extra} "
                f"elapsed {time.monotonic() - started:.1f}s"
            )
    student.model.eval()
    stats.seconds = time.monotonic() - started
    return stats


__all__ = ["DistillConfig", "DistillStats", "distill"]
