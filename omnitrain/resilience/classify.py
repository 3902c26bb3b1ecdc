"""Why did an attempt fail? Pure classification of observed pods and nodes into one failure class.

Input: what the operator sees (`observe_pod` / `observe_node` turn API objects, as dicts, into small records).
Output: one `Failure` for the attempt — the most specific cause among the pods, because in a gang one root cause
(a hang, a lost node) makes the other ranks fail too (their collectives break: plain crashes).

Classes and what recovery does with them (omnitrain.resilience.recovery):
  Permanent  config/data error (exit 3/4), storage refused a write (exit 5 / reason StorageError: disk full, quota,
             read-only, no permission), image cannot be pulled, bad container config: fail, restart won't help
  Hardware   exit 43 / termination reason HardwareFault: restart without the node, isolate it
  NodeLost   node NotReady or deleted under a running pod: restart without the node
  Preempted  scheduler preemption / eviction / DisruptionTarget, Kueue's TerminationTarget (a Workload evicted or
             preempted), exit 44 / reason Preempted (the ranks stopped on SIGTERM after a final checkpoint): restart
             from that checkpoint, not counted toward maxRestarts
  Hang       exit 42 / HangDetected: restart
  OOM        container OOMKilled: restart (counts; the no-progress counter stops a loop)
  Crash      any other failure: restart
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import Enum

from omnitrain.contract import (
    PERMANENT_EXIT_CODES,
    PERMANENT_REASONS,
    PREEMPTED_REASON,
    STORAGE_ERROR,
    ExitCode,
    TerminationMessage,
)


class FailureClass(str, Enum):
    PERMANENT = "Permanent"
    HARDWARE = "Hardware"
    NODE_LOST = "NodeLost"
    PREEMPTED = "Preempted"
    HANG = "Hang"
    OOM = "OOM"
    CRASH = "Crash"


# Most specific first: the class that explains the others wins.
PRECEDENCE = (
    FailureClass.PERMANENT,
    FailureClass.HARDWARE,
    FailureClass.NODE_LOST,
    FailureClass.PREEMPTED,
    FailureClass.HANG,
    FailureClass.OOM,
    FailureClass.CRASH,
)

# Waiting reasons of a container that will not start however often we restart.
PERMANENT_WAITING_REASONS = frozenset(
    {
        "ErrImagePull",
        "ImagePullBackOff",
        "InvalidImageName",
        "ErrImageNeverPull",
        "CreateContainerConfigError",
        "CreateContainerError",
    }
)
# Pod-level reasons/conditions that mean "taken away", not "broken" (jobset PR #601: do not burn the budget).
DISRUPTION_REASONS = frozenset(
    {
        "Evicted",
        "Preempting",
        "PreemptionByScheduler",
        "EvictionByEvictionAPI",
        "TerminationByKubelet",
        "Shutdown",
        "NodeShutdown",
    }
)
# Kueue's pod integration marks each pod of a Workload it stops (evicted, preempted, deactivated) with this
# condition (reason WorkloadEvictedDueTo<cause>, e.g. ...DueToPreempted; the eviction's words as message) before
# it deletes the pod.
KUEUE_TERMINATION_TARGET = "TerminationTarget"
NODE_LOSS_REASONS = frozenset({"NodeLost", "DeletionByTaintManager", "DeletionByPodGC"})
POD_LOST = "PodLost"  # pod_reason of `missing_pod`
_PERMANENT_EXIT_REASONS = {
    ExitCode.CONFIG: "ConfigError",
    ExitCode.NO_PROGRESS: "NoProgress",
    ExitCode.STORAGE: STORAGE_ERROR,
}


@dataclass(frozen=True)
class PodObservation:
    """One pod as the operator reads it (`observe_pod`); its termination message is parsed once, here."""

    name: str
    node: str | None = None
    phase: str = "Running"  # Pending / Running / Succeeded / Failed / Unknown
    exit_code: int | None = None  # terminated main container
    container_reason: str | None = None  # terminated reason (OOMKilled, Error, ...)
    waiting_reason: str | None = None  # e.g. ImagePullBackOff
    termination_message: str | None = None  # as the container left it (ours is one JSON line)
    pod_reason: str | None = None  # status.reason (Evicted, NodeLost, ...)
    disruption_reason: str | None = None  # reason of a DisruptionTarget (or Kueue TerminationTarget) that is True
    disruption_message: str | None = None  # ... and its message (Kueue's says by what: "Preempted to accommodate")
    deleted: bool = False  # metadata.deletionTimestamp set or the pod vanished
    attempt: int = -1  # the operator's labels (omnitrain.operator.plan)
    rank: int = -1
    pod_ip: str | None = None
    deletion_timestamp: str | None = None
    finished_at: str | None = None  # the main container's terminated.finishedAt (state, else lastState)
    unschedulable: str | None = None  # the scheduler's message while PodScheduled is False for Unschedulable
    scheduling_gates: tuple[str, ...] = ()  # spec.schedulingGates: held back from scheduling (Kueue's admission)
    termination: TerminationMessage | None = field(init=False, default=None, compare=False, repr=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "termination", TerminationMessage.from_json(self.termination_message))

    @property
    def unfinished(self) -> bool:
        return self.phase in ("Pending", "Running", "Unknown")


def missing_pod(name: str) -> PodObservation:
    """A pod of the attempt that is gone from the API (deleted, evicted, its node removed)."""
    return PodObservation(name=name, phase="Failed", pod_reason=POD_LOST, deleted=True)


@dataclass(frozen=True)
class NodeObservation:
    """One Node as the operator reads it (`observe_node`). To classification, not ready means lost; the grace of
    spec.resilience.nodeNotReadySeconds is applied before (omnitrain.resilience.node_grace)."""

    name: str
    ready: bool = True
    exists: bool = True
    not_ready_since: str | None = None  # the Ready condition's lastTransitionTime while it is not True


@dataclass(frozen=True)
class Failure:
    failure_class: FailureClass
    reason: str  # short CamelCase, for conditions/events
    message: str
    pods: tuple[str, ...] = ()
    nodes: tuple[str, ...] = ()  # nodes to keep out of the next attempt
    isolate: bool = False  # taint/label the nodes (hardware evidence)
    step: int | None = None  # last step a pod reported in its termination message
    evidence: dict = field(default_factory=dict)
    primary: PodObservation | None = None  # the pod that explains the attempt (lowest rank, a real exit first)
    detail: str = ""  # what happened to the primary pod alone

    @property
    def counts_toward_budget(self) -> bool:
        return self.failure_class is not FailureClass.PREEMPTED

    @property
    def retryable(self) -> bool:
        return self.failure_class is not FailureClass.PERMANENT


def observe_node(node: dict | None, name: str) -> NodeObservation:
    """A Node object (dict as the API returns it) or None when it is gone."""
    if node is None:
        return NodeObservation(name=name, ready=False, exists=False)
    conditions = (node.get("status") or {}).get("conditions") or []
    condition: dict = next((c for c in conditions if c.get("type") == "Ready"), {})
    ready = condition.get("status") == "True"
    since = None if ready else condition.get("lastTransitionTime")
    return NodeObservation(name=name, ready=ready, exists=True, not_ready_since=since)


def on_lost_node(pod: PodObservation, nodes: Mapping[str, NodeObservation]) -> bool:
    """The pod is unfinished and bound to a Node that is gone or not Ready; a node not in `nodes` is not judged."""
    seen = nodes.get(pod.node) if pod.node and pod.unfinished else None
    return seen is not None and (not seen.exists or not seen.ready)


def observe_pod(
    pod: dict, main_container: str | None = None, attempt_label: str | None = None, rank_label: str | None = None
) -> PodObservation:
    """A Pod object (dict, camelCase as kopf and the API return it) -> the facts classification needs; the labels
    named carry the pod's attempt and rank (-1 when absent)."""
    meta, spec, status = pod.get("metadata") or {}, pod.get("spec") or {}, pod.get("status") or {}
    labels = meta.get("labels") or {}
    statuses = status.get("containerStatuses") or []
    chosen = next((c for c in statuses if c.get("name") == main_container), statuses[0] if statuses else {})
    state = chosen.get("state") or {}
    # A restarted container's interesting end is in lastState (restartPolicy Never keeps it in state).
    terminated = state.get("terminated") or (chosen.get("lastState") or {}).get("terminated") or {}
    waiting = state.get("waiting") or {}
    disruption: dict = next(
        (
            c
            for c in status.get("conditions") or []
            if c.get("type") in ("DisruptionTarget", KUEUE_TERMINATION_TARGET) and c.get("status") == "True"
        ),
        {},
    )
    scheduled: dict = next((c for c in status.get("conditions") or [] if c.get("type") == "PodScheduled"), {})
    unschedulable = (
        scheduled.get("message") or "Unschedulable"
        if scheduled.get("status") == "False" and scheduled.get("reason") == "Unschedulable"
        else None
    )
    return PodObservation(
        name=meta.get("name", ""),
        node=spec.get("nodeName"),
        phase=status.get("phase", "Pending"),
        exit_code=terminated.get("exitCode"),
        container_reason=terminated.get("reason"),
        waiting_reason=waiting.get("reason"),
        termination_message=terminated.get("message") or status.get("message"),
        pod_reason=status.get("reason"),
        disruption_reason=disruption.get("reason") or (disruption.get("type") if disruption else None),
        disruption_message=disruption.get("message"),
        deleted=bool(meta.get("deletionTimestamp")),
        deletion_timestamp=meta.get("deletionTimestamp"),
        attempt=int(labels.get(attempt_label, -1)) if attempt_label else -1,
        rank=int(labels.get(rank_label, -1)) if rank_label else -1,
        pod_ip=status.get("podIP"),
        finished_at=terminated.get("finishedAt"),
        unschedulable=unschedulable,
        scheduling_gates=tuple(g.get("name", "") for g in spec.get("schedulingGates") or []),
    )


