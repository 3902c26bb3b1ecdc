"""Fault injection through the whole recovery chain on the local cluster: the operator launches a job whose pod
runs `omnitrain watchdog -- <trainer>`; we stop or kill the trainer process; the watchdog ends the pod (42 / 137),
the operator classifies the failure (omnitrain.resilience via reconcile.decide_recovery) and gang-restarts; the
next attempt resumes from the newest checkpoint and the job Succeeds with the state of an uninterrupted run.

Two trainers: tests/resilience/chain_trainer.py (a deterministic stand-in that checkpoints and resumes like the real
one, seconds per run) for a killed trainer and a deleted node; and the real `omnitrain train` under torchrun (2 ranks,
gloo) behind the operator's default pod command for a SIGSTOP'd rank, compared with an uninterrupted run.
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
def operators(local_cluster, tmp_path_factory):
    """start(command) -> (cluster, api, namespace, log): one operator per namespace, each with its pod command."""
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
    procs = []

    def start(command: str | None):
        """command None: the operator's default pod command (watchdog in front of torchrun ... omnitrain train)."""
        namespace = f"resilience-{uuid.uuid4().hex[:6]}"
        client.CoreV1Api(api).create_namespace({"metadata": {"name": namespace}})
        wait_until(lambda: _has_default_sa(api, namespace), 60, "default service account")
        log = tmp_path_factory.mktemp("operator") / "operator.log"
        env = {**os.environ, "KUBECONFIG": str(local_cluster.kubeconfig), "OMNITRAIN_RESYNC_SECONDS": "1",
               "OMNITRAIN_NAMESPACES": namespace, "OMP_NUM_THREADS": "1",
               **({"OMNITRAIN_TRAIN_COMMAND": command} if command else {})}
        procs.append(subprocess.Popen([sys.executable, "-m", "omnitrain", "operator"], env=env,
                                      stdout=open(log, "w"), stderr=subprocess.STDOUT))
        return local_cluster, api, namespace, log
    try:
        yield start
    finally:
        for proc in procs:
            proc.terminate()
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


WATCHDOG = f"{sys.executable} -m omnitrain watchdog --config /etc/omnitrain/config.yaml --poll 0.2 --no-gpu-health --"


@pytest.fixture(scope="module")
def cluster_with_operator(operators):
    """The operator whose pods run the stand-in trainer under the watchdog."""
    return operators(f"{WATCHDOG} {sys.executable} {CHAIN} --config /etc/omnitrain/config.yaml")


def _has_default_sa(api, namespace: str) -> bool:
    from kubernetes import client
    return any(sa.metadata.name == "default"
               for sa in client.CoreV1Api(api).list_namespaced_service_account(namespace).items)


def bound_claim(core, namespace: str, claim: str) -> None:
    """A statically bound persistent volume: what checkpoint.persistentClaim maps to (<cluster>/pv/<claim>)."""
    core.create_persistent_volume({"metadata": {"name": f"{claim}-pv"}, "spec": {
        "capacity": {"storage": "1Gi"}, "accessModes": ["ReadWriteMany"], "storageClassName": "",
        "hostPath": {"path": f"/unused/{claim}"}, "claimRef": {"namespace": namespace, "name": claim}}})
    core.create_namespaced_persistent_volume_claim(namespace, {"metadata": {"name": claim}, "spec": {
        "accessModes": ["ReadWriteMany"], "storageClassName": "", "volumeName": f"{claim}-pv",
        "resources": {"requests": {"storage": "1Gi"}}}})
    wait_until(lambda: core.read_namespaced_persistent_volume_claim(claim, namespace).status.phase == "Bound", 60,
               "the claim bound")


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


# SIGSTOP goes through the real training loop below; the stand-in covers a killed rank and a lost node cheaply.
@pytest.mark.parametrize("fault, exit_code, reason", [("kill", 137, None)])
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
    bound_claim(core, namespace, f"{name}-ckpt")
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



# --- the real training loop ---------------------------------------------------------------------------------

TRAIN_STEPS, TRAIN_INTERVAL = 12, 4


def find_rank_pid(job: str, attempt: int, rank: int) -> int | None:
    """The training process of one rank, found by the env the operator and torchrun give it."""
    want = {f"OMNITRAIN_JOB_NAME={job}".encode(), f"OMNITRAIN_ATTEMPT={attempt}".encode(), f"RANK={rank}".encode(),
            b"OMNITRAIN_HEARTBEAT_DIR"}
    for environ in Path("/proc").glob("[0-9]*/environ"):
        try:
            entries = environ.read_bytes().split(b"\0")
        except OSError:
            continue
        keys = {e.split(b"=", 1)[0] for e in entries}
        if all(w in entries or w in keys for w in want):
            return int(environ.parent.name)
    return None


def pod_logs(cluster, api, namespace: str, job: str) -> str:
    from kubernetes import client
    out = []
    for pod in client.CoreV1Api(api).list_namespaced_pod(namespace).items:
        if pod.metadata.name.startswith(job):
            path = cluster.container_log(namespace, pod.metadata.name, "trainer")
            out.append(f"--- {pod.metadata.name}\n" + (path.read_text()[-2500:] if path.exists() else "(no log)"))
    return "\n".join(out)


