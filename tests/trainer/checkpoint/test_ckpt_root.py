"""One rule for where a job's checkpoints live (CheckpointSpec.job_root): the persistent tier with a claim, else the
node-local disk; every reader of the rule (operator status and promotion, the watchdog's and the trainer's metrics
log, the checkpointer's tiers) follows it."""

from __future__ import annotations

import pytest
import yaml

from omnitrain.observability.callback import metrics_log_dir
from omnitrain.operator import plan, promotion
from omnitrain.resilience.watchdog import settings_from_config
from omnitrain.spec import JobSpec, TrainerConfig
from omnitrain.trainer.checkpoint.checkpointer import CheckpointConfig


@pytest.mark.parametrize(
    ("checkpoint", "root", "persistent"),
    [
        (
            {"persistentClaim": "ckpt", "persistentPath": "/mnt/ckpt", "localPath": "/nvme"},
            "/mnt/ckpt/video",
            "/mnt/ckpt",
        ),
        ({"persistentPath": "/mnt/ckpt", "localPath": "/nvme"}, "/nvme/video", None),
    ],
)
def test_every_reader_of_the_checkpoint_root_agrees(tmp_path, checkpoint, root, persistent):
    spec = JobSpec.model_validate({"checkpoint": checkpoint})
    assert spec.checkpoint.job_root("video") == root
    assert spec.checkpoint.persistent_root == persistent
    assert plan.checkpoint_root(spec, "video") == root
    assert promotion.served_checkpoint(plan.JobRef(name="video", namespace="ns", uid="u"), spec) == root
    assert str(metrics_log_dir(spec.checkpoint, "video")) == f"{root}/metrics"
    config = CheckpointConfig.from_spec(spec.checkpoint, "video")
    assert (config.local_root, config.persistent_root) == ("/nvme", persistent)
    path = tmp_path / "config.yaml"
    path.write_text(
        yaml.safe_dump(TrainerConfig.model_validate({"spec": spec.to_wire(), "run": {"jobName": "video"}}).to_wire())
    )
    assert settings_from_config(str(path), 60, {"PET_NODE_RANK": "0"}).metrics_log_dir == f"{root}/metrics"
