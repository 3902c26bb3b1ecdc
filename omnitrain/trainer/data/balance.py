"""Estimated compute of a sample and its assignment to bins (micro-batches of data-parallel ranks).

cost(L) = linear * L + quadratic * L^2 per sample of L tokens, from the model's FLOPs (omnitrain.model.flops):
the per-token matmuls and the attention term. Pure functions."""

from __future__ import annotations

from dataclasses import dataclass

from omnitrain.model.config import ModelConfig
from omnitrain.model.flops import TokenCounts, attention_core_flops, block_flops


@dataclass(frozen=True)
class CostModel:
    linear: float
    quadratic: float

    @classmethod
    def of(cls, cfg: ModelConfig) -> "CostModel":
        one = TokenCounts(text=0, patches=1, samples=1, sum_sq_seqlens=1)
        quadratic = attention_core_flops(cfg, one)
        return cls(linear=block_flops(cfg, one) - quadratic, quadratic=quadratic)

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
