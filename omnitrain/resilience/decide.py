"""The one recovery decision the operator asks for. Pure; no torch, no kopf.

    action = decide(pods, nodes, status, spec, missing=[names of the attempt's pods gone from the API])

inputs   pods (PodObservation: termination message parsed once, when the pod was read), nodes (NodeObservation by
         name; a node not listed is not judged), the job's JobStatus (recovery counters, last checkpoint), the spec
grace    omnitrain.resilience.node_grace: a NotReady node within spec.resilience.nodeNotReadySeconds is not lost
         unless a pod of the attempt fails too; with no failure that is Wait NodeNotReady until its deadline
classify omnitrain.resilience.classify: every pod, lost node and missing pod at once; the first class in PRECEDENCE
         explains the others (a crash caused by a lost peer node is a NodeLost)
plan     omnitrain.resilience.recovery.plan_recovery: budget, back-off, no-progress counter, isolation/exclusion
result   None (nothing failed) or GangRestart / Fail / Wait, with the operator's reasons: GangRestart;
         PermanentFailure / StorageError / RestartLimitExceeded / NoProgress; InsufficientNodes, NodeNotReady
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import replace

from omnitrain.contract import STORAGE_ERROR
from omnitrain.resilience import node_grace
from omnitrain.resilience.classify import Failure, FailureClass, NodeObservation, PodObservation, classify, missing_pod
from omnitrain.resilience.recovery import Fail, GangRestart, RecoveryAction, RecoveryState, Wait, plan_recovery
from omnitrain.spec import JobSpec
from omnitrain.status import JobStatus, LastFailure

# The operator's reasons for a Fail; a permanent failure keeps the pod's own reason where it says what to fix
# (StorageError: the disk, not the job), else PermanentFailure.
_FAIL_REASONS = {
    "RestartBudgetExhausted": "RestartLimitExceeded",
    "NoProgress": "NoProgress",
    STORAGE_ERROR: STORAGE_ERROR,
}
MAX_FAILURE_MESSAGE = 500


def last_checkpoint_step(status: JobStatus) -> int | None:
    step = status.last_checkpoint.step if status.last_checkpoint else None
    return None if step is None or step < 0 else step


def decide(
    pods: Sequence[PodObservation],
    nodes: Mapping[str, NodeObservation],
    status: JobStatus,
    spec: JobSpec,
    missing: Iterable[str] = (),
    usable_nodes: list[str] | None = None,
    now: str | None = None,
) -> RecoveryAction | None:
    """What to do about the current attempt: None while no pod shows a failure. `usable_nodes`: the schedulable,
    Ready nodes when known (then too few of them is a Wait, not a restart that cannot be scheduled). `now`: the
    operator's time, for spec.resilience.nodeNotReadySeconds (None: a NotReady node is lost at once)."""
    everything = [*pods, *(missing_pod(name) for name in missing)]
    grace_seconds = spec.resilience.node_not_ready_seconds
    waiting = node_grace.nodes_in_grace(pods, nodes, now, grace_seconds)
    failure = classify(everything, list(node_grace.as_ready(nodes, waiting).values()))
    if failure is None:
        return _node_wait(waiting, status, grace_seconds) if waiting else None
    if waiting:  # the job's own evidence agrees: those nodes are lost (classified again, never to None)
        failure = classify(everything, list(nodes.values())) or failure
    action = plan_recovery(
        failure,
        RecoveryState.from_status(status),
        spec.resilience,
        last_checkpoint_step(status),
        nodes_needed=spec.parallelism.nodes if usable_nodes is not None else None,
        usable_nodes=node_grace.usable(usable_nodes, nodes),
    )
    tag = f"[{failure.failure_class.value}]"
    match action:
        case GangRestart():
            return replace(action, reason="GangRestart", message=f"{tag} {action.message}")
        case Fail():
            return replace(
                action, reason=_FAIL_REASONS.get(action.reason, "PermanentFailure"), message=f"{tag} {action.message}"
            )
        case Wait():
            return action


def _node_wait(waiting: Mapping[str, node_grace.NodeGrace], status: JobStatus, grace_seconds: int) -> Wait:
    """Nothing failed but nodes are NotReady within their grace: no restart, look again at the first deadline."""
    return Wait(
        node_grace.NODE_NOT_READY,
        node_grace.wait_message(waiting.values(), grace_seconds),
        state=RecoveryState.from_status(status),
        recheck_after_seconds=min(g.seconds_left for g in waiting.values()),
    )


def last_failure(failure: Failure, now: str) -> LastFailure:
    """status.lastFailure: the pod that explains the attempt, in its own words (its termination message's reason,
    else the container's or the pod's), or NodeLost / PodLost when it could not say."""
    pod = failure.primary
    if pod is None:
        return LastFailure(reason=failure.reason, message=failure.detail[:MAX_FAILURE_MESSAGE], time=now)
    term = pod.termination
    if failure.failure_class is FailureClass.NODE_LOST:
        reason, message, exit_code = "NodeLost", failure.detail, None
    else:
        reason = (
            (term.reason if term else None)
            or pod.container_reason
            or pod.pod_reason
            or pod.disruption_reason
            or pod.waiting_reason
            or "Error"
        )
        message = (
            term.message
            if term and term.message
            else (
                failure.detail
                if pod.termination_message is None and pod.exit_code is None
                else pod.termination_message or ""
            )
        )
        exit_code = pod.exit_code
    return LastFailure(
        pod=pod.name, node=pod.node, exit_code=exit_code, reason=reason, message=message[:MAX_FAILURE_MESSAGE], time=now
    )


__all__ = ["decide", "last_checkpoint_step", "last_failure"]
