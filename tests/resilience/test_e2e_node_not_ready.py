"""A NotReady blip is not a lost node, on the local cluster: the operator, the node agent, the scheduler and the node
lifecycle controller are real; the pods run a stand-in (tests/resilience/waiting_trainer.py) that keeps the gang
Running until the test writes its `finish` file. A blip is staged as a kubelet cut off from the API server would
cause it: the agent's heartbeats for the node are paused (annotation omnitrain.dev/heartbeat=paused) and the Node's
Ready condition is patched to False through the API.

- NotReady for less than spec.resilience.nodeNotReadySeconds: the job says why it waits (Restarting=False
  NodeNotReady, a Warning event), and when the node is Ready again it keeps running: same pods, no restart.
- NotReady for longer: the node is lost, no sooner than the grace after the transition; the gang restarts without
  it (the lost pod force-deleted) and the job Succeeds after one restart.
"""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

from omnitrain.devcluster.procs import end_child
from omnitrain.devcluster.registration import HEARTBEAT_ANNOTATION, HEARTBEAT_PAUSED
from omnitrain.devcluster.testing import wait_for
from omnitrain.timestamps import now_rfc3339, parse_rfc3339

pytestmark = pytest.mark.e2e

REPO = Path(__file__).resolve().parents[2]
GRACE = 8  # spec.resilience.nodeNotReadySeconds of the job
LOCAL_PATH = "/var/lib/omnitrain/e2e"  # below an allowed host root


@pytest.fixture(scope="module")
def grace_operator(local_cluster, local_cluster_crd, tmp_path_factory):
    """(cluster, api, namespace, log): the operator with the waiting stand-in as its pod command, for one namespace.
    Resync every 60 s: what it does here comes from the Node watch and its own look at the deadline."""
    from kubernetes import client

    api = local_cluster_crd
    namespace = f"grace-{uuid.uuid4().hex[:6]}"
    client.CoreV1Api(api).create_namespace({"metadata": {"name": namespace}})
    local_cluster.wait_default_service_account(namespace=namespace)
    log = tmp_path_factory.mktemp("operator") / "operator.log"
    env = {
        **os.environ,
        "KUBECONFIG": str(local_cluster.kubeconfig),
        "OMNITRAIN_RESYNC_SECONDS": "60",
        "OMNITRAIN_NAMESPACES": namespace,
        "OMNITRAIN_TRAIN_COMMAND": f"{sys.executable} {Path(__file__).with_name('waiting_trainer.py')}",
    }
    proc = subprocess.Popen(
        [sys.executable, "-m", "omnitrain", "operator"], env=env, stdout=open(log, "w"), stderr=subprocess.STDOUT
    )
    try:
        yield local_cluster, api, namespace, log
    finally:
        end_child(proc)


def job_status(api, namespace: str, name: str) -> dict:
    from kubernetes import client

    from omnitrain.operator import crd

    obj = client.CustomObjectsApi(api).get_namespaced_custom_object(crd.GROUP, crd.VERSION, namespace, crd.PLURAL, name)
    return obj.get("status") or {}


def condition(st: dict, type_: str) -> dict:
    return next((c for c in st.get("conditions") or [] if c["type"] == type_), {})


def job_events(core, namespace: str, name: str) -> list[tuple[str, str]]:
    return [(e.type, e.reason) for e in core.list_namespaced_event(namespace).items if e.involved_object.name == name]


def attempt_pods(core, namespace: str, name: str, attempt: int) -> list:
    return [p for p in core.list_namespaced_pod(namespace).items if p.metadata.name.startswith(f"{name}-a{attempt}-")]


def running(core, namespace: str, name: str, attempt: int) -> dict[str, object] | None:
    """The attempt's two pods by name when both are Running."""
    pods = attempt_pods(core, namespace, name, attempt)
    if len(pods) == 2 and all(p.status.phase == "Running" and not p.metadata.deletion_timestamp for p in pods):
        return {p.metadata.name: p for p in pods}
    return None


def pause_heartbeats(cluster, core, node: str, paused: bool) -> None:
    """Pause (or resume) the agent's Lease renewals and status posts for the node; returns once the agent has
    acknowledged a pause in its log (after that it posts nothing for the node)."""
    agent_log = cluster.root / "logs" / "agent.log"
    marker = f"node {node}: heartbeats paused"
    before = agent_log.read_text().count(marker)
    core.patch_node(node, {"metadata": {"annotations": {HEARTBEAT_ANNOTATION: HEARTBEAT_PAUSED if paused else None}}})
    if paused:
        wait_for(lambda: agent_log.read_text().count(marker) > before, 30, f"the agent to pause {node}'s heartbeats")


