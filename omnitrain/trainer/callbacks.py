"""The one place where training-loop callbacks are registered.

Hooks (each optional on a callback), called on every rank with keywords:
  restore(train_state) -> (step, seconds)      before the loop (checkpointing)
  on_train_start(state=TrainState, step=<resumed from>, restore_seconds=...)
  on_step_end(state=TrainState, step=, loss=, tokens=, flops=, step_seconds=, data_seconds=)
  on_train_end(state=TrainState, step=, reason=)
"""

from __future__ import annotations

import logging

log = logging.getLogger(__name__)


def default_callbacks(config) -> list:
    """Callbacks for a TrainerConfig: metrics, checkpointing (which reports to metrics) and heartbeats."""
    from omnitrain.observability.callback import MetricsCallback
    from omnitrain.resilience.heartbeat import HeartbeatCallback
    from omnitrain.trainer.checkpoint.callback import CheckpointCallback

    metrics = MetricsCallback.from_config(config)
    heartbeat = HeartbeatCallback.from_env()
    # the heartbeat listens too: a save's foreground part is a "checkpoint" section, not a stalled step
    listeners = [metrics] + ([heartbeat] if heartbeat is not None else [])
    # the heartbeat goes before checkpointing: its on_train_end marks the final save and the wait for background
    # writes as the "finish" section (long leash), not a stalled step (the watchdog killed such pods otherwise)
    callbacks: list = [metrics] + ([heartbeat] if heartbeat is not None else [])
    callbacks.append(CheckpointCallback.from_trainer_config(config, listeners=listeners))
    return callbacks


def call(callbacks: list, hook: str, **kwargs) -> None:
    for cb in callbacks:
        fn = getattr(cb, hook, None)
        if fn is not None:
            fn(**kwargs)
