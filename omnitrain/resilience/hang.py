"""Is the pod hung? Pure judgement over heartbeats and RDMA traffic (the watchdog process feeds it).

Rules (docs/resilience.md):
- Every rank has a leash that depends on its section: `step` gets the step timeout (spec.resilience.
  hangTimeoutSeconds, or less when learned from observed step times x a safety factor after warm-up, never more);
  `checkpoint` and `finish` (final save, waiting for background writes) get a longer leash; `setup`, and a rank
  that has not written yet, get the start-up leash (rendezvous waits for pods still being scheduled); `done` (the
  rank's training is over, its peers may still be finishing) has none.
- A rank past its leash is overdue. Overdue + RDMA counters unchanged for that long (or no RDMA devices) = HANG.
  Overdue + counters still moving = SLOW: logged, not killed.
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass, field
from enum import Enum

from omnitrain.resilience.heartbeat import Heartbeat


class Verdict(str, Enum):
    OK = "ok"
    SLOW = "slow"
    HANG = "hang"


@dataclass(frozen=True)
class HangPolicy:
    timeout: float  # the configured hangTimeoutSeconds: also the ceiling of a learned timeout
    startup_timeout: float | None = None  # setup section / no heartbeat yet; default 10 x timeout
    long_section_timeout: float | None = None  # checkpoint / finish; default 5 x timeout
    learn: bool = True
    warmup_steps: int = 3  # first steps of an attempt (compilation, allocator warm-up) are not learned from
    min_samples: int = 5  # steps after warm-up before a learned timeout is used
    safety_factor: float = 5.0
    min_timeout: float = 5.0  # a learned timeout never goes below this (or below `timeout` if smaller)

    def __post_init__(self) -> None:
        if not self.timeout > 0:
            raise ValueError(
                f"hang timeout must be > 0 seconds, got {self.timeout} (set spec.resilience.hangTimeoutSeconds)"
            )

    @property
    def startup(self) -> float:
        return self.startup_timeout if self.startup_timeout is not None else 10 * self.timeout

    @property
    def long_section(self) -> float:
        return self.long_section_timeout if self.long_section_timeout is not None else 5 * self.timeout


class StepTimeLearner:
    """Collects the duration of each completed step (slowest rank) after warm-up; gives the learned step timeout."""

    def __init__(self, policy: HangPolicy, window: int = 200) -> None:
        self.policy = policy
        self._per_step: dict[int, float] = {}
        self._order: deque[int] = deque()
        self._first_step: int | None = None
        self._window = window

    def add(self, records: dict[int, Heartbeat]) -> None:
        for hb in records.values():
            if hb.step_seconds is None or hb.section != "step" or not math.isfinite(hb.step_seconds):
                continue
            if self._first_step is None or hb.step < self._first_step:
                self._first_step = hb.step
            if hb.step not in self._per_step:
                self._order.append(hb.step)
                while len(self._order) > self._window:
                    self._per_step.pop(self._order.popleft(), None)
            self._per_step[hb.step] = max(self._per_step.get(hb.step, 0.0), hb.step_seconds)

    def samples(self) -> list[float]:
        if self._first_step is None:
            return []
        # Steps are numbered from where the attempt resumed; warm-up = the attempt's first steps.
        return [s for step, s in self._per_step.items() if step >= self._first_step + self.policy.warmup_steps]

    def timeout(self) -> tuple[float, bool]:
        """(step timeout, learned?)."""
        p = self.policy
        samples = self.samples()
        if not p.learn or len(samples) < p.min_samples:
            return p.timeout, False
        floor = min(p.min_timeout, p.timeout)
        return min(p.timeout, max(floor, p.safety_factor * max(samples))), True


@dataclass(frozen=True)
class RankState:
    rank: int | None  # None: a worker that has not written a heartbeat yet
    step: int | None
    section: str
    age: float  # seconds since its last record (or since launch)
    limit: float  # its leash in this section


@dataclass(frozen=True)
class Assessment:
    verdict: Verdict
    ranks: list[RankState]
    overdue: list[RankState] = field(default_factory=list)
    step_timeout: float = 0.0
    learned: bool = False
    rdma_seconds_since_change: float | None = None  # None: no RDMA evidence on this node

    @property
    def min_step(self) -> int | None:
        steps = [r.step for r in self.ranks if r.step is not None]
        return min(steps) if steps else None

    def evidence(self, max_ranks: int = 16) -> dict:
        """Compact, JSON-able; fits a termination message (4 KiB) with many ranks."""

        def brief(r: RankState) -> dict:
            return {
                "rank": r.rank,
                "step": r.step,
                "section": r.section,
                "age_s": round(r.age, 1),
                "limit_s": round(r.limit, 1),
            }

        return {
            "verdict": self.verdict.value,
            "stalled_ranks": [r.rank for r in self.overdue][:max_ranks],
            "last_step_by_rank": {str(r.rank): r.step for r in self.ranks if r.rank is not None},
            "overdue": [brief(r) for r in self.overdue[:max_ranks]],
            "step_timeout_s": round(self.step_timeout, 2),
            "timeout_learned": self.learned,
            "rdma": (
                "no_evidence"
                if self.rdma_seconds_since_change is None
                else {"seconds_since_change": round(self.rdma_seconds_since_change, 1)}
            ),
        }


def _limit(policy: HangPolicy, section: str, step_timeout: float) -> float:
    if section == "step":
        return step_timeout
    if section in ("checkpoint", "finish"):
        return max(policy.long_section, step_timeout)
    if section == "done":
        return math.inf
    return max(policy.startup, step_timeout)  # setup, or not started


def assess(
    now: float,
    records: dict[int, Heartbeat],
    expected_workers: int,
    started_at: float,
    policy: HangPolicy,
    step_timeout: float,
    rdma_seconds_since_change: float | None,
    learned: bool = False,
) -> Assessment:
    """Judge one moment. `started_at`: when the workers were launched (the age of a rank that never wrote)."""
    ranks = [
        RankState(hb.rank, hb.step, hb.section, max(0.0, now - hb.time), _limit(policy, hb.section, step_timeout))
        for hb in sorted(records.values(), key=lambda h: h.rank)
    ]
    for _ in range(max(0, expected_workers - len(records))):
        ranks.append(RankState(None, None, "setup", max(0.0, now - started_at), _limit(policy, "setup", step_timeout)))
    overdue = [r for r in ranks if r.age > r.limit]
    verdict = Verdict.OK
    if overdue:
        window = min(r.limit for r in overdue)
        traffic_moving = rdma_seconds_since_change is not None and rdma_seconds_since_change < window
        verdict = Verdict.SLOW if traffic_moving else Verdict.HANG
    return Assessment(
        verdict=verdict,
        ranks=ranks,
        overdue=overdue,
        step_timeout=step_timeout,
        learned=learned,
        rdma_seconds_since_change=rdma_seconds_since_change,
    )
