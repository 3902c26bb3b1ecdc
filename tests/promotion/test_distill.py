import copy
import os
import subprocess
import sys

import pytest
import torch
import yaml

from omnitrain.model.artifact import ModelArtifact, load_artifact, save_artifact
from omnitrain.model.denoiser import Denoiser
from omnitrain.model.sampling import SamplerConfig, timesteps
from omnitrain.serving.testing import FACTORY
from omnitrain.spec import JobSpec, validate_job_spec
from omnitrain.trainer.distill.loop import DistillConfig, distill
from omnitrain.trainer.distill.phases import plan_phases
from omnitrain.trainer.distill.synthetic import SyntheticTask, train_teacher
from tests.promotion.helpers import TINY, tiny_model

torch.set_num_threads(1)


def test_phase_boundaries_fall_on_teacher_levels():
    phases = plan_phases(150, 10, shift=3.0)
    assert len(phases) == 10 and all(len(p.teacher_levels) == 16 for p in phases)
    assert [p.start for p in phases] + [phases[-1].end] == pytest.approx(timesteps(10, 3.0))
    assert phases[3].teacher_levels == tuple(timesteps(150, 3.0)[45:61])
    with pytest.raises(ValueError, match="multiple of studentSteps"):
        plan_phases(150, 7)


def test_spec_rejects_teacher_steps_not_multiple_of_student_steps():
    spec = JobSpec.model_validate(
        {"checkpoint": {"persistentClaim": "ckpt"}, "promotion": {"distill": {"teacherSteps": 100, "studentSteps": 3}}}
    )
    assert [e.field for e in validate_job_spec(spec)] == ["spec.promotion.distill.teacherSteps"]


@pytest.fixture(scope="module")
def teacher():
    model, adapter = tiny_model(seed=0)
    den = Denoiser(model, adapter)
    task = SyntheticTask(TINY, seed=0, text_tokens=4, video_tokens=8)
    losses = train_teacher(den, task, steps=300, batch=16, lr=3e-3)
    assert sum(losses[-20:]) / 20 < 0.5 * sum(losses[:20]) / 20  # it learned the task
    return den, task


def test_ten_step_student_is_closer_to_the_150_step_teacher_than_the_undistilled_model(teacher):
    den, task = teacher
    g = torch.Generator().manual_seed(123)
    reqs = [task.request(g) for _ in range(16)]
    conds = [r.conditions for r in reqs]
    noise = [torch.randn(r.video_tokens, TINY.patch_dim, generator=g) for r in reqs]
    reference = torch.cat(den.generate(conds, noise, SamplerConfig(steps=150)))
    undistilled = torch.cat(den.generate(conds, noise, SamplerConfig(steps=10)))
    student = Denoiser(copy.deepcopy(den.model), den.adapter)
    stats = distill(den, student, task.request, DistillConfig(steps=100, batch_size=8, learning_rate=1e-3, log_every=0))
    assert stats.distribution_loss and stats.fake_loss  # phase 2 ran
    distilled = torch.cat(student.generate(conds, noise, SamplerConfig(steps=10)))

    def rmse(x):
        return float((x - reference).pow(2).mean().sqrt())

    assert rmse(distilled) < 0.8 * rmse(undistilled), (rmse(distilled), rmse(undistilled))
    # The teacher itself is untouched.
    torch.testing.assert_close(torch.cat(den.generate(conds, noise, SamplerConfig(steps=10))), undistilled)


def test_distill_command_writes_the_student_and_never_overwrites_it(teacher, tmp_path):
    den, _ = teacher
    teacher_file = tmp_path / "teacher.pt"
    save_artifact(teacher_file, ModelArtifact(model=den.model, adapter=den.adapter, config=TINY, factory=FACTORY))
    spec = {
        "checkpoint": {"persistentClaim": "ckpt", "persistentPath": str(tmp_path / "pv")},
        "training": {"logEvery": 2},
        "promotion": {
            "distill": {"teacherSteps": 20, "studentSteps": 4, "steps": 6, "batchSize": 2, "teacher": str(teacher_file)}
        },
    }
    config = tmp_path / "config.yaml"
    config.write_text(yaml.safe_dump({"spec": spec, "run": {"jobName": "demo"}}))
    env = dict(os.environ, OMP_NUM_THREADS="1")
    cmd = [sys.executable, "-m", "omnitrain", "distill", "--config", str(config)]
    done = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "distill step 6/6 (distribution matching)" in done.stdout
    student_file = tmp_path / "pv" / "demo" / "promotion" / "student.pt"
    student = load_artifact(student_file)
    assert student.sampler["steps"] == 4 and student.meta["teacher"] == str(teacher_file)
    before = student_file.read_bytes()
    again = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=120)
    assert again.returncode == 3 and "exists" in again.stderr
    assert student_file.read_bytes() == before


def test_distill_command_names_the_missing_teacher(tmp_path):
    spec = {
        "checkpoint": {"persistentClaim": "ckpt", "persistentPath": str(tmp_path / "pv")},
        "promotion": {"distill": {}},
    }
    config = tmp_path / "config.yaml"
    config.write_text(yaml.safe_dump({"spec": spec, "run": {"jobName": "demo"}}))
    done = subprocess.run(
        [sys.executable, "-m", "omnitrain", "distill", "--config", str(config)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 3
    assert "spec.promotion.distill.teacher" in done.stderr and "no complete checkpoint" in done.stderr


def test_distill_from_a_training_checkpoint_of_mmdit_and_serve_the_student(tmp_path):
    from omnitrain.model.artifact import MMDIT_FACTORY
    from omnitrain.model.mmdit import MMDiT, randomize_
    from omnitrain.serving.api import GenerateRequest, encode_array
    from omnitrain.serving.engine import InferenceEngine
    from omnitrain.spec import TrainerConfig
    from omnitrain.trainer.distill.run import run_distill

    spec = {
        "model": {"hiddenSize": 32, "depth": 2, "numHeads": 4, "textDim": 16},
        "checkpoint": {"persistentClaim": "ckpt", "persistentPath": str(tmp_path / "pv")},
        "training": {"logEvery": 100},
        "promotion": {"distill": {"teacherSteps": 20, "studentSteps": 4, "steps": 4, "batchSize": 2}},
    }
    config = TrainerConfig.model_validate({"spec": spec, "run": {"jobName": "mm"}})
    cfg = config.spec.model.resolve()
    torch.manual_seed(0)
    teacher = randomize_(MMDiT(cfg), torch.Generator().manual_seed(0))
    for step in (10, 20):  # the newest complete step folder is the teacher; step-30 is torn (no manifest)
        folder = tmp_path / "pv" / "mm" / f"step-{step}"
        folder.mkdir(parents=True)
        torch.save({"train": {"model": teacher.state_dict(), "step": step}}, folder / "rank-00000.pt")
        (folder / "manifest.json").write_text("{}")
    (tmp_path / "pv" / "mm" / "step-30").mkdir()
    lines = []
    out = run_distill(config, log=lines.append)
    assert "step-20" in lines[0]
    student = load_artifact(out)
    assert student.factory == MMDIT_FACTORY and student.meta["teacher"].endswith("step-20")
    engine = InferenceEngine(str(out), fp8=True)
    engine.load()
    req = GenerateRequest.model_validate(
        {"text": encode_array(torch.randn(3, 16)), "frames": 2, "height": 4, "width": 4, "guidance": 2.0}
    )
    res = engine.run_batch([engine.prepare(req)])[0]
    assert res["shape"] == [cfg.latent_channels, 2, 4, 4] and res["steps"] == 4
