"""Kueue in the local cluster: its manager, built from the Go module at a pinned version (hack/build-kueue.sh), run as
a process against the local API server, with its CRDs, webhooks and a queue for GPU jobs.

The API server calls Kueue's webhooks: the pod mutator that puts a pod group behind the scheduling gate
`kueue.x-k8s.io/admission` until the group is admitted, the validators of its own objects and the conversion of its
CRDs. In a real cluster they are a Service. Nothing routes Service addresses here, so every clientConfig (taken from
the module's own manifests) becomes a URL on loopback.

Certificates: Kueue's rotator (internalCertManagement) keeps a CA and a serving certificate in the Secret
`kueue-webhook-server-cert` and injects the CA into the webhook configurations and the CRD conversions. Left alone
it would mint a certificate for `kueue-webhook-service.kueue-system.svc` only, which the API server cannot check
against 127.0.0.1; so we seed the Secret (and the webhook's certDir) with our own CA, carrying the name the rotator
verifies (`kueue-ca`), and a serving certificate for both names; the rotator finds them valid and keeps them.
(With the rotator off, Kueue reads its metrics certificate from a fixed path under /etc.)

Only namespaces labelled MANAGED_LABEL=enabled are Kueue's (its managedJobsNamespaceSelector and the pod webhooks'
namespaceSelector): the pod webhook fails closed, and the rest of the cluster must not depend on Kueue running.

The object builders here are pure (text in, dicts out); LocalCluster.start_kueue (cluster.py) applies them.
"""

from __future__ import annotations

import base64
import copy
from pathlib import Path
from typing import Any

import yaml

from omnitrain.devcluster.binaries import REPO_ROOT, cache_dir

KUEUE_VERSION = "v0.17.0"
BUILD_SCRIPT = REPO_ROOT / "hack" / "build-kueue.sh"
NAMESPACE = "kueue-system"
SERVICE_NAME = "kueue-webhook-service"  # names the certificate's DNS name and the configurations below
SECRET_NAME = "kueue-webhook-server-cert"
CA_NAME = "kueue-ca"  # the rotator verifies the CA for this name
MUTATING_NAME = "kueue-mutating-webhook-configuration"
VALIDATING_NAME = "kueue-validating-webhook-configuration"
MANAGED_LABEL = "omnitrain.dev/kueue"
MANAGED_VALUE = "enabled"
# The CRDs Kueue's kustomization gives a conversion webhook, and its rotator injects a CA into (pkg/util/cert).
CONVERTED_CRDS = ("localqueues", "clusterqueues", "workloads", "cohorts", "multikueueclusters")
# Pod groups only: the operator labels its pods; every other framework stays off (their CRDs are not installed).
FRAMEWORKS = ("pod",)
KUEUE_GROUP = "kueue.x-k8s.io"
FLAVOR = "default-flavor"
CLUSTER_QUEUE = "omnitrain-gpus"
LOCAL_QUEUE = "omnitrain"
# Job priorities for the local cluster's queue (spec.scheduling.priorityClassName): high preempts low inside it.
PRIORITY_CLASSES = {"omnitrain-low": 100, "omnitrain-high": 1000}


def kueue_dir() -> Path:
    return cache_dir() / "bin" / f"kueue-{KUEUE_VERSION}"


def missing(folder: Path | None = None) -> list[str]:
    folder = folder or kueue_dir()
    wanted = ["kueue", "config/webhook/manifests.yaml", "config/crd"]
    return [w for w in wanted if not (folder / w).exists()]


def config_text(webhook_port: int, health_port: int, cert_dir: Path) -> str:
    """The manager's Configuration (config.kueue.x-k8s.io/v1beta2)."""
    config = {
        "apiVersion": "config.kueue.x-k8s.io/v1beta2",
        "kind": "Configuration",
        "namespace": NAMESPACE,
        "health": {"healthProbeBindAddress": f"127.0.0.1:{health_port}"},
        "metrics": {"bindAddress": "0"},
        "webhook": {"host": "127.0.0.1", "port": webhook_port, "certDir": str(cert_dir)},
        "leaderElection": {"leaderElect": False},
        "internalCertManagement": {
            "enable": True,
            "webhookServiceName": SERVICE_NAME,
            "webhookSecretName": SECRET_NAME,
        },
        "clientConnection": {"qps": 50, "burst": 100},
        "manageJobsWithoutQueueName": False,
        "managedJobsNamespaceSelector": {"matchLabels": {MANAGED_LABEL: MANAGED_VALUE}},
        "integrations": {"frameworks": list(FRAMEWORKS)},
    }
    return yaml.safe_dump(config, sort_keys=False)


def _kept(webhook: dict) -> bool:
    path = ((webhook.get("clientConfig") or {}).get("service") or {}).get("path", "")
    return path.endswith("--v1-pod") or "-kueue-x-k8s-io-" in path


