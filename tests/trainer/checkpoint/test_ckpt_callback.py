"""The training-loop callback built from a TrainerConfig: interval saves, the final save, restore, listeners."""

from __future__ import annotations

import torch
from ckpt_workers import build, load_train_state, train_state

from omnitrain.checkpoint_paths import list_step_dirs
from omnitrain.spec import TrainerConfig
from omnitrain.trainer.checkpoint.callback import CheckpointCallback
from omnitrain.trainer.checkpoint.manifest import read_manifest
from omnitrain.training_hooks import CheckpointHooks, StepStats


class LoopState:
    """What the training loop hands the callback: state_dict()/load_state_dict() of everything it owns."""

    def __init__(self):
        self.model, self.opt, self.sched, self.loader = build(0, 1, dropout=0.1)
        self.step = 0

    def state_dict(self):
        state = train_state(self.step, self.model, self.opt, self.sched, self.loader)
        del state["rng"]  # the callback captures RNG itself
        return state

    def load_state_dict(self, state):
        self.step = load_train_state({**state, "rng": None}, self.model, self.opt, self.sched, self.loader, rng=False)


class Recorder(CheckpointHooks):
    def __init__(self):
        self.events = []

    def on_checkpoint_start(self, *, step):
        self.events.append(("start", step))

    def on_checkpoint_blocked(self, *, step, seconds):
        self.events.append(("blocked", step))

    def on_checkpoint_complete(self, *, step):
        self.events.append(("complete", step))

    def on_restore(self, *, step, seconds, source="local", sources=None):
        self.events.append(("restore", step))


def _run(config, steps, listeners):
    cb = CheckpointCallback.from_trainer_config(config, listeners=listeners)
    st = LoopState()
    restored = cb.restore(state=st)
    st.step = restored.step if restored is not None else 0
    losses = {}
    for step in range(st.step + 1, steps + 1):
        x, y = st.loader.next_batch()
        loss = torch.nn.functional.mse_loss(st.model(x), y)
        st.opt.zero_grad()
        loss.backward()
        st.opt.step()
        st.sched.step()
        st.step = step
        losses[step] = loss.item()
        cb.on_step_end(state=st, stats=StepStats(step=step))
    cb.on_train_end(state=st, step=st.step, reason="Completed")
    return losses, cb


def test_callback_saves_interval_and_final_and_resumes(tmp_path):
    config = TrainerConfig.model_validate(
        {
            "spec": {
                "checkpoint": {
                    "localPath": str(tmp_path / "nvme"),
                    "persistentClaim": "ckpt",
                    "persistentPath": str(tmp_path / "pv"),
                    "intervalSteps": 2,
                    "keep": 2,
                }
            },
            "run": {"jobName": "cb-job"},
        }
    )
    straight, _ = _run(
        config.model_copy(
            update={
                "spec": config.spec.model_copy(
                    update={
                        "checkpoint": config.spec.checkpoint.model_copy(
                            update={"local_path": str(tmp_path / "x"), "persistent_path": str(tmp_path / "y")}
                        )
                    }
                )
            }
        ),
        7,
        [],
    )
    rec = Recorder()
    first, cb = _run(config, 5, [rec])
    assert cb.last_complete_step == cb.outcome().checkpoint_step == 5  # the final save at the end
    assert ("complete", 2) in rec.events and ("complete", 4) in rec.events and ("blocked", 5) in rec.events
    sections = [e for e in rec.events if e[0] in ("start", "blocked")]  # a section around each copy
    assert sections == [("start", 2), ("blocked", 2), ("start", 4), ("blocked", 4), ("start", 5), ("blocked", 5)]
    assert sorted(list_step_dirs(tmp_path / "pv", "cb-job")) == [4, 5]  # keep 2
    assert read_manifest(tmp_path / "pv" / "cb-job" / "step-5").job == "cb-job"
    rec2 = Recorder()
    resumed, _ = _run(config, 7, [rec2])
    assert rec2.events[0] == ("restore", 5)
    assert {**first, **resumed} == straight  # dropout RNG and loader position restored
