"""Fault injection through the whole recovery chain on the local cluster: the operator launches a job whose pod
runs `omnitrain watchdog -- <trainer>`; we stop or kill the trainer process; the watchdog ends the pod (42 / 137),
the operator classifies the failure (omnitrain.resilience via reconcile.decide_recovery) and gang-restarts; the
next attempt resumes from the newest checkpoint and the job Succeeds with the state of an uninterrupted run.

The trainer here is tests/resilience/chain_trainer.py (a deterministic stand-in that checkpoints and resumes like
the real one): the real training loop (`omnitrain train`) was not in the tree when this was written.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest
import yaml

from chain_trainer import chain

pytestmark = pytest.mark.e2e

REPO = Path(__file__).resolve().parents[2]
CHAIN = str(Path(__file__).with_name("chain_trainer.py"))
STEPS, INTERVAL = 40, 5
NODE = "local-node-0"
DEADLINE = 150.0


def wait_until(condition, deadline: float, what: str, interval: float = 0.2):
    end = time.monotonic() + deadline
    while time.monotonic() < end:
        value = condition()
        if value:
            return value
        time.sleep(interval)   # polling with a deadline
    raise AssertionError(f"timed out after {deadline:.0f}s waiting for {what}")


@pytest.fixture(scope="module")
def cluster_with_operator(local_cluster, tmp_path_factory):
    from kubernetes import client
    from kubernetes.client.exceptions import ApiException
    api = local_cluster.api_client()
    crd_body = yaml.safe_load((REPO / "manifests" / "crd" / "omnitrainingjobs.yaml").read_text())
    ext = client.ApiextensionsV1Api(api)
    try:
        ext.create_custom_resource_definition(crd_body)
    except ApiException as exc:
        if exc.status != 409:     # another test module installed it already
            raise
    wait_until(lambda: any(c.type == "Established" and c.status == "True"
                           for c in ext.read_custom_resource_definition(crd_body["metadata"]["name"]).status.conditions
                           or []), 30, "CRD Established")
    namespace = f"resilience-{uuid.uuid4().hex[:6]}"
    client.CoreV1Api(api).create_namespace({"metadata": {"name": namespace}})
    wait_until(lambda: _has_default_sa(api, namespace), 60, "default service account")
    command = (f"{sys.executable} -m omnitrain watchdog --config /etc/omnitrain/config.yaml --poll 0.2 "
               f"--no-gpu-health -- {sys.executable} {CHAIN} --config /etc/omnitrain/config.yaml")
    log = tmp_path_factory.mktemp("operator") / "operator.log"
    env = {**os.environ, "KUBECONFIG": str(local_cluster.kubeconfig), "OMNITRAIN_RESYNC_SECONDS": "1",
           "OMNITRAIN_NAMESPACES": namespace, "OMNITRAIN_TRAIN_COMMAND": command, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "omnitrain", "operator"], env=env, stdout=open(log, "w"),
                            stderr=subprocess.STDOUT)
    try:
        yield local_cluster, api, namespace, log
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def _has_default_sa(api, namespace: str) -> bool:
    from kubernetes import client
    return any(sa.metadata.name == "default"
               for sa in client.CoreV1Api(api).list_namespaced_service_account(namespace).items)


def job_status(api, namespace: str, name: str) -> dict:
    from kubernetes import client

    from omnitrain.operator import crd
    obj = client.CustomObjectsApi(api).get_namespaced_custom_object(crd.GROUP, crd.VERSION, namespace, crd.PLURAL,
                                                                    name)
    return obj.get("status") or {}


def run_job_with_fault(cluster_with_operator, fault: str) -> tuple[dict, Path]:
    from kubernetes import client

    from omnitrain.operator import crd
    cluster, api, namespace, log = cluster_with_operator
    name = f"{fault}-{uuid.uuid4().hex[:5]}"
    local_path = f"/omnitrain-e2e/{name}"
    spec = {"parallelism": {"nodes": 1, "gpusPerNode": 1}, "training": {"steps": STEPS},
            "checkpoint": {"localPath": local_path, "intervalSteps": INTERVAL},
            "resilience": {"hangTimeoutSeconds": 5, "maxRestarts": 2},
            "scheduling": {"nodeSelector": {"kubernetes.io/hostname": NODE}}}
    client.CustomObjectsApi(api).create_namespaced_custom_object(
        crd.GROUP, crd.VERSION, namespace, crd.PLURAL,
        {"apiVersion": crd.API_VERSION, "kind": crd.KIND, "metadata": {"name": name}, "spec": spec})
    folder = cluster.node_dir(NODE) / local_path.lstrip("/") / name
    wait_until(lambda: (folder / f"chain-step-{2 * INTERVAL}.json").exists(), DEADLINE,
               f"a checkpoint at step {2 * INTERVAL} (operator log: {log})")
    pid = int((folder / "trainer-attempt-0.pid").read_text())
    fault_at = time.time()
    os.kill(pid, signal.SIGSTOP if fault == "sigstop" else signal.SIGKILL)
    st = wait_until(lambda: (s := job_status(api, namespace, name)).get("phase") in ("Succeeded", "Failed") and s,
                    DEADLINE, f"job {name} to finish (operator log: {log})")
    print(f"{fault}: job finished {time.time() - fault_at:.1f}s after the fault, status {st.get('phase')}")
    return st, folder


@pytest.mark.parametrize("fault, exit_code, reason", [("sigstop", 42, "HangDetected"), ("kill", 137, None)])
def test_fault_restarts_from_the_checkpoint_and_ends_like_an_uninterrupted_run(cluster_with_operator, fault,
                                                                               exit_code, reason):
    st, folder = run_job_with_fault(cluster_with_operator, fault)
    assert st["phase"] == "Succeeded", st
    assert st["restarts"] == 1 and st["attempt"] == 1
    assert st["lastFailure"]["exitCode"] == exit_code
    if reason:
        assert st["lastFailure"]["reason"] == reason
    attempts = [json.loads(line) for line in (folder / "attempts.log").read_text().splitlines()]
    assert [a["attempt"] for a in attempts] == [0, 1]
    assert attempts[0]["resumed_from"] == 0 and attempts[1]["resumed_from"] >= 2 * INTERVAL
    assert json.loads((folder / "final.json").read_text())["state"] == chain(STEPS)


def test_deleted_node_restarts_the_gang_on_another_node_from_the_persistent_checkpoint(cluster_with_operator):
    from kubernetes import client

    from omnitrain.operator import crd
    cluster, api, namespace, log = cluster_with_operator
    core = client.CoreV1Api(api)
    name = f"nodeloss-{uuid.uuid4().hex[:5]}"
    pool = [f"{name}-a", f"{name}-b"]
    for node in pool:
        cluster.add_node(node)
    cluster.wait_nodes_ready(pool, timeout_s=60)
    for node in pool:
        core.patch_node(node, {"metadata": {"labels": {"omnitrain.dev/e2e-pool": name}}})
    # A statically bound persistent volume: what checkpoint.persistentClaim maps to (<cluster>/pv/<claim>).
    core.create_persistent_volume({"metadata": {"name": f"{name}-pv"}, "spec": {
        "capacity": {"storage": "1Gi"}, "accessModes": ["ReadWriteMany"], "storageClassName": "",
        "hostPath": {"path": f"/unused/{name}"},
        "claimRef": {"namespace": namespace, "name": f"{name}-ckpt"}}})
    core.create_namespaced_persistent_volume_claim(namespace, {"metadata": {"name": f"{name}-ckpt"}, "spec": {
        "accessModes": ["ReadWriteMany"], "storageClassName": "", "volumeName": f"{name}-pv",
        "resources": {"requests": {"storage": "1Gi"}}}})
    wait_until(lambda: core.read_namespaced_persistent_volume_claim(f"{name}-ckpt", namespace).status.phase == "Bound",
               60, "the claim bound")
    spec = {"parallelism": {"nodes": 1, "gpusPerNode": 1}, "training": {"steps": STEPS},
            "checkpoint": {"persistentClaim": f"{name}-ckpt", "persistentPath": "/mnt/checkpoints",
                           "localPath": f"/omnitrain-e2e/{name}", "intervalSteps": INTERVAL},
            "resilience": {"hangTimeoutSeconds": 5, "maxRestarts": 2},
            "scheduling": {"nodeSelector": {"omnitrain.dev/e2e-pool": name}}}
    client.CustomObjectsApi(api).create_namespaced_custom_object(
        crd.GROUP, crd.VERSION, namespace, crd.PLURAL,
        {"apiVersion": crd.API_VERSION, "kind": crd.KIND, "metadata": {"name": name}, "spec": spec})
    folder = cluster.pv_dir(f"{name}-ckpt") / name
    wait_until(lambda: (folder / f"chain-step-{2 * INTERVAL}.json").exists(), DEADLINE,
               f"a checkpoint at step {2 * INTERVAL} (operator log: {log})")
    first = [p for p in core.list_namespaced_pod(namespace).items if p.metadata.name.startswith(f"{name}-a0")][0]
    lost_node = first.spec.node_name
    fault_at = time.time()
    assert cluster.delete_node(lost_node)
    st = wait_until(lambda: (s := job_status(api, namespace, name)).get("phase") in ("Succeeded", "Failed") and s,
                    DEADLINE, f"job {name} to finish (operator log: {log})")
    print(f"node deletion: job finished {time.time() - fault_at:.1f}s after the fault, status {st.get('phase')}, "
          f"last failure {st.get('lastFailure')}")
    assert st["phase"] == "Succeeded", st
    assert st["attempt"] >= 1
    attempts = [json.loads(line) for line in (folder / "attempts.log").read_text().splitlines()]
    assert attempts[0]["resumed_from"] == 0 and attempts[-1]["resumed_from"] >= 2 * INTERVAL
    assert json.loads((folder / "final.json").read_text())["state"] == chain(STEPS)
    survivor = [n for n in pool if n != lost_node][0]
    finished = [p for p in core.list_namespaced_pod(namespace).items if p.metadata.name.startswith(f"{name}-a")]
    assert all(p.spec.node_name == survivor for p in finished if p.status.phase == "Succeeded")
