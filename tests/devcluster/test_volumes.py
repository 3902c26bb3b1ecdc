"""Volumes of pods on local nodes land in the cluster folder and appear at their mountPath for the process."""

from __future__ import annotations

import shutil
import uuid
from pathlib import Path

import pytest

from omnitrain.devcluster.testing import wait_pod_phase

pytestmark = pytest.mark.e2e


@pytest.fixture
def core(local_cluster):
    from kubernetes import client

    return client.CoreV1Api(local_cluster.api_client())


def test_hostpath_pvc_configmap_emptydir(local_cluster, core, tmp_path):
    tag = uuid.uuid4().hex[:6]
    name, claim = f"vol-{tag}", f"claim-{tag}"
    pv_folder = local_cluster.ensure_persistent_claim("default", claim)
    core.create_namespaced_config_map(
        "default", {"metadata": {"name": f"cfg-{tag}"}, "data": {"config.yaml": f"job: {tag}\n", "other": "x"}}
    )
    # mountPaths under a scratch folder of the host: they must look empty there (bind mounts live only in the
    # pod's private mount namespace)
    mnt = Path(f"/tmp/omnitrain-mnt-{tag}")
    script = (
        f"cat {mnt}/etc/config.yaml > {mnt}/ckpt/from-configmap; echo node-local > {mnt}/ckpt/local.txt; "
        f"echo shared > {mnt}/shared/pv.txt; echo scratch > {mnt}/scratch/s.txt; "
        f"ls {mnt}/etc > {mnt}/shared/cfg-files"
    )
    body = {
        "metadata": {"name": name},
        "spec": {
            "restartPolicy": "Never",
            "containers": [
                {
                    "name": "main",
                    "image": "ignored",
                    "command": ["sh", "-c", script],
                    "volumeMounts": [
                        {"name": "nvme", "mountPath": f"{mnt}/ckpt"},
                        {"name": "pv", "mountPath": f"{mnt}/shared"},
                        {"name": "cfg", "mountPath": f"{mnt}/etc", "readOnly": True},
                        {"name": "scratch", "mountPath": f"{mnt}/scratch"},
                    ],
                }
            ],
            "volumes": [
                {"name": "nvme", "hostPath": {"path": f"/mnt/nvme/{tag}", "type": "DirectoryOrCreate"}},
                {"name": "pv", "persistentVolumeClaim": {"claimName": claim}},
                {
                    "name": "cfg",
                    "configMap": {"name": f"cfg-{tag}", "items": [{"key": "config.yaml", "path": "config.yaml"}]},
                },
                {"name": "scratch", "emptyDir": {}},
            ],
        },
    }
    try:
        core.create_namespaced_pod("default", body)
        pod = wait_pod_phase(core, "default", name, {"Succeeded", "Failed"})
        log = local_cluster.container_log("default", name, "main").read_text()
        assert pod.status.phase == "Succeeded", log
        node_folder = local_cluster.node_dir(pod.spec.node_name) / "mnt" / "nvme" / tag
        assert (node_folder / "local.txt").read_text() == "node-local\n"
        assert (node_folder / "from-configmap").read_text() == f"job: {tag}\n"
        assert pv_folder == local_cluster.pv_dir(claim)
        assert (pv_folder / "pv.txt").read_text() == "shared\n"
        assert (pv_folder / "cfg-files").read_text() == "config.yaml\n"  # items: only the listed key
        assert (local_cluster.pod_dir("default", name) / "volumes" / "scratch" / "s.txt").read_text() == "scratch\n"
        assert not any(p.is_file() for p in mnt.rglob("*")), "bind mounts leaked into the host mount namespace"
    finally:
        shutil.rmtree(mnt, ignore_errors=True)


