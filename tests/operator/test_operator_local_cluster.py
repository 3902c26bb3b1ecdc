"""The operator on the project's local cluster (omnitrain/devcluster): scheduler, node agent and garbage collector
are real, and the pods really run (a stand-in trainer, tests/operator/stand_in_trainer.py, set through the
operator's OMNITRAIN_TRAIN_COMMAND). A retryable exit in attempt 0 leads to one gang restart; attempt 1 succeeds."""

from __future__ import annotations

import json
import sys
import uuid
from pathlib import Path

import pytest
import yaml
from jobs import cond, create_job, events, pod_names, pods, status
from kubernetes import client
from kubernetes.client.exceptions import ApiException
from operator_process import REPO, OperatorProcess

from omnitrain.devcluster.testing import wait_for

pytestmark = pytest.mark.e2e
LOCAL_PATH = "/var/lib/omnitrain/e2e"  # below an allowed host root (OMNITRAIN_ALLOWED_HOST_ROOTS default)


@pytest.fixture(scope="module")
def cluster_operator(local_cluster, tmp_path_factory):
    api = local_cluster.api_client()
    body = yaml.safe_load((REPO / "manifests" / "crd" / "omnitrainingjobs.yaml").read_text())
    ext = client.ApiextensionsV1Api(api)
    try:
        ext.create_custom_resource_definition(body)
    except ApiException as exc:
        if exc.status != 409:
            raise
        ext.patch_custom_resource_definition(body["metadata"]["name"], body)
    wait_for(
        lambda: any(
            c.type == "Established" and c.status == "True"
            for c in ext.read_custom_resource_definition(body["metadata"]["name"]).status.conditions or []
        ),
        30,
        "CRD Established",
    )
    namespace = f"otj-{uuid.uuid4().hex[:6]}"
    client.CoreV1Api(api).create_namespace({"metadata": {"name": namespace}})
    command = f"{sys.executable} {Path(__file__).with_name('stand_in_trainer.py')}"
    folder = tmp_path_factory.mktemp("operator-lc")
    # The operator runs as the ServiceAccount of manifests/rbac (the cluster authorizes with RBAC): the test fails
    # if the ClusterRole lacks a permission the operator uses.
    kubeconfig = service_account_kubeconfig(api, local_cluster.kubeconfig, folder / "operator-kubeconfig")
    # only this namespace: other areas' tests may run their own operator on the same cluster
    op = OperatorProcess(
        kubeconfig, folder / "operator.log", {"OMNITRAIN_TRAIN_COMMAND": command, "OMNITRAIN_NAMESPACES": namespace}
    )
    yield api, namespace, op
    op.stop()


def _create_or_replace(create, replace, body):
    try:
        create(body)
    except ApiException as exc:
        if exc.status != 409:
            raise
        replace(body["metadata"]["name"], body)


def service_account_kubeconfig(api, admin_kubeconfig: Path, path: Path) -> Path:
    core, rbac = client.CoreV1Api(api), client.RbacAuthorizationV1Api(api)
    docs = {
        d["kind"]: d
        for f in sorted((REPO / "manifests" / "rbac").glob("*.yaml"))
        if f.name != "kustomization.yaml"
        for d in yaml.safe_load_all(f.read_text())
        if d
    }
    sa = docs["ServiceAccount"]
    ns = sa["metadata"]["namespace"]
    try:
        core.create_namespace({"metadata": {"name": ns}})
    except ApiException as exc:
        if exc.status != 409:
            raise
    _create_or_replace(
        lambda b: core.create_namespaced_service_account(ns, b),
        lambda n, b: core.replace_namespaced_service_account(n, ns, b),
        sa,
    )
    _create_or_replace(rbac.create_cluster_role, rbac.replace_cluster_role, docs["ClusterRole"])
    _create_or_replace(rbac.create_cluster_role_binding, rbac.replace_cluster_role_binding, docs["ClusterRoleBinding"])
    token = core.create_namespaced_service_account_token(
        sa["metadata"]["name"], ns, {"spec": {"expirationSeconds": 3600}}
    ).status.token
    admin = yaml.safe_load(admin_kubeconfig.read_text())
    cluster = admin["clusters"][0]
    path.write_text(
        yaml.safe_dump(
            {
                "apiVersion": "v1",
                "kind": "Config",
                "clusters": [cluster],
                "current-context": "operator",
                "users": [{"name": "operator", "user": {"token": token}}],
                "contexts": [{"name": "operator", "context": {"cluster": cluster["name"], "user": "operator"}}],
            }
        )
    )
    return path