def webhook_configurations(manifests: str, base_url: str, ca_bundle: bytes) -> list[dict]:
    """Kueue's Mutating/ValidatingWebhookConfiguration (its config/components/webhook/manifests.yaml) for pods and
    its own objects, named as its rotator expects, calling `base_url` + each path, trusting `ca_bundle` (PEM)."""
    out = []
    names = {"MutatingWebhookConfiguration": MUTATING_NAME, "ValidatingWebhookConfiguration": VALIDATING_NAME}
    for doc in yaml.safe_load_all(manifests):
        if not doc or doc.get("kind") not in names:
            continue
        hooks = []
        for hook in doc.get("webhooks") or []:
            if not _kept(hook):
                continue
            hook = copy.deepcopy(hook)
            path = hook["clientConfig"]["service"]["path"]
            hook["clientConfig"] = {"url": f"{base_url}{path}", "caBundle": base64.b64encode(ca_bundle).decode()}
            if path.endswith("--v1-pod"):
                hook["namespaceSelector"] = {"matchLabels": {MANAGED_LABEL: MANAGED_VALUE}}
            hooks.append(hook)
        out.append(
            {
                "apiVersion": doc["apiVersion"],
                "kind": doc["kind"],
                "metadata": {"name": names[doc["kind"]]},
                "webhooks": hooks,
            }
        )
    return out


def crds(crd_files: list[str], base_url: str, ca_bundle: bytes) -> list[dict]:
    """Kueue's CRDs (config/components/crd/bases), the CONVERTED_CRDS with their conversion webhook on `base_url`."""
    out = []
    for text in crd_files:
        crd = yaml.safe_load(text)
        plural = crd["spec"]["names"]["plural"]
        if plural in CONVERTED_CRDS:
            crd["spec"]["conversion"] = {
                "strategy": "Webhook",
                "webhook": {
                    "clientConfig": {"url": f"{base_url}/convert", "caBundle": base64.b64encode(ca_bundle).decode()},
                    "conversionReviewVersions": ["v1"],
                },
            }
        out.append(crd)
    return out


def cert_secret(ca_cert: bytes, ca_key: bytes, cert: bytes, key: bytes) -> dict:
    """The Secret the rotator reads (keys as cert-controller names them)."""
    data = {"ca.crt": ca_cert, "ca.key": ca_key, "tls.crt": cert, "tls.key": key}
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {"name": SECRET_NAME, "namespace": NAMESPACE},
        "type": "Opaque",
        "data": {k: base64.b64encode(v).decode() for k, v in data.items()},
    }


def priority_classes() -> list[dict]:
    """PRIORITY_CLASSES as PriorityClasses. Kueue takes a pod group's priority from its pods' priorityClassName;
    preemptionPolicy Never keeps kube-scheduler from preempting on its own: Kueue decides, and its preemption is the
    one that ends in a final checkpoint and a resume."""
    return [
        {
            "apiVersion": "scheduling.k8s.io/v1",
            "kind": "PriorityClass",
            "metadata": {"name": name},
            "value": value,
            "preemptionPolicy": "Never",
            "globalDefault": False,
            "description": f"omnitrain jobs of {name.removeprefix('omnitrain-')} priority (local cluster)",
        }
        for name, value in PRIORITY_CLASSES.items()
    ]


def queue_objects(namespaces: list[str], gpus: int, cpu: str = "1000", memory: str = "10000Gi") -> list[dict]:
    """The priority classes, a ResourceFlavor, a ClusterQueue with an `nvidia.com/gpu` quota of `gpus` (cpu and
    memory covered with room to spare: a resource a pod asks for that the queue does not cover is refused) that
    preempts lower priorities inside it, and a LocalQueue LOCAL_QUEUE in each namespace."""
    api = f"{KUEUE_GROUP}/v1beta2"
    resources = [
        {"name": "cpu", "nominalQuota": cpu},
        {"name": "memory", "nominalQuota": memory},
        {"name": "nvidia.com/gpu", "nominalQuota": gpus},
    ]
    objects: list[dict[str, Any]] = [
        *priority_classes(),
        {"apiVersion": api, "kind": "ResourceFlavor", "metadata": {"name": FLAVOR}, "spec": {}},
        {
            "apiVersion": api,
            "kind": "ClusterQueue",
            "metadata": {"name": CLUSTER_QUEUE},
            "spec": {
                "namespaceSelector": {},
                "preemption": {"withinClusterQueue": "LowerPriority"},
                "resourceGroups": [
                    {
                        "coveredResources": [r["name"] for r in resources],
                        "flavors": [{"name": FLAVOR, "resources": resources}],
                    }
                ],
            },
        },
    ]
    for ns in namespaces:
        objects.append(
            {
                "apiVersion": api,
                "kind": "LocalQueue",
                "metadata": {"name": LOCAL_QUEUE, "namespace": ns},
                "spec": {"clusterQueue": CLUSTER_QUEUE},
            }
        )
    return objects


__all__ = [
    "CLUSTER_QUEUE",
    "KUEUE_VERSION",
    "LOCAL_QUEUE",
    "MANAGED_LABEL",
    "MANAGED_VALUE",
    "NAMESPACE",
    "PRIORITY_CLASSES",
    "cert_secret",
    "config_text",
    "crds",
    "kueue_dir",
    "missing",
    "priority_classes",
    "queue_objects",
    "webhook_configurations",
]
