"""The operator's decisions as pure functions: (job spec, job status, observed pods, now) -> actions + new status.

Level-triggered: every call looks at the whole picture again, so a lost event or an operator restart costs nothing.
The thin layer in handlers.py/kube.py reads the objects, calls `reconcile`, and carries out what it returns.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from pydantic import ValidationError

from omnitrain.contract import TerminationMessage
from omnitrain.operator import plan
from omnitrain.resilience.classify import observe_node
from omnitrain.resilience.operator_hook import outranks_node_loss
from omnitrain.spec import JobSpec, validate_job_spec

PENDING, RUNNING, RESTARTING, SUSPENDED, SUCCEEDED, FAILED = (
    "Pending", "Running", "Restarting", "Suspended", "Succeeded", "Failed")
TERMINAL = (SUCCEEDED, FAILED)
FORCE_DELETE_AFTER_SECONDS = 60   # after the deletion deadline: the kubelet had its grace period and then some
CONDITION_TYPES = ("Valid", "Created", "Running", "Restarting", "Suspended", "Succeeded", "Failed")


@dataclass(frozen=True)
class PodView:
    """What the decisions need to know about one training pod."""

    name: str
    attempt: int
    rank: int
    phase: str                       # Pending | Running | Succeeded | Failed | Unknown
    node: str | None = None
    pod_ip: str | None = None
    exit_code: int | None = None
    reason: str | None = None
    message: str | None = None
    deleting: bool = False
    deletion_timestamp: str | None = None

    @classmethod
    def from_pod(cls, pod: dict) -> "PodView":
        meta, status = pod.get("metadata", {}), pod.get("status") or {}
        labels = meta.get("labels") or {}
        exit_code = reason = message = None
        for cs in status.get("containerStatuses") or []:
            if cs.get("name") != plan.MAIN_CONTAINER:
                continue
            term = (cs.get("state") or {}).get("terminated") or (cs.get("lastState") or {}).get("terminated")
            if term:
                exit_code, reason, message = term.get("exitCode"), term.get("reason"), term.get("message")
        return cls(name=meta["name"], attempt=int(labels.get(plan.LABEL_ATTEMPT, -1)),
                   rank=int(labels.get(plan.LABEL_NODE_RANK, -1)), phase=status.get("phase") or "Pending",
                   node=(pod.get("spec") or {}).get("nodeName"), pod_ip=status.get("podIP"), exit_code=exit_code,
                   reason=reason or status.get("reason"), message=message or status.get("message"),
                   deleting=bool(meta.get("deletionTimestamp")), deletion_timestamp=meta.get("deletionTimestamp"))


@dataclass(frozen=True)
class Event:
    type: str      # Normal | Warning
    reason: str
    message: str


@dataclass
class Decision:
    """What to do now. Order of execution: delete pods, create children, patch status, post events."""

    delete_pods: list[str] = field(default_factory=list)
    create_attempt: int | None = None          # create (if absent) the children of this attempt
    status: dict = field(default_factory=dict)  # the full new status
    events: list[Event] = field(default_factory=list)
    requeue: bool = False                       # look again soon (waiting for pods to go away)
    isolate_nodes: list[str] = field(default_factory=list)  # label+taint these nodes (hardware evidence)
    force_delete_pods: list[str] = field(default_factory=list)  # stuck terminating (node dead): grace period 0


# ---- recovery policy -------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class PodFailure:
    pod: str
    node: str | None
    exit_code: int | None
    reason: str
    message: str


@dataclass(frozen=True)
class Recovery:
    restart: bool                    # gang restart (True) or fail the job (False)
    reason: str
    message: str
    count_restart: bool = True       # counts toward resilience.maxRestarts
    exclude_nodes: tuple[str, ...] = ()


def first_failure(pods: list[PodView]) -> PodFailure | None:
    """The failure that explains the attempt: the lowest-rank failed pod (others usually fail because it did)."""
    failed = sorted((p for p in pods if p.phase == "Failed"), key=lambda p: (p.exit_code in (None, 0), p.rank))
    if not failed:
        return None
    p = failed[0]
    term = TerminationMessage.from_json(p.message)
    detail = term.message if term and term.message else (p.message or "")
    reason = term.reason if term else (p.reason or "Error")
    return PodFailure(pod=p.name, node=p.node, exit_code=p.exit_code, reason=reason, message=detail[:500])


def node_lost(pod: PodView, nodes: dict[str, dict | None] | None) -> bool:
    """The pod is bound to a Node that is gone (None) or not Ready; a node not in `nodes` is not judged."""
    if not pod.node or nodes is None or pod.node not in nodes or pod.phase in ("Succeeded", "Failed"):
        return False
    seen = observe_node(nodes[pod.node], pod.node)
    return not seen.exists or not seen.ready


def node_lost_failure(pods: list[PodView], nodes: dict[str, dict | None] | None) -> PodFailure | None:
    """The lowest-rank pod on a lost node, as a failure: the node's kubelet will never report the pod's end, and
    waiting for the pod garbage collector (~40 s after a Node is deleted, minutes for NotReady) idles the gang."""
    lost = sorted((p for p in pods if node_lost(p, nodes)), key=lambda p: p.rank)
    if not lost:
        return None
    p = lost[0]
    what = "deleted" if nodes is not None and nodes.get(p.node) is None else "NotReady"
    return PodFailure(pod=p.name, node=p.node, exit_code=None, reason="NodeLost",
                      message=f"node {p.node} of pod {p.name} is {what}")


def teardown(pods: list[PodView], nodes: dict[str, dict | None] | None,
             unfinished_only: bool = False) -> tuple[list[str], list[str]]:
    """(pods to delete, pods to force-delete): those on a lost node get grace period 0, since no kubelet will
    confirm a normal deletion; pods already terminating are left to it."""
    lost = [p.name for p in pods if node_lost(p, nodes)]
    delete = [p.name for p in pods if not p.deleting and p.name not in lost
              and (not unfinished_only or p.phase in ("Pending", "Running", "Unknown"))]
    return delete, lost


def final_progress(pods: list[PodView], checkpoint_root: str, now: str) -> dict:
    """Status fields from rank 0's termination message at success: the last step, the final checkpoint and the
    job's goodput as the trainer computed them (the progress scrape may have missed the last seconds, and the
    goodput needs the whole metrics log on the persistent volume, which the operator does not mount)."""
    rank0 = next((p for p in pods if p.rank == 0), None)
    term = TerminationMessage.from_json(rank0.message) if rank0 is not None else None
    if term is None:
        return {}
    fields: dict = {}
    if term.step is not None:
        fields["currentStep"] = term.step
    if term.checkpoint_step:
        fields["lastCheckpoint"] = {"step": term.checkpoint_step, "path": checkpoint_root, "time": now}
    if isinstance(term.goodput, dict):
        fields["goodput"] = term.goodput
    return fields


def decide_recovery(failure: PodFailure, restarts: int, spec: JobSpec, status: dict | None = None,
                    nodes: dict[str, dict | None] | None = None) -> Recovery:
    """The hook for gang restarts, decided by omnitrain.resilience (classes, budget, preemptions not counted,
    no-progress, hardware isolation): permanent failures fail the job; anything else restarts the whole gang until
    resilience.maxRestarts is spent; hardware faults keep their node out of later attempts (isolateNodes).
    The result has Recovery's attributes plus isolate_nodes, delay_seconds and status_patch (docs/resilience.md)."""
    from omnitrain.resilience.operator_hook import decide_recovery as resilience_decide_recovery
    return resilience_decide_recovery(failure, restarts, spec, status=status, nodes=nodes)


