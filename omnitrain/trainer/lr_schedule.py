"""Linear warm-up then cosine decay to a floor, as a multiplier of the peak learning rate."""

from __future__ import annotations

import math

MIN_RATIO = 0.1


def warmup_cosine(step: int, warmup_steps: int, total_steps: int, min_ratio: float = MIN_RATIO) -> float:
    """Multiplier for the update numbered `step` (0-based)."""
    if warmup_steps and step < warmup_steps:
        return (step + 1) / warmup_steps
    decay = max(1, total_steps - warmup_steps)
    progress = min(1.0, (step - warmup_steps) / decay)
    return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * progress))
