"""Elastic Ulysses: each micro-batch runs at the smallest sequence-parallel degree its length needs.

A Ulysses group of degree u holds tokenBudget / u tokens of a micro-batch per rank. A micro-batch of L tokens
fits the same per-rank memory on d ranks when L <= tokenBudget * d / u, so a short one can run whole on one rank
(no all-to-all at all) or on an aligned sub-group of d ranks (d divides u, hence the head count), while the long
ones keep the full group. The group's micro-batches are thus spread over its ranks like data parallelism inside
the group, and the gradients stay what the fixed degree computes: every rank's gradients are partial sums over the
micro-batches (and tokens) it ran, summed over data x ulysses as before.

Planning is a pure function of the micro-batches' token counts (`plan_elastic`), identical on every rank; the
training loop computes it one step ahead in the background (`PrefetchingLoader`). There the loader hands over an
ElasticStep: the group's samples already cut into micro-batches at the granularity of the degrees and placed on
balanced sub-groups (data.balance.assign_elastic); `step_schedule` only orders them, and `RegroupedLoss` weighs
each sample so that the loss stays the fixed degree's over the same samples. Execution (`run_elastic_step`)
visits the micro-batches in the schedule's one global order on every rank, which cannot deadlock: the earliest
unfinished micro-batch always has all its ranks done with everything before it.

Scope: pipeline == 1, tensor == 1, replicated data (layout.check_layout refuses the rest, naming the field).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist

from omnitrain.trainer.data.balance import degree_for, divisors, least_loaded_start, spread_loads
from omnitrain.trainer.objectives import DiffusionDPOLoss, per_sample_error
from omnitrain.trainer.parallel.ulysses import UlyssesAttention


@dataclass(frozen=True)
class ElasticSchedule:
    """Where each of a Ulysses group's micro-batches runs: on ranks first[j] .. first[j] + degree[j] - 1 of the
    group (an aligned sub-group: first is a multiple of the degree), in the global order `order`."""

    ulysses: int
    degrees: tuple[int, ...]
    first: tuple[int, ...]
    order: tuple[int, ...]

    def ranks_of(self, j: int) -> range:
        return range(self.first[j], self.first[j] + self.degrees[j])

    def items_of(self, rank: int) -> list[int]:
        """The micro-batches this Ulysses rank runs, in execution order."""
        return [j for j in self.order if rank in self.ranks_of(j)]

    def loads(self, costs: Sequence[float]) -> list[float]:
        """Estimated compute per rank: a micro-batch's cost split evenly over its ranks."""
        return spread_loads(zip(self.first, self.degrees, costs), self.ulysses)


def plan_elastic(
    tokens: Sequence[int], ulysses: int, token_budget: int, cost: Callable[[int], float] | None = None
) -> ElasticSchedule:
    """Degrees from the token counts (degree_for), then longest-processing-time placement: widest and costliest
    first, each onto the aligned sub-group whose busiest rank is least loaded. The order is widest first so that
    the all-rank micro-batches run while every rank is still in step."""
    cost = cost or (lambda n: float(n))
    degrees = [degree_for(n, ulysses, token_budget) for n in tokens]
    costs = [cost(n) for n in tokens]
    order = sorted(range(len(tokens)), key=lambda j: (-degrees[j], -costs[j], j))
    load = [0.0] * ulysses
    first = [0] * len(tokens)
    for j in order:
        d = degrees[j]
        start = first[j] = least_loaded_start(load, d)
        for r in range(start, start + d):
            load[r] += costs[j] / d
    return ElasticSchedule(ulysses=ulysses, degrees=tuple(degrees), first=tuple(first), order=tuple(order))


def step_schedule(step, ulysses: int) -> ElasticSchedule:
    """The schedule of a loader's ElasticStep, whose micro-batches are already placed: widest and costliest
    first, as plan_elastic orders."""
    count = len(step.bins)
    order = sorted(range(count), key=lambda k: (-step.bins[k].degree, -step.bin_cost(k), k))
    return ElasticSchedule(
        ulysses=ulysses,
        degrees=tuple(b.degree for b in step.bins),
        first=tuple(b.first for b in step.bins),
        order=tuple(order),
    )


class RegroupedLoss:
    """loss_fn over an ElasticStep's micro-batches (loader.RegroupedBatch): the per-sample loss (per pair for DPO)
    weighted by loss_weights, so that the step's loss and gradients are the fixed degree's mean over its own
    micro-batches, whatever micro-batches the samples were re-cut into."""

    def __init__(self, base: Callable):
        self.base = base

    def __call__(self, prediction: torch.Tensor, microbatch) -> torch.Tensor:
        batch = microbatch[0]
        weights = batch.loss_weights.to(prediction.device)
        if isinstance(self.base, DiffusionDPOLoss):  # one weight per pair, on its winner
            return (self.base.pair_losses(prediction, microbatch) * weights[0::2]).sum()
        return (per_sample_error(prediction, batch) * weights).sum()


def fixed_schedule(count: int, ulysses: int) -> ElasticSchedule:
    """Every micro-batch on the whole group, in order (what the fixed degree does)."""
    return ElasticSchedule(ulysses=ulysses, degrees=(ulysses,) * count, first=(0,) * count, order=tuple(range(count)))


