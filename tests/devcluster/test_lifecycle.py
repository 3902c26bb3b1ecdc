"""Pod deletion, agent restarts, lost nodes and readiness probes on the local node agent."""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

from omnitrain.devcluster import procs
from omnitrain.devcluster.testing import wait_for, wait_pod_gone, wait_pod_phase

pytestmark = pytest.mark.e2e


@pytest.fixture
def core(local_cluster):
    from kubernetes import client

    return client.CoreV1Api(local_cluster.api_client())


def _cli(root: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "omnitrain", "dev", "--root", str(root), *args],
        capture_output=True,
        text=True,
        timeout=120,
    )


def _pids(path: Path) -> list[int]:
    return [int(x) for x in path.read_text().split()] if path.exists() else []


def _alive(pid: int) -> bool:
    return procs.alive(pid)


def _pod(name: str, script: str, tag: str, **spec) -> dict:
    """Scripts write `$$$$` for the shell's `$$`: Kubernetes expands `$$` in commands to a single `$`."""
    return {
        "metadata": {"name": name},
        "spec": {
            "restartPolicy": "Never",
            "terminationGracePeriodSeconds": 30,
            "containers": [
                {
                    "name": "main",
                    "image": "x",
                    "command": ["sh", "-c", script],
                    "volumeMounts": [{"name": "data", "mountPath": "/data"}],
                }
            ],
            "volumes": [{"name": "data", "hostPath": {"path": f"/test-{tag}"}}],
            **spec,
        },
    }


def test_delete_kills_process_group_after_grace(local_cluster, core):
    tag = uuid.uuid4().hex[:6]
    name = f"del-{tag}"
    # The shell ignores SIGTERM and has a child: only the SIGKILL after the grace period ends both.
    script = "trap '' TERM; sleep 300 & echo $$$$ $! > /data/pids; wait"
    core.create_namespaced_pod("default", _pod(name, script, tag, terminationGracePeriodSeconds=2))
    pod = wait_pod_phase(core, "default", name, "Running")
    pid_file = local_cluster.node_dir(pod.spec.node_name) / f"test-{tag}" / "pids"
    pids = wait_for(lambda: len(_pids(pid_file)) == 2 and _pids(pid_file), 30, "pids written")
    assert all(_alive(p) for p in pids)
    core.delete_namespaced_pod(name, "default")
    wait_pod_gone(core, "default", name, timeout=60)
    assert not any(_alive(p) for p in pids)


def test_delete_sends_sigterm_first(local_cluster, core):
    tag = uuid.uuid4().hex[:6]
    name = f"term-{tag}"
    script = "trap 'echo got-term > /data/term; exit 0' TERM; echo $$$$ > /data/pids; while true; do sleep 0.1; done"
    core.create_namespaced_pod("default", _pod(name, script, tag))
    pod = wait_pod_phase(core, "default", name, "Running")
    folder = local_cluster.node_dir(pod.spec.node_name) / f"test-{tag}"
    wait_for(lambda: _pids(folder / "pids"), 30, "pid written")
    core.delete_namespaced_pod(name, "default")
    wait_pod_gone(core, "default", name, timeout=25)  # well inside the 30 s grace: SIGTERM was enough
    assert (folder / "term").read_text() == "got-term\n"


def test_delete_while_waiting_for_a_peer_dns_name_honours_the_grace_period(local_cluster, core):
    """The agent waits up to launch.DNS_WAIT_S (300 s) for the pod a headless-Service name points at; a deletion
    must end that wait: the Pod object is gone within its grace period (+ a bound), and nothing was started."""
    tag = uuid.uuid4().hex[:6]
    name = f"dnswait-{tag}"
    grace = 2
    body = _pod(name, "echo started > /data/started; sleep 300", tag, terminationGracePeriodSeconds=grace)
    peer = f"nobody-{tag}.nosuch-{tag}.default.svc.cluster.local"  # no pod has that hostname/subdomain
    body["spec"]["containers"][0]["env"] = [{"name": "MASTER_ADDR", "value": peer}]
    core.create_namespaced_pod("default", body)
    # the agent patches the pod's IP when it admits it, before the start-up (and its DNS wait) begins
    pod = wait_for(lambda: (p := core.read_namespaced_pod(name, "default")).status.pod_ip and p, 30, "pod admitted")
    assert pod.status.phase == "Pending"
    core.delete_namespaced_pod(name, "default")
    wait_pod_gone(core, "default", name, timeout=grace + 10)
    assert not (local_cluster.node_dir(pod.spec.node_name) / f"test-{tag}" / "started").exists()


