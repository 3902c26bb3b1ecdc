"""Activation memory: pipeline-aware offload (policy.py: what and when, offload.py: the copies and the accounting)
and per-block recompute (recompute.py). `configure_memory(plan, offload, recompute)` applies spec.memory to a
ParallelPlan; setup_parallel calls it with the trainer config's values."""

from __future__ import annotations

from omnitrain.trainer.memory.offload import ActivationMemory, MemoryAccount
from omnitrain.trainer.memory.policy import OFFLOAD_MODES, offload_plan
from omnitrain.trainer.memory.recompute import RECOMPUTE_MODES, run_block


def configure_memory(
    plan, offload: str = "none", recompute: str = "none", prefetch_ahead: int = 0, account: bool = False
):
    """Set the plan's offload and recompute modes (also between steps: the benchmark alternates them). With
    offload "none" the saved-tensor hooks are only installed when `account` asks for the accounting (they cost a
    little Python per saved tensor). Returns the plan."""
    if offload not in OFFLOAD_MODES:
        raise ValueError(f"spec.memory.offload: unknown mode {offload!r}; choose one of {OFFLOAD_MODES}")
    if recompute not in RECOMPUTE_MODES:
        raise ValueError(f"spec.memory.recompute: unknown mode {recompute!r}; choose one of {RECOMPUTE_MODES}")
    wanted = offload != "none" or account
    plan.memory = ActivationMemory(offload, plan.device, prefetch_ahead) if wanted else None
    plan.runner.recompute = recompute
    return plan


__all__ = [
    "ActivationMemory",
    "MemoryAccount",
    "OFFLOAD_MODES",
    "RECOMPUTE_MODES",
    "configure_memory",
    "offload_plan",
    "run_block",
]
