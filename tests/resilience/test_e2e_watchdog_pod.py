"""The watchdog and the failure classifier against a real local cluster: a pod whose trainer is SIGSTOP'd ends
with exit 42 and a HangDetected termination message the classifier reads from the API; a pod whose node is deleted
is classified NodeLost. (Fault injection through the operator with the real training loop: not in this file.)"""

from __future__ import annotations

import sys
import uuid
from pathlib import Path

import pytest

from omnitrain.contract import ExitCode, TerminationMessage
from omnitrain.resilience.classify import FailureClass, classify, observe_node, observe_pod

pytestmark = pytest.mark.e2e

FAKE = str(Path(__file__).with_name("fake_trainer.py"))


@pytest.fixture
def core(local_cluster):
    from kubernetes import client

    return client.CoreV1Api(local_cluster.api_client())


def as_dict(local_cluster, obj) -> dict:
    return local_cluster.api_client().sanitize_for_serialization(obj)


def node_or_none(core, name: str) -> dict | None:
    from kubernetes.client.exceptions import ApiException

    try:
        return core.read_node(name).to_dict()
    except ApiException as exc:
        if exc.status == 404:
            return None
        raise


def trainer_pod(name: str, command: list[str], node: str | None = None) -> dict:
    spec = {
        "restartPolicy": "Never",
        "terminationGracePeriodSeconds": 5,
        "containers": [
            {
                "name": "trainer",
                "image": "ignored",
                "command": command,
                "env": [{"name": "OMP_NUM_THREADS", "value": "1"}],
            }
        ],
    }
    if node:
        spec["nodeName"] = node
    return {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name}, "spec": spec}


def test_sigstopped_trainer_pod_fails_with_hang_and_is_classified_hang(local_cluster, core):
    from omnitrain.devcluster.testing import wait_pod_phase

    name = f"hang-{uuid.uuid4().hex[:6]}"
    command = [
        sys.executable,
        "-m",
        "omnitrain",
        "watchdog",
        "--timeout",
        "3",
        "--workers",
        "1",
        "--poll",
        "0.1",
        "--no-gpu-health",
        "--",
        sys.executable,
        FAKE,
        "sigstop",
    ]
    core.create_namespaced_pod("default", trainer_pod(name, command))
    pod = wait_pod_phase(core, "default", name, {"Succeeded", "Failed"}, timeout=120)
    state = pod.status.container_statuses[0].state.terminated
    assert (pod.status.phase, state.exit_code) == ("Failed", ExitCode.HANG)
    message = TerminationMessage.from_json(state.message)
    assert message is not None and message.reason == "HangDetected" and message.step == 10
    node = node_or_none(core, pod.spec.node_name)
    failure = classify([observe_pod(as_dict(local_cluster, pod), "trainer")], [observe_node(node, pod.spec.node_name)])
    assert failure.failure_class is FailureClass.HANG and failure.step == 10
    assert failure.evidence["stalled_ranks"] == [0]
    core.delete_namespaced_pod(name, "default")


def test_pod_on_a_deleted_node_is_classified_node_lost(local_cluster, core):
    from omnitrain.devcluster.testing import wait_pod_phase

    node = f"res-{uuid.uuid4().hex[:6]}"
    local_cluster.add_node(node)
    local_cluster.wait_nodes_ready([node], timeout_s=60)
    name = f"lost-{uuid.uuid4().hex[:6]}"
    core.create_namespaced_pod("default", trainer_pod(name, ["sleep", "600"], node=node))
    running = as_dict(local_cluster, wait_pod_phase(core, "default", name, "Running", timeout=60))
    assert local_cluster.delete_node(node)
    from kubernetes.client.exceptions import ApiException

    try:  # the pod object usually outlives its node for a while; else the operator's last view of it
        pod = as_dict(local_cluster, core.read_namespaced_pod(name, "default"))
    except ApiException as exc:
        assert exc.status == 404
        pod = running
    failure = classify([observe_pod(pod, "trainer")], [observe_node(node_or_none(core, node), node)])
    assert failure.failure_class is FailureClass.NODE_LOST and failure.nodes == (node,)
