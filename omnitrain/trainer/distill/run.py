"""`omnitrain distill --config FILE`: load the teacher, distil, write the student next to the job's checkpoints.

Thin layer over the loop: which teacher (spec.promotion.distill.teacher, else the job's final checkpoint on the
persistent claim), which conditions (the synthetic task of the model's dimensions: distillation is data-free and
jobs here train on synthetic data), where the student goes (omnitrain.contract.student_path).
"""

from __future__ import annotations

import copy
from pathlib import Path

import torch

from omnitrain.checkpoint_paths import job_dir, list_step_dirs
from omnitrain.contract import student_path
from omnitrain.model.artifact import ModelArtifact, ModelFileError, load_teacher, save_artifact
from omnitrain.model.denoiser import Denoiser
from omnitrain.spec import TrainerConfig
from omnitrain.trainer.distill.loop import DistillConfig, distill
from omnitrain.trainer.distill.synthetic import SyntheticTask


class DistillConfigError(ValueError):
    """Bad input for distillation; the message names the field and the fix."""


def final_checkpoint(persistent_path: str, job: str) -> Path:
    steps = list_step_dirs(persistent_path, job)
    complete = {s: p for s, p in steps.items() if (p / "manifest.json").is_file()}
    if not complete:
        raise DistillConfigError(
            f"spec.promotion.distill.teacher: no complete checkpoint under {job_dir(persistent_path, job)}; train "
            "the job first or set teacher to a checkpoint path"
        )
    return complete[max(complete)]


def distill_config(trainer_config: TrainerConfig) -> DistillConfig:
    spec = trainer_config.spec
    d = spec.promotion.distill
    if d is None or not d.enabled:
        raise DistillConfigError("spec.promotion.distill: not enabled; set promotion.distill.enabled: true")
    return DistillConfig(
        teacher_steps=d.teacher_steps,
        student_steps=d.student_steps,
        steps=d.steps,
        trajectory_steps=d.trajectory_steps,
        batch_size=d.batch_size,
        learning_rate=d.learning_rate,
        distribution_weight=d.distribution_weight,
        guidance=d.guidance,
        shift=spec.training.timestep_shift,
        seed=spec.training.seed,
        log_every=spec.training.log_every,
    )


def run_distill(trainer_config: TrainerConfig, teacher: str | None = None, out: str | None = None, log=print) -> Path:
    cfg = distill_config(trainer_config)
    spec, job = trainer_config.spec, trainer_config.run.job_name
    out_path = Path(out or student_path(spec.checkpoint.persistent_path, job))
    if out_path.exists():
        raise DistillConfigError(f"{out_path} exists: a student was already promoted; remove it to distil again")
    teacher_path = teacher or spec.promotion.distill.teacher or final_checkpoint(spec.checkpoint.persistent_path, job)
    log(
        f"distill: teacher {teacher_path} ({cfg.teacher_steps} steps) -> student {cfg.student_steps} steps, "
        f"{cfg.steps} optimizer steps ({cfg.phase1_steps} trajectory matching)"
    )
    torch.manual_seed(cfg.seed)
    try:
        art = load_teacher(teacher_path, spec.model.resolve())
    except ModelFileError as e:
        raise DistillConfigError(f"spec.promotion.distill.teacher: {e}") from None
    teacher_den = Denoiser(art.model, art.adapter)
    student = Denoiser(copy.deepcopy(art.model), art.adapter)
    task = SyntheticTask(art.config, seed=cfg.seed)
    stats = distill(teacher_den, student, task.request, cfg, log=log)
    save_artifact(
        out_path,
        ModelArtifact(
            model=student.model,
            adapter=art.adapter,
            config=art.config,
            factory=art.factory,
            sampler={"steps": cfg.student_steps, "shift": cfg.shift, "method": "euler", "guidance": 1.0},
            meta={
                "teacher": str(teacher_path),
                "teacher_steps": cfg.teacher_steps,
                "job": job,
                "final_trajectory_loss": stats.trajectory_loss[-1],
                "seconds": stats.seconds,
                # the server encodes prompts and decodes videos with the job's own encoders
                **({"encoders": spec.data.encoders.to_wire()} if spec.data.encoders is not None else {}),
            },
        ),
    )
    log(f"distill: wrote {out_path} in {stats.seconds:.1f}s")
    return out_path


__all__ = ["DistillConfigError", "distill_config", "final_checkpoint", "run_distill"]