def tensors(state, prefix: str = "") -> dict:
    import torch
    if isinstance(state, torch.Tensor):
        return {prefix: state}
    if isinstance(state, dict):
        return {k: v for key, value in state.items() for k, v in tensors(value, f"{prefix}/{key}").items()}
    if isinstance(state, (list, tuple)):
        return {k: v for i, value in enumerate(state) for k, v in tensors(value, f"{prefix}/{i}").items()}
    return {}


def test_real_trainer_one_rank_sigstopped_resumes_and_matches_an_uninterrupted_run(operators, tmp_path):
    """omnitrain train under torchrun (2 ranks, gloo) in an operator-launched pod (the operator's default command:
    the watchdog in front of torchrun); rank 1 is SIGSTOP'd after the
    checkpoint at step 4, rank 0 blocks in its all-reduce; the watchdog ends the pod, the operator restarts the gang,
    attempt 1 resumes from the newest complete checkpoint; the final checkpoint equals an uninterrupted run's."""
    from kubernetes import client

    from omnitrain.operator import crd
    from omnitrain.trainer.checkpoint.restore import final_checkpoint, read_shard
    cluster, api, namespace, log = operators(None)
    core = client.CoreV1Api(api)
    name = f"train-{uuid.uuid4().hex[:5]}"
    claim = f"{name}-ckpt"
    bound_claim(core, namespace, claim)
    spec = {"parallelism": {"nodes": 1, "gpusPerNode": 2},
            "data": {"path": "/mnt/checkpoints/data", "synthetic": {"samples": 64, "shards": 2}, "tokenBudget": 512},
            "training": {"steps": TRAIN_STEPS, "learningRate": 3e-3, "warmupSteps": 3},
            "checkpoint": {"persistentClaim": claim, "persistentPath": "/mnt/checkpoints",
                           "localPath": f"/omnitrain-e2e/{name}", "intervalSteps": TRAIN_INTERVAL},
            "resilience": {"hangTimeoutSeconds": 5, "maxRestarts": 2},
            "metricsPort": 19400 + int(uuid.uuid4().int % 500)}
    # The uninterrupted run, started first so it overlaps the job's waits: same config and layout (its own copy of
    # the same synthetic data), plain torchrun on this machine.
    config = {"spec": {**spec, "data": {**spec["data"], "path": str(tmp_path / "data")},
                       "checkpoint": {"localPath": str(tmp_path / "local"), "persistentPath": str(tmp_path / "pv"),
                                      "persistentClaim": "reference", "intervalSteps": TRAIN_INTERVAL}},
              "run": {"jobName": name}}
    config["spec"].pop("metricsPort")
    config_path = tmp_path / "config.yaml"
    config_path.write_text(yaml.safe_dump(config))
    env = {**os.environ, "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": "",
           "OMNITRAIN_TERMINATION_LOG": str(tmp_path / "termination")}
    ref = subprocess.Popen([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                            "-m", "omnitrain", "train", "--config", str(config_path)], env=env,
                           stdout=subprocess.DEVNULL, stderr=open(tmp_path / "reference.log", "w"))
    try:
        client.CustomObjectsApi(api).create_namespaced_custom_object(
            crd.GROUP, crd.VERSION, namespace, crd.PLURAL,
            {"apiVersion": crd.API_VERSION, "kind": crd.KIND, "metadata": {"name": name}, "spec": spec})
        persistent = cluster.pv_dir(claim)
        wait_until(lambda: (c := final_checkpoint(str(persistent), name)) is not None and c.step >= TRAIN_INTERVAL,
                   240, f"a complete checkpoint (operator log: {log})", interval=0.1)
        pid = wait_until(lambda: find_rank_pid(name, 0, 1), 30, "rank 1's process")
        os.kill(pid, signal.SIGSTOP)
        st = wait_until(lambda: (s := job_status(api, namespace, name)).get("phase") in ("Succeeded", "Failed") and s,
                        240, f"job {name} to finish (operator log: {log})")
        assert st["phase"] == "Succeeded", (st, pod_logs(cluster, api, namespace, name))
        assert st["restarts"] == 1 and st["lastFailure"]["exitCode"] == 42
        assert st["lastFailure"]["reason"] == "HangDetected"
        # rank 0's final goodput, from the whole job's metrics log: the hang and the restart are badput
        goodput = st["goodput"]
        assert 0 < goodput["ratio"] < 1 and goodput["wallSeconds"] > goodput["productiveSeconds"] > 0
        assert goodput["badputSeconds"]["recovery"] > 0, goodput
        interrupted = final_checkpoint(str(persistent), name)
        assert interrupted.step == TRAIN_STEPS
        assert ref.wait(timeout=300) == 0, (tmp_path / "reference.log").read_text()[-3000:]
    finally:
        if ref.poll() is None:
            ref.kill()
            ref.wait()
    reference = final_checkpoint(str(tmp_path / "pv"), name)
    assert reference.step == TRAIN_STEPS
    for rank in (0, 1):
        got, want = tensors(read_shard(interrupted, rank)[0]), tensors(read_shard(reference, rank)[0])
        assert got.keys() == want.keys() and got
        different = [k for k in want if not __import__("torch").equal(got[k], want[k])]
        assert not different, f"rank {rank}: {different[:5]}"
