"""Starting Kueue in a running local cluster (the objects are built by omnitrain.devcluster.kueue): build if missing,
certificates, CRDs, webhook configurations, the manager process, then the queues. Idempotent: a second call
re-applies the objects and leaves a running manager alone."""

from __future__ import annotations

import json
import shutil
import urllib.request
from collections.abc import Callable
from pathlib import Path

from omnitrain.devcluster import kueue, procs
from omnitrain.devcluster.binaries import build_if_missing
from omnitrain.devcluster.certs import ensure_webhook_pki
from omnitrain.devcluster.controlplane import free_port
from omnitrain.devcluster.testing import wait_for

FIELD_MANAGER = "omnitrain-dev"


def ensure_kueue_built(log: Callable[[str], None] = print) -> Path:
    return build_if_missing(f"Kueue {kueue.KUEUE_VERSION}", kueue.BUILD_SCRIPT, kueue.missing, kueue.kueue_dir(), log)


def apply(api_client, obj: dict) -> None:
    """Server-side apply (CRDs are too large for a client-side apply's annotation)."""
    from kubernetes.dynamic import DynamicClient

    resource = DynamicClient(api_client).resources.get(api_version=obj["apiVersion"], kind=obj["kind"])
    resource.server_side_apply(body=obj, field_manager=FIELD_MANAGER, force_conflicts=True)


def _ports(state: Path) -> dict[str, int]:
    """The manager's ports, kept across calls: the webhook configurations name the webhook's."""
    if state.exists():
        return json.loads(state.read_text())
    ports = {"webhook": free_port(), "health": free_port()}
    state.write_text(json.dumps(ports))
    return ports


def _ready(health_port: int) -> bool:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{health_port}/readyz", timeout=2) as r:
            return r.status == 200
    except OSError:
        return False


def _crds_established(api_client, names: list[str]) -> bool:
    from kubernetes import client

    ext = client.ApiextensionsV1Api(api_client)
    for name in names:
        conditions = ext.read_custom_resource_definition(name).status.conditions or []
        if not any(c.type == "Established" and c.status == "True" for c in conditions):
            return False
    return True


def start_kueue(root: Path, api_client, log: Callable[[str], None] = print) -> dict[str, int]:
    """Kueue's manager running against the cluster whose admin client is `api_client`; returns its ports."""
    from kubernetes import client
    from kubernetes.client.exceptions import ApiException

    folder = ensure_kueue_built(log)
    state = root / "kueue"
    state.mkdir(parents=True, exist_ok=True)
    pki = ensure_webhook_pki(state / "pki", kueue.CA_NAME, [f"{kueue.SERVICE_NAME}.{kueue.NAMESPACE}.svc"])
    cert_dir = state / "certs"
    cert_dir.mkdir(exist_ok=True)
    for src in (pki.cert, pki.key):
        shutil.copyfile(src, cert_dir / src.name)
    ports = _ports(state / "ports.json")
    base_url = f"https://127.0.0.1:{ports['webhook']}"
    ca = pki.ca_cert.read_bytes()

    core = client.CoreV1Api(api_client)
    try:
        core.create_namespace({"metadata": {"name": kueue.NAMESPACE}})
    except ApiException as exc:
        if exc.status != 409:
            raise
    apply(api_client, kueue.cert_secret(ca, pki.ca_key.read_bytes(), pki.cert.read_bytes(), pki.key.read_bytes()))
    crds = kueue.crds([p.read_text() for p in sorted((folder / "config" / "crd").glob("*.yaml"))], base_url, ca)
    for crd in crds:
        apply(api_client, crd)
    names = [c["metadata"]["name"] for c in crds]
    wait_for(lambda: _crds_established(api_client, names), 60, "Kueue's CRDs Established")
    manifests = (folder / "config" / "webhook" / "manifests.yaml").read_text()
    for configuration in kueue.webhook_configurations(manifests, base_url, ca):
        apply(api_client, configuration)

    pid_file = root / "pids" / "kueue.pid"
    if not procs.running(pid_file):
        config = state / "config.yaml"
        config.write_text(kueue.config_text(ports["webhook"], ports["health"], cert_dir))
        kubeconfig = root / "kubeconfig"
        pid = procs.spawn_detached(
            [
                str(folder / "kueue"),
                f"--config={config}",
                f"--kubeconfig={kubeconfig}",
                "--feature-gates=VisibilityOnDemand=false",  # its API server would need an APIService and certs
            ],
            root / "logs" / "kueue.log",
            pid_file,
        )
        log(f"[dev] started Kueue {kueue.KUEUE_VERSION} (pid {pid}, log {root / 'logs' / 'kueue.log'})")
    wait_for(lambda: _ready(ports["health"]), 120, f"Kueue ready (see {root / 'logs' / 'kueue.log'})")
    return ports


def add_queues(api_client, namespaces: list[str], gpus: int) -> None:
    """The queues (kueue.queue_objects) and the namespaces labelled as Kueue's."""
    from kubernetes import client

    core = client.CoreV1Api(api_client)
    for ns in namespaces:
        core.patch_namespace(ns, {"metadata": {"labels": {kueue.MANAGED_LABEL: kueue.MANAGED_VALUE}}})
    for obj in kueue.queue_objects(namespaces, gpus):
        apply(api_client, obj)


def stop_kueue(root: Path, log: Callable[[str], None] = print) -> None:
    if procs.stop(root / "pids" / "kueue.pid", grace_s=10):
        log("[dev] stopped Kueue")


__all__ = ["add_queues", "apply", "ensure_kueue_built", "start_kueue", "stop_kueue"]
