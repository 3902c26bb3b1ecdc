"""What the local cluster installs for Kueue, built from the Kueue module's own manifests (pure builders; the
manifests are read from the built cache when present, else a minimal stand-in of their shape), and the spec rule
that a queue goes with Recreate restarts."""

from __future__ import annotations

import base64

import pytest
import yaml

from omnitrain.devcluster import kueue
from omnitrain.operator.reconcile import parse_spec

MANIFESTS = """\
---
apiVersion: admissionregistration.k8s.io/v1
kind: MutatingWebhookConfiguration
metadata:
  name: mutating-webhook-configuration
webhooks:
- admissionReviewVersions: [v1]
  clientConfig:
    service: {name: webhook-service, namespace: system, path: /mutate--v1-pod}
  failurePolicy: Fail
  name: mpod.kb.io
  rules: [{apiGroups: [""], apiVersions: [v1], operations: [CREATE], resources: [pods]}]
  sideEffects: None
- admissionReviewVersions: [v1]
  clientConfig:
    service: {name: webhook-service, namespace: system, path: /mutate-batch-v1-job}
  name: mjob.kb.io
  sideEffects: None
- admissionReviewVersions: [v1]
  clientConfig:
    service: {name: webhook-service, namespace: system, path: /mutate-kueue-x-k8s-io-v1beta2-workload}
  name: mworkload.kb.io
  sideEffects: None
---
apiVersion: admissionregistration.k8s.io/v1
kind: ValidatingWebhookConfiguration
metadata:
  name: validating-webhook-configuration
webhooks:
- admissionReviewVersions: [v1]
  clientConfig:
    service: {name: webhook-service, namespace: system, path: /validate--v1-pod}
  name: vpod.kb.io
  sideEffects: None
"""
CA = b"-----BEGIN CERTIFICATE-----\nstand-in\n-----END CERTIFICATE-----\n"


def manifests() -> str:
    built = kueue.kueue_dir() / "config" / "webhook" / "manifests.yaml"
    return built.read_text() if built.exists() else MANIFESTS


def test_webhooks_keep_pods_and_kueue_objects_and_call_loopback():
    configs = kueue.webhook_configurations(manifests(), "https://127.0.0.1:9443", CA)
    by_kind = {c["kind"]: c for c in configs}
    assert by_kind["MutatingWebhookConfiguration"]["metadata"]["name"] == kueue.MUTATING_NAME
    assert by_kind["ValidatingWebhookConfiguration"]["metadata"]["name"] == kueue.VALIDATING_NAME
    hooks = [h for c in configs for h in c["webhooks"]]
    names = {h["name"] for h in hooks}
    assert {"mpod.kb.io", "vpod.kb.io", "mworkload.kb.io"} <= names and "mjob.kb.io" not in names
    for hook in hooks:
        config = hook["clientConfig"]
        assert "service" not in config and config["url"].startswith("https://127.0.0.1:9443/")
        assert base64.b64decode(config["caBundle"]) == CA
    pod = next(h for h in hooks if h["name"] == "mpod.kb.io")
    # fails closed, so only namespaces marked as Kueue's depend on it running
    assert pod["namespaceSelector"] == {"matchLabels": {kueue.MANAGED_LABEL: kueue.MANAGED_VALUE}}
    assert pod["clientConfig"]["url"] == "https://127.0.0.1:9443/mutate--v1-pod"


def test_converted_crds_get_a_loopback_conversion_webhook():
    crds = [
        yaml.safe_dump({"spec": {"names": {"plural": plural}}, "metadata": {"name": f"{plural}.kueue.x-k8s.io"}})
        for plural in ("workloads", "resourceflavors")
    ]
    workloads, flavors = kueue.crds(crds, "https://127.0.0.1:9443", CA)
    hook = workloads["spec"]["conversion"]["webhook"]
    assert workloads["spec"]["conversion"]["strategy"] == "Webhook"
    assert hook["clientConfig"]["url"] == "https://127.0.0.1:9443/convert" and hook["conversionReviewVersions"] == [
        "v1"
    ]
    assert "conversion" not in flavors["spec"]


def test_the_config_manages_pod_groups_in_marked_namespaces_only():
    config = yaml.safe_load(kueue.config_text(9443, 8081, kueue.kueue_dir() / "certs"))
    assert config["integrations"]["frameworks"] == ["pod"]
    assert config["managedJobsNamespaceSelector"] == {"matchLabels": {kueue.MANAGED_LABEL: kueue.MANAGED_VALUE}}
    assert config["webhook"] == {"host": "127.0.0.1", "port": 9443, "certDir": str(kueue.kueue_dir() / "certs")}
    assert config["internalCertManagement"]["enable"] is True and config["leaderElection"]["leaderElect"] is False


def test_queues_cover_every_resource_a_pod_asks_for():
    objects = kueue.queue_objects(["team-a", "team-b"], gpus=8)
    cq = next(o for o in objects if o["kind"] == "ClusterQueue")
    group = cq["spec"]["resourceGroups"][0]
    assert group["coveredResources"] == ["cpu", "memory", "nvidia.com/gpu"]
    gpu = next(r for r in group["flavors"][0]["resources"] if r["name"] == "nvidia.com/gpu")
    assert gpu["nominalQuota"] == 8
    local = [(o["metadata"]["namespace"], o["spec"]["clusterQueue"]) for o in objects if o["kind"] == "LocalQueue"]
    assert local == [("team-a", kueue.CLUSTER_QUEUE), ("team-b", kueue.CLUSTER_QUEUE)]


@pytest.mark.parametrize("mode, refused", [("InPlace", True), ("Recreate", False)])
def test_a_queue_goes_with_recreate_restarts(mode, refused):
    problems = parse_spec(
        {"scheduling": {"queueName": "omnitrain"}, "resilience": {"restartMode": mode}, "parallelism": {"nodes": 1}}
    ).problems
    assert bool([p for p in problems if p.startswith("spec.scheduling.queueName: ")]) == refused, problems


def test_priority_classes_leave_preemption_to_kueue():
    objects = kueue.queue_objects(["team-a"], gpus=8)
    classes = {o["metadata"]["name"]: o for o in objects if o["kind"] == "PriorityClass"}
    assert {name: c["value"] for name, c in classes.items()} == kueue.PRIORITY_CLASSES
    assert classes["omnitrain-high"]["value"] > classes["omnitrain-low"]["value"]
    assert all(c["preemptionPolicy"] == "Never" and not c["globalDefault"] for c in classes.values())
    cq = next(o for o in objects if o["kind"] == "ClusterQueue")
    assert cq["spec"]["preemption"] == {"withinClusterQueue": "LowerPriority"}
    # applied before the queues that use them
    kinds = [o["kind"] for o in objects]
    assert kinds.index("PriorityClass") < kinds.index("ClusterQueue")
