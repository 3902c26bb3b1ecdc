"""Workers of the multi-process layout tests: one training run of a few steps under a layout, reporting losses,
gradient norms, the first step's full gradients and the final full parameters (to compare with one process)."""

from __future__ import annotations

import dataclasses

import torch

from omnitrain.model.config import ModelConfig
from omnitrain.trainer.parallel import ParallelLayout, setup_parallel

TINY = ModelConfig(
    hidden_size=32,
    depth=4,
    num_heads=4,
    mlp_ratio=2.0,
    latent_channels=2,
    patch_size=(1, 2, 2),
    text_dim=8,
    frequency_embedding_size=16,
)
# spec.model.conditionAttention: causal (kind "causal": the same samples, the condition-causal rule in attention)
CAUSAL = dataclasses.replace(TINY, condition_attention="causal")
# (text tokens, latent frames, latent side, reference image?, video context?) of each sample, per micro-batch:
# packed samples of different lengths; odd totals exercise the Ulysses padding.
SAMPLES = [
    [(3, 1, 4, False, False), (5, 2, 4, True, False), (2, 1, 2, False, True)],
    [(4, 3, 2, False, False), (7, 1, 4, False, False)],
    [(2, 2, 4, False, True), (3, 1, 2, True, False), (6, 1, 2, False, False), (1, 1, 2, False, False)],
    [(5, 1, 4, True, True), (4, 2, 2, False, False)],
]
# Micro-batches of 32, 7, 9, 4, 12 and 11 tokens: with tokenBudget 32 elastic Ulysses runs them at degrees
# 4, 1, 2, 1, 2, 2 of ulysses=4 (1 or 2 of ulysses=2).
ELASTIC_SAMPLES = [
    SAMPLES[2],
    [(3, 1, 4, False, False)],
    [(4, 3, 2, False, False), (1, 1, 2, False, False)],
    [(2, 1, 2, False, True)],
    [(3, 1, 2, True, False), (6, 1, 2, False, False)],
    [(7, 1, 4, False, False)],
]
ELASTIC_BUDGET = 32
# Lengths for the stand-in model (tests of parameters that only some micro-batches use).
LENGTHS = [[7, 12, 4], [9, 3, 10, 1], [15, 6], [5, 5, 8, 3], [11, 13], [2, 17, 4], [6, 9, 9], [14, 3, 3]]


def build_model(seed: int = 0, kind: str = "mmdit"):
    if kind == "standin":
        from standin_model import StandinDiT

        torch.manual_seed(seed)
        return StandinDiT(TINY)
    from omnitrain.model.mmdit import MMDiT, randomize_

    torch.manual_seed(seed)
    cfg = CAUSAL if kind == "causal" else TINY
    # Random everywhere: adaLN-Zero would leave the blocks' gradients zero at the first step, testing nothing.
    return randomize_(MMDiT(cfg), torch.Generator().manual_seed(seed))


def mmdit_microbatch(specs, g: torch.Generator, cfg: ModelConfig = TINY) -> tuple:
    """A packed micro-batch (batch with a random target, timesteps) of random samples; `specs` as in SAMPLES."""
    from omnitrain.model.packing import SampleRecord, pack

    c = cfg.latent_channels
    records = []
    for text, frames, side, reference, context in specs:
        records.append(
            SampleRecord(
                text=torch.randn(text, cfg.text_dim, generator=g),
                video=torch.randn(c, frames, side, side, generator=g),
                reference=torch.randn(c, 1, side, side, generator=g) if reference else None,
                context=torch.randn(c, frames, side, side, generator=g) if context else None,
            )
        )
    batch = pack(records, cfg.patch_size)
    batch.target = torch.randn(batch.video.shape, generator=g)
    return batch, torch.rand(len(specs), generator=g)


def global_microbatches(count: int, seed: int = 1, kind: str = "mmdit") -> list[tuple]:
    g = torch.Generator().manual_seed(seed)
    if kind in ("mmdit", "elastic", "causal"):
        samples = ELASTIC_SAMPLES if kind == "elastic" else SAMPLES
        return [mmdit_microbatch(samples[i % len(samples)], g) for i in range(count)]
    from standin_model import make_batch

    out = []
    for i in range(count):
        lengths = LENGTHS[i % len(LENGTHS)]
        out.append((make_batch(lengths, TINY, g), torch.rand(len(lengths), generator=g)))
    return out


def loss_fn(prediction, args):
    """Flow-matching-style regression on the video tokens only (other tokens are conditioning)."""
    batch = args[0]
    if hasattr(batch, "target_mask"):
        return ((prediction[batch.target_mask] - batch.target) ** 2).mean()
    from standin_model import masked_mse

    return masked_mse(prediction, args)


