"""Which saved activations go to host memory, and when they come back: a pure function over a pipeline schedule.

In 1F1B, pipeline rank s runs up to (pp - s) forwards before the backward of the first one, so it holds up to
(pp - s) micro-batches of saved activations while the last stage holds one. An activation is worth offloading
when other actions run between its forward and the prefetch before its backward: that is when it would otherwise
sit on the device while something else (another micro-batch's forward) adds to the peak. Its copy back is issued
`prefetch_ahead` actions before the backward (0: as the backward action begins, before it waits for the gradient
from the next stage, so the copy overlaps that wait).

- "none": nothing is offloaded.
- "pipelineAware": offload exactly the (chunk, micro-batch) forwards whose activations would wait on the device
  across at least one other action. The last stage of plain 1F1B (forward immediately followed by its backward)
  offloads nothing; stage s of pp offloads all but about one micro-batch's worth.
- "all": offload every forward, also one whose backward comes next (pure traffic: an upper bound, and what a
  pipeline-unaware offload such as torch.autograd.graph.save_on_cpu does).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

OFFLOAD_MODES = ("none", "pipelineAware", "all")


@dataclass(frozen=True)
class OffloadDecision:
    forward_at: int  # index of the forward action in the rank's schedule
    backward_at: int  # index of its backward
    offload: bool
    prefetch_at: int  # the copy back is issued as this action begins (== backward_at when ahead is 0)

    @property
    def actions_between(self) -> int:
        return self.backward_at - self.forward_at - 1


def offload_plan(actions: Sequence, mode: str, prefetch_ahead: int = 0) -> dict[tuple[int, int], OffloadDecision]:
    """For each (chunk, micro_batch) forward in `actions` (schedule.Action-like: kind, chunk, micro_batch), whether
    its saved activations are offloaded and when they are prefetched."""
    if mode not in OFFLOAD_MODES:
        raise ValueError(f"unknown offload mode {mode!r}; choose one of {OFFLOAD_MODES}")
    if prefetch_ahead < 0:
        raise ValueError("prefetch_ahead must be >= 0")
    forwards: dict[tuple[int, int], int] = {}
    plan: dict[tuple[int, int], OffloadDecision] = {}
    for index, action in enumerate(actions):
        key = (action.chunk, action.micro_batch)
        if action.kind == "F":
            forwards[key] = index
            continue
        f = forwards.pop(key)
        # Never prefetch before the forward has finished: the copy out must come first.
        prefetch_at = max(f + 1, index - prefetch_ahead)
        wait_in_between = prefetch_at - f - 1  # actions that run while it could be on the host
        offload = mode == "all" or (mode == "pipelineAware" and wait_in_between > 0)
        plan[key] = OffloadDecision(forward_at=f, backward_at=index, offload=offload, prefetch_at=prefetch_at)
    if forwards:
        raise ValueError(f"forwards without a backward in the schedule: {sorted(forwards)}")
    return plan


def held_micro_batches(actions: Sequence, plan: dict[tuple[int, int], OffloadDecision]) -> int:
    """Peak number of micro-batches whose saved activations are on the device at once, in units of whole
    micro-batches, counting a forward's own activations as held until it ends (what the mechanism accounts)."""
    peak, held = 0, set()
    for index, action in enumerate(actions):
        key = (action.chunk, action.micro_batch)
        for k, d in plan.items():  # prefetches due as this action begins
            if d.offload and d.prefetch_at == index:
                held.add(k)
        if action.kind == "F":
            held.add(key)
            peak = max(peak, len(held))
            if plan[key].offload:
                held.discard(key)
        else:
            peak = max(peak, len(held))
            held.discard(key)
    return peak
