"""What the training loop and the checkpointer hand their callbacks and listeners, and no-op bases for both.

Pure Python at the bottom of the layers: resilience (HeartbeatCallback) and observability (MetricsCallback)
implement the trainer's hooks without importing the trainer. The protocols that type the calling side are
`omnitrain.trainer.callbacks.TrainerCallback` and `omnitrain.trainer.checkpoint.checkpointer.CheckpointListener`;
hook order and who implements what are in docs/contracts.md ("Trainer callbacks").
"""

from __future__ import annotations

from dataclasses import dataclass

COMPLETED = "Completed"  # on_train_end's reason when the loop ran to spec.training.steps
ERROR = "Error"  # ... when it raised
STOPPED = "Stopped"  # ... when every rank agreed to stop early on SIGTERM (preemption): the final save still runs


@dataclass(frozen=True)
class StepStats:
    """One finished optimizer step, the same on every rank (reduced over ranks by the loop)."""

    step: int
    loss: float | None = None  # mean over ranks and micro-batches
    tokens: int | None = None  # whole job, this step
    flops: float | None = None  # model FLOPs of the whole job's step (omnitrain.model.flops)
    step_seconds: float | None = None  # slowest rank; None: a callback measures the time between its calls
    data_seconds: float | None = None  # of which waiting for input (this rank)
    encode_seconds: float | None = None  # of that, in the frozen encoders (online encoding, spec.data.encoders)


@dataclass(frozen=True)
class Restored:
    """Where a callback's restore put the training state: the step resumed from and how long loading took."""

    step: int
    seconds: float


@dataclass(frozen=True)
class TrainOutcome:
    """What a callback adds to the loop's result (None: nothing to add)."""

    goodput: dict | None = None  # the job's goodput (omnitrain.resilience.goodput GoodputReport.to_status)
    checkpoint_step: int | None = None  # the newest complete checkpoint


class TrainerHooks:
    """No-op implementation of every TrainerCallback hook: subclass it and override what you need."""

    def restore(self, *, state: object) -> Restored | None:
        """Before on_train_start (collective): load a checkpoint into `state`; None when this callback does not
        restore (at most one callback does)."""
        return None

    def on_train_start(self, *, state: object, step: int, restore_seconds: float) -> None:
        """Before the first step; `step` is the step resumed from (0 on a fresh job)."""

    def on_step_end(self, *, state: object, stats: StepStats) -> None:
        """After each optimizer step."""

    def on_train_end(self, *, state: object, step: int, reason: str) -> None:
        """After the loop, in registration order, also when it raised (reason COMPLETED or ERROR)."""

    def on_exit(self, *, step: int) -> None:
        """After every callback's on_train_end returned (the final save is complete): nothing of this rank's
        training is left."""

    def outcome(self) -> TrainOutcome:
        """After on_exit: what this callback adds to the loop's result."""
        return TrainOutcome()


class CheckpointHooks:
    """No-op implementation of every CheckpointListener hook (the checkpointer calls them on every rank)."""

    def on_checkpoint_start(self, *, step: int) -> None:
        """A save begins: the loop blocks until on_checkpoint_blocked."""

    def on_checkpoint_blocked(self, *, step: int, seconds: float) -> None:
        """The save's foreground part is over; it blocked the loop `seconds`."""

    def on_checkpoint_complete(self, *, step: int) -> None:
        """The checkpoint of `step` is complete (its manifest is written)."""

    def on_restore(self, *, step: int, seconds: float, source: str = "local", sources: list[str] | None = None) -> None:
        """The checkpoint of `step` was loaded, in `seconds`; `sources`: the tier each rank read (local, peer or
        persistent), `source`: the slowest of them."""


__all__ = ["COMPLETED", "ERROR", "STOPPED", "CheckpointHooks", "Restored", "StepStats", "TrainOutcome", "TrainerHooks"]
