"""kwok simulates fake 8-GPU nodes on the same API server; its pods go Running and stay Running."""

from __future__ import annotations

import uuid

import pytest

from omnitrain.devcluster.testing import wait_for, wait_pod_phase

pytestmark = pytest.mark.e2e


def _job(name: str) -> dict:
    return {
        "metadata": {"name": name},
        "spec": {
            "backoffLimit": 0,
            "template": {
                "spec": {
                    "restartPolicy": "Never",
                    "nodeSelector": {"type": "kwok"},
                    "tolerations": [{"key": "kwok.x-k8s.io/node", "operator": "Exists", "effect": "NoSchedule"}],
                    "containers": [
                        {"name": "trainer", "image": "fake", "resources": {"limits": {"nvidia.com/gpu": "8"}}}
                    ],
                }
            },
        },
    }


def test_kwok_nodes_and_long_running_pods(local_cluster):
    from kubernetes import client

    api = local_cluster.api_client()
    core, batch = client.CoreV1Api(api), client.BatchV1Api(api)
    names = local_cluster.start_kwok(2)
    local_cluster.wait_nodes_ready(names)
    for name in names:
        node = core.read_node(name)
        assert node.status.allocatable["nvidia.com/gpu"] == "8"
        assert [t.key for t in node.spec.taints] == ["kwok.x-k8s.io/node"]
    tag = uuid.uuid4().hex[:6]

    def job_pod(job: str):
        pods = core.list_namespaced_pod("default", label_selector=f"job-name={job}").items
        return pods[0].metadata.name if pods else None

    first, second = f"kw-a-{tag}", f"kw-b-{tag}"
    batch.create_namespaced_job("default", _job(first))
    first_pod = wait_for(lambda: job_pod(first), 30, "first job's pod")
    running = wait_pod_phase(core, "default", first_pod, "Running")
    assert running.spec.node_name in names
    # kwok's default stages would complete a Running Job pod at once; by the time a later pod is Running,
    # the first one would be Succeeded if ours did not replace them.
    batch.create_namespaced_job("default", _job(second))
    second_pod = wait_for(lambda: job_pod(second), 30, "second job's pod")
    wait_pod_phase(core, "default", second_pod, "Running")
    assert core.read_namespaced_pod(first_pod, "default").status.phase == "Running"
    # one 8-GPU pod per fake node: both nodes used
    assert core.read_namespaced_pod(second_pod, "default").spec.node_name != running.spec.node_name
    # deletion is simulated too
    batch.delete_namespaced_job(first, "default", propagation_policy="Foreground")
    wait_for(lambda: job_pod(first) is None, 60, "first job's pod deleted")
