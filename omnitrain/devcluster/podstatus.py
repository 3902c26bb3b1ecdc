"""Pure rendering of a pod's status from what the node agent observed: (pod, process state, now) -> status dict.

The state is a snapshot of the shims' files and the last readiness probes (`runtime.PodRun.state()` reads them);
nothing here touches the disk, the clock or the API, so every phase and condition rule is unit-tested directly.
Rules follow the kubelet: the phase is Succeeded/Failed only when every container ended for good (no restart
will follow under the pod's restartPolicy), Running while any container runs or waits to be restarted, Pending
otherwise; Ready needs phase Running and every container ready (running, and its readiness probe passed when it
has one). A condition keeps its lastTransitionTime until its status changes.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from omnitrain.timestamps import now_rfc3339

HOST_IP = "127.0.0.1"
CONDITION_TYPES = ("PodReadyToStartContainers", "Initialized", "Ready", "ContainersReady", "PodScheduled")


@dataclass(frozen=True)
class ContainerState:
    """One container as its shim's files show it."""

    name: str
    terminated: dict | None = None  # state.terminated of the current run (exit code, reason, message, times)
    started_at: float | None = None  # epoch seconds the current run started; None before the shim started it
    waiting_reason: str = ""  # why it has not started yet ("" = the default, ContainerCreating)
    restart_count: int = 0
    container_id: str = ""
    last_terminated: dict | None = None  # lastState.terminated after a restart in place
    probe_ready: bool = False  # the last readiness probe's answer (False before the first one)


@dataclass(frozen=True)
class PodState:
    """A pod as the agent runs it."""

    ip: str
    start_time: str  # RFC 3339, when the agent admitted the pod
    containers: Mapping[str, ContainerState] = field(default_factory=dict)
    config_error: str = ""  # why the pod cannot start as written ("" = it can)


def pod_status(pod: dict, state: PodState, now: float, previous: dict | None = None) -> dict:
    """The pod's `status`; `previous` is the status rendered last time (its conditions' transition times stay)."""
    policy = pod["spec"].get("restartPolicy", "Always")
    statuses, outcomes = [], []
    for container in pod["spec"]["containers"]:
        entry, outcome = _container_status(container, state.containers[container["name"]], policy, state.config_error)
        statuses.append(entry)
        outcomes.append(outcome)
    phase = _phase(outcomes)
    all_ready = phase == "Running" and all(s["ready"] for s in statuses)
    values = {
        "PodReadyToStartContainers": True,
        "Initialized": True,
        "Ready": all_ready,
        "ContainersReady": all_ready,
        "PodScheduled": True,
    }
    return {
        "phase": phase,
        "conditions": _conditions(values, previous, now_rfc3339(now)),
        "hostIP": HOST_IP,
        "hostIPs": [{"ip": HOST_IP}],
        "podIP": state.ip,
        "podIPs": [{"ip": state.ip}],
        "startTime": state.start_time,
        "containerStatuses": statuses,
    }


def will_restart(policy: str, exit_code: int) -> bool:
    """Whether a container that ended with `exit_code` is started again under the pod's restartPolicy."""
    return policy == "Always" or (policy == "OnFailure" and exit_code != 0)


def _container_status(container: dict, c: ContainerState, policy: str, config_error: str) -> tuple[dict, str]:
    """containerStatuses[] entry and the container's outcome: running, restarting, succeeded, failed or waiting."""
    running = c.terminated is None and c.started_at is not None
    probe = container.get("readinessProbe")
    ready = running and (not probe or c.probe_ready)
    state: dict
    if c.terminated is not None:
        code = c.terminated["exitCode"]
        state = {"terminated": c.terminated}
        outcome = "restarting" if will_restart(policy, code) else ("succeeded" if code == 0 else "failed")
    elif running:
        state = {"running": {"startedAt": now_rfc3339(c.started_at)}}
        outcome = "running"
    else:
        reason = "CreateContainerConfigError" if config_error else (c.waiting_reason or "ContainerCreating")
        state = {"waiting": {"reason": reason, **({"message": config_error} if config_error else {})}}
        outcome = "waiting"
    entry = {
        "name": c.name,
        "image": container.get("image", ""),
        "imageID": "",
        "ready": ready,
        "restartCount": c.restart_count,
        "started": running,
        "state": state,
    }
    if running or c.terminated:
        entry["containerID"] = c.container_id
    if c.last_terminated:
        entry["lastState"] = {"terminated": c.last_terminated}
    return entry, outcome


def _phase(outcomes: list[str]) -> str:
    if outcomes and all(o in ("succeeded", "failed") for o in outcomes):
        return "Failed" if "failed" in outcomes else "Succeeded"
    if any(o in ("running", "restarting") for o in outcomes):
        return "Running"
    return "Pending"


def _conditions(values: dict[str, bool], previous: dict | None, now: str) -> list[dict]:
    before = {c["type"]: c for c in (previous or {}).get("conditions") or []}
    conditions = []
    for ctype in CONDITION_TYPES:
        text = "True" if values[ctype] else "False"
        old = before.get(ctype)
        since = old["lastTransitionTime"] if old is not None and old["status"] == text else now
        conditions.append({"type": ctype, "status": text, "lastTransitionTime": since})
    return conditions