def test_pods_run_for_real_gang_restart_then_success(local_cluster, cluster_operator):
    api, ns, op = cluster_operator
    nodes = local_cluster.node_names[:2]
    for node in nodes:  # attempt 0: rank 1 crashes (retryable); attempt 1: everyone exits 0
        folder = local_cluster.node_dir(node) / LOCAL_PATH.lstrip("/")
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "fault-plan.json").write_text(json.dumps({"0/1": 1}))
    create_job(
        api,
        ns,
        "real",
        {
            "parallelism": {"nodes": 2, "gpusPerNode": 1},
            "training": {"steps": 5},
            "checkpoint": {"localPath": LOCAL_PATH},
            "resilience": {"maxRestarts": 1},
        },
    )
    wait_for(
        lambda: status(api, ns, "real").get("phase") in ("Succeeded", "Failed"), 120, "the job to finish", interval=0.2
    )
    st = status(api, ns, "real")
    assert st["phase"] == "Succeeded", (st, op.tail())
    assert st["attempt"] == 1 and st["restarts"] == 1
    assert st["lastFailure"]["pod"] == "real-a0-n1" and st["lastFailure"]["exitCode"] == 1
    assert st["lastFailure"]["reason"] == "InjectedFault"
    assert cond(st, "Succeeded")["status"] == "True"
    # the operator posts a pass's events after it wrote that pass's status: wait for them, do not race them
    wanted = {"Created", "GangRestart", "Restarted", "Succeeded"}
    wait_for(lambda: wanted <= {e.reason for e in events(api, ns, "real")}, 30, f"events {sorted(wanted)}")
    assert pod_names(api, ns, "real") == ["real-a1-n0", "real-a1-n1"]  # attempt 0's pods were deleted

    seen = {}
    for node in nodes:
        for f in (local_cluster.node_dir(node) / LOCAL_PATH.lstrip("/")).glob("attempt1-rank*.json"):
            seen[f.name] = (node, json.loads(f.read_text()))
    assert sorted(seen) == ["attempt1-rank0.json", "attempt1-rank1.json"]
    (node0, r0), (node1, r1) = seen["attempt1-rank0.json"], seen["attempt1-rank1.json"]
    assert node0 != node1  # one pod per node
    assert r0["config_attempt"] == 1 and r0["job"] == "real"
    assert r1["env"]["PET_NODE_RANK"] == "1" and r1["env"]["WORLD_SIZE"] == "2"
    # rank 0's DNS name (through the headless Service) reached rank 1 as rank 0's pod IP
    assert r1["env"]["MASTER_ADDR"] == r0["env"]["POD_IP"] and r1["env"]["NODE_NAME"] == node1


def test_a_full_checkpoint_disk_fails_the_job_at_once_naming_the_disk(local_cluster, cluster_operator):
    # issue 14, case 6: this used to be two gang restarts from scratch, then NoProgress "than step None"
    api, ns, op = cluster_operator
    local = f"{LOCAL_PATH}/full"
    for node in local_cluster.node_names[:2]:
        folder = local_cluster.node_dir(node) / local.lstrip("/")
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "fault-plan.json").write_text(json.dumps({"0/1": "storage"}))
    create_job(
        api,
        ns,
        "full",
        {
            "parallelism": {"nodes": 2, "gpusPerNode": 1},
            "checkpoint": {"localPath": local},
            "resilience": {"maxRestarts": 2},
        },
    )
    wait_for(
        lambda: status(api, ns, "full").get("phase") in ("Succeeded", "Failed"), 120, "the job to end", interval=0.2
    )
    st = status(api, ns, "full")
    assert st["phase"] == "Failed", (st, op.tail())
    assert st.get("attempt") == 0 and not st.get("totalRestarts") and not st.get("restarts")
    failed = cond(st, "Failed")
    assert failed["reason"] == "StorageError" and local in failed["message"] and "ENOSPC" in failed["message"]
    assert "free space on" in st["message"] and "None" not in st["message"]
    assert st["lastFailure"]["reason"] == "StorageError" and st["lastFailure"]["pod"] == "full-a0-n1"
    assert "StorageError" in {e.reason for e in events(api, ns, "full")}
    # issue 14, case 5: no pod of the job carries a ServiceAccount token
    created = pods(api, ns, "full")
    assert created and all(p.spec.automount_service_account_token is False for p in created)
    assert not any(v.projected for p in created for v in p.spec.volumes or [])


