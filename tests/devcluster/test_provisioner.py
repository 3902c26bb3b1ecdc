"""The local provisioner's plan, without a cluster: which claims get which volumes, which are refused, which
volumes go."""

from __future__ import annotations

from pathlib import Path

from omnitrain.devcluster import provisioner
from omnitrain.devcluster.podspec import VolumeLayout
from omnitrain.devcluster.provisioner import Delete, Provision, Refuse, plan

ROOT = Path("/clusters/dev")
CLASS = provisioner.storage_class_body()


def claim(
    name: str = "ckpt",
    uid: str = "11111111-aaaa",
    handed_to: str | None = provisioner.PROVISIONER,
    storage_class: str = provisioner.STORAGE_CLASS,
    phase: str | None = "Pending",
    **spec,
) -> dict:
    annotations = {"volume.kubernetes.io/storage-provisioner": handed_to} if handed_to else {}
    body = {
        "metadata": {"name": name, "namespace": "team", "uid": uid, "annotations": annotations},
        "spec": {
            "accessModes": ["ReadWriteMany"],
            "resources": {"requests": {"storage": "5Gi"}},
            "storageClassName": storage_class,
            **spec,
        },
    }
    if phase:
        body["status"] = {"phase": phase}
    return body


def released(name: str, policy: str = "Delete", phase: str = "Released", by: str = provisioner.PROVISIONER) -> dict:
    return {
        "metadata": {"name": name, "uid": f"uid-{name}", "annotations": {provisioner.ANN_PROVISIONED_BY: by}},
        "spec": {"persistentVolumeReclaimPolicy": policy, "claimRef": {"uid": "gone"}},
        "status": {"phase": phase},
    }


def test_storage_class_is_the_immediate_default():
    assert CLASS["metadata"]["annotations"][provisioner.ANN_DEFAULT_CLASS] == "true"
    assert CLASS["provisioner"] == provisioner.PROVISIONER
    assert CLASS["volumeBindingMode"] == "Immediate" and CLASS["reclaimPolicy"] == "Delete"


def test_a_claim_handed_over_gets_a_prebound_hostpath_volume_on_the_folder_pods_see():
    [action] = plan([claim()], [], [CLASS], ROOT)
    assert isinstance(action, Provision)
    volume = action.volume
    assert volume["metadata"]["name"] == "pvc-11111111-aaaa"
    assert volume["metadata"]["annotations"][provisioner.ANN_PROVISIONED_BY] == provisioner.PROVISIONER
    spec = volume["spec"]
    assert spec["claimRef"] == {
        "apiVersion": "v1",
        "kind": "PersistentVolumeClaim",
        "namespace": "team",
        "name": "ckpt",
        "uid": "11111111-aaaa",
    }
    assert spec["capacity"] == {"storage": "5Gi"} and spec["accessModes"] == ["ReadWriteMany"]
    assert spec["storageClassName"] == provisioner.STORAGE_CLASS and spec["persistentVolumeReclaimPolicy"] == "Delete"
    # the node agent resolves a pod's claim volume by claim name: the volume must name that same folder
    pod_sees = VolumeLayout(ROOT, ROOT / "pods" / "team" / "p", "local-node-0").host_path(
        {"name": "v", "persistentVolumeClaim": {"claimName": "ckpt"}}
    )
    assert action.folder == pod_sees == Path(spec["hostPath"]["path"]) == ROOT / "pv" / "ckpt"


def test_provisioning_is_reported_on_the_claim():
    [action] = plan([claim()], [], [CLASS], ROOT)
    event = provisioner.claim_event(action, "2026-01-01T00:00:00Z")
    assert event["type"] == "Normal" and event["reason"] == "ProvisioningSucceeded"
    assert "pvc-11111111-aaaa" in event["message"] and event["involvedObject"]["name"] == "ckpt"


def test_reclaim_policy_follows_the_class():
    retain = {**CLASS, "reclaimPolicy": "Retain"}
    [action] = plan([claim()], [], [retain], ROOT)
    assert action.volume["spec"]["persistentVolumeReclaimPolicy"] == "Retain"


def test_claims_not_handed_to_us_or_already_served_are_left_alone():
    served = plan([claim()], [], [CLASS], ROOT)[0].volume
    other_class = {"metadata": {"name": "fast"}, "provisioner": "example.com/nfs"}
    claims = [
        claim(uid="a", handed_to=None),  # PV controller has not handed it over
        claim(uid="b", handed_to="example.com/nfs", storage_class="fast"),
        claim(uid="c", storage_class="missing-class"),
        claim(uid="d", volumeName="hand-made"),  # statically bound by the user
        claim(uid="e", phase="Bound"),
        claim(uid="11111111-aaaa"),
    ]  # its volume exists already
    deleting = claim(uid="f")
    deleting["metadata"]["deletionTimestamp"] = "2026-01-01T00:00:00Z"
    assert plan(claims + [deleting], [served], [CLASS, other_class], ROOT) == []


def test_a_new_claim_without_status_and_with_the_beta_annotation_is_served():
    fresh = claim(phase=None, handed_to=None)
    fresh["metadata"]["annotations"] = {"volume.beta.kubernetes.io/storage-provisioner": provisioner.PROVISIONER}
    assert [type(a) for a in plan([fresh], [], [CLASS], ROOT)] == [Provision]


def test_unsupported_requests_are_refused_naming_the_field():
    cases = {
        "spec.selector": {"selector": {"matchLabels": {"tier": "fast"}}},
        "spec.dataSource": {"dataSource": {"kind": "PersistentVolumeClaim", "name": "src"}},
        "spec.dataSourceRef": {"dataSourceRef": {"kind": "VolumeSnapshot", "name": "snap"}},
        "spec.volumeMode": {"volumeMode": "Block"},
        "spec.volumeAttributesClassName": {"volumeAttributesClassName": "gold"},
    }
    for field, spec in cases.items():
        [action] = plan([claim(**spec)], [], [CLASS], ROOT)
        assert isinstance(action, Refuse) and action.message.startswith(field), (field, action)
        event = provisioner.claim_event(action, "2026-01-01T00:00:00Z")
        assert (event["type"], event["reason"], event["message"]) == ("Warning", "ProvisioningFailed", action.message)
        assert event["involvedObject"]["uid"] == "11111111-aaaa" and event["metadata"]["namespace"] == "team"
    assert plan([claim(volumeMode="Filesystem", selector={})], [], [CLASS], ROOT)[0].__class__ is Provision


def test_only_our_released_volumes_with_delete_policy_are_deleted():
    volumes = [
        released("ours"),
        released("kept", policy="Retain"),
        released("bound", phase="Bound"),
        released("theirs", by="example.com/nfs"),
    ]
    assert plan([], volumes, [CLASS], ROOT) == [Delete("ours", "uid-ours")]
