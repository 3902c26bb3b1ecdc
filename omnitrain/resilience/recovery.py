"""What to do about a failed attempt. Pure: (failure, recovery state, spec.resilience) -> action + next state.

Rules:
- Permanent failures fail the job at once (restarting cannot fix a config or image error).
- Preemption/eviction restarts without using the budget and without touching the no-progress counter: it counts in
  `preemptions`, not in `total_restarts` (the job did not fail; it was asked to make room).
- Other failures count toward maxRestarts; the job fails when the budget is spent.
- No-progress: a counted failure whose newest complete checkpoint is not newer than at the previous counted failure
  adds one; maxNoProgressRestarts of those in a row end the job (a crash loop that never saves a new checkpoint).
- Back-off before a counted restart: restartBackoffSeconds x 2^(counted restarts so far), capped.
- Hardware evidence isolates the node (taint/label omnitrain.dev/isolated) and excludes it, when isolateNodes;
  a lost node is left to the scheduler. Excluded nodes accumulate over attempts (status.excludedNodes).
- With a known count of usable nodes smaller than the job needs, the action is Wait (not Fail): capacity may return.

The action is one of GangRestart / Fail / Wait (each has `kind`); omnitrain.resilience.decide is the entry point
that classifies first and gives the operator its reasons.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from enum import Enum
from typing import ClassVar

from omnitrain.resilience.classify import Failure, FailureClass
from omnitrain.spec import ResilienceSpec
from omnitrain.status import JobStatus

ISOLATION_KEY = "omnitrain.dev/isolated"  # label and NoSchedule taint key put on a node with hardware evidence
MAX_BACKOFF_SECONDS = 600.0


class ActionKind(str, Enum):
    GANG_RESTART = "GangRestart"
    FAIL = "Fail"
    WAIT = "Wait"


@dataclass(frozen=True)
class RecoveryState:
    """What the operator keeps in status between attempts (survives operator restarts)."""

    restarts: int = 0  # counted toward maxRestarts
    total_restarts: int = 0  # all gang restarts after a failure, counted or not; preemptions are not failures
    preemptions: int = 0  # attempts stopped to make room (Kueue preemption, eviction, drain): no restart spent
    no_progress_restarts: int = 0
    checkpoint_step_at_last_failure: int | None = None
    excluded_nodes: tuple[str, ...] = ()

    def apply(self, status: JobStatus) -> JobStatus:
        """`status` with this state written into it (a copy)."""
        return status.model_copy(
            update={
                "restarts": self.restarts,
                "total_restarts": self.total_restarts,
                "preemptions": self.preemptions,
                "no_progress_restarts": self.no_progress_restarts,
                "checkpoint_step_at_last_failure": self.checkpoint_step_at_last_failure,
                "excluded_nodes": list(self.excluded_nodes),
            }
        )

    def to_status(self) -> JobStatus:
        return self.apply(JobStatus())

    @classmethod
    def from_status(cls, status: JobStatus | None) -> RecoveryState:
        s = status or JobStatus()
        return cls(
            restarts=s.restarts or 0,
            total_restarts=s.total_restarts or 0,
            preemptions=s.preemptions or 0,
            no_progress_restarts=s.no_progress_restarts or 0,
            checkpoint_step_at_last_failure=s.checkpoint_step_at_last_failure,
            excluded_nodes=tuple(s.excluded_nodes),
        )


@dataclass(frozen=True)
class _Action:
    reason: str  # CamelCase for a condition/event
    message: str
    exclude_nodes: tuple[str, ...] = ()  # all nodes the next attempt must avoid (accumulated)
    isolate_nodes: tuple[str, ...] = ()  # nodes to taint/label now
    state: RecoveryState = field(default_factory=RecoveryState)  # the state to store with this action
    failure: Failure | None = None  # what was classified (None: nothing failed)


@dataclass(frozen=True)
class GangRestart(_Action):
    """Tear the attempt down and start the next one after `delay_seconds`."""

    kind: ClassVar[ActionKind] = ActionKind.GANG_RESTART
    delay_seconds: float = 0.0
    counted: bool = True  # used one of resilience.maxRestarts


@dataclass(frozen=True)
class Fail(_Action):
    """End the job Failed: restarting cannot help, or the budget is spent."""

    kind: ClassVar[ActionKind] = ActionKind.FAIL


@dataclass(frozen=True)
class Wait(_Action):
    """Neither restart nor fail yet (e.g. too few usable nodes, a node NotReady within its grace): look again later;
    the state is not advanced."""

    kind: ClassVar[ActionKind] = ActionKind.WAIT
    recheck_after_seconds: float | None = None  # when the picture changes by itself (a grace ends); None: unknown


RecoveryAction = GangRestart | Fail | Wait


def node_list(names) -> str:
    """Node names for a message: `node-a, node-b`, or `none` (never a Python list's repr)."""
    return ", ".join(sorted(names)) or "none"


def backoff_seconds(base: float, counted_restarts: int, cap: float = MAX_BACKOFF_SECONDS) -> float:
    if base <= 0:
        return 0.0
    return float(min(cap, base * 2**counted_restarts))


def _without_progress(last_checkpoint_step: int | None) -> str:
    """User text: a job that never saved a checkpoint has no step to name."""
    if last_checkpoint_step is None:
        return "without any checkpoint"
    return f"without a newer checkpoint than step {last_checkpoint_step}"


def plan_recovery(
    failure: Failure | None,
    state: RecoveryState,
    policy: ResilienceSpec,
    last_checkpoint_step: int | None,
    nodes_needed: int | None = None,
    usable_nodes: list[str] | None = None,
) -> RecoveryAction:
    """`last_checkpoint_step`: the job's newest complete checkpoint now (None: none yet).
    `usable_nodes`: schedulable, Ready nodes for the job if known (before this failure's exclusions)."""
    if failure is None:
        return Wait("NoFailure", "no pod shows a failure", state=state)
    cls = failure.failure_class
    if cls is FailureClass.PERMANENT:
        return Fail(
            failure.reason,
            f"{failure.message}; not restarting: restarting cannot fix this",
            state=state,
            failure=failure,
        )

    # Hardware evidence keeps a node out (when isolateNodes). A lost node is not excluded: while NotReady the
    # scheduler avoids it anyway, and one that comes back (or is replaced under the same name) is fine to use.
    isolate = failure.nodes if (failure.isolate and policy.isolate_nodes) else ()
    excluded = tuple(sorted(set(state.excluded_nodes) | set(isolate)))
    if failure.counts_toward_budget:
        next_state = replace(state, total_restarts=state.total_restarts + 1, excluded_nodes=excluded)
    else:
        next_state = replace(state, preemptions=state.preemptions + 1, excluded_nodes=excluded)

    if failure.counts_toward_budget:
        if state.restarts >= policy.max_restarts:
            return Fail(
                "RestartBudgetExhausted",
                f"{failure.message}; {state.restarts} restart(s) used of maxRestarts={policy.max_restarts} "
                "(raise spec.resilience.maxRestarts to allow more)",
                isolate_nodes=isolate,
                exclude_nodes=excluded,
                state=replace(state, excluded_nodes=excluded),
                failure=failure,
            )
        previous = state.checkpoint_step_at_last_failure
        if state.restarts == 0:
            no_progress = 0  # the first failure only sets the reference point
        else:
            advanced = last_checkpoint_step is not None and (previous is None or last_checkpoint_step > previous)
            no_progress = 0 if advanced else state.no_progress_restarts + 1
        next_state = replace(
            next_state,
            restarts=state.restarts + 1,
            no_progress_restarts=no_progress,
            checkpoint_step_at_last_failure=last_checkpoint_step,
        )
        if no_progress >= policy.max_no_progress_restarts:
            # no restart happens: the restart counters stay, the no-progress record is kept
            return Fail(
                "NoProgress",
                f"{failure.message}; {no_progress} restart(s) in a row {_without_progress(last_checkpoint_step)} "
                f"(maxNoProgressRestarts={policy.max_no_progress_restarts})",
                isolate_nodes=isolate,
                exclude_nodes=excluded,
                failure=failure,
                state=replace(next_state, restarts=state.restarts, total_restarts=state.total_restarts),
            )
        delay = backoff_seconds(policy.restart_backoff_seconds, state.restarts)
    else:
        delay = 0.0

    if nodes_needed is not None and usable_nodes is not None:
        left = [n for n in usable_nodes if n not in excluded]
        if len(left) < nodes_needed:
            return Wait(
                "InsufficientNodes",
                f"{failure.message}; {len(left)} usable node(s) without the excluded ({node_list(excluded)}), "
                f"{nodes_needed} needed: waiting for capacity",
                exclude_nodes=excluded,
                isolate_nodes=isolate,
                state=state,
                failure=failure,
            )

    # The operator learns of checkpoints from the progress scrape (every resync): "none reported" is not "none
    # exists", and the workers resume from the newest complete checkpoint they find either way.
    resume = (
        "from the newest complete checkpoint (none reported yet)"
        if last_checkpoint_step is None
        else f"from checkpoint step {last_checkpoint_step} or newer"
    )
    counted = (
        f"restart {next_state.restarts}/{policy.max_restarts}"
        if failure.counts_toward_budget
        else "not counted toward maxRestarts"
    )
    extra = f", excluding {node_list(excluded)}" if excluded else ""
    return GangRestart(
        failure.reason,
        f"{failure.message}; {'in-place ' if policy.restart_mode == 'InPlace' else ''}gang restart {resume} "
        f"({counted}{extra})",
        delay_seconds=delay,
        exclude_nodes=excluded,
        isolate_nodes=isolate,
        state=next_state,
        failure=failure,
        counted=failure.counts_toward_budget,
    )
