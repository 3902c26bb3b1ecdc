"""Where each rank sits in the (dp, pp, ulysses, tp) grid: pure functions, no torch.distributed.

Rank order (innermost first): tensor-parallel ranks are consecutive, then Ulysses, then pipeline, then data.
With one pod per node and ranks numbered node-major (torchrun: rank = node_rank * nproc_per_node + local_rank),
consecutive ranks share a node, so the chattiest groups (TP: two all-reduces per block; Ulysses: two all-to-alls
per block) stay on NVLink as long as tp * ulysses <= gpus per node. Pipeline neighbours exchange one activation
per micro-batch and come next; data parallel (one gradient reduction per step) is outermost and crosses nodes.
"""

from __future__ import annotations

from dataclasses import dataclass

from omnitrain.spec import replicated_path_errors

MESH_DIMS = ("dp", "pp", "ulysses", "tp")   # outermost first: the DeviceMesh shape follows this order


@dataclass(frozen=True)
class ParallelLayout:
    """Degrees of each parallel dimension. world = dp * pp * ulysses * tp."""

    dp: int = 1
    pp: int = 1
    ulysses: int = 1
    tp: int = 1
    virtual_stages: int = 1
    schedule: str = "1F1B"          # or "interleaved1F1B"
    micro_batches: int = 1
    data_sharding: str = "replicate"  # or "fsdp"
    elastic_ulysses: bool = False     # per-micro-batch Ulysses degree (elastic.py)
    grad_reduce: str = "coalesced"    # or "overlapped": bucketed all-reduce during backward (overlap.py)
    grad_bucket_mb: float = 25.0      # bucket size of the overlapped all-reduce

    @property
    def world_size(self) -> int:
        return self.dp * self.pp * self.ulysses * self.tp

    @property
    def shape(self) -> tuple[int, int, int, int]:
        return (self.dp, self.pp, self.ulysses, self.tp)

    @classmethod
    def from_spec(cls, parallelism) -> "ParallelLayout":
        """From omnitrain.spec.ParallelismSpec (its validation already checked the degrees multiply out)."""
        return cls(dp=parallelism.data_degree(), pp=parallelism.pipeline, ulysses=parallelism.ulysses,
                   tp=parallelism.tensor, virtual_stages=parallelism.virtual_stages,
                   schedule=parallelism.pipeline_schedule, micro_batches=parallelism.micro_batches,
                   data_sharding=parallelism.data_sharding, elastic_ulysses=parallelism.elastic_ulysses,
                   grad_reduce=parallelism.gradient_reduce)


@dataclass(frozen=True)
class RankCoords:
    dp: int
    pp: int
    ulysses: int
    tp: int


def rank_coords(rank: int, layout: ParallelLayout) -> RankCoords:
    """Coordinates of a global rank; tp varies fastest (see module docstring)."""
    if not 0 <= rank < layout.world_size:
        raise ValueError(f"rank {rank} outside a world of {layout.world_size}")
    tp = rank % layout.tp
    rest = rank // layout.tp
    ulysses = rest % layout.ulysses
    rest //= layout.ulysses
    pp = rest % layout.pp
    dp = rest // layout.pp
    return RankCoords(dp=dp, pp=pp, ulysses=ulysses, tp=tp)


def global_rank(coords: RankCoords, layout: ParallelLayout) -> int:
    return ((coords.dp * layout.pp + coords.pp) * layout.ulysses + coords.ulysses) * layout.tp + coords.tp


def check_layout(layout: ParallelLayout, world_size: int, *, num_heads: int, depth: int,
                 mlp_hidden: int) -> None:
    """Refuse layouts the model or the world cannot take, naming the spec field to change."""
    problems = []
    if layout.world_size != world_size:
        problems.append(f"spec.parallelism: data x pipeline x ulysses x tensor = {layout.world_size} but the job "
                        f"has {world_size} processes; change the degrees or nodes x gpusPerNode")
    if num_heads % (layout.tp * layout.ulysses):
        problems.append(f"spec.parallelism.tensor/ulysses: numHeads={num_heads} is not divisible by tensor x "
                        f"ulysses = {layout.tp * layout.ulysses}")
    if mlp_hidden % layout.tp:
        problems.append(f"spec.parallelism.tensor: the MLP width {mlp_hidden} is not divisible by tensor={layout.tp}")
    chunks = layout.pp * layout.virtual_stages
    if chunks > depth:
        problems.append(f"spec.parallelism.pipeline: pipeline x virtualStages = {chunks} stages but the model has "
                        f"{depth} blocks")
    if layout.schedule == "interleaved1F1B" and layout.virtual_stages < 2 and layout.pp > 1:
        problems.append("spec.parallelism.virtualStages: interleaved1F1B needs virtualStages >= 2")
    if layout.schedule == "interleaved1F1B" and layout.pp > 1 and layout.micro_batches % layout.pp:
        problems.append(f"spec.parallelism.microBatches: interleaved1F1B sends micro-batches through the stages in "
                        f"groups of pipeline={layout.pp}; set microBatches to a multiple of it "
                        f"(now {layout.micro_batches})")
    if layout.schedule == "1F1B" and layout.virtual_stages > 1:
        problems.append("spec.parallelism.pipelineSchedule: virtualStages > 1 needs pipelineSchedule "
                        "interleaved1F1B")
    problems += replicated_path_problems(layout)
    if problems:
        raise ValueError("; ".join(problems))


def replicated_path_problems(layout: ParallelLayout) -> list[str]:
    return [str(e) for e in replicated_path_errors(layout.pp, layout.tp, layout.ulysses, layout.data_sharding,
                                                   layout.elastic_ulysses, layout.grad_reduce)]
