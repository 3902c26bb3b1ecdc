"""All-gather of small Python objects between the ranks taking part in a save or a restore.

The background writers use their OWN gloo process group (created in the writer processes), never the training
group: a save-time collective on the training group would interleave with the step's collectives and deadlock.
"""

from __future__ import annotations

from typing import Any, Protocol


class Exchange(Protocol):
    rank: int
    world_size: int

    def gather(self, obj: Any) -> list[Any]: ...


class SingleExchange:
    rank, world_size = 0, 1

    def gather(self, obj: Any) -> list[Any]:
        return [obj]


class GroupExchange:
    def __init__(self, group=None):
        import torch.distributed as dist

        self._group = group
        self.rank = dist.get_rank(group)
        self.world_size = dist.get_world_size(group)

    def gather(self, obj: Any) -> list[Any]:
        import torch.distributed as dist

        out: list[Any] = [None] * self.world_size
        dist.all_gather_object(out, obj, group=self._group)
        return out


def default_exchange() -> Exchange:
    """The training group when one exists (restore, synchronous saves), else a single process."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        return GroupExchange()
    return SingleExchange()
