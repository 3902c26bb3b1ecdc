"""Dynamic provisioning for the local cluster: the default StorageClass `omnitrain-local` and its provisioner.

The PV controller (kube-controller-manager) hands an unbound claim of a class whose provisioner is not in-tree over
by annotating it `volume.kubernetes.io/storage-provisioner: omnitrain.io/local` (only after no existing volume
matched). This provisioner answers with a hostPath PersistentVolume on the folder the node agent maps the claim to
(`podspec.claim_dir`: `<root>/pv/<claimName>`), pre-bound to the claim (claimRef with its uid) and annotated
`pv.kubernetes.io/provisioned-by`; the PV controller then binds the two. A claim asking for what a plain folder
cannot give (a selector, a data source, a block device, a volume attributes class) gets a Warning event naming the
field instead of hanging Pending without a word.

Reclaim policy Delete: when a claim is deleted the PV controller marks its volume Released and leaves the deletion
to us (external provisioner); we delete the PersistentVolume object but keep the folder. The agent maps a claim by
its name, not by its volume, so a claim created again under the same name sees the same files, as it did before
dynamic provisioning; deleting checkpoints is not something a dev tool should do behind the user's back.

`plan` is the pure part (unit-tested without a cluster); `Provisioner` is the thin loop the node agent runs.
"""

from __future__ import annotations

import json
import logging
import threading
from dataclasses import dataclass
from pathlib import Path

from omnitrain.devcluster.podspec import claim_dir
from omnitrain.timestamps import now_rfc3339

log = logging.getLogger("omnitrain.devcluster.provisioner")

STORAGE_CLASS = "omnitrain-local"
PROVISIONER = "omnitrain.io/local"
COMPONENT = "omnitrain-local-provisioner"
ANN_DEFAULT_CLASS = "storageclass.kubernetes.io/is-default-class"
# The PV controller writes both; older claims may carry only the beta one.
ANN_STORAGE_PROVISIONER = ("volume.kubernetes.io/storage-provisioner", "volume.beta.kubernetes.io/storage-provisioner")
ANN_PROVISIONED_BY = "pv.kubernetes.io/provisioned-by"
MANAGED_BY = {"app.kubernetes.io/managed-by": COMPONENT}
RESYNC_S = 30.0


def storage_class_body() -> dict:
    return {
        "apiVersion": "storage.k8s.io/v1",
        "kind": "StorageClass",
        "metadata": {"name": STORAGE_CLASS, "annotations": {ANN_DEFAULT_CLASS: "true"}, "labels": MANAGED_BY},
        "provisioner": PROVISIONER,
        "reclaimPolicy": "Delete",
        "volumeBindingMode": "Immediate",
    }


@dataclass(frozen=True)
class Provision:
    namespace: str
    claim: str
    uid: str
    folder: Path
    volume: dict


@dataclass(frozen=True)
class Refuse:
    namespace: str
    claim: str
    uid: str
    message: str


@dataclass(frozen=True)
class Delete:
    volume: str
    uid: str


Action = Provision | Refuse | Delete


def unsupported(claim: dict) -> str | None:
    """Why a folder cannot serve this claim, naming the field; None when it can."""
    spec = claim.get("spec") or {}
    if spec.get("selector"):
        return "spec.selector is not supported by the local provisioner (it creates volumes, it does not pick them)"
    for field in ("dataSource", "dataSourceRef"):
        if spec.get(field):
            return f"spec.{field} is not supported by the local provisioner (volumes start empty)"
    if spec.get("volumeMode", "Filesystem") != "Filesystem":
        return f"spec.volumeMode {spec['volumeMode']} is not supported by the local provisioner (folders only)"
    if spec.get("volumeAttributesClassName"):
        return "spec.volumeAttributesClassName is not supported by the local provisioner"
    return None


def volume_name(claim: dict) -> str:
    return f"pvc-{claim['metadata']['uid']}"


