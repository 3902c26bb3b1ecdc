"""`omnitrain distill --config FILE`: load the teacher, distil, write the student next to the job's checkpoints.

Thin layer over the loop: which teacher (spec.promotion.distill.teacher, else the job's final checkpoint on the
persistent claim), which conditions (the synthetic task of the model's dimensions: distillation is data-free and
jobs here train on synthetic data), where the student goes (omnitrain.serving.paths.student_path).
"""

from __future__ import annotations

import copy
from pathlib import Path

import torch

from omnitrain.serving.artifact import MMDIT_FACTORY, ModelArtifact, build_model, load_artifact, save_artifact
from omnitrain.serving.denoiser import Denoiser
from omnitrain.serving.paths import student_path
from omnitrain.spec import TrainerConfig
from omnitrain.trainer.checkpoint.paths import job_dir, list_step_dirs, shard_file_name
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
            "the job first or set teacher to a checkpoint path")
    return complete[max(complete)]


def load_teacher(path: str | Path, trainer_config: TrainerConfig) -> ModelArtifact:
    """A promotion model file, or a training checkpoint step folder (its rank-0 shard holds the full model in
    replicated layouts: state['train']['model'])."""
    path = Path(path)
    if path.is_file():
        return load_artifact(path)
    shard = path / shard_file_name(0)
    if not shard.is_file():
        raise DistillConfigError(f"spec.promotion.distill.teacher: {path} is neither a model file nor a checkpoint "
                                 f"step folder with {shard_file_name(0)}")
    data = torch.load(shard, map_location="cpu", weights_only=False)
    model_state = (data.get("train") or {}).get("model") if isinstance(data, dict) else None
    if not isinstance(model_state, dict):
        raise DistillConfigError(f"spec.promotion.distill.teacher: {shard} has no state['train']['model'] (a sharded "
                                 "layout?); export a full model first")
    # A wrapped model (DDP) saves under "module."; the model's own names are what MMDiT loads.
    model_state = {k.removeprefix("module."): v for k, v in model_state.items()}
    config = trainer_config.spec.model.resolve()
    model, adapter = build_model(MMDIT_FACTORY, config)
    model.load_state_dict(model_state)
    return ModelArtifact(model=model.eval(), adapter=adapter, config=config, factory=MMDIT_FACTORY,
                         meta={"checkpoint": str(path)})


def distill_config(trainer_config: TrainerConfig) -> DistillConfig:
    spec = trainer_config.spec
    d = spec.promotion.distill
    if d is None or not d.enabled:
        raise DistillConfigError("spec.promotion.distill: not enabled; set promotion.distill.enabled: true")
    return DistillConfig(teacher_steps=d.teacher_steps, student_steps=d.student_steps, steps=d.steps,
                         trajectory_steps=d.trajectory_steps, batch_size=d.batch_size, learning_rate=d.learning_rate,
                         distribution_weight=d.distribution_weight, guidance=d.guidance,
                         shift=spec.training.timestep_shift, seed=spec.training.seed,
                         log_every=spec.training.log_every)


def run_distill(trainer_config: TrainerConfig, teacher: str | None = None, out: str | None = None,
                log=print) -> Path:
    cfg = distill_config(trainer_config)
    spec, job = trainer_config.spec, trainer_config.run.job_name
    out_path = Path(out or student_path(spec.checkpoint.persistent_path, job))
    if out_path.exists():
        raise DistillConfigError(f"{out_path} exists: a student was already promoted; remove it to distil again")
    teacher_path = teacher or spec.promotion.distill.teacher or final_checkpoint(spec.checkpoint.persistent_path, job)
    log(f"distill: teacher {teacher_path} ({cfg.teacher_steps} steps) -> student {cfg.student_steps} steps, "
        f"{cfg.steps} optimizer steps ({cfg.phase1_steps} trajectory matching)")
    torch.manual_seed(cfg.seed)
    art = load_teacher(teacher_path, trainer_config)
    teacher_den = Denoiser(art.model, art.adapter)
    student = Denoiser(copy.deepcopy(art.model), art.adapter)
    task = SyntheticTask(art.config, seed=cfg.seed)
    stats = distill(teacher_den, student, task.request, cfg, log=log)
    save_artifact(out_path, ModelArtifact(
        model=student.model, adapter=art.adapter, config=art.config, factory=art.factory,
        sampler={"steps": cfg.student_steps, "shift": cfg.shift, "method": "euler", "guidance": 1.0},
        meta={"teacher": str(teacher_path), "teacher_steps": cfg.teacher_steps, "job": job,
              "final_trajectory_loss": stats.trajectory_loss[-1], "seconds": stats.seconds}))
    log(f"distill: wrote {out_path} in {stats.seconds:.1f}s")
    return out_path


__all__ = ["DistillConfigError", "distill_config", "final_checkpoint", "load_teacher", "run_distill"]
