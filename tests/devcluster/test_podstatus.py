"""The node agent's pod status as a pure function of the pod spec, what the shims recorded, and the time."""

from __future__ import annotations

import pytest

from omnitrain.devcluster.podstatus import ContainerState, PodState, pod_status, will_restart
from omnitrain.timestamps import now_rfc3339

T0 = 1_800_000_000.0
START = now_rfc3339(T0 - 60)


def pod(*names: str, restart: str = "Never", probe: bool = False) -> dict:
    containers = [
        {"name": n, "image": f"img-{n}", **({"readinessProbe": {"httpGet": {"port": 80}}} if probe else {})}
        for n in names
    ]
    return {"metadata": {"name": "p", "namespace": "ns"}, "spec": {"restartPolicy": restart, "containers": containers}}


def state(*containers: ContainerState, config_error: str = "") -> PodState:
    return PodState(
        ip="127.1.0.2", start_time=START, containers={c.name: c for c in containers}, config_error=config_error
    )


def running(name: str = "main", **kw) -> ContainerState:
    return ContainerState(name, started_at=T0 - 30, container_id=f"omnitrain://p/{name}/0", **kw)


def ended(name: str = "main", code: int = 0, **kw) -> ContainerState:
    terminated = {"exitCode": code, "reason": "Completed" if code == 0 else "Error", "containerID": "x"}
    return ContainerState(name, terminated=terminated, started_at=T0 - 30, container_id=f"omnitrain://p/{name}/0", **kw)


def conditions(status: dict) -> dict[str, str]:
    return {c["type"]: c["status"] for c in status["conditions"]}


def test_a_container_not_started_yet_is_pending_creating_with_the_pod_ip_already_shown():
    status = pod_status(pod("main"), state(ContainerState("main")), T0)
    assert status["phase"] == "Pending"
    (entry,) = status["containerStatuses"]
    assert entry["state"] == {"waiting": {"reason": "ContainerCreating"}}
    assert entry["ready"] is False and entry["started"] is False and "containerID" not in entry
    assert entry["image"] == "img-main" and entry["restartCount"] == 0
    assert status["podIP"] == "127.1.0.2" and status["podIPs"] == [{"ip": "127.1.0.2"}]
    assert status["hostIP"] == "127.0.0.1" and status["startTime"] == START
    assert conditions(status) == {
        "PodReadyToStartContainers": "True",
        "Initialized": "True",
        "Ready": "False",
        "ContainersReady": "False",
        "PodScheduled": "True",
    }
    assert {c["lastTransitionTime"] for c in status["conditions"]} == {now_rfc3339(T0)}


def test_a_pod_that_cannot_start_says_why_in_the_waiting_state():
    status = pod_status(pod("main"), state(ContainerState("main"), config_error="ConfigMap 'cfg' not found"), T0)
    assert status["phase"] == "Pending"
    assert status["containerStatuses"][0]["state"] == {
        "waiting": {"reason": "CreateContainerConfigError", "message": "ConfigMap 'cfg' not found"}
    }


def test_running_without_a_probe_is_ready():
    status = pod_status(pod("main"), state(running()), T0)
    (entry,) = status["containerStatuses"]
    assert status["phase"] == "Running"
    assert entry["state"] == {"running": {"startedAt": now_rfc3339(T0 - 30)}}
    assert entry["ready"] and entry["started"] and entry["containerID"] == "omnitrain://p/main/0"
    assert conditions(status)["Ready"] == "True" and conditions(status)["ContainersReady"] == "True"


def test_with_a_readiness_probe_ready_waits_for_the_probe_and_every_container():
    spec = pod("a", "b", probe=True)
    half = pod_status(spec, state(running("a", probe_ready=True), running("b")), T0)
    assert [s["ready"] for s in half["containerStatuses"]] == [True, False]
    assert half["phase"] == "Running" and conditions(half)["Ready"] == "False"
    both = pod_status(spec, state(running("a", probe_ready=True), running("b", probe_ready=True)), T0)
    assert conditions(both)["Ready"] == "True"


@pytest.mark.parametrize(
    "policy, code, phase",
    [
        ("Never", 0, "Succeeded"),
        ("Never", 3, "Failed"),
        ("OnFailure", 0, "Succeeded"),
        ("OnFailure", 3, "Running"),
        ("Always", 0, "Running"),
        ("Always", 3, "Running"),
    ],
)
def test_the_phase_of_an_ended_container_follows_the_restart_policy(policy, code, phase):
    status = pod_status(pod("main", restart=policy), state(ended(code=code)), T0)
    assert status["phase"] == phase
    (entry,) = status["containerStatuses"]
    assert entry["state"]["terminated"]["exitCode"] == code and entry["containerID"] == "omnitrain://p/main/0"
    assert entry["ready"] is False and entry["started"] is False
    assert conditions(status)["Ready"] == "False"
    assert will_restart(policy, code) == (phase == "Running")


def test_a_pod_ends_only_when_every_container_ended_and_fails_if_any_failed():
    spec = pod("a", "b")
    assert pod_status(spec, state(ended("a"), running("b")), T0)["phase"] == "Running"
    assert pod_status(spec, state(ended("a"), ContainerState("b")), T0)["phase"] == "Pending"
    assert pod_status(spec, state(ended("a"), ended("b", 1)), T0)["phase"] == "Failed"
    assert pod_status(spec, state(ended("a"), ended("b")), T0)["phase"] == "Succeeded"


def test_a_restarted_container_shows_its_previous_run_and_count():
    last = {"exitCode": 1, "reason": "Error", "startedAt": START, "finishedAt": START}
    status = pod_status(pod("main", restart="OnFailure"), state(running(restart_count=2, last_terminated=last)), T0)
    (entry,) = status["containerStatuses"]
    assert entry["restartCount"] == 2 and entry["lastState"] == {"terminated": last}


def test_conditions_keep_their_transition_time_until_their_status_changes():
    spec = pod("main")
    first = pod_status(spec, state(ContainerState("main")), T0)
    later = pod_status(spec, state(running()), T0 + 10, previous=first)
    times = {c["type"]: c["lastTransitionTime"] for c in later["conditions"]}
    assert times["PodScheduled"] == times["Initialized"] == now_rfc3339(T0)
    assert times["Ready"] == times["ContainersReady"] == now_rfc3339(T0 + 10)
    again = pod_status(spec, state(running()), T0 + 20, previous=later)
    assert again == later