def add_seconds(timestamp: str, seconds: float) -> str:
    """RFC 3339 (second resolution, UTC, as the operator writes them) plus seconds; comparable as strings."""
    import datetime as dt
    t = dt.datetime.strptime(timestamp, "%Y-%m-%dT%H:%M:%SZ") + dt.timedelta(seconds=math.ceil(seconds))
    return t.strftime("%Y-%m-%dT%H:%M:%SZ")


# ---- conditions ------------------------------------------------------------------------------------------------

def set_condition(conditions: list[dict], type_: str, status: bool, reason: str, message: str, now: str) -> list[dict]:
    """Replace one condition; lastTransitionTime changes only when the status flips."""
    value = "True" if status else "False"
    out, found = [], False
    for c in conditions:
        if c.get("type") == type_:
            found = True
            changed = c.get("status") != value
            out.append({"type": type_, "status": value, "reason": reason, "message": message,
                        "lastTransitionTime": now if changed else c.get("lastTransitionTime", now)})
        else:
            out.append(c)
    if not found:
        out.append({"type": type_, "status": value, "reason": reason, "message": message, "lastTransitionTime": now})
    return out


def condition(status: dict, type_: str) -> dict | None:
    return next((c for c in status.get("conditions") or [] if c.get("type") == type_), None)


# ---- the reconcile decision ------------------------------------------------------------------------------------

def parse_spec(raw: dict) -> tuple[JobSpec | None, list[str]]:
    """The spec, or messages naming each bad field and its fix."""
    try:
        spec = JobSpec.model_validate(raw or {})
    except ValidationError as err:
        msgs = []
        for e in err.errors():
            where = "spec." + ".".join(str(x) for x in e["loc"])
            msgs.append(f"{where}: {e['msg']}")
        return None, msgs
    return spec, [str(e) for e in validate_job_spec(spec)]


