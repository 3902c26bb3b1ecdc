"""Applies a ParallelLayout to a model once: DeviceMesh, pipeline chunks, tensor parallel, Ulysses, FSDP.

The model knows nothing of this; it only has the structure docs/contracts.md promises (embed / blocks / head,
attn.q/k/v/o, mlp.fc1/fc2, attn.core).
"""

from __future__ import annotations

import os

import torch
import torch.distributed as dist
from torch import nn

from omnitrain.trainer.parallel.layout import MESH_DIMS, ParallelLayout, check_layout, rank_coords
from omnitrain.trainer.parallel.plan import ChunkRunner, ParallelPlan
from omnitrain.trainer.parallel.schedule import chunks_of_rank, split_blocks
from omnitrain.trainer.parallel.ulysses import wrap_attention_cores

# Column-parallel in, row-parallel out: one all-reduce per attention and one per MLP (Megatron's layout).
TP_BLOCK_PLAN = {
    "attn.q": "colwise",
    "attn.k": "colwise",
    "attn.v": "colwise",
    "attn.o": "rowwise",
    "mlp.fc1": "colwise",
    "mlp.fc2": "rowwise",
}


class _Absent(nn.Module):
    """Placeholder for a block that lives on another pipeline rank (keeps the indices of model.blocks)."""

    def forward(self, *args, **kwargs):
        raise RuntimeError("this block lives on another pipeline rank")


def init_distributed() -> None:
    """Join the job's process group from torchrun's env (nccl with GPUs, gloo on CPU); no-op in one process."""
    if dist.is_initialized() or int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return
    if torch.cuda.is_available():
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
        dist.init_process_group("nccl")
    else:
        dist.init_process_group("gloo")


def _model_dims(model: nn.Module) -> dict:
    cfg = getattr(model, "config", None)
    depth = len(model.blocks)
    if cfg is None:
        return {"num_heads": 1, "depth": depth, "mlp_hidden": 1}
    return {"num_heads": cfg.num_heads, "depth": depth, "mlp_hidden": cfg.mlp_hidden}


def apply_tensor_parallel(block: nn.Module, tp_mesh) -> None:
    from torch.distributed.tensor.parallel import ColwiseParallel, RowwiseParallel, parallelize_module

    styles = {"colwise": ColwiseParallel, "rowwise": RowwiseParallel}
    parallelize_module(block, tp_mesh, {name: styles[style]() for name, style in TP_BLOCK_PLAN.items()})


def inside_tensor_parallel_region(block: nn.Module) -> list[str]:
    """Replicated parameters applied to head- or width-sharded activations (e.g. per-head q/k norms between the
    column- and row-parallel layers): each TP rank sees only its heads, so their gradients are partial sums."""
    from torch.distributed.tensor import DTensor

    return [
        name
        for name, p in block.named_parameters()
        if name.split(".")[0] in ("attn", "mlp") and not isinstance(p, DTensor) and p.requires_grad
    ]


