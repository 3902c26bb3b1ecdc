"""The phase plan of trajectory distillation (pure): the student's few-step schedule splits the teacher's
schedule into phases, one per student step; the teacher integrates each phase with its own fine steps.

Both schedules are the same shifted uniform grid (omnitrain.model.sampling.timesteps), so when the teacher's step
count is a multiple of the student's, phase boundaries are exactly teacher levels: the student learns to land
where the 150-step teacher lands after each 15 of its steps.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from omnitrain.model.sampling import VelocityFn, euler_step, timesteps


@dataclass(frozen=True)
class Phase:
    index: int
    start: float  # noise level where the student step starts
    end: float  # where it ends (the next student level)
    teacher_levels: tuple[float, ...]  # the teacher's levels from start to end, both included


def plan_phases(teacher_steps: int, student_steps: int, shift: float = 1.0) -> list[Phase]:
    if teacher_steps % student_steps:
        raise ValueError(
            f"teacherSteps={teacher_steps} must be a multiple of studentSteps={student_steps} so that "
            "phase boundaries fall on teacher levels"
        )
    per_phase = teacher_steps // student_steps
    teacher = timesteps(teacher_steps, shift)
    student = timesteps(student_steps, shift)
    phases = []
    for i in range(student_steps):
        levels = tuple(teacher[i * per_phase : (i + 1) * per_phase + 1])
        assert abs(levels[0] - student[i]) < 1e-9 and abs(levels[-1] - student[i + 1]) < 1e-9
        phases.append(Phase(i, student[i], student[i + 1], levels))
    return phases


def teacher_phase_end(teacher: VelocityFn, x: torch.Tensor, phase: Phase) -> torch.Tensor:
    """The teacher's ODE solution at the phase end from x at the phase start (its own Euler steps, no grad)."""
    with torch.no_grad():
        for s, s_next in zip(phase.teacher_levels[:-1], phase.teacher_levels[1:]):
            x = euler_step(teacher, x, s, s_next)
    return x


__all__ = ["Phase", "plan_phases", "teacher_phase_end"]