def test_a_job_that_asks_for_the_hosts_root_is_refused_and_gets_nothing(cluster_operator):
    # issue 14, case 5: localPath "/" was a hostPath / (DirectoryOrCreate) mounted at / in the user's image
    api, ns, op = cluster_operator
    create_job(api, ns, "root", {"checkpoint": {"localPath": "/"}})
    wait_for(lambda: status(api, ns, "root").get("phase") == "Failed", 60, "the job to be refused", interval=0.2)
    st = status(api, ns, "root")
    valid = cond(st, "Valid")
    assert valid["status"] == "False" and valid["reason"] == "InvalidSpec", (st, op.tail())
    assert "spec.checkpoint.localPath" in valid["message"] and "system folder" in valid["message"]
    core = client.CoreV1Api(api)
    assert pod_names(api, ns, "root") == []
    assert [
        c.metadata.name for c in core.list_namespaced_config_map(ns).items if c.metadata.name == "root-config"
    ] == []
    assert [s.metadata.name for s in core.list_namespaced_service(ns).items if s.metadata.name == "root"] == []


def test_pre_encoding_runs_as_a_job_before_the_first_launch_and_the_gang_follows(local_cluster, cluster_operator):
    """spec.data.preEncode: the operator's Job runs the real `omnitrain data encode` (PyAV, the VAE, MiniLM) on a
    packed folder of real clips on the claim; the gang is created only once it completed."""
    from omnitrain.spec import BucketSpec, EncodersSpec
    from omnitrain.trainer.data.pack import PackSpec, pack_folder
    from omnitrain.trainer.data.reader import read_manifest
    from omnitrain.trainer.data.shapes import ShapesSpec, write_shapes

    api, ns, op = cluster_operator
    claim = "pre-encode"
    pv = Path(local_cluster.ensure_persistent_claim(ns, claim))
    write_shapes(pv / "clips", ShapesSpec(clips=4, seed=2), log=lambda *_: None)
    pack_folder(pv / "clips", pv / "raw", PackSpec(shards=2), log=lambda *_: None)
    encoders = EncodersSpec(buckets=BucketSpec(area=32 * 32, max_frames=9)).to_wire()
    create_job(
        api,
        ns,
        "enc",
        {
            "parallelism": {"nodes": 1, "gpusPerNode": 1},
            "model": {"textDim": 384},
            "data": {"path": "/mnt/ckpt/raw", "encoders": encoders, "preEncode": {"path": "/mnt/ckpt/encoded"}},
            "checkpoint": {"localPath": LOCAL_PATH, "persistentClaim": claim, "persistentPath": "/mnt/ckpt"},
        },
    )
    wait_for(
        lambda: status(api, ns, "enc").get("phase") in ("Succeeded", "Failed"), 240, "the job to end", interval=0.5
    )
    st = status(api, ns, "enc")
    assert st["phase"] == "Succeeded", (st, op.tail())
    assert cond(st, "DataEncoded")["status"] == "True"
    manifest = read_manifest(pv / "encoded")
    assert manifest["kind"] == "encoded" and manifest["samples"] == 4 and manifest["encoders"] == encoders
    job = client.BatchV1Api(api).read_namespaced_job("enc-encode", ns)
    assert job.metadata.owner_references[0].name == "enc" and job.status.completion_time is not None
    created = [p.metadata.creation_timestamp for p in pods(api, ns, "enc")]
    assert created and all(t >= job.status.completion_time.replace(microsecond=0) for t in created)
    wanted = {"EncodingStarted", "DataEncoded", "Created", "Succeeded"}
    wait_for(lambda: wanted <= {e.reason for e in events(api, ns, "enc")}, 30, f"events {sorted(wanted)}")