def train(rank: int, world_size: int, layout: ParallelLayout, steps: int = 2, kind: str = "mmdit", config=None) -> dict:
    """`config` (a TrainerConfig) adds what setup_parallel applies on top of the layout (spec.memory, compile)."""
    model = build_model(kind=kind)
    plan = setup_parallel(model, config, layout=layout)
    optimizer = torch.optim.AdamW(plan.parameters_for_optimizer(), lr=1e-2, foreach=True)  # GPU default
    m = layout.micro_batches
    report = {"losses": [], "norms": [], "describe": plan.describe()}
    for step in range(steps):
        everything = global_microbatches(layout.dp * m, seed=100 + step, kind=kind)
        index, count = plan.data_shard
        mine = everything[index * m : (index + 1) * m]
        schedule = None
        if layout.elastic_ulysses:
            from omnitrain.trainer.parallel.elastic import plan_elastic

            schedule = plan_elastic([b.num_tokens for b, _ in mine], layout.ulysses, ELASTIC_BUDGET)
            report.setdefault("degrees", schedule.degrees)
            mine = [mb if plan.ulysses_rank in schedule.ranks_of(j) else None for j, mb in enumerate(mine)]
        loss = plan.run_step(mine, loss_fn, schedule=schedule)
        if step == 0:
            report["grads"] = plan.full_state_dict(grads=True)
            if plan.grad_reducer is not None:
                report["buckets"] = (plan.grad_reducer.launched_during_backward, len(plan.grad_reducer.buckets))
        report["norms"].append(float(plan.clip_grad_norm_(0.05)))
        report["losses"].append(float(loss))
        optimizer.step()
        optimizer.zero_grad()
    report["params"] = plan.full_state_dict()
    return report


def train_compiled(rank: int, world_size: int, layout: ParallelLayout, steps: int = 2) -> dict:
    """`train` with spec.training.compile: true (regional compile of every block this rank runs); also reports how
    many graphs dynamo compiled, so a run that silently stayed eager shows."""
    from torch._dynamo.utils import counters

    from omnitrain.spec import TrainerConfig

    config = TrainerConfig.model_validate({"spec": {"training": {"compile": True}}, "run": {"jobName": "compiled"}})
    report = train(rank, world_size, layout, steps, config=config)
    report["graphs"] = counters["stats"]["unique_graphs"]
    return report


def train_layouts(rank: int, world_size: int, layouts: dict, steps: int = 2, kind: str = "mmdit") -> dict:
    """Several layouts of the same world, one after the other in the same processes (compared with each other)."""
    return {name: train(rank, world_size, layout, steps, kind) for name, layout in layouts.items()}


def reference(layout: ParallelLayout, steps: int = 2, kind: str = "mmdit") -> dict:
    """The same run in this process: all data-parallel ranks' micro-batches as one rank's micro-batches."""
    single = ParallelLayout(micro_batches=layout.dp * layout.micro_batches)
    return train(0, 1, single, steps, kind)


def load_and_step(rank: int, world_size: int, layout: ParallelLayout, state: dict) -> dict:
    """Load a full state dict written under another layout, run one step: loss and full gradients."""
    model = build_model(seed=123)  # different init: everything must come from the state dict
    plan = setup_parallel(model, layout=layout)
    plan.load_full_state_dict(state)
    m = layout.micro_batches
    everything = global_microbatches(layout.dp * m, seed=7)
    index, _ = plan.data_shard
    loss = plan.run_step(everything[index * m : (index + 1) * m], loss_fn)
    return {"loss": float(loss), "grads": plan.full_state_dict(grads=True), "params": plan.full_state_dict()}


def train_loop(rank: int, world_size: int, config: dict) -> dict:
    """The real training loop (omnitrain.trainer.train) on this rank, without callbacks: its losses and the
    degrees elastic Ulysses picked."""
    from omnitrain.spec import TrainerConfig
    from omnitrain.trainer.parallel import elastic
    from omnitrain.trainer.train import train as train_loop_

    degrees = []
    plan = elastic.step_schedule

    def recording(*args, **kwargs):
        schedule = plan(*args, **kwargs)
        degrees.extend(schedule.degrees)
        return schedule

    elastic.step_schedule = recording
    try:
        result = train_loop_(TrainerConfig.model_validate(config), callbacks=[], log=lambda *_, **__: None)
    finally:
        elastic.step_schedule = plan
    return {
        "losses": result.losses,
        "degrees": degrees,
        "params": {n: p.detach().clone() for n, p in result.state.model.named_parameters()},
    }
