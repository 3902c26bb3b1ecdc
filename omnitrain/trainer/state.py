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
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.lr_scheduler.state_dict(),
            "loader": self.data_loader.state_dict(),
        }

    def load_state_dict(self, state: dict) -> None:
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.lr_scheduler.load_state_dict(state["scheduler"])
        self.data_loader.load_state_dict(state["loader"])
        self.step = int(state["step"])
