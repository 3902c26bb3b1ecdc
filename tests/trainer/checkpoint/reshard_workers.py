"""Ranks that train a few steps under one layout and checkpoint, then resume under another: the tiny MMDiT of the
layout tests, AdamW, a LambdaLR schedule and a data loader with a position, saved through the real Checkpointer
(async writer processes, two tiers, one simulated node per `ranks_per_node` ranks)."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "parallel"))

import parallel_workers as pw  # noqa: E402

from omnitrain.trainer.checkpoint.callback import CheckpointCallback  # noqa: E402
from omnitrain.trainer.checkpoint.checkpointer import CheckpointConfig, Checkpointer  # noqa: E402
from omnitrain.trainer.checkpoint.manifest import WorldLayout  # noqa: E402
from omnitrain.trainer.parallel import ParallelLayout, setup_parallel  # noqa: E402
from omnitrain.trainer.state import TrainState  # noqa: E402

JOB = "reshard"


class Position:
    """A data loader position: the step's micro-batches are a function of it."""

    def __init__(self):
        self.position = 0

    def state_dict(self) -> dict:
        return {"position": self.position}

    def load_state_dict(self, state: dict) -> None:
        self.position = int(state["position"])


def _state(layout: ParallelLayout, seed: int):
    plan = setup_parallel(pw.build_model(seed=seed), layout=layout)
    optimizer = torch.optim.AdamW(plan.parameters_for_optimizer(), lr=1e-2, weight_decay=0.1, foreach=True)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda i: 1.0 / (1 + i))
    return plan, TrainState(plan.model, optimizer, scheduler, Position())


def _checkpoints(root: str, rank: int, layout: ParallelLayout, ranks_per_node: int, interval: int):
    node = rank // ranks_per_node
    config = CheckpointConfig(
        job=JOB,
        local_root=os.path.join(root, f"nvme-node{node}"),
        persistent_root=os.path.join(root, "pv"),
        interval_steps=interval,
        keep=5,
    )
    return CheckpointCallback(
        Checkpointer(config, WorldLayout.from_parallel_layout(layout), pw.TINY, node_id=f"node{node}")
    )


def _step(plan, state: TrainState, layout: ParallelLayout) -> float:
    """One optimizer step over the global batch of the loader's position (dp x micro-batches micro-batches)."""
    m = layout.micro_batches
    everything = pw.global_microbatches(layout.dp * m, seed=100 + state.data_loader.position)
    index, _ = plan.data_shard
    loss = plan.run_step(everything[index * m : (index + 1) * m], pw.loss_fn)
    state.optimizer.step()
    state.lr_scheduler.step()
    state.optimizer.zero_grad(set_to_none=True)
    state.data_loader.position += 1
    state.step += 1
    return float(loss)


def train_and_save(rank: int, world: int, layout: ParallelLayout, root: str, steps: int, ranks_per_node: int) -> dict:
    plan, state = _state(layout, seed=0)
    checkpoints = _checkpoints(root, rank, layout, ranks_per_node, interval=2)
    from omnitrain.training_hooks import COMPLETED, StepStats

    losses = []
    for _ in range(steps):
        losses.append(_step(plan, state, layout))
        checkpoints.on_step_end(state=state, stats=StepStats(step=state.step))
    checkpoints.on_train_end(state=state, step=state.step, reason=COMPLETED)
    return {"losses": losses}


def _full_optimizer_state(plan, state: TrainState) -> dict:
    """Every parameter's AdamW state, unsharded and by name, on every rank (collective)."""
    import torch.distributed as dist

    mine = {}
    for name, per_param in state.state_dict()["optimizer"]["state"].items():
        if not plan._owns(name):
            continue
        mine[name] = {
            k: (v.full_tensor() if hasattr(v, "full_tensor") else v).detach().clone() for k, v in per_param.items()
        }
    if plan.layout.pp == 1:
        return mine
    parts: list = [None] * plan.layout.pp
    dist.all_gather_object(parts, mine, group=plan.pp_group)
    return {k: v for part in parts for k, v in part.items()}


def resume_and_step(rank: int, world: int, layout: ParallelLayout, root: str, ranks_per_node: int) -> dict:
    """Restore the newest checkpoint into `layout` (another init: everything must come from the checkpoint),
    report what was restored, then train one step."""
    plan, state = _state(layout, seed=123)
    checkpoints = _checkpoints(root, rank, layout, ranks_per_node, interval=1000)
    restored = checkpoints.restore(state=state)
    state.step = restored.step
    report = {
        "step": restored.step,
        "source": checkpoints.checkpointer.last_complete_step,
        "params": plan.full_state_dict(),
        "optimizer": _full_optimizer_state(plan, state),
        "position": state.data_loader.position,
        "lr": state.lr_scheduler.get_last_lr(),
    }
    report["loss"] = _step(plan, state, layout)
    report["params_after"] = plan.full_state_dict()
    checkpoints.checkpointer.close()
    return report
