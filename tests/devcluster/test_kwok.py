"""kwok simulates fake 8-GPU nodes on the same API server; its pods go Running and stay Running."""

from __future__ import annotations

import time
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


def _renewals(coord, lease: str, count: int, timeout_s: float) -> list[float]:
    """The first `count` distinct renewTimes of a node's Lease, from a watch that ends at the deadline."""
    from kubernetes import watch

    seen: list[float] = []
    deadline = time.monotonic() + timeout_s
    while len(seen) < count and time.monotonic() < deadline:
        for event in watch.Watch().stream(
            coord.list_namespaced_lease,
            "kube-node-lease",
            field_selector=f"metadata.name={lease}",
            timeout_seconds=max(1, int(deadline - time.monotonic())),
        ):
            spec = event["object"].spec
            if spec and spec.renew_time and spec.renew_time.timestamp() not in seen:
                seen.append(spec.renew_time.timestamp())
            if len(seen) >= count:
                break
    return seen


def test_throwaway_kwok_nodes_renew_their_leases_and_stay_ready(tmp_path):
    """The benchmarks' control plane: kwok renews each fake node's Lease (v0.7.0 renews none unless told the
    lease duration, and its nodes then flapped Ready=Unknown every 50 s in the middle of a measurement)."""
    from kubernetes import client, config

    from omnitrain.devcluster.nodes import kwok_node_body
    from omnitrain.devcluster.throwaway import control_plane, find_binaries

    if find_binaries() is None:
        pytest.skip("no control-plane binaries (make cluster-bins)")
    with control_plane(tmp_path / "cp", kwok=True) as kubeconfig:
        api = config.new_client_from_config(str(kubeconfig))
        core, coord = client.CoreV1Api(api), client.CoordinationV1Api(api)
        core.create_node(kwok_node_body("kwok-lease-0"))
        renewals = _renewals(coord, "kwok-lease-0", 3, timeout_s=60)
        assert len(renewals) == 3, f"the Lease was renewed {len(renewals) - 1} times within 60 s: {renewals}"
        gaps = [b - a for a, b in zip(renewals, renewals[1:])]
        assert all(0 < gap < 20 for gap in gaps), gaps  # every quarter of the 40 s lease, as a kubelet renews
        ready = [c.status for c in core.read_node("kwok-lease-0").status.conditions if c.type == "Ready"]
        assert ready == ["True"]