def test_missing_configmap_key_is_reported_not_run(local_cluster, core):
    name = f"nocfg-{uuid.uuid4().hex[:6]}"
    core.create_namespaced_pod(
        "default",
        {
            "metadata": {"name": name},
            "spec": {
                "restartPolicy": "Never",
                "containers": [
                    {
                        "name": "main",
                        "image": "ignored",
                        "command": ["sh", "-c", "echo ran"],
                        "env": [{"name": "X", "valueFrom": {"configMapKeyRef": {"name": "absent", "key": "k"}}}],
                    }
                ],
            },
        },
    )
    from omnitrain.devcluster.testing import wait_for

    def waiting_reason():
        statuses = core.read_namespaced_pod(name, "default").status.container_statuses or []
        return statuses and statuses[0].state.waiting and statuses[0].state.waiting.reason

    wait_for(lambda: waiting_reason() == "CreateContainerConfigError", 30, "CreateContainerConfigError")
    pod = core.read_namespaced_pod(name, "default")
    assert pod.status.phase == "Pending"
    assert "absent" in pod.status.container_statuses[0].state.waiting.message
    assert not local_cluster.container_log("default", name, "main").exists()


def test_fallback_without_mount_namespace_rewrites_paths(local_cluster, tmp_path):
    """Where `unshare` is not permitted, mountPaths in args/env/workingDir point at the host folders instead."""
    import json

    from kubernetes import config

    from omnitrain.devcluster.agentapi import AgentApi
    from omnitrain.devcluster.launch import Launcher
    from omnitrain.devcluster.runtime import ContainerRun, PodRun
    from omnitrain.devcluster.testing import wait_for

    api = AgentApi(config.new_client_from_config(str(local_cluster.control_plane().kubeconfig("agent"))))
    launcher = Launcher(tmp_path, api, mount_ns=False)
    container = {
        "name": "main",
        "image": "x",
        "workingDir": "/work",
        "command": ["sh", "-c", 'echo "$OUT" > /ckpt/out.txt; pwd > /ckpt/cwd.txt'],
        "env": [{"name": "OUT", "value": "saved under /ckpt"}],
        "volumeMounts": [{"name": "nvme", "mountPath": "/ckpt"}, {"name": "w", "mountPath": "/work"}],
    }
    pod = {
        "metadata": {"name": "fallback", "namespace": "default", "uid": "u"},
        "spec": {
            "nodeName": "local-node-0",
            "containers": [container],
            "volumes": [{"name": "nvme", "hostPath": {"path": "/mnt/nvme"}}, {"name": "w", "emptyDir": {}}],
        },
    }
    folder = tmp_path / "pods" / "default" / "fallback"
    run = PodRun("default", "fallback", "u", "local-node-0", "127.200.0.2", folder, pod)
    run.containers["main"] = ContainerRun("main", folder / "containers" / "main", folder / "main.log")
    spec = launcher.container_spec(run, container)
    assert spec["mounts"] == []
    run.containers["main"].launch(spec)
    exit_info = wait_for(run.containers["main"].exit, 30, "container exit")
    assert exit_info["exitCode"] == 0, (folder / "main.log").read_text()
    nvme = tmp_path / "nodes" / "local-node-0" / "mnt" / "nvme"
    assert (nvme / "out.txt").read_text() == f"saved under {nvme}\n"
    assert (nvme / "cwd.txt").read_text() == f"{folder / 'volumes' / 'w'}\n"
    assert json.loads(spec["env"]["OMNITRAIN_PATH_MAP"])["/ckpt"] == str(nvme)


