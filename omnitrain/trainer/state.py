"""TrainState: everything checkpointing saves and restores, and what callbacks see."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch


@dataclass
class TrainState:
    model: torch.nn.Module  # the (possibly parallelized) model the optimizer updates
    optimizer: torch.optim.Optimizer
    lr_scheduler: Any
    data_loader: Any  # PackedLoader (state_dict / load_state_dict)
    step: int = 0  # optimizer steps done
    rng: torch.Generator | None = None  # noise/timestep generator; re-seeded from (seed, step, data rank) each step

    def state_dict(self) -> dict:
        return {
            "step": self.step,
            "model": self.model.state_dict(),
            "optimizer": optimizer_state_by_name(self.model, self.optimizer),
            "scheduler": self.lr_scheduler.state_dict(),
            "loader": self.data_loader.state_dict(),
        }

    def load_state_dict(self, state: dict) -> None:
        self.model.load_state_dict(state["model"])
        load_optimizer_state_by_name(self.model, self.optimizer, state["optimizer"])
        self.lr_scheduler.load_state_dict(state["scheduler"])
        self.data_loader.load_state_dict(state["loader"])
        self.step = int(state["step"])

    def init_optimizer_state(self) -> None:
        init_optimizer_state(self.optimizer)

    def forget_optimizer_state(self) -> None:
        self.optimizer.state.clear()


def _names(model: torch.nn.Module, optimizer: torch.optim.Optimizer) -> list[str]:
    """The model's name of each optimizer parameter, in the optimizer's own numbering (groups in order)."""
    by_id = {id(p): n for n, p in model.named_parameters()}
    return [by_id[id(p)] for group in optimizer.param_groups for p in group["params"]]


def optimizer_state_by_name(model: torch.nn.Module, optimizer: torch.optim.Optimizer) -> dict:
    """The optimizer's state keyed by the parameters' names, not by their position: a pipeline stage numbers its
    parameters from 0 whatever blocks it holds, so only names mean the same in another layout (as DCP's
    get_optimizer_state_dict keys it). Groups keep their hyper-parameters; which parameters a group holds is the
    live optimizer's business."""
    saved = optimizer.state_dict()
    names = _names(model, optimizer)
    return {
        "state": {names[i]: value for i, value in saved["state"].items()},
        "groups": [{k: v for k, v in group.items() if k != "params"} for group in saved["param_groups"]],
    }


def load_optimizer_state_by_name(model: torch.nn.Module, optimizer: torch.optim.Optimizer, saved: dict) -> None:
    """Inverse of optimizer_state_by_name; a format-1 checkpoint's positional state dict loads as it is."""
    if "param_groups" in saved:
        optimizer.load_state_dict(saved)
        return
    live = optimizer.state_dict()
    if len(saved["groups"]) != len(live["param_groups"]):
        raise ValueError(
            f"the checkpoint's optimizer has {len(saved['groups'])} parameter groups, this run's "
            f"{len(live['param_groups'])}: the optimizer changed"
        )
    names = _names(model, optimizer)
    optimizer.load_state_dict(
        {
            "state": {i: saved["state"][name] for i, name in enumerate(names) if name in saved["state"]},
            "param_groups": [{**g, "params": lg["params"]} for g, lg in zip(saved["groups"], live["param_groups"])],
        }
    )


@torch.no_grad()
def init_optimizer_state(optimizer: torch.optim.Optimizer) -> None:
    """Create the optimizer's per-parameter state (zeros) before its first step, as DCP's state_dict helpers do:
    a step at learning rate 0 over zero gradients, which leaves the parameters as they are. A restore that reads
    into the live optimizer state needs it to exist."""
    if optimizer.state:
        return
    params = [p for group in optimizer.param_groups for p in group["params"]]
    for p in params:
        if p.grad is None:
            p.grad = torch.zeros_like(p)
    lrs = [group["lr"] for group in optimizer.param_groups]
    for group in optimizer.param_groups:
        group["lr"] = 0.0
    try:
        optimizer.step()
    finally:
        for group, lr in zip(optimizer.param_groups, lrs):
            group["lr"] = lr
        optimizer.zero_grad(set_to_none=True)
