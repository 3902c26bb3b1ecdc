"""Workers of the multi-process layout tests: one training run of a few steps under a layout, reporting losses,
gradient norms, the first step's full gradients and the final full parameters (to compare with one process)."""

from __future__ import annotations

import torch

from omnitrain.model.config import ModelConfig
from omnitrain.trainer.parallel import ParallelLayout, setup_parallel

TINY = ModelConfig(hidden_size=32, depth=4, num_heads=4, mlp_ratio=2.0, latent_channels=2, patch_size=(1, 2, 2),
                   text_dim=8, frequency_embedding_size=16)
# Packed micro-batches of samples with different lengths; odd totals exercise the Ulysses padding.
LENGTHS = [[7, 12, 4], [9, 3, 10, 1], [15, 6], [5, 5, 8, 3], [11, 13], [2, 17, 4], [6, 9, 9], [14, 3, 3]]


def build_model(seed: int = 0):
    from standin_model import StandinDiT
    torch.manual_seed(seed)
    return StandinDiT(TINY)


def global_microbatches(count: int, seed: int = 1) -> list[tuple]:
    from standin_model import make_batch
    g = torch.Generator().manual_seed(seed)
    out = []
    for i in range(count):
        batch = make_batch(LENGTHS[i % len(LENGTHS)], TINY, g)
        t = torch.rand(len(LENGTHS[i % len(LENGTHS)]), generator=g)
        out.append((batch, t))
    return out


def loss_fn(prediction, args):
    from standin_model import masked_mse
    return masked_mse(prediction, args)


def train(rank: int, world_size: int, layout: ParallelLayout, steps: int = 2) -> dict:
    model = build_model()
    plan = setup_parallel(model, layout=layout)
    optimizer = torch.optim.AdamW(plan.parameters_for_optimizer(), lr=1e-2, foreach=False)
    m = layout.micro_batches
    report = {"losses": [], "norms": [], "describe": plan.describe()}
    for step in range(steps):
        everything = global_microbatches(layout.dp * m, seed=100 + step)
        index, count = plan.data_shard
        mine = everything[index * m:(index + 1) * m]
        loss = plan.run_step(mine, loss_fn)
        if step == 0:
            report["grads"] = plan.full_state_dict(grads=True)
        report["norms"].append(float(plan.clip_grad_norm_(0.05)))
        report["losses"].append(float(loss))
        optimizer.step()
        optimizer.zero_grad()
    report["params"] = plan.full_state_dict()
    return report


def reference(layout: ParallelLayout, steps: int = 2) -> dict:
    """The same run in this process: all data-parallel ranks' micro-batches as one rank's micro-batches."""
    single = ParallelLayout(micro_batches=layout.dp * layout.micro_batches)
    return train(0, 1, single, steps)


def load_and_step(rank: int, world_size: int, layout: ParallelLayout, state: dict) -> dict:
    """Load a full state dict written under another layout, run one step: loss and full gradients."""
    model = build_model(seed=123)          # different init: everything must come from the state dict
    plan = setup_parallel(model, layout=layout)
    plan.load_full_state_dict(state)
    m = layout.micro_batches
    everything = global_microbatches(layout.dp * m, seed=7)
    index, _ = plan.data_shard
    loss = plan.run_step(everything[index * m:(index + 1) * m], loss_fn)
    return {"loss": float(loss), "grads": plan.full_state_dict(grads=True), "params": plan.full_state_dict()}