def reconcile(job: plan.JobRef, raw_spec: dict, status: dict | None, pods: list[PodView], now: str,
              generation: int | None = None, nodes: dict[str, dict | None] | None = None) -> Decision:
    """`nodes`: the Node objects the unfinished pods are bound to, by name; None for a node that is gone (404).
    Pods on a gone or NotReady node count as lost at once and are force-deleted (no kubelet will confirm)."""
    st = dict(status or {})
    valid = condition(st, "Valid") or {}
    if (st.get("phase") == FAILED and valid.get("status") == "False" and generation is not None
            and st.get("observedGeneration") != generation):
        st = {}   # the spec that failed validation was edited: judge the new one from scratch (nothing was created)
    d = Decision(status=st)
    conditions = list(st.get("conditions") or [])
    phase = st.get("phase")
    if generation is not None:
        st["observedGeneration"] = generation

    if phase in TERMINAL:
        # Finished jobs keep their record; leftover running pods (a failed gang) are cleaned up.
        d.delete_pods = [p.name for p in pods if p.phase in ("Pending", "Running", "Unknown") and not p.deleting]
        return d

    spec, problems = parse_spec(raw_spec)
    if problems:
        msg = "; ".join(problems)
        st.update(phase=FAILED, message=f"invalid spec: {msg}", completionTime=now)
        conditions = set_condition(conditions, "Valid", False, "InvalidSpec", msg, now)
        conditions = set_condition(conditions, "Failed", True, "InvalidSpec", msg, now)
        st["conditions"] = conditions
        d.events.append(Event("Warning", "InvalidSpec", msg))
        return d
    assert spec is not None
    if condition(st, "Valid") is None:
        conditions = set_condition(conditions, "Valid", True, "SpecValid", "spec passed validation", now)
    st.setdefault("startTime", now)
    st.setdefault("attempt", 0)
    st.setdefault("restarts", 0)
    st.setdefault("totalRestarts", 0)
    st.setdefault("totalSteps", spec.training.steps)
    attempt = int(st["attempt"])
    current = [p for p in pods if p.attempt == attempt]
    stale = [p for p in pods if p.attempt != attempt]
    d.delete_pods = [p.name for p in stale if not p.deleting]

    if spec.suspend:
        d.delete_pods = [p.name for p in pods if not p.deleting]
        if phase != SUSPENDED:
            d.events.append(Event("Normal", "Suspended", f"suspended at attempt {attempt}; pods deleted"))
        st.update(phase=SUSPENDED, message="suspended: no pods; set spec.suspend=false to resume")
        conditions = set_condition(conditions, "Suspended", True, "Suspended", "spec.suspend is true", now)
        conditions = set_condition(conditions, "Running", False, "Suspended", "spec.suspend is true", now)
        st["conditions"] = conditions
        d.requeue = bool(pods)
        return d

    if phase == SUSPENDED:
        # Resuming starts a fresh attempt (from the newest checkpoint); it does not count as a failure restart.
        attempt += 1
        st.update(attempt=attempt, phase=RESTARTING, message=f"resuming as attempt {attempt}",
                  totalRestarts=int(st["totalRestarts"]) + 1)
        conditions = set_condition(conditions, "Suspended", False, "Resumed", "spec.suspend is false", now)
        d.events.append(Event("Normal", "Resumed", f"resuming as attempt {attempt}"))
        current, stale = [], pods
        phase = RESTARTING
        d.delete_pods = [p.name for p in pods if not p.deleting]

    if phase == RESTARTING and stale:
        # A pod on a dead node stays Terminating forever (no kubelet confirms); the next gang must not wait on it.
        d.force_delete_pods = [p.name for p in stale if node_lost(p, nodes) or (
            p.deleting and p.deletion_timestamp
            and add_seconds(p.deletion_timestamp, FORCE_DELETE_AFTER_SECONDS) <= now)]
        d.delete_pods = [n for n in d.delete_pods if n not in d.force_delete_pods]
        st["conditions"] = conditions
        d.requeue = True      # the whole old gang must be gone before the new one starts (ports, GPUs)
        return d
    if phase == RESTARTING and st.get("restartNotBefore") and now < st["restartNotBefore"]:
        st["conditions"] = conditions
        d.requeue = True      # back-off between counted restarts (resilience.restartBackoffSeconds)
        return d

    launched = st.get("launchedAttempt")
    expected = {plan.pod_name(job.name, attempt, r) for r in range(spec.parallelism.nodes)}
    present = {p.name for p in current}
    if launched != attempt:
        if expected - present or phase in (None, RESTARTING):
            d.create_attempt = attempt
        st["launchedAttempt"] = attempt   # written only after the creations succeed (kube layer order)
        st["children"] = {"pods": sorted(expected, key=lambda n: int(n.rsplit("-n", 1)[1])),
                          "service": plan.service_name(job.name), "configMap": plan.config_map_name(job.name)}
        conditions = set_condition(conditions, "Created", True, "ChildrenCreated",
                                   f"attempt {attempt}: {len(expected)} pods, service and config", now)
        if phase != RESTARTING:
            d.events.append(Event("Normal", "Created", f"created {len(expected)} pods for attempt {attempt}"))
        else:
            d.events.append(Event("Normal", "Restarted", f"created {len(expected)} pods for attempt {attempt}"))
        conditions = set_condition(conditions, "Restarting", False, "Launched", f"attempt {attempt} launched", now)
        st.update(phase=PENDING, message=f"attempt {attempt}: waiting for pods")
        st["conditions"] = conditions
        return d

    # Launched: a missing pod of this attempt was lost (deleted, evicted, node gone).
    missing = sorted(expected - present)
    failure = first_failure(current)
    lost = node_lost_failure(current, nodes)
    if lost is not None and (failure is None or not outranks_node_loss(failure)):
        failure = lost
    if failure is None and missing:
        failure = PodFailure(pod=missing[0], node=None, exit_code=None, reason="PodLost",
                             message="the pod disappeared (deleted, evicted or its node was removed)")
    if failure is not None:
        st["lastFailure"] = {"pod": failure.pod, "node": failure.node, "exitCode": failure.exit_code,
                             "reason": failure.reason, "message": failure.message, "time": now}
        st["lastFailure"] = {k: v for k, v in st["lastFailure"].items() if v is not None}
        recovery = decide_recovery(failure, int(st["restarts"]), spec, status=st, nodes=nodes)
        d.isolate_nodes = list(getattr(recovery, "isolate_nodes", ()) or ())
        # the no-progress counter, checkpoint at this failure, failure class: kept for the next decision
        st.update({k: v for k, v in (getattr(recovery, "status_patch", None) or {}).items()
                   if k not in ("restarts", "totalRestarts", "excludedNodes")})
        if not recovery.restart:
            st.update(phase=FAILED, message=recovery.message, completionTime=now)
            conditions = set_condition(conditions, "Running", False, recovery.reason, recovery.message, now)
            conditions = set_condition(conditions, "Failed", True, recovery.reason, recovery.message, now)
            st["conditions"] = conditions
            d.delete_pods, d.force_delete_pods = teardown(pods, nodes, unfinished_only=True)
            d.events.append(Event("Warning", recovery.reason, recovery.message))
            return d
        excluded = sorted(set(st.get("excludedNodes") or []) | set(recovery.exclude_nodes))
        if excluded:
            st["excludedNodes"] = excluded
        delay = float(getattr(recovery, "delay_seconds", 0.0) or 0.0)
        if delay > 0:
            st["restartNotBefore"] = add_seconds(now, delay)
        else:
            st.pop("restartNotBefore", None)
        st.update(attempt=attempt + 1, phase=RESTARTING, message=recovery.message,
                  restarts=int(st["restarts"]) + (1 if recovery.count_restart else 0),
                  totalRestarts=int(st["totalRestarts"]) + 1)
        conditions = set_condition(conditions, "Running", False, recovery.reason, recovery.message, now)
        conditions = set_condition(conditions, "Restarting", True, recovery.reason, recovery.message, now)
        st["conditions"] = conditions
        d.delete_pods, d.force_delete_pods = teardown(pods, nodes)
        d.events.append(Event("Warning", recovery.reason, recovery.message))
        d.requeue = True
        return d

    phases = [p.phase for p in current]
    if phases and all(ph == "Succeeded" for ph in phases):
        msg = f"all {len(phases)} pods of attempt {attempt} succeeded"
        st.update(phase=SUCCEEDED, message=msg, completionTime=now)
        st.update(final_progress(current, plan.checkpoint_root(spec, job.name), now))
        conditions = set_condition(conditions, "Running", False, "Completed", msg, now)
        conditions = set_condition(conditions, "Succeeded", True, "Completed", msg, now)
        d.events.append(Event("Normal", "Succeeded", msg))
    elif phases and all(ph in ("Running", "Succeeded") for ph in phases):
        if phase != RUNNING:
            d.events.append(Event("Normal", "Running", f"all {len(phases)} pods of attempt {attempt} running"))
        st.update(phase=RUNNING, message=f"attempt {attempt}: training")
        conditions = set_condition(conditions, "Running", True, "PodsRunning", f"all pods of attempt {attempt} "
                                   "are running", now)
    else:
        waiting = sum(1 for ph in phases if ph == "Pending")
        st.update(phase=PENDING, message=f"attempt {attempt}: {waiting} of {len(expected)} pods pending")
    st["conditions"] = conditions
    return d
