"""The training loop's callback protocol, and the one place where the default callbacks are registered.

Called on every rank, in registration order, all keyword-only (docs/contracts.md, "Trainer callbacks"):
  restore(state=) -> Restored | None          before the loop (checkpointing; at most one callback restores)
  on_train_start(state=, step=<resumed from>, restore_seconds=)
  on_step_end(state=, stats=StepStats)         after each optimizer step
  on_train_end(state=, step=, reason=)          "Completed" or "Error"; the final save happens here
  on_exit(step=)                                after every on_train_end returned
  outcome() -> TrainOutcome                     what a callback adds to TrainResult (goodput, checkpoint step)
A callback subclasses omnitrain.training_hooks.TrainerHooks (no-ops) and overrides what it needs; the data types
live there too, below resilience and observability, which implement callbacks without importing the trainer.
"""

from __future__ import annotations

from typing import Protocol

from omnitrain.observability.callback import MetricsCallback
from omnitrain.resilience.heartbeat import HeartbeatCallback
from omnitrain.spec import TrainerConfig
from omnitrain.trainer.checkpoint.callback import CheckpointCallback
from omnitrain.trainer.checkpoint.checkpointer import CheckpointListener
from omnitrain.trainer.state import TrainState
from omnitrain.training_hooks import Restored, StepStats, TrainOutcome


class TrainerCallback(Protocol):
    def restore(self, *, state: TrainState) -> Restored | None: ...

    def on_train_start(self, *, state: TrainState, step: int, restore_seconds: float) -> None: ...

    def on_step_end(self, *, state: TrainState, stats: StepStats) -> None: ...

    def on_train_end(self, *, state: TrainState, step: int, reason: str) -> None: ...

    def on_exit(self, *, step: int) -> None: ...

    def outcome(self) -> TrainOutcome: ...


def default_callbacks(config: TrainerConfig) -> list[TrainerCallback]:
    """Callbacks for a TrainerConfig: metrics, heartbeats (under the watchdog) and checkpointing, which reports to
    both."""
    metrics = MetricsCallback.from_config(config)
    heartbeat = HeartbeatCallback.from_env()
    # the heartbeat listens too: a save's foreground part is a "checkpoint" section, not a stalled step
    listeners: list[CheckpointListener] = [metrics] + ([heartbeat] if heartbeat is not None else [])
    # the heartbeat goes before checkpointing: its on_train_end marks the final save and the wait for background
    # writes as the "finish" section (long leash), not a stalled step (the watchdog killed such pods otherwise)
    callbacks: list[TrainerCallback] = [metrics] + ([heartbeat] if heartbeat is not None else [])
    callbacks.append(CheckpointCallback.from_trainer_config(config, listeners=listeners))
    return callbacks


__all__ = ["TrainerCallback", "default_callbacks"]