def volume_for(claim: dict, storage_class: dict, root: Path) -> dict:
    """The PersistentVolume for a claim: its folder, size, access modes and class, pre-bound by claimRef."""
    meta, spec = claim["metadata"], claim["spec"]
    return {
        "apiVersion": "v1",
        "kind": "PersistentVolume",
        "metadata": {
            "name": volume_name(claim),
            "labels": dict(MANAGED_BY),
            "annotations": {ANN_PROVISIONED_BY: PROVISIONER},
        },
        "spec": {
            "capacity": {"storage": spec["resources"]["requests"]["storage"]},
            "accessModes": list(spec.get("accessModes") or ["ReadWriteOnce"]),
            "volumeMode": "Filesystem",
            "storageClassName": spec["storageClassName"],
            "persistentVolumeReclaimPolicy": storage_class.get("reclaimPolicy") or "Delete",
            "hostPath": {"path": str(claim_dir(root, meta["name"])), "type": "DirectoryOrCreate"},
            "claimRef": {
                "apiVersion": "v1",
                "kind": "PersistentVolumeClaim",
                "namespace": meta["namespace"],
                "name": meta["name"],
                "uid": meta["uid"],
            },
        },
    }


def _handed_to_us(claim: dict, classes: dict[str, dict]) -> bool:
    meta, spec = claim["metadata"], claim.get("spec") or {}
    annotations = meta.get("annotations") or {}
    storage_class = classes.get(spec.get("storageClassName") or "")
    return (
        any(annotations.get(a) == PROVISIONER for a in ANN_STORAGE_PROVISIONER)
        and storage_class is not None
        and storage_class.get("provisioner") == PROVISIONER
        and not spec.get("volumeName")
        and not meta.get("deletionTimestamp")
        and (claim.get("status") or {}).get("phase", "Pending") == "Pending"
    )


def plan(claims: list[dict], volumes: list[dict], classes: list[dict], root: Path) -> list[Action]:
    """What to do now: a volume for each claim handed to us that has none, an event for each claim we cannot
    serve, and deletion of our Released volumes whose class said Delete."""
    by_name = {c["metadata"]["name"]: c for c in classes}
    provisioned = {((v.get("spec") or {}).get("claimRef") or {}).get("uid") for v in volumes}
    actions: list[Action] = []
    for claim in claims:
        meta = claim["metadata"]
        if not _handed_to_us(claim, by_name) or meta["uid"] in provisioned:
            continue
        reason = unsupported(claim)
        if reason:
            actions.append(Refuse(meta["namespace"], meta["name"], meta["uid"], reason))
            continue
        actions.append(
            Provision(
                meta["namespace"],
                meta["name"],
                meta["uid"],
                claim_dir(root, meta["name"]),
                volume_for(claim, by_name[claim["spec"]["storageClassName"]], root),
            )
        )
    for volume in volumes:
        meta = volume["metadata"]
        if (
            (meta.get("annotations") or {}).get(ANN_PROVISIONED_BY) == PROVISIONER
            and volume["spec"].get("persistentVolumeReclaimPolicy") == "Delete"
            and (volume.get("status") or {}).get("phase") == "Released"
            and not meta.get("deletionTimestamp")
        ):
            actions.append(Delete(meta["name"], meta["uid"]))
    return actions


def claim_event(action: Provision | Refuse, now: str) -> dict:
    """A core/v1 Event on the claim, what `kubectl describe pvc` shows. Its name is fixed per claim and reason, so
    saying the same thing again (a restarted agent, a re-plan) is one event (409), not a stream."""
    if isinstance(action, Refuse):
        kind, reason, message = "Warning", "ProvisioningFailed", action.message
    else:
        kind, reason = "Normal", "ProvisioningSucceeded"
        message = f"Successfully provisioned volume {action.volume['metadata']['name']} on {action.folder}"
    return {
        "apiVersion": "v1",
        "kind": "Event",
        "metadata": {"name": f"{action.claim[:200]}.{action.uid[:8]}.{reason.lower()}", "namespace": action.namespace},
        "involvedObject": {
            "apiVersion": "v1",
            "kind": "PersistentVolumeClaim",
            "namespace": action.namespace,
            "name": action.claim,
            "uid": action.uid,
        },
        "reason": reason,
        "message": message,
        "type": kind,
        "source": {"component": COMPONENT},
        "firstTimestamp": now,
        "lastTimestamp": now,
        "count": 1,
    }