def failed_detail(pod: PodObservation) -> str:
    """What is known of why a pod failed, for a message: `exit 1, Error`; a pod the kubelet refused before its
    container ran (phase Failed, e.g. reason OutOfnvidia.com/gpu) has no exit code, and its reason is the pod's."""
    parts = [f"exit {pod.exit_code}" if pod.exit_code is not None else "", pod.container_reason or pod.pod_reason or ""]
    return ", ".join(p for p in parts if p) or "no exit code or reason reported"


def _classify_pod(pod: PodObservation, nodes: dict[str, NodeObservation]) -> tuple[FailureClass, str, str] | None:
    """(class, reason, message) for one pod, or None when this pod shows no failure."""
    msg = pod.termination
    code = pod.exit_code
    if pod.waiting_reason in PERMANENT_WAITING_REASONS:
        return (
            FailureClass.PERMANENT,
            pod.waiting_reason,
            f"pod {pod.name}: container cannot start ({pod.waiting_reason}); fix the image or pod config",
        )
    if (code is not None and code in PERMANENT_EXIT_CODES) or (msg and msg.reason in PERMANENT_REASONS):
        # without a message it was the exit code that matched, so code is set
        reason = msg.reason if msg else _PERMANENT_EXIT_REASONS[ExitCode(code)]  # type: ignore[arg-type]
        detail = f": {msg.message}" if msg and msg.message else ""
        return FailureClass.PERMANENT, reason, f"pod {pod.name} exited with {code} ({reason}){detail}"
    if code == ExitCode.HARDWARE or (msg and msg.reason == "HardwareFault"):
        return (
            FailureClass.HARDWARE,
            "HardwareFault",
            f"pod {pod.name} on {pod.node}: hardware fault" + (f" ({msg.message})" if msg and msg.message else ""),
        )
    node = nodes.get(pod.node) if pod.node and pod.phase != "Succeeded" else None  # a finished rank lost nothing
    node_gone = node is not None and (not node.exists or not node.ready)
    if node_gone or pod.pod_reason in NODE_LOSS_REASONS or pod.disruption_reason in NODE_LOSS_REASONS:
        what = "deleted" if node is not None and not node.exists else "NotReady"
        return FailureClass.NODE_LOST, "NodeLost", f"node {pod.node} of pod {pod.name} is {what}"
    if pod.disruption_reason or pod.pod_reason in DISRUPTION_REASONS:
        why = pod.disruption_reason or pod.pod_reason
        said = f": {pod.disruption_message}" if pod.disruption_message else ""
        return FailureClass.PREEMPTED, "Preempted", f"pod {pod.name} was disrupted ({why}{said})"
    if code == ExitCode.PREEMPTED or (msg and msg.reason == PREEMPTED_REASON):
        saved = f" at step {msg.checkpoint_step}" if msg and msg.checkpoint_step is not None else ""
        return FailureClass.PREEMPTED, "Preempted", f"pod {pod.name} stopped on SIGTERM after a final checkpoint{saved}"
    if code == ExitCode.HANG or (msg and msg.reason == "HangDetected"):
        return (
            FailureClass.HANG,
            "HangDetected",
            f"pod {pod.name}: " + (msg.message if msg and msg.message else "watchdog found no progress"),
        )
    if pod.container_reason == "OOMKilled":
        return FailureClass.OOM, "OOMKilled", f"pod {pod.name} ran out of memory (exit {code})"
    if pod.pod_reason == POD_LOST:
        return FailureClass.CRASH, POD_LOST, f"pod {pod.name} disappeared (deleted, evicted or its node was removed)"
    if pod.phase == "Failed" or (code not in (None, 0)):
        return FailureClass.CRASH, "Crash", f"pod {pod.name} failed ({failed_detail(pod)})"
    if pod.deleted and pod.phase != "Succeeded":
        return FailureClass.CRASH, "PodDeleted", f"pod {pod.name} was deleted while running"
    return None


