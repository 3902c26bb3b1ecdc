"""The control plane answers with the pinned version, nodes carry GPU capacity and topology, the CLI is idempotent."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from omnitrain.devcluster import binaries, procs
from omnitrain.devcluster.testing import wait_for

pytestmark = pytest.mark.e2e


def test_binaries_report_pinned_versions():
    versions = binaries.reported_versions()
    for name in ("kube-apiserver", "kube-controller-manager", "kube-scheduler", "kubectl"):
        assert versions[name] == binaries.K8S_VERSION, (name, versions)
    assert versions["kwok"] == binaries.KWOK_VERSION
    assert versions["etcd"].startswith("3.")


def test_build_script_second_run_is_a_noop():
    out = subprocess.run(["bash", str(binaries.BUILD_SCRIPT)], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0 and "up to date" in out.stdout, out.stdout + out.stderr


def test_api_server_answers_with_version(local_cluster):
    from kubernetes import client

    info = client.VersionApi(local_cluster.api_client()).get_code()
    assert info.git_version == binaries.K8S_VERSION
    server = local_cluster.control_plane().server
    assert server.startswith("https://127.0.0.1:")


def test_nodes_registered_with_gpus_topology_and_lease(local_cluster):
    from kubernetes import client

    api = local_cluster.api_client()
    core, coord = client.CoreV1Api(api), client.CoordinationV1Api(api)
    assert local_cluster.node_names[:2] == ["local-node-0", "local-node-1"]
    renewed_names = ("local-node-0", "local-node-1")
    for name in renewed_names:
        node = core.read_node(name)
        assert node.status.capacity["nvidia.com/gpu"] == "2" and node.status.allocatable["nvidia.com/gpu"] == "2"
        labels = node.metadata.labels
        assert labels["omnitrain.dev/local"] == "true"
        assert "topology.kubernetes.io/zone" in labels and "omnitrain.dev/rack" in labels
        assert any(c.type == "Ready" and c.status == "True" for c in node.status.conditions)
        assert not [t for t in node.spec.taints or [] if t.effect in ("NoSchedule", "NoExecute")]
    renewed = {
        n: wait_for(lambda n=n: coord.read_namespaced_lease(n, "kube-node-lease").spec.renew_time, 30, f"lease of {n}")
        for n in renewed_names
    }
    wait_for(
        lambda: all(coord.read_namespaced_lease(n, "kube-node-lease").spec.renew_time > t for n, t in renewed.items()),
        30,
        "node leases renewed",
    )


def _cli(root, *args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "omnitrain", "dev", "--root", str(root), *args],
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def test_cli_up_is_idempotent_and_status_reports_health(local_cluster):
    pids_before = {p.name: procs.read_pid_file(p) for p in (local_cluster.root / "pids").glob("*.pid")}
    out = _cli(local_cluster.root, "up")
    assert out.returncode == 0, out.stderr
    assert f"export KUBECONFIG={local_cluster.kubeconfig}" in out.stdout
    assert "already running" in out.stdout
    pids_after = {p.name: procs.read_pid_file(p) for p in (local_cluster.root / "pids").glob("*.pid")}
    assert {k: pids_after[k] for k in pids_before} == pids_before
    status = _cli(local_cluster.root, "status")
    assert status.returncode == 0, status.stdout + status.stderr
    report = json.loads(status.stdout)
    assert report["apiserver"]["ready"] and report["nodes"]["local-node-0"]


def test_cli_rejects_bad_counts(tmp_path):
    out = _cli(tmp_path / "never", "up", "--nodes", "-1")
    assert out.returncode != 0 and "--nodes must be >= 0" in out.stderr
    assert not (tmp_path / "never").exists()


def test_cli_logs(local_cluster):
    from kubernetes import client

    from omnitrain.devcluster.testing import wait_pod_phase

    core = client.CoreV1Api(local_cluster.api_client())
    core.create_namespaced_pod(
        "default",
        {
            "metadata": {"name": "cli-logs"},
            "spec": {
                "restartPolicy": "Never",
                "containers": [{"name": "main", "image": "x", "command": ["echo", "line from the pod"]}],
            },
        },
    )
    wait_pod_phase(core, "default", "cli-logs", "Succeeded")
    out = _cli(local_cluster.root, "logs", "cli-logs")
    assert out.returncode == 0 and out.stdout == "line from the pod\n"
    missing = _cli(local_cluster.root, "logs", "no-such-pod")
    assert missing.returncode != 0 and "no logs for pod default/no-such-pod" in missing.stderr


def test_down_stops_everything_and_up_resumes(tmp_path):
    """A second, one-node cluster: `down` ends every process including pods; `up` brings the same cluster back."""
    from kubernetes import client

    from omnitrain.devcluster.cluster import LocalCluster
    from omnitrain.devcluster.testing import wait_pod_phase

    cluster = LocalCluster(tmp_path / "second").up(nodes=1, log=lambda _: None)
    try:
        core = client.CoreV1Api(cluster.api_client())
        core.create_namespaced_pod(
            "default",
            {
                "metadata": {"name": "sleeper"},
                "spec": {
                    "containers": [
                        {
                            "name": "main",
                            "image": "x",
                            "command": ["sh", "-c", "echo $$$$ > /data/pid; sleep 300"],
                            "volumeMounts": [{"name": "d", "mountPath": "/data"}],
                        }
                    ],
                    "volumes": [{"name": "d", "hostPath": {"path": "/down-test"}}],
                },
            },
        )
        wait_pod_phase(core, "default", "sleeper", "Running")
        pid_file = cluster.node_dir("local-node-0") / "down-test" / "pid"
        pid = int(wait_for(lambda: pid_file.exists() and pid_file.read_text().strip(), 30, "pid written"))
        pid_files = list((cluster.root / "pids").glob("*.pid"))
        entries = [procs.read_pid_file(p) for p in pid_files]
        cluster.down(log=lambda _: None)
        assert not procs.alive(pid)
        assert not any(e and procs.alive(*e) for e in entries)
        assert not any(cluster.status()["processes"].values())
        cluster.up(nodes=1, log=lambda _: None)
        core = client.CoreV1Api(cluster.api_client())
        assert core.read_namespaced_pod("sleeper", "default").metadata.name == "sleeper"  # etcd data kept
    finally:
        cluster.down(log=lambda _: None)
