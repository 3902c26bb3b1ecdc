"""Where each rank sits in the (dp, pp, ulysses, tp) grid: pure functions, no torch.distributed.

Rank order (innermost first): tensor-parallel ranks are consecutive, then Ulysses, then pipeline, then data.
With one pod per node and ranks numbered node-major (torchrun: rank = node_rank * nproc_per_node + local_rank),
consecutive ranks share a node, so the chattiest groups (TP: two all-reduces per block; Ulysses: two all-to-alls
per block) stay on NVLink as long as tp * ulysses <= gpus per node. Pipeline neighbours exchange one activation
per micro-batch and come next; data parallel (one gradient reduction per step) is outermost and crosses nodes.
"""

from __future__ import annotations

from dataclasses import dataclass

from omnitrain.spec import LayoutFacts, layout_problems

MESH_DIMS = ("dp", "pp", "ulysses", "tp")  # outermost first: the DeviceMesh shape follows this order


@dataclass(frozen=True)
class ParallelLayout:
    """Degrees of each parallel dimension. world = dp * pp * ulysses * tp."""

    dp: int = 1
    pp: int = 1
    ulysses: int = 1
    tp: int = 1
    virtual_stages: int = 1
    schedule: str = "1F1B"  # or "interleaved1F1B"
    micro_batches: int = 1
    data_sharding: str = "replicate"  # or "fsdp"
    elastic_ulysses: bool = False  # per-micro-batch Ulysses degree (elastic.py)
    grad_reduce: str = "coalesced"  # or "overlapped": bucketed all-reduce during backward (overlap.py)
    grad_bucket_mb: float = 25.0  # bucket size of the overlapped all-reduce
    gpus_per_node: int | None = None  # processes per node, when known (tensor-parallel groups stay inside one)

    @property
    def world_size(self) -> int:
        return self.dp * self.pp * self.ulysses * self.tp

    @property
    def shape(self) -> tuple[int, int, int, int]:
        return (self.dp, self.pp, self.ulysses, self.tp)

    @classmethod
    def from_spec(cls, parallelism) -> ParallelLayout:
        """From omnitrain.spec.ParallelismSpec (its validation already checked the degrees multiply out)."""
        return cls(
            dp=parallelism.data_degree(),
            pp=parallelism.pipeline,
            ulysses=parallelism.ulysses,
            tp=parallelism.tensor,
            virtual_stages=parallelism.virtual_stages,
            schedule=parallelism.pipeline_schedule,
            micro_batches=parallelism.micro_batches,
            data_sharding=parallelism.data_sharding,
            elastic_ulysses=parallelism.elastic_ulysses,
            grad_reduce=parallelism.gradient_reduce,
            gpus_per_node=parallelism.gpus_per_node,
        )


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


def check_layout(layout: ParallelLayout, world_size: int, *, num_heads: int, depth: int, mlp_hidden: int) -> None:
    """Refuse layouts the model or the world cannot take, naming the spec field to change: the same rules as the
    operator's validation (omnitrain.spec.layout_problems), against the world torchrun really started."""
    facts = LayoutFacts(
        world=world_size,
        tensor=layout.tp,
        pipeline=layout.pp,
        ulysses=layout.ulysses,
        data=layout.dp,
        virtual_stages=layout.virtual_stages,
        pipeline_schedule=layout.schedule,
        micro_batches=layout.micro_batches,
        data_sharding=layout.data_sharding,
        elastic_ulysses=layout.elastic_ulysses,
        gradient_reduce=layout.grad_reduce,
        gpus_per_node=layout.gpus_per_node,
    )
    problems = layout_problems(facts, num_heads=num_heads, depth=depth, mlp_hidden=mlp_hidden)
    if problems:
        raise ValueError("; ".join(str(e) for e in problems))
