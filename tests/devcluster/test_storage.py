"""Dynamic provisioning on the local cluster: the quickstart's claim (no storageClassName) gets the default class,
a volume from the agent's provisioner, and pods mounting it write into `pv_dir(claim)`."""

from __future__ import annotations

import uuid

import pytest
import yaml

from omnitrain.devcluster import provisioner
from omnitrain.devcluster.binaries import REPO_ROOT
from omnitrain.devcluster.testing import wait_for, wait_pod_gone, wait_pod_phase

pytestmark = pytest.mark.e2e


@pytest.fixture
def core(local_cluster):
    from kubernetes import client

    return client.CoreV1Api(local_cluster.api_client())


@pytest.fixture
def namespace(local_cluster, core):
    """A namespace of its own: the quickstart claim's name stays as in the example without meeting other tests."""
    name = f"storage-{uuid.uuid4().hex[:6]}"
    core.create_namespace({"metadata": {"name": name}})
    local_cluster.wait_default_service_account(namespace=name)
    yield name
    core.delete_namespace(name)


def quickstart_claim() -> dict:
    docs = yaml.safe_load_all((REPO_ROOT / "examples" / "quickstart.yaml").read_text())
    return next(d for d in docs if d and d["kind"] == "PersistentVolumeClaim")


def claim_phase(core, namespace: str, name: str) -> str:
    return core.read_namespaced_persistent_volume_claim(name, namespace).status.phase


def claim_event(core, namespace: str, name: str, reason: str):
    events = core.list_namespaced_event(namespace, field_selector=f"involvedObject.name={name}").items
    return next((e for e in events if e.reason == reason), None)


def test_quickstart_claim_is_provisioned_and_pods_write_to_its_folder(local_cluster, core, namespace):
    from kubernetes import client

    body = quickstart_claim()
    name = body["metadata"]["name"]
    assert "storageClassName" not in body["spec"], "the example is meant to rely on the default class"
    core.create_namespaced_persistent_volume_claim(namespace, body)
    wait_for(lambda: claim_phase(core, namespace, name) == "Bound", 60, f"claim {namespace}/{name} Bound")
    pvc = core.read_namespaced_persistent_volume_claim(name, namespace)
    assert pvc.spec.storage_class_name == provisioner.STORAGE_CLASS  # DefaultStorageClass admission
    volume = core.read_persistent_volume(pvc.spec.volume_name)
    assert volume.metadata.annotations[provisioner.ANN_PROVISIONED_BY] == provisioner.PROVISIONER
    assert volume.spec.claim_ref.uid == pvc.metadata.uid
    assert volume.spec.host_path.path == str(local_cluster.pv_dir(name))
    assert pvc.status.capacity["storage"] == body["spec"]["resources"]["requests"]["storage"]
    wait_for(lambda: claim_event(core, namespace, name, "ProvisioningSucceeded"), 30, "a ProvisioningSucceeded event")

    tag = uuid.uuid4().hex[:6]
    pod = f"writer-{tag}"
    core.create_namespaced_pod(
        namespace,
        {
            "metadata": {"name": pod},
            "spec": {
                "restartPolicy": "Never",
                "containers": [
                    {
                        "name": "main",
                        "image": "ignored",
                        "command": ["sh", "-c", f"echo {tag} > /mnt/ckpt/{tag}"],
                        "volumeMounts": [{"name": "ckpt", "mountPath": "/mnt/ckpt"}],
                    }
                ],
                "volumes": [{"name": "ckpt", "persistentVolumeClaim": {"claimName": name}}],
            },
        },
    )
    written = local_cluster.pv_dir(name) / tag
    try:
        phase = wait_pod_phase(core, namespace, pod, {"Succeeded", "Failed"}).status.phase
        assert phase == "Succeeded", local_cluster.container_log(namespace, pod, "main").read_text()
        assert written.read_text() == f"{tag}\n"

        # reclaim policy Delete: the claim's deletion removes the volume object; the folder and its files stay
        core.delete_namespaced_pod(pod, namespace)
        wait_pod_gone(core, namespace, pod)
        core.delete_namespaced_persistent_volume_claim(name, namespace)

        def volume_gone() -> bool:
            try:
                core.read_persistent_volume(volume.metadata.name)
            except client.exceptions.ApiException as exc:
                return exc.status == 404
            return False

        wait_for(volume_gone, 60, f"volume {volume.metadata.name} deleted after its claim")
        assert written.read_text() == f"{tag}\n"
    finally:
        written.unlink(missing_ok=True)


def test_claim_with_a_selector_gets_an_event_naming_the_field(core, namespace):
    name = "picky"
    core.create_namespaced_persistent_volume_claim(
        namespace,
        {
            "metadata": {"name": name},
            "spec": {
                "accessModes": ["ReadWriteOnce"],
                "resources": {"requests": {"storage": "1Gi"}},
                "selector": {"matchLabels": {"tier": "fast"}},
            },
        },
    )

    event = wait_for(
        lambda: claim_event(core, namespace, name, "ProvisioningFailed"),
        60,
        f"a ProvisioningFailed event on claim {namespace}/{name}",
    )
    assert event.type == "Warning" and "spec.selector" in event.message
    assert claim_phase(core, namespace, name) == "Pending"