def ensure_storage_class(storage_api) -> bool:
    """Creates the default StorageClass; False when it already exists (idempotent `up`)."""
    from kubernetes.client.exceptions import ApiException

    try:
        storage_api.create_storage_class(storage_class_body())
        return True
    except ApiException as exc:
        if exc.status != 409:
            raise
        return False


class Provisioner:
    """Level-triggered: any claim or volume event marks the state dirty, and one loop re-plans from fresh lists
    (so a missed or repeated event costs nothing but a list)."""

    def __init__(self, api_client, root: Path, stop_event: threading.Event):
        from kubernetes import client

        self.core = client.CoreV1Api(api_client)
        self.storage = client.StorageV1Api(api_client)
        self.root = root
        self.stop_event = stop_event
        self.dirty = threading.Event()
        self.reported: set[str] = set()

    def watch_claims(self) -> None:
        self._watch(self.core.list_persistent_volume_claim_for_all_namespaces)

    def watch_volumes(self) -> None:
        self._watch(self.core.list_persistent_volume)

    def _watch(self, list_fn) -> None:
        from kubernetes import watch

        self.dirty.set()  # a (re)started watch may have missed events
        for _ in watch.Watch().stream(list_fn, timeout_seconds=300):
            if self.stop_event.is_set():
                return
            self.dirty.set()

    def reconcile_loop(self) -> None:
        while not self.stop_event.is_set():
            self.dirty.wait(RESYNC_S)
            self.dirty.clear()
            try:
                self.reconcile()
            except Exception:
                self.dirty.set()  # retried as soon as the agent's guard restarts the loop, not a resync later
                raise

    def reconcile(self) -> None:
        actions = plan(
            self._items(self.core.list_persistent_volume_claim_for_all_namespaces),
            self._items(self.core.list_persistent_volume),
            self._items(self.storage.list_storage_class),
            self.root,
        )
        for action in actions:
            if isinstance(action, Provision):
                self._provision(action)
            elif isinstance(action, Refuse):
                self._refuse(action)
            else:
                self._delete(action)

    @staticmethod
    def _items(list_fn) -> list[dict]:
        return json.loads(list_fn(_preload_content=False).data)["items"]

    def _provision(self, action: Provision) -> None:
        from kubernetes.client.exceptions import ApiException

        action.folder.mkdir(parents=True, exist_ok=True)
        try:
            self.core.create_persistent_volume(action.volume)
        except ApiException as exc:
            if exc.status != 409:
                raise
            return
        log.info(
            "provisioned %s for claim %s/%s on %s",
            action.volume["metadata"]["name"],
            action.namespace,
            action.claim,
            action.folder,
        )
        self._event(action)

    def _refuse(self, action: Refuse) -> None:
        if action.uid in self.reported:
            return
        self._event(action)
        self.reported.add(action.uid)
        log.warning("claim %s/%s not provisioned: %s", action.namespace, action.claim, action.message)

    def _event(self, action: Provision | Refuse) -> None:
        from kubernetes.client.exceptions import ApiException

        try:
            self.core.create_namespaced_event(action.namespace, claim_event(action, now_rfc3339()))
        except ApiException as exc:
            if exc.status != 409:
                raise

    def _delete(self, action: Delete) -> None:
        from kubernetes import client
        from kubernetes.client.exceptions import ApiException

        try:
            self.core.delete_persistent_volume(
                action.volume, body=client.V1DeleteOptions(preconditions=client.V1Preconditions(uid=action.uid))
            )
        except ApiException as exc:
            if exc.status not in (404, 409):
                raise
            return
        log.info("deleted released volume %s (its folder stays)", action.volume)