def _explains(pod: PodObservation) -> tuple[bool, int]:
    """Among pods of one class, the lowest rank with a real exit code explains the others best."""
    return pod.exit_code in (None, 0), pod.rank


def classify(pods: list[PodObservation], nodes: list[NodeObservation] | None = None) -> Failure | None:
    """The attempt's failure, or None when no pod shows one (still running, or all succeeded). One place decides
    among all pods (failed, on a lost node, missing): the class first in PRECEDENCE wins."""
    by_name = {n.name: n for n in nodes or []}
    found = [(pod, c) for pod in pods if (c := _classify_pod(pod, by_name)) is not None]
    if not found:
        return None
    found.sort(key=lambda pc: (PRECEDENCE.index(pc[1][0]), _explains(pc[0])))
    primary, (cls, reason, detail) = found[0]
    same = [pod for pod, c in found if c[0] is cls]
    bad_nodes: tuple[str, ...] = ()
    if cls in (FailureClass.HARDWARE, FailureClass.NODE_LOST):
        bad_nodes = tuple(sorted({p.node for p in same if p.node}))
    steps = [p.termination.step for p in same if p.termination and p.termination.step is not None]
    evidence = next((p.termination.evidence for p in same if p.termination and p.termination.evidence), {})
    message = detail + (f" (and {len(same) - 1} more pod(s) alike)" if len(same) > 1 else "")
    return Failure(
        failure_class=cls,
        reason=reason,
        message=message,
        pods=tuple(p.name for p in same),
        nodes=bad_nodes,
        isolate=cls is FailureClass.HARDWARE,
        step=min(steps) if steps else None,
        evidence=evidence,
        primary=primary,
        detail=detail,
    )
