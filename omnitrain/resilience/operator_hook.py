"""What the operator calls to decide a gang's recovery and to isolate nodes. Pure; no torch, no kopf.

    from omnitrain.resilience.operator_hook import decide, isolation_patch, watchdog_command
    outcome = decide(pod_views, nodes_by_name, job_status, spec, missing_pods=...)
    # outcome.action.kind: GangRestart (after outcome.action.delay_seconds) | Fail | Wait; outcome.status_patch holds
    # restarts/totalRestarts/noProgressRestarts/checkpointStepAtLastFailure/excludedNodes/lastFailureClass
    for node in outcome.action.isolate_nodes: patch the Node with isolation_patch(node_object)

`pod_views` are anything with the attributes of the operator's PodView (name, node, phase, exit_code, reason,
message, deleting); `nodes_by_name` maps each node a pod ran on to its Node object (dict) or None when it is gone.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable, Mapping

from omnitrain import contract
from omnitrain.resilience.classify import PRECEDENCE, Failure, FailureClass, PodObservation, classify, observe_node
from omnitrain.resilience.recovery import ISOLATION_KEY, ActionKind, RecoveryAction, RecoveryState, plan_recovery
from omnitrain.spec import JobSpec


@dataclass(frozen=True)
class RecoveryOutcome:
    failure: Failure | None
    action: RecoveryAction
    status_patch: dict


def pod_observation(view, missing: bool = False) -> PodObservation:
    """The operator's PodView (duck-typed) -> PodObservation. A missing pod (gone from the API) is a deleted one."""
    reason = getattr(view, "reason", None)
    return PodObservation(
        name=view.name, node=getattr(view, "node", None),
        phase="Failed" if missing else getattr(view, "phase", "Running"),
        exit_code=getattr(view, "exit_code", None), container_reason=reason,
        waiting_reason=getattr(view, "waiting_reason", None),
        termination_message=getattr(view, "message", None), pod_reason=reason,
        disruption_reason=getattr(view, "disruption_reason", None),
        deleted=missing or bool(getattr(view, "deleting", False)))


def last_checkpoint_step(status: Mapping | None) -> int | None:
    step = ((status or {}).get("lastCheckpoint") or {}).get("step")
    return None if step is None or int(step) < 0 else int(step)


def decide(pods: Iterable, nodes: Mapping[str, dict | None], status: Mapping | None, spec: JobSpec,
           missing_pods: Iterable = (), usable_nodes: list[str] | None = None) -> RecoveryOutcome:
    observations = [pod_observation(p) for p in pods] + [pod_observation(p, missing=True) for p in missing_pods]
    node_obs = [observe_node(obj, name) for name, obj in nodes.items()]
    failure = classify(observations, node_obs)
    state = RecoveryState.from_status(dict(status or {}))
    action = plan_recovery(failure, state, spec.resilience, last_checkpoint_step(status),
                           nodes_needed=spec.parallelism.nodes if usable_nodes is not None else None,
                           usable_nodes=usable_nodes)
    patch = action.state.to_status()
    if failure is not None:
        patch["lastFailureClass"] = failure.failure_class.value
    return RecoveryOutcome(failure=failure, action=action, status_patch=patch)


def isolation_patch(node: dict, reason: str = "HardwareFault") -> dict:
    """Merge patch for a Node with hardware evidence: label + NoSchedule taint `omnitrain.dev/isolated`, keeping its
    other taints. Idempotent; a human removes both after repair (docs/resilience.md)."""
    taints = list(((node.get("spec") or {}).get("taints")) or [])
    if not any(t.get("key") == ISOLATION_KEY for t in taints):
        taints.append({"key": ISOLATION_KEY, "value": reason, "effect": "NoSchedule"})
    return {"metadata": {"labels": {ISOLATION_KEY: "true"}}, "spec": {"taints": taints}}


def watchdog_command(train_command: list[str], config_path: str = contract.CONFIG_PATH) -> list[str]:
    """The pod command with the watchdog as the container's main process in front of torchrun."""
    return ["omnitrain", "watchdog", "--config", config_path, "--", *train_command]


@dataclass(frozen=True)
class GangRecovery:
    """The attributes of the operator's `reconcile.Recovery` (restart, reason, message, count_restart,
    exclude_nodes) plus what the resilience policy adds."""

    restart: bool
    reason: str
    message: str
    count_restart: bool = True
    exclude_nodes: tuple[str, ...] = ()
    isolate_nodes: tuple[str, ...] = ()
    delay_seconds: float = 0.0
    wait: bool = False                 # neither restart nor fail yet (e.g. not enough usable nodes)
    failure_class: str | None = None
    status_patch: dict | None = None


def failure_observation(failure) -> PodObservation:
    """The operator's PodFailure (pod, node, exit_code, reason, message: the termination message already unpacked)
    as the pod observation classification reads."""
    message = failure.message
    if message and contract.TerminationMessage.from_json(message) is None:
        message = contract.TerminationMessage(reason=failure.reason, message=message).to_json()
    return PodObservation(name=failure.pod, node=failure.node, phase="Failed", exit_code=failure.exit_code,
                          container_reason=failure.reason, termination_message=message,
                          pod_reason=failure.reason, deleted=failure.reason == "PodLost")


def outranks_node_loss(failure) -> bool:
    """Whether this pod failure explains more than a lost node would (PRECEDENCE: permanent and hardware failures
    do; a crash, e.g. of a rank whose peer's node vanished, does not)."""
    found = classify([failure_observation(failure)])
    return found is not None and PRECEDENCE.index(found.failure_class) < PRECEDENCE.index(FailureClass.NODE_LOST)


def decide_recovery(failure, restarts: int, spec: JobSpec, status: Mapping | None = None,
                    nodes: Mapping[str, dict | None] | None = None) -> GangRecovery:
    """Drop-in for `omnitrain.operator.reconcile.decide_recovery(failure, restarts, spec)` (its PodFailure:
    pod, node, exit_code, reason, message) with the resilience classes and policy. Optional `status` (the job's
    status: no-progress counter, last checkpoint, excluded nodes) and `nodes` (Node objects by name, None = gone).
    Reasons stay the operator's: PermanentFailure / RestartLimitExceeded / GangRestart, plus NoProgress."""
    node_obs = [observe_node(obj, name) for name, obj in (nodes or {}).items()]
    found = classify([failure_observation(failure)], node_obs)
    state = RecoveryState.from_status({**dict(status or {}), "restarts": restarts})
    action = plan_recovery(found, state, spec.resilience, last_checkpoint_step(status),
                           track_progress=status is not None)
    cls = found.failure_class.value if found is not None else None
    patch = {**action.state.to_status(), **({"lastFailureClass": cls} if cls else {})}
    common = dict(exclude_nodes=action.exclude_nodes, isolate_nodes=action.isolate_nodes, failure_class=cls,
                  status_patch=patch, count_restart=found is not None and found.counts_toward_budget)
    if action.kind is ActionKind.GANG_RESTART:
        return GangRecovery(True, "GangRestart", f"[{cls}] {action.message}", delay_seconds=action.delay_seconds,
                            **common)
    if action.kind is ActionKind.WAIT:
        return GangRecovery(False, action.reason, action.message, wait=True, **common)
    reason = {"RestartBudgetExhausted": "RestartLimitExceeded", "NoProgress": "NoProgress"}.get(
        action.reason, "PermanentFailure")
    return GangRecovery(False, reason, f"[{cls}] {action.message}", **common)
