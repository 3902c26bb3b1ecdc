"""`kubectl logs [-f]` (the real binary, the cluster's kubeconfig) reads a pod of a local node through the API
server and the agent's kubelet endpoint; a job's Service over pods with loopback IPs leaves no warnings."""

from __future__ import annotations

import subprocess
import uuid
from pathlib import Path

import pytest

from omnitrain.devcluster.binaries import bin_dir
from omnitrain.devcluster.testing import wait_for, wait_pod_phase
from omnitrain.operator.plan import JobRef, render_service
from omnitrain.spec import JobSpec

pytestmark = pytest.mark.e2e

# prints, waits for the test to create a file (so -f must deliver what comes later), prints again and exits
FOLLOWED = """
import os, sys, time
print("first line", flush=True)
while not os.path.exists(sys.argv[1]):
    time.sleep(0.05)  # the pod waits for the test's signal file
print("second line", flush=True)
"""


def _waiting_pod(name: str, signal: Path, labels: dict | None = None, subdomain: str = "") -> dict:
    """A pod that prints "first line", waits for the test's signal file, prints "second line" and exits."""
    spec: dict = {
        "restartPolicy": "Never",
        "containers": [{"name": "main", "image": "x", "command": ["python", "-c", FOLLOWED], "args": [str(signal)]}],
    }
    if subdomain:
        spec.update(hostname=name, subdomain=subdomain)
    return {"metadata": {"name": name, "labels": labels or {}}, "spec": spec}


def _kubectl(local_cluster, *args: str, timeout: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run(
        [str(bin_dir() / "kubectl"), "--kubeconfig", str(local_cluster.kubeconfig), *args],
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def test_kubectl_logs_of_a_finished_pod(local_cluster):
    from kubernetes import client

    core = client.CoreV1Api(local_cluster.api_client())
    name = f"logs-{uuid.uuid4().hex[:6]}"
    script = f"print('hello from {name}'); print('line two'); print('line three')"
    core.create_namespaced_pod(
        "default",
        {
            "metadata": {"name": name},
            "spec": {
                "restartPolicy": "Never",
                "containers": [{"name": "main", "image": "x", "command": ["python", "-c", script]}],
            },
        },
    )
    pod = wait_pod_phase(core, "default", name, {"Succeeded", "Failed"})
    assert pod.spec.node_name in local_cluster.node_names
    out = _kubectl(local_cluster, "logs", name)
    assert out.returncode == 0, out.stderr
    assert out.stdout == f"hello from {name}\nline two\nline three\n"
    tail = _kubectl(local_cluster, "logs", name, "--tail=1")
    assert (tail.returncode, tail.stdout) == (0, "line three\n"), tail.stderr
    # what the endpoint cannot do is refused with the reason, not answered wrongly
    stamped = _kubectl(local_cluster, "logs", name, "--timestamps")
    assert stamped.returncode != 0 and "timestamps is not supported" in stamped.stderr, stamped.stderr


def test_kubectl_logs_follow(local_cluster):
    from kubernetes import client

    core = client.CoreV1Api(local_cluster.api_client())
    tag = uuid.uuid4().hex[:6]
    signal, pod_name = local_cluster.root / f"signal-{tag}", f"follow-{tag}"
    core.create_namespaced_pod("default", _waiting_pod(pod_name, signal))
    wait_pod_phase(core, "default", pod_name, "Running")
    follow = subprocess.Popen(
        [str(bin_dir() / "kubectl"), "--kubeconfig", str(local_cluster.kubeconfig), "logs", "-f", pod_name],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert follow.stdout is not None
        assert follow.stdout.readline() == "first line\n"
        signal.touch()
        # the rest arrives on the same stream, and the stream ends when the container does
        rest, err = follow.communicate(timeout=60)
        assert (follow.returncode, rest) == (0, "second line\n"), err
    finally:
        if follow.poll() is None:
            follow.kill()
    wait_pod_phase(core, "default", pod_name, "Succeeded")


def test_no_endpoint_warnings_for_a_job_service_over_local_pods(local_cluster):
    """The job's Service (as the operator renders it: headless, publishNotReadyAddresses, selector on the job
    label) over a running pod with a loopback IP: no Warning event on the Service and no refused EndpointSlice or
    Endpoints in the controller-manager's log (peers find each other by the agent's DNS rewrite: test_network.py)."""
    from kubernetes import client

    api = local_cluster.api_client()
    core, policy = client.CoreV1Api(api), client.PolicyV1Api(api)
    tag = uuid.uuid4().hex[:6]
    service = render_service(JobRef(name=f"job-{tag}", namespace="default", uid=tag), JobSpec.model_validate({}))
    del service["metadata"]["ownerReferences"]  # no job object here: the garbage collector would take it
    core.create_namespaced_service("default", service)
    svc, labels = service["metadata"]["name"], service["spec"]["selector"]
    # a PodDisruptionBudget over the same pods: once its status counts the pod healthy, the controller-manager's
    # informers have seen it Ready with its IP (the endpoint controllers, when on, wrote and were refused earlier:
    # the pod's IP is published from admission on, publishNotReadyAddresses)
    policy.create_namespaced_pod_disruption_budget(
        "default", {"metadata": {"name": svc}, "spec": {"minAvailable": 1, "selector": {"matchLabels": labels}}}
    )
    signal, pod_name = local_cluster.root / f"signal-{tag}", f"rank0-{tag}"
    core.create_namespaced_pod("default", _waiting_pod(pod_name, signal, labels, subdomain=svc))
    pod = wait_pod_phase(core, "default", pod_name, "Running")
    assert pod.status.pod_ip.startswith("127.")
    wait_for(
        lambda: (policy.read_namespaced_pod_disruption_budget(svc, "default").status.current_healthy or 0) >= 1,
        30,
        "the disruption controller to count the pod healthy",
    )
    events = core.list_namespaced_event("default", field_selector=f"involvedObject.name={svc}").items
    warnings = [(e.reason, e.message) for e in events if e.type == "Warning"]
    controller_log = (local_cluster.root / "logs" / "kube-controller-manager.log").read_text(errors="replace")
    refused = [line for line in controller_log.splitlines() if svc in line and "loopback" in line]
    signal.touch()
    wait_pod_phase(core, "default", pod_name, "Succeeded")
    core.delete_namespaced_service(svc, "default")
    policy.delete_namespaced_pod_disruption_budget(svc, "default")
    assert not warnings, warnings
    assert not refused, refused[:3]
