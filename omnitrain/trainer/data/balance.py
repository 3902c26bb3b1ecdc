"""Estimated compute of a sample and its assignment to bins (micro-batches of data-parallel ranks).

cost(L) = linear * L + quadratic * L^2 per sample of L tokens, from the model's FLOPs (omnitrain.model.flops):
the per-token matmuls and the attention term. Pure functions."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from omnitrain.model.config import ModelConfig
from omnitrain.model.flops import TokenCounts, attention_core_flops, block_flops


@dataclass(frozen=True)
class CostModel:
    linear: float
    quadratic: float

    @classmethod
    def of(cls, cfg: ModelConfig) -> CostModel:
        # samples=0: the per-sample adaLN is a constant 12 h^2 a sample, next to (8 h^2 + 4 h mlp) a token; it does
        # not move a sample's cost enough to change where it is placed
        one_token = TokenCounts(text=0, patches=1, samples=0, sum_sq_seqlens=1)
        quadratic = attention_core_flops(cfg, one_token)
        return cls(linear=block_flops(cfg, one_token) - quadratic, quadratic=quadratic)

    def __call__(self, tokens: int) -> float:
        return self.linear * tokens + self.quadratic * tokens * tokens


def assign_balanced(costs: list[float], tokens: list[int], bins: int, capacity: int) -> list[int | None]:
    """Longest-processing-time first: each sample (costliest first) to the cheapest bin with room. None = no room."""
    load, used = [0.0] * bins, [0] * bins
    out: list[int | None] = [None] * len(costs)
    for i in sorted(range(len(costs)), key=lambda i: (-costs[i], i)):
        fits = [b for b in range(bins) if used[b] + tokens[i] <= capacity]
        if fits:
            b = min(fits, key=lambda b: (load[b], b))
            out[i], load[b], used[b] = b, load[b] + costs[i], used[b] + tokens[i]
    return out


def assign_sequential(tokens: list[int], bins: int, capacity: int) -> list[int | None]:
    """Greedy NaViT packing in stream order: fill bin 0, then bin 1, ... (first fit among the bins)."""
    used = [0] * bins
    out: list[int | None] = [None] * len(tokens)
    for i, n in enumerate(tokens):
        for b in range(bins):
            if used[b] + n <= capacity:
                out[i], used[b] = b, used[b] + n
                break
    return out


def assign_round_robin(count: int, bins: int) -> list[int]:
    """The baseline: sample i to bin i mod bins, blind to length."""
    return [i % bins for i in range(count)]


def bin_costs(assignment: list[int | None], costs: list[float], bins: int) -> list[float]:
    load = [0.0] * bins
    for b, c in zip(assignment, costs):
        if b is not None:
            load[b] += c
    return load


def imbalance(loads: list[float]) -> float:
    """max / mean (1.0 = perfect balance)."""
    mean = sum(loads) / len(loads)
    return max(loads) / mean if mean else 1.0


# -- elastic Ulysses: a Ulysses group's samples packed at the granularity of the per-micro-batch degree ----------


def divisors(n: int) -> list[int]:
    return [d for d in range(1, n + 1) if n % d == 0]


def degree_for(tokens: int, ulysses: int, token_budget: int) -> int:
    """Smallest divisor d of the Ulysses degree with tokens <= token_budget * d / ulysses (same per-rank tokens as
    the fixed degree); the full degree for anything longer."""
    for d in divisors(ulysses):
        if tokens * ulysses <= token_budget * d:
            return d
    return ulysses


@dataclass(frozen=True)
class ElasticBin:
    """One micro-batch of an elastic step: samples (indices into the group's samples, in stream order) run on the
    aligned sub-group of ranks first .. first + degree - 1 of the Ulysses group."""

    samples: tuple[int, ...]
    degree: int
    first: int


def spread_loads(placements: Iterable[tuple[int, int, float]], ulysses: int) -> list[float]:
    """Estimated compute per rank of a Ulysses group from (first rank, degree, cost) placements: each cost split
    evenly over its ranks."""
    load = [0.0] * ulysses
    for first, degree, cost in placements:
        for r in range(first, first + degree):
            load[r] += cost / degree
    return load


def least_loaded_start(load: Sequence[float], degree: int) -> int:
    """The first rank of the aligned sub-group of `degree` ranks whose busiest rank is least loaded (lowest first
    rank on ties)."""
    return min(range(0, len(load), degree), key=lambda s: (max(load[s : s + degree]), s))


def rank_loads(bins: Sequence[ElasticBin], costs: Sequence[float], ulysses: int) -> list[float]:
    """Estimated compute per rank of the Ulysses group: each sample's cost split evenly over its bin's ranks."""
    return spread_loads(((b.first, b.degree, sum(costs[i] for i in b.samples)) for b in bins), ulysses)


def assign_elastic(
    tokens: Sequence[int], costs: Sequence[float], ulysses: int, token_budget: int, tolerance: float = 0.05
) -> list[ElasticBin]:
    """Pack one Ulysses group's samples into micro-batches for elastic degrees (pure).

    Each sample gets the smallest degree its length allows (degree_for) and is placed, costliest first, on the
    aligned sub-group whose busiest rank is least loaded: placing samples rather than whole micro-batches is what
    balances the ranks, because a sample's cost (attention quadratic in its own length) does not depend on what it
    is packed with. While the busiest rank exceeds the mean by more than `tolerance`, a sample on it is widened to
    the next degree (on whichever aligned sub-group) if that lowers the maximum (few short samples: sharing them
    beats ranks idling, at the price of their all-to-all). Then the samples of each (sub-group, degree) are cut
    into micro-batches of at most token_budget * degree / ulysses tokens (first fit, longest first), so no rank
    holds more tokens than the fixed degree's. Full-degree micro-batches are the long samples packed up to the
    whole budget."""
    n = len(tokens)
    degrees = [degree_for(t, ulysses, token_budget) for t in tokens]
    first = [0] * n
    load = [0.0] * ulysses

    def moved(i: int, d: int, s: int) -> list[float]:
        """The loads with sample i on ranks s .. s + d - 1 instead of where it is."""
        out = list(load)
        for r in range(first[i], first[i] + degrees[i]):
            out[r] -= costs[i] / degrees[i]
        for r in range(s, s + d):
            out[r] += costs[i] / d
        return out

    for i in sorted(range(n), key=lambda i: (-degrees[i], -costs[i], i)):
        d = degrees[i]
        first[i] = least_loaded_start(load, d)
        for r in range(first[i], first[i] + d):
            load[r] += costs[i] / d
    wider = {d: next(w for w in divisors(ulysses) if w > d and w % d == 0) for d in divisors(ulysses)[:-1]}
    mean = sum(load) / ulysses
    while mean and max(load) > mean * (1 + tolerance):  # each pass lowers the maximum and widens one sample
        busiest = max(range(ulysses), key=lambda r: (load[r], -r))
        options = [
            (max(moved(i, wider[degrees[i]], start)), i, start)
            for i in range(n)
            if degrees[i] < ulysses and first[i] <= busiest < first[i] + degrees[i]
            for start in range(0, ulysses, wider[degrees[i]])
        ]
        if not options or min(options)[0] >= max(load):
            break
        _, i, start = min(options)
        load = moved(i, wider[degrees[i]], start)
        degrees[i], first[i] = wider[degrees[i]], start
    groups: dict[tuple[int, int], list[int]] = {}
    for i in range(n):
        groups.setdefault((-degrees[i], first[i]), []).append(i)
    bins = []
    for (neg_d, start), members in sorted(groups.items()):
        capacity = token_budget * -neg_d // ulysses
        packed: list[list[int]] = []
        used: list[int] = []
        for i in sorted(members, key=lambda i: (-tokens[i], i)):
            b = next((b for b in range(len(packed)) if used[b] + tokens[i] <= capacity), None)
            if b is None:
                packed.append([]), used.append(0)
                b = len(packed) - 1
            packed[b].append(i)
            used[b] += tokens[i]
        bins += [ElasticBin(samples=tuple(sorted(p)), degree=-neg_d, first=start) for p in packed]
    return bins
