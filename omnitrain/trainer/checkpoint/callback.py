"""The training-loop side of checkpointing: restore on start, save every interval, a final save at the end.

    cb = CheckpointCallback.from_trainer_config(trainer_config, listeners=[metrics_callback])
    restored = cb.restore(state=train_state)                 # before on_train_start (None on a fresh job)
    ... cb.on_step_end(state=train_state, stats=StepStats(step=step)) after each optimizer step ...
    cb.on_train_end(state=train_state, step=step, reason="Completed")   # final save (promotion reads it), close

`train_state` is anything with `state_dict()` / `load_state_dict(sd)` (model, optimizer, LR scheduler, data loader
position, step); the process RNG states are captured here. A TrainerCallback (omnitrain.trainer.callbacks).
The final checkpoint is `<persistentPath>/<job>/step-<last>/` (docs/checkpointing.md).
"""

from __future__ import annotations

import logging
from typing import Any

from omnitrain.trainer.checkpoint.checkpointer import CheckpointConfig, Checkpointer, CheckpointListener
from omnitrain.trainer.checkpoint.flatten import rewrap_like
from omnitrain.trainer.checkpoint.manifest import WorldLayout
from omnitrain.trainer.checkpoint.rng import capture_rng_state, restore_rng_state
from omnitrain.training_hooks import COMPLETED, STOPPED, Restored, StepStats, TrainerHooks, TrainOutcome

log = logging.getLogger(__name__)


class CheckpointCallback(TrainerHooks):
    def __init__(self, checkpointer: Checkpointer):
        self.checkpointer = checkpointer
        self._last_saved_step: int | None = None

    @classmethod
    def from_trainer_config(cls, config, listeners: list[CheckpointListener] | None = None) -> CheckpointCallback:
        """From omnitrain.spec.TrainerConfig: paths/policy from spec.checkpoint, the job from run.jobName, the
        layout from spec.parallelism, the model fingerprint from spec.model."""
        from omnitrain.trainer.parallel.layout import ParallelLayout

        spec = config.spec
        ck = Checkpointer(
            CheckpointConfig.from_spec(spec.checkpoint, config.run.job_name),
            WorldLayout.from_parallel_layout(ParallelLayout.from_spec(spec.parallelism)),
            spec.model.resolve(),
            listeners=listeners,
        )
        return cls(ck)

    # figures for the metrics registry (METRIC_LAST_CHECKPOINT_STEP)
    @property
    def last_complete_step(self) -> int | None:
        return self.checkpointer.last_complete_step

    def restore(self, *, state: Any) -> Restored | None:
        """Load the newest complete checkpoint into `state` (collective); None on a fresh job."""
        asked: list[bool] = []

        def template() -> dict:
            # Resharding reads into the live slices, the optimizer's too: they must exist before its first step.
            asked.append(True)
            prepare = getattr(state, "init_optimizer_state", None)
            if prepare is not None:
                prepare()
            return {"train": state.state_dict(), "rng": capture_rng_state(), "step": 0}

        restored = self.checkpointer.restore(template)
        if restored is None:
            if asked and hasattr(state, "forget_optimizer_state"):
                state.forget_optimizer_state()  # a fresh start, as if no checkpoint had been looked at
            return None
        # DTensor shards (FSDP/TP) were saved as local pieces; give them back their mesh and placements.
        state.load_state_dict(rewrap_like(state.state_dict(), restored.state["train"]))
        restore_rng_state(restored.state["rng"])
        self._last_saved_step = restored.step
        return Restored(step=restored.step, seconds=restored.seconds)

    def _save(self, step: int, train_state: Any) -> None:
        self.checkpointer.save(step, {"train": train_state.state_dict(), "rng": capture_rng_state(), "step": step})
        self._last_saved_step = step

    def on_step_end(self, *, state: Any, stats: StepStats) -> None:
        if self.checkpointer.should_save(stats.step):
            self._save(stats.step, state)
        else:
            self.checkpointer.poll()  # take in finished saves, raise a failed one

    def on_train_end(self, *, state: Any, step: int, reason: str) -> None:
        try:
            # a stop on SIGTERM saves like the end does: the resumed job loses no step
            if reason in (COMPLETED, STOPPED) and step != self._last_saved_step and step > 0:
                self._save(step, state)
        finally:
            self.checkpointer.close()
        log.info("final checkpoint: step %s", self.checkpointer.last_complete_step)

    def outcome(self) -> TrainOutcome:
        return TrainOutcome(checkpoint_step=self.last_complete_step)
