"""RDMA port traffic counters as hang evidence.

A rank blocked in a collective keeps its GPU kernels waiting, and the node's InfiniBand/RoCE ports stop moving data.
A slow but healthy step still moves data. We read port_xmit_data and port_rcv_data of every port under
/sys/class/infiniband (root configurable, so tests build a fake tree). A node without RDMA devices gives "no
evidence" — the watchdog then decides on heartbeats alone — never an error.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from enum import Enum
from pathlib import Path

ENV_RDMA_ROOT = "OMNITRAIN_RDMA_ROOT"
DEFAULT_RDMA_ROOT = "/sys/class/infiniband"
COUNTERS = ("port_xmit_data", "port_rcv_data")


class Traffic(str, Enum):
    MOVING = "moving"
    STALLED = "stalled"
    NO_EVIDENCE = "no_evidence"


def read_counters(root: str | os.PathLike = DEFAULT_RDMA_ROOT) -> dict[str, int]:
    """{"<device>/<port>/<counter>": value} for every readable counter; {} without devices."""
    values: dict[str, int] = {}
    base = Path(root)
    if not base.is_dir():
        return values
    for counter_file in sorted(base.glob("*/ports/*/counters/*")):
        if counter_file.name not in COUNTERS:
            continue
        try:
            value = int(counter_file.read_text().strip())
        except (OSError, ValueError):
            continue  # a port going away mid-read is not evidence either way
        device, port = counter_file.parents[3].name, counter_file.parents[1].name
        values[f"{device}/{port}/{counter_file.name}"] = value
    return values


def counters_moved(before: dict[str, int], after: dict[str, int]) -> bool | None:
    """True when any counter present in both samples changed; None when they share no counter (no evidence)."""
    common = before.keys() & after.keys()
    if not common:
        return None
    return any(before[k] != after[k] for k in common)


@dataclass
class RdmaMonitor:
    """Remembers when this node's counters last changed. `observe(now)` samples; `traffic(now, window)` judges."""

    root: str | os.PathLike = DEFAULT_RDMA_ROOT
    last_values: dict[str, int] | None = None
    last_change: float | None = None  # time of the last sample that differed from the one before

    def observe(self, now: float) -> dict[str, int]:
        values = read_counters(self.root)
        if not values:
            self.last_values = None
            return values
        if self.last_values is None:
            self.last_change = now  # first sight counts as movement: we cannot know what came before
        elif counters_moved(self.last_values, values):
            self.last_change = now
        self.last_values = values
        return values

    def traffic(self, now: float, window: float) -> Traffic:
        """MOVING when the counters changed within the last `window` seconds."""
        if self.last_values is None or self.last_change is None:
            return Traffic.NO_EVIDENCE
        return Traffic.MOVING if now - self.last_change < window else Traffic.STALLED

    def seconds_since_change(self, now: float) -> float | None:
        return None if self.last_change is None or self.last_values is None else now - self.last_change