def test_agent_restart_readopts_running_pod(local_cluster, core):
    tag = uuid.uuid4().hex[:6]
    name = f"adopt-{tag}"
    script = "echo $$$$ >> /data/starts; while [ ! -f /data/go ]; do sleep 0.1; done; exit 7"
    core.create_namespaced_pod("default", _pod(name, script, tag))
    pod = wait_pod_phase(core, "default", name, "Running")
    folder = local_cluster.node_dir(pod.spec.node_name) / f"test-{tag}"
    first = wait_for(lambda: _pids(folder / "starts"), 30, "start recorded")
    agent_log = local_cluster.root / "logs" / "agent.log"
    local_cluster.stop_agent()
    assert _alive(first[0]), "stopping the agent must not stop the pod's processes"
    local_cluster.start_agent()
    wait_for(lambda: f"re-adopted pod default/{name}" in agent_log.read_text(), 30, "re-adoption logged")
    assert core.read_namespaced_pod(name, "default").status.phase == "Running"
    (folder / "go").touch()
    pod = wait_pod_phase(core, "default", name, "Failed")
    assert pod.status.container_statuses[0].state.terminated.exit_code == 7
    assert _pids(folder / "starts") == first, "the pod was started twice"


def test_node_deletion_kills_its_pods(local_cluster, core):
    tag = uuid.uuid4().hex[:6]
    node, name = f"doomed-{tag}", f"lost-{tag}"
    added = _cli(local_cluster.root, "node", "add", node)
    assert added.returncode == 0, added.stderr
    local_cluster.wait_nodes_ready([node])
    script = "sleep 300 & echo $$$$ $! > /data/pids; wait"
    core.create_namespaced_pod("default", _pod(name, script, tag, nodeName=node))
    wait_pod_phase(core, "default", name, "Running")
    pid_file = local_cluster.node_dir(node) / f"test-{tag}" / "pids"
    pids = wait_for(lambda: len(_pids(pid_file)) == 2 and _pids(pid_file), 30, "pids written")
    deleted = _cli(local_cluster.root, "node", "delete", node)
    assert deleted.returncode == 0, deleted.stderr
    wait_for(lambda: not any(_alive(p) for p in pids), 30, "processes of the lost node's pod to end")
    assert node not in local_cluster.node_names
    core.delete_namespaced_pod(name, "default", grace_period_seconds=0)


def test_readiness_probe_http(local_cluster, core):
    tag = uuid.uuid4().hex[:6]
    name = f"ready-{tag}"
    body = _pod(name, "cd /data && exec python -m http.server 8080 --bind $POD_IP", tag)
    container = body["spec"]["containers"][0]
    container["env"] = [{"name": "POD_IP", "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}}]
    container["readinessProbe"] = {"httpGet": {"path": "/ready", "port": 8080}, "periodSeconds": 1}
    core.create_namespaced_pod("default", body)
    pod = wait_pod_phase(core, "default", name, "Running")
    folder = local_cluster.node_dir(pod.spec.node_name) / f"test-{tag}"

    def ready() -> bool:
        conditions = core.read_namespaced_pod(name, "default").status.conditions
        return any(c.type == "Ready" and c.status == "True" for c in conditions)

    assert not ready()
    (folder / "ready").write_text("ok")
    wait_for(ready, 30, "Ready after the probe succeeds")
    os.unlink(folder / "ready")
    wait_for(lambda: not ready(), 30, "not Ready after the probe fails again")
    core.delete_namespaced_pod(name, "default")
    wait_pod_gone(core, "default", name)
