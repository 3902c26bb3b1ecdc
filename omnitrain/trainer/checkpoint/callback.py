"""The training-loop side of checkpointing: restore on start, save every interval, a final save at the end.

    cb = CheckpointCallback.from_trainer_config(trainer_config, listeners=[metrics_callback])
    start_step, restore_seconds = cb.restore(train_state)      # before on_train_start (0, 0.0 on a fresh job)
    ... cb.on_step_end(step=step, state=train_state) after each optimizer step ...
    cb.on_train_end(step=step, state=train_state)               # final save (promotion reads it), then close

`train_state` is anything with `state_dict()` / `load_state_dict(sd)` (model, optimizer, LR scheduler, data loader
position, step); the process RNG states are captured here. Hooks accept keywords or one state object, like the
observability callback. The final checkpoint is `<persistentPath>/<job>/step-<last>/` (docs/checkpointing.md).
"""

from __future__ import annotations

import logging

from omnitrain.trainer.checkpoint.checkpointer import CheckpointConfig, Checkpointer
from omnitrain.trainer.checkpoint.flatten import rewrap_like
from omnitrain.trainer.checkpoint.manifest import WorldLayout
from omnitrain.trainer.checkpoint.rng import capture_rng_state, restore_rng_state

log = logging.getLogger(__name__)


def _get(state, kwargs: dict, name: str, default=None):
    if name in kwargs:
        return kwargs[name]
    return getattr(state, name, default) if state is not None else default


class CheckpointCallback:
    def __init__(self, checkpointer: Checkpointer):
        self.checkpointer = checkpointer
        self._last_saved_step: int | None = None

    @classmethod
    def from_trainer_config(cls, config, listeners: list | None = None) -> "CheckpointCallback":
        """From omnitrain.spec.TrainerConfig: paths/policy from spec.checkpoint, the job from run.jobName, the
        layout from spec.parallelism, the model fingerprint from spec.model."""
        from omnitrain.trainer.parallel.layout import ParallelLayout
        spec = config.spec
        ck = Checkpointer(CheckpointConfig.from_spec(spec.checkpoint, config.run.job_name),
                          WorldLayout.from_parallel_layout(ParallelLayout.from_spec(spec.parallelism)),
                          spec.model.resolve(), listeners=listeners)
        return cls(ck)

    # figures for the metrics registry (METRIC_LAST_CHECKPOINT_STEP)
    @property
    def last_complete_step(self) -> int | None:
        return self.checkpointer.last_complete_step

    def restore(self, train_state) -> tuple[int, float]:
        """Load the newest complete checkpoint into train_state; (step resumed from, seconds)."""
        restored = self.checkpointer.restore()
        if restored is None:
            return 0, 0.0
        # DTensor shards (FSDP/TP) were saved as local pieces; give them back their mesh and placements.
        train_state.load_state_dict(rewrap_like(train_state.state_dict(), restored.state["train"]))
        restore_rng_state(restored.state["rng"])
        self._last_saved_step = restored.step
        return restored.step, restored.seconds

    def _save(self, step: int, train_state) -> None:
        self.checkpointer.save(step, {"train": train_state.state_dict(), "rng": capture_rng_state(), "step": step})
        self._last_saved_step = step

    def on_step_end(self, state=None, **kwargs) -> None:
        step = int(_get(state, kwargs, "step"))
        train_state = _get(state, kwargs, "state", state)
        if self.checkpointer.should_save(step):
            self._save(step, train_state)
        else:
            self.checkpointer.poll()      # take in finished saves, raise a failed one

    def on_train_end(self, state=None, **kwargs) -> None:
        step = int(_get(state, kwargs, "step"))
        train_state = _get(state, kwargs, "state", state)
        try:
            if kwargs.get("reason", "Completed") == "Completed" and step != self._last_saved_step and step > 0:
                self._save(step, train_state)
        finally:
            self.checkpointer.close()
        log.info("final checkpoint: step %s", self.checkpointer.last_complete_step)