def test_configmap_volume_follows_updates(local_cluster, core):
    """As with a kubelet, a running pod's configMap volume shows the ConfigMap's new content (the gang
    announcement reaches the supervisors this way): keys change in place, keys removed go away, and the time from
    the update to the pod seeing it is well under a second."""
    import time

    from omnitrain.devcluster.testing import wait_for

    tag = uuid.uuid4().hex[:6]
    name, cfg = f"live-{tag}", f"live-cfg-{tag}"
    core.create_namespaced_config_map(
        "default", {"metadata": {"name": cfg}, "data": {"gang.json": '{"generation": 1}', "gone": "x"}}
    )
    mnt = f"/tmp/omnitrain-live-{tag}"
    script = (
        f'first=$(cat {mnt}/gang.json); echo "first=$first"; '
        f'while [ "$(cat {mnt}/gang.json)" = "$first" ]; do sleep 0.02; done; '
        f'echo "now=$(cat {mnt}/gang.json)"; [ -e {mnt}/gone ] && echo "gone-still-there"; ls {mnt}; true'
    )
    body = {
        "metadata": {"name": name},
        "spec": {
            "restartPolicy": "Never",
            "containers": [
                {
                    "name": "main",
                    "image": "ignored",
                    "command": ["sh", "-c", script],
                    "volumeMounts": [{"name": "gang", "mountPath": mnt, "readOnly": True}],
                }
            ],
            "volumes": [{"name": "gang", "configMap": {"name": cfg}}],
        },
    }
    try:
        core.create_namespaced_pod("default", body)
        log_file = local_cluster.container_log("default", name, "main")
        wait_for(lambda: log_file.exists() and "first=" in log_file.read_text(), 60, "the pod read the first version")
        assert 'first={"generation": 1}' in log_file.read_text()
        t0 = time.monotonic()
        core.replace_namespaced_config_map(
            cfg, "default", {"metadata": {"name": cfg}, "data": {"gang.json": '{"generation": 2}'}}
        )
        wait_for(lambda: "now=" in log_file.read_text(), 10, "the pod saw the new version", interval=0.02)
        seen_after = time.monotonic() - t0
        pod = wait_pod_phase(core, "default", name, {"Succeeded", "Failed"})
        log = log_file.read_text()
        assert pod.status.phase == "Succeeded", log
        assert 'now={"generation": 2}' in log
        assert "gone-still-there" not in log, log
        assert log.splitlines()[-1] == "gang.json", log  # ls: only the key of the new version
        assert seen_after < 1.0, f"the update took {seen_after:.2f} s to reach the pod"
    finally:
        shutil.rmtree(mnt, ignore_errors=True)
        core.delete_namespaced_config_map(cfg, "default")


def test_restart_in_place_keeps_empty_dir_and_reports_last_termination_message(local_cluster, core):
    """What the in-place gang restart relies on: under OnFailure the container of the same pod (same UID) is
    restarted, the pod's emptyDir keeps what the first run wrote (the pod owns it, not the container), and
    lastState.terminated carries the first run's exit code and termination message while the second run goes on."""
    from omnitrain.devcluster.testing import wait_for

    name = f"inplace-{uuid.uuid4().hex[:6]}"
    script = (
        "if [ -e /state/failed-generation ]; then echo second run saw $(cat /state/failed-generation); sleep 600; fi; "
        'echo 3 > /state/failed-generation; echo \'{"generation": 3}\' > "$OMNITRAIN_TERMINATION_LOG"; exit 42'
    )
    body = {
        "metadata": {"name": name},
        "spec": {
            "restartPolicy": "OnFailure",
            "terminationGracePeriodSeconds": 5,
            "containers": [
                {
                    "name": "main",
                    "image": "ignored",
                    "command": ["sh", "-c", script],
                    "volumeMounts": [{"name": "state", "mountPath": "/state"}],
                }
            ],
            "volumes": [{"name": "state", "emptyDir": {}}],
        },
    }
    created = core.create_namespaced_pod("default", body)
    try:
        log_file = local_cluster.container_log("default", name, "main")
        wait_for(lambda: log_file.exists() and "second run saw 3" in log_file.read_text(), 60, "the second run")

        def restarted():
            pod = core.read_namespaced_pod(name, "default")
            statuses = pod.status.container_statuses or []
            return pod if statuses and statuses[0].restart_count == 1 and statuses[0].state.running else None

        pod = wait_for(restarted, 30, "restartCount 1 and running")
        assert pod.metadata.uid == created.metadata.uid and pod.status.phase == "Running"
        last = pod.status.container_statuses[0].last_state.terminated
        assert last.exit_code == 42 and last.reason == "Error"
        assert last.message.strip() == '{"generation": 3}'
    finally:
        core.delete_namespaced_pod(name, "default", grace_period_seconds=0)