def post_not_ready(core, node: str) -> str:
    """Ready=False as a kubelet that lost its runtime would post it; returns the transition time."""
    now = now_rfc3339()
    condition = {
        "type": "Ready",
        "status": "False",
        "reason": "KubeletNotReady",
        "message": "staged by the test: heartbeats paused",
        "lastHeartbeatTime": now,
        "lastTransitionTime": now,
    }
    core.patch_node_status(node, {"status": {"conditions": [condition]}})
    return now


def test_a_not_ready_blip_keeps_the_gang_and_a_longer_outage_restarts_it_after_the_grace(grace_operator):
    from kubernetes import client

    from omnitrain.operator import crd

    cluster, api, namespace, log = grace_operator
    core = client.CoreV1Api(api)
    name = f"blip-{uuid.uuid4().hex[:5]}"
    pool = [f"{name}-{c}" for c in "abc"]  # two for the gang, one spare
    for node in pool:
        cluster.add_node(node, gpus=1)
    lost = None
    try:
        cluster.wait_nodes_ready(pool, timeout_s=60)
        for node in pool:
            core.patch_node(node, {"metadata": {"labels": {"omnitrain.dev/e2e-pool": name}}})
        spec = {
            "parallelism": {"nodes": 2, "gpusPerNode": 1},
            "checkpoint": {"localPath": f"{LOCAL_PATH}/{name}"},
            "resilience": {"maxRestarts": 2, "nodeNotReadySeconds": GRACE},
            "scheduling": {"nodeSelector": {"omnitrain.dev/e2e-pool": name}},
        }
        client.CustomObjectsApi(api).create_namespaced_custom_object(
            crd.GROUP,
            crd.VERSION,
            namespace,
            crd.PLURAL,
            {"apiVersion": crd.API_VERSION, "kind": crd.KIND, "metadata": {"name": name}, "spec": spec},
        )
        first = wait_for(lambda: running(core, namespace, name, 0), 90, f"attempt 0 Running (operator log: {log})")
        wait_for(lambda: job_status(api, namespace, name).get("phase") == "Running", 30, "the job Running")
        uids = {n: p.metadata.uid for n, p in first.items()}
        lost = first[f"{name}-a0-n1"].spec.node_name

        # 1. a blip: NotReady, then Ready again within the grace
        pause_heartbeats(cluster, core, lost, True)
        post_not_ready(core, lost)
        waiting = wait_for(
            lambda: (
                (c := condition(job_status(api, namespace, name), "Restarting")).get("reason") == "NodeNotReady" and c
            ),
            30,
            "the job to wait for the NotReady node",
        )
        assert f"node {lost} NotReady since" in waiting["message"] and "counted lost at" in waiting["message"]
        st = job_status(api, namespace, name)
        assert st["attempt"] == 0 and st["phase"] == "Running" and lost in st["message"], st
        assert ("Warning", "NodeNotReady") in job_events(core, namespace, name)
        pause_heartbeats(cluster, core, lost, False)  # the agent posts Ready at once
        wait_for(
            lambda: condition(job_status(api, namespace, name), "Restarting").get("reason") == "NodeReady",
            GRACE + 30,
            "the operator to see the node Ready again",
        )
        st = job_status(api, namespace, name)
        assert st["attempt"] == 0 and st.get("restarts") == 0 and st["phase"] == "Running", st
        assert {n: p.metadata.uid for n, p in (running(core, namespace, name, 0) or {}).items()} == uids
        assert ("Normal", "NodeReady") in job_events(core, namespace, name)

        # 2. NotReady for longer than the grace: lost, the gang restarts without it
        pause_heartbeats(cluster, core, lost, True)
        since = post_not_ready(core, lost)
        again = wait_for(lambda: running(core, namespace, name, 1), GRACE + 60, f"attempt 1 Running (log: {log})")
        st = job_status(api, namespace, name)
        failure = st["lastFailure"]
        assert failure["reason"] == "NodeLost" and failure["node"] == lost and st["lastFailureClass"] == "NodeLost"
        assert parse_rfc3339(failure["time"]) - parse_rfc3339(since) >= GRACE, (since, failure)
        assert lost not in {p.spec.node_name for p in again.values()}
        assert job_events(core, namespace, name).count(("Warning", "NodeNotReady")) == 2
        pause_heartbeats(cluster, core, lost, False)
        for node in pool:
            folder = cluster.node_dir(node) / LOCAL_PATH.lstrip("/") / name
            folder.mkdir(parents=True, exist_ok=True)
            (folder / "finish").write_text("")
        done = wait_for(
            lambda: (s := job_status(api, namespace, name)).get("phase") in ("Succeeded", "Failed") and s,
            60,
            "the job to finish",
        )
        assert done["phase"] == "Succeeded" and done["restarts"] == 1 and done["attempt"] == 1, done
    finally:
        if lost is not None:
            core.patch_node(lost, {"metadata": {"annotations": {HEARTBEAT_ANNOTATION: None}}})
        for node in pool:
            cluster.delete_node(node)