def all_to_all_elements(tokens: Sequence[int], degrees: Sequence[int], hidden: int, depth: int) -> int:
    """Elements each step sends to other ranks in Ulysses all-to-alls, over the whole group: per block, q/k/v out
    and the attention output back (4 x hidden per token), forward and backward, (d - 1)/d of it leaving the rank."""
    total = 0
    for n, d in zip(tokens, degrees):
        padded = -(-n // d) * d
        total += 2 * 4 * hidden * depth * padded * (d - 1) // d
    return total


def new_subgroups(world_ranks_of_group: Sequence[Sequence[int]], ulysses: int, my_rank: int) -> dict[int, Any]:
    """Process groups for the aligned sub-groups of every degree 1 < d < u, over every Ulysses group of the world
    (new_group is collective: every rank creates every group, in the same order). Returns degree -> the sub-group
    that holds this rank."""
    mine: dict[int, Any] = {}
    for d in divisors(ulysses)[1:-1]:
        for ranks in world_ranks_of_group:
            for start in range(0, ulysses, d):
                members = list(ranks[start : start + d])
                group = dist.new_group(members)
                if my_rank in members:
                    mine[d] = group
    return mine


@contextlib.contextmanager
def sequence_group(runner, blocks, degree: int, rank: int, group):
    """Run the ChunkRunner and its Ulysses wrappers at another degree for one micro-batch."""
    saved = runner.ulysses, runner.ulysses_rank, runner.ulysses_group
    cores = [
        c for b in blocks for c in [getattr(getattr(b, "attn", None), "core", None)] if isinstance(c, UlyssesAttention)
    ]
    saved_cores = [(c.degree, c.group) for c in cores]
    runner.ulysses, runner.ulysses_rank, runner.ulysses_group = degree, rank, group
    for c in cores:
        c.degree, c.group = degree, group
    try:
        yield
    finally:
        runner.ulysses, runner.ulysses_rank, runner.ulysses_group = saved
        for c, (d, g) in zip(cores, saved_cores):
            c.degree, c.group = d, g


def run_elastic_step(
    plan,
    microbatches: Sequence[Any],
    loss_fn: Callable,
    schedule: ElasticSchedule,
    before_last_backward: Callable[[], None] | None = None,
) -> torch.Tensor:
    """Forward + backward of this rank's share of the group's micro-batches (entries it does not run may be None).
    Returns this rank's part of the group's mean loss: loss_j / (m * degree_j) summed over its micro-batches, so the
    sum over the Ulysses group is the mean over micro-batches."""
    if schedule.ulysses != plan.ulysses_size or len(schedule.degrees) != len(microbatches):
        raise ValueError(
            f"schedule for {len(schedule.degrees)} micro-batches on ulysses={schedule.ulysses} does not "
            f"fit {len(microbatches)} micro-batches on ulysses={plan.ulysses_size}"
        )
    m, rank = len(microbatches), plan.ulysses_rank
    blocks = [plan.model.blocks[i] for r in plan.chunk_blocks.values() for i in r]
    mine = schedule.items_of(rank)
    loss = torch.zeros((), device=plan.device)
    for n, j in enumerate(mine):
        d = schedule.degrees[j]
        group = plan.ulysses_group if d == plan.ulysses_size else plan.elastic_groups.get(d)
        with sequence_group(plan.runner, blocks, d, rank - schedule.first[j], group):
            mb_loss = plan.forward_chunk(0, microbatches[j], None, loss_fn, last=True) / m
            if n == len(mine) - 1 and before_last_backward is not None:
                before_last_backward()
            mb_loss.backward()
        loss = loss + mb_loss.detach() / d
    if not mine and before_last_backward is not None:
        before_last_backward()
    return loss


class PrefetchingLoader:
    """Wraps a PackedLoader: makes step N+1's micro-batches and their schedule on a background thread while step N
    trains. Its state_dict is the position after the steps handed out (not the one being prepared), so a checkpoint
    resumes exactly where training was. A thread, not a process: packing is tensor copies that release the GIL.

        prefetch = PrefetchingLoader(loader, lambda step: step_schedule(step, ulysses))   # loader: elastic_ulysses
        step, schedule = prefetch.next_step()
    """

    def __init__(self, loader, make_schedule: Callable[[list], Any] | None = None):
        self.loader, self.make_schedule = loader, make_schedule
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="omnitrain-prefetch")
        self._pending: Future | None = None
        self._position: dict | None = None  # loader position after the last step handed out
        self.last_step_tokens = 0
        self.last_step_counts = getattr(loader, "last_step_counts", None)

    def _produce(self):
        # Only ever one call at a time: next_step runs it here only while nothing is pending.
        batches = self.loader.next_step()
        schedule = self.make_schedule(batches) if self.make_schedule else None
        return batches, schedule, self.loader.last_step_tokens, self.loader.last_step_counts, self.loader.state_dict()

    def next_step(self):
        """(this rank's micro-batches, their schedule or None) of the next step; starts preparing the one after."""
        result = self._pending.result() if self._pending is not None else self._produce()
        batches, schedule, self.last_step_tokens, self.last_step_counts, self._position = result
        self._pending = self._pool.submit(self._produce)
        return batches, schedule

    def _drain(self) -> None:
        if self._pending is not None:
            self._pending.result()
            self._pending = None

    def state_dict(self) -> dict:
        if self._position is not None:
            return self._position
        self._drain()
        return self.loader.state_dict()

    def load_state_dict(self, state: dict) -> None:
        self._drain()  # a step prepared from the old position is dropped
        self.loader.load_state_dict(state)
        self._position = None

    def close(self) -> None:
        """Waits for the step being prepared; its errors (e.g. data running out after the last step) are dropped:
        nobody asked for that step."""
        if self._pending is not None:
            self._pending.exception()
            self._pending = None
        self._pool.shutdown(wait=True)
