"""End to end on the local cluster: a job whose training pods succeed is promoted by the operator: a distillation
Job (omnitrain distill) writes the student on the persistent claim, then a Deployment (omnitrain serve) becomes
Ready on /readyz, and its pod answers a generate request."""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from pathlib import Path

import pytest
import torch
import yaml

from omnitrain.devcluster.procs import end_child
from omnitrain.model.artifact import ModelArtifact, load_artifact, save_artifact
from omnitrain.serving.api import encode_array
from omnitrain.serving.testing import FACTORY, build_tiny
from omnitrain.trainer.parallel.testing import free_port
from tests.promotion.helpers import TINY
from tests.serving.conftest import http

REPO = Path(__file__).resolve().parents[2]
CLAIM = "promotion-ckpt"


def _binaries_present() -> bool:
    cache = Path(os.environ.get("OMNITRAIN_CACHE", Path.home() / ".cache" / "omnitrain")) / "bin"
    return any(cache.glob("k8s-*/kube-apiserver"))


pytestmark = [
    pytest.mark.timeout(600),
    pytest.mark.skipif(not _binaries_present(), reason="no local cluster binaries (make cluster-bins)"),
]


def _install_crd(api) -> None:
    from kubernetes import client
    from kubernetes.client.exceptions import ApiException

    body = yaml.safe_load((REPO / "manifests" / "crd" / "omnitrainingjobs.yaml").read_text())
    ext = client.ApiextensionsV1Api(api)
    try:
        ext.create_custom_resource_definition(body)
    except ApiException as e:
        if e.status != 409:
            raise
        current = ext.read_custom_resource_definition(body["metadata"]["name"])
        body["metadata"]["resourceVersion"] = current.metadata.resource_version
        ext.replace_custom_resource_definition(body["metadata"]["name"], body)

    def established():
        crd = ext.read_custom_resource_definition(body["metadata"]["name"])
        return any(c.type == "Established" and c.status == "True" for c in crd.status.conditions or [])

    from omnitrain.devcluster.testing import wait_for

    wait_for(established, 30, "CRD Established")


@pytest.fixture
def operator_process(local_cluster, tmp_path):
    env = {
        **os.environ,
        "KUBECONFIG": str(local_cluster.kubeconfig),
        "OMNITRAIN_RESYNC_SECONDS": "1",
        "OMNITRAIN_TRAIN_COMMAND": "python -c 'print(\"training done\")'",
        "OMP_NUM_THREADS": "1",
    }
    log = tmp_path / "operator.log"
    proc = subprocess.Popen(
        [sys.executable, "-m", "omnitrain", "operator"], env=env, stdout=open(log, "w"), stderr=subprocess.STDOUT
    )
    yield log
    end_child(proc)


def test_succeeded_job_is_distilled_served_and_answers(local_cluster, operator_process):
    from kubernetes import client

    from omnitrain.devcluster.testing import wait_for
    from omnitrain.operator import crd

    api = local_cluster.api_client()
    _install_crd(api)
    torch.manual_seed(0)
    model, adapter = build_tiny(TINY)
    pv = Path(local_cluster.ensure_persistent_claim("default", CLAIM))
    save_artifact(
        pv / "teacher.pt", ModelArtifact(model=model, adapter=adapter, config=TINY, factory=FACTORY), overwrite=True
    )
    name, port = f"promo-{uuid.uuid4().hex[:6]}", free_port()
    spec = {
        "parallelism": {"nodes": 1, "gpusPerNode": 1},
        "model": {
            "hiddenSize": TINY.hidden_size,
            "depth": TINY.depth,
            "numHeads": TINY.num_heads,
            "textDim": TINY.text_dim,
        },
        "training": {"logEvery": 2},
        "checkpoint": {"persistentClaim": CLAIM, "persistentPath": "/mnt/checkpoints"},
        "promotion": {
            "distill": {
                "teacherSteps": 20,
                "studentSteps": 4,
                "steps": 6,
                "batchSize": 2,
                "teacher": "/mnt/checkpoints/teacher.pt",
            },
            "inference": {"port": port, "fp8": True},
        },
    }
    custom = client.CustomObjectsApi(api)
    custom.create_namespaced_custom_object(
        crd.GROUP,
        crd.VERSION,
        "default",
        crd.PLURAL,
        {"apiVersion": crd.API_VERSION, "kind": crd.KIND, "metadata": {"name": name}, "spec": spec},
    )

    def promotion():
        job = custom.get_namespaced_custom_object(crd.GROUP, crd.VERSION, "default", crd.PLURAL, name)
        return (job.get("status") or {}).get("promotion") or {}

    def served():
        p = promotion()
        if (p.get("distill") or {}).get("phase") == "Failed":
            raise AssertionError(f"distillation failed: {p}\n{operator_process.read_text()[-3000:]}")
        return p if (p.get("inference") or {}).get("phase") == "Ready" else None

    try:
        final = wait_for(served, 300, "promotion chain to reach serving Ready")
    except Exception:
        print(operator_process.read_text()[-4000:])
        raise
    assert final["chain"] == "training:Succeeded -> distillation:Succeeded -> serving:Ready"
    student = load_artifact(pv / name / "promotion" / "student.pt")
    assert student.sampler["steps"] == 4

    jobs = client.BatchV1Api(api).read_namespaced_job(f"{name}-distill", "default")
    deployment = client.AppsV1Api(api).read_namespaced_deployment(f"{name}-serve", "default")
    for obj in (jobs, deployment):
        assert obj.metadata.owner_references[0].kind == crd.KIND and obj.metadata.owner_references[0].name == name

    pods = (
        client.CoreV1Api(api)
        .list_namespaced_pod("default", label_selector=f"omnitrain.io/promoted-from={name},omnitrain.io/role=serve")
        .items
    )
    ready = [
        p
        for p in pods
        if p.status.pod_ip and any(c.type == "Ready" and c.status == "True" for c in p.status.conditions or [])
    ]
    assert ready, [p.status for p in pods]
    url = f"http://{ready[0].status.pod_ip}:{port}"
    code, out = http(
        "POST",
        url + "/v1/generate",
        {"text": encode_array(torch.randn(3, TINY.text_dim)), "frames": 2, "height": 4, "width": 4},
    )
    assert code == 200, out
    assert out["shape"] == [TINY.latent_channels, 2, 4, 4] and out["steps"] == 4
    custom.delete_namespaced_custom_object(crd.GROUP, crd.VERSION, "default", crd.PLURAL, name)