def setup_parallel(model: nn.Module, config=None, layout: ParallelLayout | None = None) -> ParallelPlan:
    """Lay the model out over this job's ranks. `config` is an omnitrain.spec.TrainerConfig (its
    spec.parallelism), or pass a ParallelLayout directly. Every rank must call this with an identically
    initialised model (same seed). In one process it returns a plan that simply runs the model."""
    if layout is None:
        layout = ParallelLayout.from_spec(config.spec.parallelism) if config is not None else ParallelLayout()
    init_distributed()
    world = dist.get_world_size() if dist.is_initialized() else 1
    rank = dist.get_rank() if dist.is_initialized() else 0
    check_layout(layout, world, **_model_dims(model))
    device = next(model.parameters()).device
    coords = rank_coords(rank, layout)
    chunk_ranges = (
        split_blocks(len(model.blocks), layout.pp * layout.virtual_stages)
        if layout.pp > 1
        else [range(len(model.blocks))]
    )
    my_chunks = chunks_of_rank(coords.pp, layout.pp, layout.virtual_stages) if layout.pp > 1 else [0]
    chunk_blocks = {c: chunk_ranges[c] for c in my_chunks}
    owned = sorted(i for r in chunk_blocks.values() for i in r)

    if world == 1:
        runner = ChunkRunner(model, chunk_blocks, 1, 0, None)
        return _apply_options(
            ParallelPlan(
                model=model,
                layout=layout,
                coords=coords,
                rank=0,
                device=device,
                chunk_blocks=chunk_blocks,
                runner=runner,
            ),
            config,
        )

    from torch.distributed.device_mesh import init_device_mesh

    mesh = init_device_mesh(device.type, layout.shape, mesh_dim_names=MESH_DIMS)
    if tuple(mesh.get_coordinate()) != (coords.dp, coords.pp, coords.ulysses, coords.tp):
        raise RuntimeError(f"DeviceMesh placed rank {rank} at {mesh.get_coordinate()}, expected {coords}")
    dp_group, pp_group = mesh.get_group("dp"), mesh.get_group("pp")
    ulysses_group = mesh.get_group("ulysses")
    if layout.dp > 1 and layout.ulysses > 1:
        grad_mesh = mesh["dp", "ulysses"]._flatten("dp_ulysses")
    else:
        grad_mesh = mesh["ulysses"] if layout.ulysses > 1 else mesh["dp"]
    grad_group = grad_mesh.get_group()

    # Pipeline: drop the blocks (and the head) other ranks run; the embedder stays everywhere for the context.
    if layout.pp > 1:
        for i in range(len(model.blocks)):
            if i not in owned:
                model.blocks[i] = _Absent()
        if coords.pp != layout.pp - 1:
            model.head = _Absent()
    tp_partial = []
    if layout.tp > 1:
        for i in owned:
            apply_tensor_parallel(model.blocks[i], mesh["tp"])
            tp_partial += [f"blocks.{i}.{name}" for name in inside_tensor_parallel_region(model.blocks[i])]
    if layout.ulysses > 1:
        wrap_attention_cores([model.blocks[i] for i in owned], layout.ulysses, ulysses_group)

    runner = ChunkRunner(model, chunk_blocks, layout.ulysses, coords.ulysses, ulysses_group)
    fsdp = layout.data_sharding == "fsdp" and layout.dp * layout.ulysses > 1
    if fsdp:
        from torch.distributed.fsdp import fully_shard

        # Shard over data x ulysses: Ulysses ranks hold partial gradients (their tokens) and FSDP averages over
        # dp * ulysses, so run_step scales the loss by the Ulysses degree (a custom divide factor would need
        # PREMUL_SUM, which gloo lacks).
        for i in owned:
            fully_shard(model.blocks[i], mesh=grad_mesh)
        fully_shard(runner, mesh=grad_mesh)
        # Multi-modal micro-batches leave some parameters unused on some ranks (no reference image, no video
        # context): reduce zeros for them, or the ranks' reduce-scatters would not match.
        runner.set_reduce_scatter_unused_params(True)
    # Both need pipeline = tensor = 1 (check_layout): the data x ulysses group is then the whole world.
    elastic_groups = {}
    if layout.elastic_ulysses:
        from omnitrain.trainer.parallel.elastic import new_subgroups

        u = layout.ulysses
        elastic_groups = new_subgroups([range(d * u, (d + 1) * u) for d in range(layout.dp)], u, rank)
    grad_reducer = None
    if layout.grad_reduce == "overlapped" and layout.dp * layout.ulysses > 1:
        from omnitrain.trainer.parallel.overlap import OverlappedGradReducer

        grad_reducer = OverlappedGradReducer(
            model, dist.new_group(list(range(world))), layout.dp, int(layout.grad_bucket_mb * (1 << 20))
        )
    plan = ParallelPlan(
        model=model,
        layout=layout,
        coords=coords,
        rank=rank,
        device=device,
        mesh=mesh,
        chunk_blocks=chunk_blocks,
        dp_group=dp_group,
        pp_group=pp_group,
        ulysses_group=ulysses_group,
        grad_group=grad_group,
        fsdp=fsdp,
        runner=runner,
        tp_group=mesh.get_group("tp"),
        tp_partial_names=tp_partial,
        elastic_groups=elastic_groups,
        grad_reducer=grad_reducer,
    )
    return _apply_options(plan, config)


def _apply_options(plan: ParallelPlan, config) -> ParallelPlan:
    """What the trainer config adds on top of the layout: spec.memory, then spec.training.compile."""
    return _apply_compile(_apply_memory(plan, config), config)


def _apply_compile(plan: ParallelPlan, config) -> ParallelPlan:
    """spec.training.compile: torch.compile each block this rank runs (omnitrain.trainer.compile), after tensor
    parallel and Ulysses have put their modules in place (the compiled region is the block as it will run)."""
    if config is None or not config.spec.training.compile:
        return plan
    from omnitrain.trainer.compile import compile_blocks

    compile_blocks([plan.model.blocks[i] for c in sorted(plan.chunk_blocks) for i in plan.chunk_blocks[c]])
    return plan


def _apply_memory(plan: ParallelPlan, config) -> ParallelPlan:
    """spec.memory (activation offload and recompute) from the trainer config; none without one."""
    if config is None:
        return plan
    from omnitrain.trainer.memory import configure_memory

    return configure_memory(plan, config.spec.memory.offload, config.spec.memory.recompute)
