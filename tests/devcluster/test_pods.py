"""Pods bound to the agent's nodes run as real local processes: phases, exit codes, termination messages, logs."""

from __future__ import annotations

import uuid

import pytest

from omnitrain.devcluster.testing import wait_for, wait_pod_phase

pytestmark = pytest.mark.e2e


@pytest.fixture
def core(local_cluster):
    from kubernetes import client

    return client.CoreV1Api(local_cluster.api_client())


def pod_body(name: str, script: str, restart: str = "Never", **container) -> dict:
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name},
        "spec": {
            "restartPolicy": restart,
            "terminationGracePeriodSeconds": 5,
            "containers": [{"name": "main", "image": "ignored", "command": ["sh", "-c", script], **container}],
        },
    }


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:6]}"


def test_pod_runs_as_process_and_succeeds(local_cluster, core):
    name = unique("ok")
    core.create_namespaced_pod(
        "default",
        pod_body(
            name,
            'echo "pid=$$$$ name=$POD_NAME ip=$POD_IP node=$NODE"',
            env=[
                {"name": "POD_NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
                {"name": "POD_IP", "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}},
                {"name": "NODE", "valueFrom": {"fieldRef": {"fieldPath": "spec.nodeName"}}},
            ],
        ),
    )
    pod = wait_pod_phase(core, "default", name, {"Succeeded", "Failed"})
    assert pod.status.phase == "Succeeded"
    state = pod.status.container_statuses[0].state.terminated
    assert state.exit_code == 0 and state.reason == "Completed"
    assert pod.spec.node_name in local_cluster.node_names
    assert pod.status.pod_ip.startswith("127.") and pod.status.pod_ip != "127.0.0.1"
    log = local_cluster.container_log("default", name, "main").read_text()
    assert f"name={name} ip={pod.status.pod_ip} node={pod.spec.node_name}" in log
    conditions = {c.type: c.status for c in pod.status.conditions}
    assert conditions["PodScheduled"] == "True" and conditions["Ready"] == "False"


def test_burstable_pod_starts_and_runs(local_cluster, core):
    """Regression: the agent once reported status.qosClass=BestEffort; the API server refused every status patch of
    a pod with requests (Burstable: qosClass is immutable) and such pods never left Pending."""
    name = unique("burstable")
    core.create_namespaced_pod(
        "default", pod_body(name, "echo started; sleep 600", resources={"requests": {"cpu": "100m", "memory": "64Mi"}})
    )
    try:
        pod = wait_pod_phase(core, "default", name, {"Running", "Succeeded", "Failed"})
        assert pod.status.phase == "Running" and pod.status.qos_class == "Burstable"
        assert pod.spec.node_name in local_cluster.node_names
        wait_for(
            lambda: "started" in local_cluster.container_log("default", name, "main").read_text(),
            30,
            "the container's output",
        )
    finally:
        core.delete_namespaced_pod(name, "default", grace_period_seconds=0)


def test_failing_pod_reports_exit_code_and_termination_message(core):
    name = unique("fail")
    core.create_namespaced_pod(
        "default", pod_body(name, 'echo \'{"reason": "bad-config"}\' > "$OMNITRAIN_TERMINATION_LOG"; exit 3')
    )
    pod = wait_pod_phase(core, "default", name, {"Succeeded", "Failed"})
    assert pod.status.phase == "Failed"
    state = pod.status.container_statuses[0].state.terminated
    assert state.exit_code == 3 and state.reason == "Error"
    assert state.message.strip() == '{"reason": "bad-config"}'


def test_termination_message_path_and_fallback_to_logs(core):
    custom, fallback = unique("tmp"), unique("fallback")
    core.create_namespaced_pod(
        "default",
        pod_body(
            custom,
            "echo custom-message > /tmp/omnitrain-term/msg; exit 4",
            terminationMessagePath="/tmp/omnitrain-term/msg",
        ),
    )
    core.create_namespaced_pod(
        "default",
        pod_body(fallback, "echo last words from the log; exit 5", terminationMessagePolicy="FallbackToLogsOnError"),
    )
    custom_state = wait_pod_phase(core, "default", custom, "Failed").status.container_statuses[0].state.terminated
    fallback_state = wait_pod_phase(core, "default", fallback, "Failed").status.container_statuses[0].state.terminated
    assert (custom_state.exit_code, custom_state.message.strip()) == (4, "custom-message")
    assert fallback_state.exit_code == 5 and "last words from the log" in fallback_state.message


def test_running_phase_then_restart_on_failure_counts_restarts(local_cluster, core):
    name = unique("restart")
    # Fails twice, then succeeds: the counter file lives in an emptyDir, which survives restarts in place.
    script = (
        "n=$(cat /scratch/n 2>/dev/null || echo 0); n=$((n+1)); echo $n > /scratch/n; "
        "echo run $n; sleep 0.3; [ $n -ge 3 ]"
    )
    body = pod_body(name, script, restart="OnFailure", volumeMounts=[{"name": "scratch", "mountPath": "/scratch"}])
    body["spec"]["volumes"] = [{"name": "scratch", "emptyDir": {}}]
    core.create_namespaced_pod("default", body)
    wait_pod_phase(core, "default", name, "Running")
    pod = wait_pod_phase(core, "default", name, "Succeeded", timeout=60)
    status = pod.status.container_statuses[0]
    assert status.restart_count == 2
    assert status.last_state.terminated.exit_code == 1
    log = local_cluster.container_log("default", name, "main").read_text()
    assert [line for line in log.splitlines() if line.startswith("run ")] == ["run 1", "run 2", "run 3"]


def test_pod_ips_are_unique(core):
    names = [unique("ip") for _ in range(3)]
    for name in names:
        core.create_namespaced_pod("default", pod_body(name, "true"))
    ips = [
        wait_for(lambda n=name: core.read_namespaced_pod(n, "default").status.pod_ip, 30, f"{name} IP")
        for name in names
    ]
    assert len(set(ips)) == 3
