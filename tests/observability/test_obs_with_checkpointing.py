"""The metrics callback as a listener of the real checkpoint callback, over a crash and a resume."""

import torch

from omnitrain.metrics_log import read_job_log
from omnitrain.observability.callback import MetricsCallback
from omnitrain.observability.report import summarise
from omnitrain.spec import TrainerConfig
from omnitrain.trainer.checkpoint.callback import CheckpointCallback
from omnitrain.training_hooks import StepStats


class TinyState:
    def __init__(self):
        torch.manual_seed(0)
        self.model = torch.nn.Linear(8, 8)
        self.opt = torch.optim.SGD(self.model.parameters(), lr=0.1)
        self.step = 0

    def state_dict(self):
        return {"model": self.model.state_dict(), "opt": self.opt.state_dict(), "step": self.step}

    def load_state_dict(self, sd):
        self.model.load_state_dict(sd["model"])
        self.opt.load_state_dict(sd["opt"])
        self.step = sd["step"]


def attempt(config, attempt_number, last_step, crash):
    metrics = MetricsCallback(
        job="ck",
        attempt=attempt_number,
        total_steps=8,
        world_size=1,
        rank=0,
        local_rank=0,
        metrics_addr="127.0.0.1",
        metrics_port=0,
        log_dir=config.spec.checkpoint.persistent_path + "/ck/metrics",
    )
    checkpoints = CheckpointCallback.from_trainer_config(config, listeners=[metrics])
    state = TinyState()
    x, y = torch.randn(16, 8), torch.randn(16, 8)
    try:
        restored = checkpoints.restore(state=state)  # tells the listener before the loop starts
        state.step, restore_seconds = (restored.step, restored.seconds) if restored is not None else (0, 0.0)
        metrics.on_train_start(step=state.step, restore_seconds=restore_seconds)
        for step in range(state.step + 1, last_step + 1):
            loss = torch.nn.functional.mse_loss(state.model(x), y)
            state.opt.zero_grad()
            loss.backward()
            state.opt.step()
            state.step = step
            metrics.on_step_end(stats=StepStats(step=step, loss=loss.item(), tokens=16, flops=6.0 * 72 * 16))
            checkpoints.on_step_end(state=state, stats=StepStats(step=step))
        reason = "Crashed" if crash else "Completed"
        checkpoints.on_train_end(step=state.step, state=state, reason=reason)  # waits for the writer
        if not crash:
            metrics.on_train_end(step=state.step, reason=reason)
        return metrics, checkpoints
    finally:
        metrics.close()


def test_checkpoint_events_reach_the_metrics_and_the_log(tmp_path):
    config = TrainerConfig.model_validate(
        {
            "spec": {
                "checkpoint": {
                    "localPath": str(tmp_path / "nvme"),
                    "persistentClaim": "pv",
                    "persistentPath": str(tmp_path / "pv"),
                    "intervalSteps": 2,
                    "async": True,
                }
            },
            "run": {"jobName": "ck"},
        }
    )
    _, first = attempt(config, 0, last_step=5, crash=True)
    assert first.last_complete_step == 4
    _, second = attempt(config, 1, last_step=8, crash=False)
    assert second.last_complete_step == 8

    log = read_job_log(tmp_path / "pv" / "ck" / "metrics")
    complete = [(r["attempt"], r["step"]) for r in log.of_kind("checkpoint") if r.get("complete")]
    assert (0, 2) in complete and (0, 4) in complete and (1, 6) in complete and (1, 8) in complete
    blocked = [r for r in log.of_kind("checkpoint") if "blocking_seconds" in r]
    assert blocked and all(r["blocking_seconds"] >= 0 for r in blocked)
    restores = log.of_kind("restore")
    assert [(r["attempt"], r["step"]) for r in restores] == [(1, 4)]  # once, though reported twice
    records_of_1 = [r["kind"] for r in log.records if r["attempt"] == 1]
    assert records_of_1[:2] == ["restore", "start"]  # kept until the log opened
    summary = summarise(log)
    assert [s["step"] for s in summary.steps if s["wasted"]] == [5]
    assert summary.badput_seconds["wasted_progress"] > 0 and summary.badput_seconds["checkpoint_restore"] > 0
