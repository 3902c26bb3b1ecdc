"""Ranks running the project's real training loop (omnitrain.trainer.train) with the checkpoint callback."""

from __future__ import annotations

import time
from pathlib import Path

from omnitrain.spec import TrainerConfig
from omnitrain.trainer.checkpoint.callback import CheckpointCallback
from omnitrain.training_hooks import TrainerHooks


def loop_config(
    root: str, steps: int, interval: int, dp: int, ckpt_root: str | None = None, sharding: str = "replicate"
) -> dict:
    ckpt = Path(ckpt_root or root)
    return {
        "spec": {
            "data": {"path": f"{root}/data", "synthetic": {"samples": 32, "shards": 2}, "tokenBudget": 256},
            "training": {"steps": steps, "learningRate": 3e-3, "warmupSteps": 2, "logEvery": 100},
            "parallelism": {"nodes": 1, "gpusPerNode": dp, "dataSharding": sharding},
            "checkpoint": {
                "localPath": str(ckpt / "nvme"),
                "persistentClaim": "pv",
                "persistentPath": str(ckpt / "pv"),
                "intervalSteps": interval,
            },
        },
        "run": {"jobName": "real-loop"},
    }


class Snapshots(TrainerHooks):
    """Copies of the model at chosen steps, after restore, and a place to park until SIGKILLed."""

    def __init__(self, checkpoints: CheckpointCallback, park_at: int | None, progress_dir: str | None, rank: int):
        self.checkpoints, self.park_at, self.progress_dir, self.rank = checkpoints, park_at, progress_dir, rank
        self.at_start: dict = {}
        self.by_step: dict = {}

    def on_train_start(self, *, state, step, restore_seconds):
        self.at_start = {"step": step, "model": {k: v.clone() for k, v in state.model.state_dict().items()}}

    def on_step_end(self, *, state, stats):
        step = stats.step
        self.by_step[step] = {k: v.clone() for k, v in state.model.state_dict().items()}
        if step == self.park_at:
            self.checkpoints.checkpointer.wait()  # the step's checkpoint is complete before the kill
            (Path(self.progress_dir) / f"rank{self.rank}-at-{step}").write_text("")
            while True:  # parked until the test SIGKILLs this process
                time.sleep(0.05)


def real_train(
    rank: int,
    world: int,
    cfg: dict,
    park_at: int | None = None,
    progress_dir: str | None = None,
    keep_steps: tuple = (),
) -> dict:
    from omnitrain.trainer.train import train

    config = TrainerConfig.model_validate(cfg)
    checkpoints = CheckpointCallback.from_trainer_config(config)
    snaps = Snapshots(checkpoints, park_at, progress_dir, rank)
    result = train(config, callbacks=[checkpoints, snaps], log=lambda *a, **k: None)
    return {
        "losses": result.losses,
        "start": snaps.at_start["step"],
        "at_start": snaps.at_start["model"],
        "final": {k: v.clone() for k, v in result.state.model.state_dict().items()},
        "by_step": {s: snaps.by_step[s] for s in keep_steps if s in snaps.by_step},
        "last_complete_step": checkpoints.last_complete_step,
    }
