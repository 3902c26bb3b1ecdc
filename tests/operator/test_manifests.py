"""The install bundle builds with kustomize and every object is accepted by a real API server (server dry-run);
the examples pass the CRD schema and the operator's semantic checks."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
import yaml
from control_plane import find_binaries

from omnitrain.cli import main
from omnitrain.operator import crd
from omnitrain.operator.settings import OperatorSettings

REPO = Path(__file__).resolve().parents[2]
EXAMPLES = sorted((REPO / "examples").glob("*.yaml"))


def _kubectl() -> str:
    bins = find_binaries()
    if bins is None or not (bins / "kubectl").exists():
        pytest.skip("no kubectl in the control-plane binaries; run `make cluster-bins`")
    return str(bins / "kubectl")


def _build() -> list[dict]:
    out = subprocess.run([_kubectl(), "kustomize", str(REPO / "manifests")], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    return [d for d in yaml.safe_load_all(out.stdout) if d]


def test_bundle_has_crd_rbac_and_two_operator_replicas_with_leader_election():
    docs = {(d["kind"], d["metadata"]["name"]): d for d in _build()}
    assert docs[("CustomResourceDefinition", crd.CRD_NAME)] == crd.build_crd()
    dep = docs[("Deployment", "omnitrain-operator")]
    # Recreate: a rolling update would wait forever for a standby to be Ready (only the leader is)
    assert dep["spec"]["replicas"] == 2 and dep["spec"]["strategy"]["type"] == "Recreate"
    container = dep["spec"]["template"]["spec"]["containers"][0]
    env = {e["name"]: e["value"] if "value" in e else e["valueFrom"]["fieldRef"]["fieldPath"] for e in container["env"]}
    terms = OperatorSettings.from_env({k: v for k, v in env.items() if not v.startswith("metadata.")}).leader_election
    assert terms is not None and env["POD_NAME"] == "metadata.name" and env["POD_NAMESPACE"] == "metadata.namespace"
    # only the leader opens the metrics port, so only it is Ready and behind the Service
    assert container["readinessProbe"]["tcpSocket"]["port"] == "metrics"
    assert dep["spec"]["template"]["spec"]["containers"][0]["command"] == ["omnitrain", "operator"]
    assert dep["spec"]["template"]["spec"]["serviceAccountName"] == "omnitrain-operator"
    rules = docs[("ClusterRole", "omnitrain-operator")]["rules"]
    granted = {(g, r): set(rule["verbs"]) for rule in rules for g in rule["apiGroups"] for r in rule["resources"]}
    assert {"create", "delete"} <= granted[("", "pods")] and "update" not in granted[("", "pods")]
    assert "patch" in granted[(crd.GROUP, f"{crd.PLURAL}/status")]
    assert all("*" not in verbs for verbs in granted.values())
    svc = docs[("Service", "omnitrain-operator")]
    assert svc["metadata"]["labels"]["app.kubernetes.io/name"] == "omnitrain-operator"
    assert svc["spec"]["ports"][0]["name"] == "metrics"


@pytest.mark.e2e
def test_api_server_accepts_the_bundle_and_the_examples(e2e_kubeconfig):
    kubectl = _kubectl()
    bundle = subprocess.run(
        [kubectl, "kustomize", str(REPO / "manifests")], capture_output=True, text=True, timeout=60
    ).stdout
    # the namespace must exist for a namespaced dry-run
    subprocess.run(
        [kubectl, "--kubeconfig", str(e2e_kubeconfig), "create", "namespace", "omnitrain-system"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    out = subprocess.run(
        [kubectl, "--kubeconfig", str(e2e_kubeconfig), "apply", "--dry-run=server", "-f", "-"],
        input=bundle,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 0, out.stderr
    assert "deployment.apps/omnitrain-operator" in out.stdout
    for example in EXAMPLES:
        out = subprocess.run(
            [
                kubectl,
                "--kubeconfig",
                str(e2e_kubeconfig),
                "apply",
                "--dry-run=server",
                "-n",
                "default",
                "-f",
                str(example),
            ],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert out.returncode == 0, f"{example.name}: {out.stderr}"


@pytest.mark.parametrize("example", EXAMPLES, ids=lambda p: p.name)
def test_examples_pass_the_operators_checks(example, capsys):
    assert main(["validate", str(example)]) == 0, capsys.readouterr().err


def test_validate_names_the_field_and_fix(tmp_path, capsys):
    bad = tmp_path / "bad.yaml"
    bad.write_text(
        yaml.safe_dump(
            {
                "apiVersion": crd.API_VERSION,
                "kind": crd.KIND,
                "metadata": {"name": "x"},
                "spec": {"training": {"stage": "dpo"}},
            }
        )
    )
    assert main(["validate", str(bad)]) == 1
    err = capsys.readouterr().err
    assert "spec.training.initFrom" in err and "stage dpo needs initFrom" in err


def _job_file(tmp_path, spec: dict):
    path = tmp_path / "job.yaml"
    path.write_text(
        yaml.safe_dump({"apiVersion": crd.API_VERSION, "kind": crd.KIND, "metadata": {"name": "x"}, "spec": spec})
    )
    return str(path)


def test_validate_accepts_numeric_quantities_and_names_a_bad_one(tmp_path, capsys):
    """Issue 14, case 4: numbers and strings are quantities; `lots` is refused with the field and an example."""
    assert main(["validate", _job_file(tmp_path, {"resources": {"cpu": 2, "memory": "4Gi"}})]) == 0
    capsys.readouterr()
    assert main(["validate", _job_file(tmp_path, {"resources": {"cpu": "500m", "memory": "lots"}})]) == 1
    err = capsys.readouterr().err
    assert "spec.resources.memory: 'lots' is not a Kubernetes quantity (e.g. 64Gi)" in err


def test_validate_says_a_file_is_missing_without_a_traceback(tmp_path, capsys):
    assert main(["validate", str(tmp_path / "nope.yaml")]) == 2
    err = capsys.readouterr().err
    assert "cannot read" in err and "nope.yaml" in err and "No such file" in err and "Traceback" not in err


def test_the_webhook_component_points_the_api_server_at_the_operators_handler(tmp_path):
    """manifests/webhook on top of the bundle, as docs/operator.md has users write it: the configuration's rule,
    Service port and path are the operator's (kopf handler id), and the Deployment mounts the certificate where
    OMNITRAIN_WEBHOOK_CERT_DIR says."""
    import os

    from omnitrain.operator.handlers import WEBHOOK_ID

    base = os.path.relpath(REPO / "manifests", tmp_path)
    (tmp_path / "kustomization.yaml").write_text(f"resources: [{base}]\ncomponents: [{base}/webhook]\n")
    out = subprocess.run([_kubectl(), "kustomize", str(tmp_path)], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    docs = {(d["kind"], d["metadata"]["name"]): d for d in yaml.safe_load_all(out.stdout) if d}
    (hook,) = docs[("ValidatingWebhookConfiguration", "omnitrain.io")]["webhooks"]
    assert hook["name"] == f"{WEBHOOK_ID}.omnitrain.io"
    (rule,) = hook["rules"]
    assert (rule["apiGroups"], rule["apiVersions"], rule["resources"]) == ([crd.GROUP], [crd.VERSION], [crd.PLURAL])
    assert rule["operations"] == ["CREATE", "UPDATE"]
    svc_ref = hook["clientConfig"]["service"]
    assert svc_ref["path"] == f"/{WEBHOOK_ID}"
    svc = docs[("Service", svc_ref["name"])]
    port = next(p for p in svc["spec"]["ports"] if p["port"] == svc_ref["port"])
    assert {p["name"] for p in svc["spec"]["ports"]} == {"metrics", "webhook"}
    pod = docs[("Deployment", "omnitrain-operator")]["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    assert port["targetPort"] in {p["name"] for p in container["ports"]}
    env = {e["name"]: e.get("value") for e in container["env"]}
    assert env["OMNITRAIN_WEBHOOK_PORT"] == str(
        next(p["containerPort"] for p in container["ports"] if p["name"] == "webhook")
    )
    mount = next(m for m in container["volumeMounts"] if m["mountPath"] == env["OMNITRAIN_WEBHOOK_CERT_DIR"])
    volume = next(v for v in pod["volumes"] if v["name"] == mount["name"])
    cert = docs[("Certificate", "omnitrain-webhook")]
    assert volume["secret"]["secretName"] == cert["spec"]["secretName"]
    assert f"{svc['metadata']['name']}.{svc['metadata']['namespace']}.svc" in cert["spec"]["dnsNames"]
    assert (
        docs[("ValidatingWebhookConfiguration", "omnitrain.io")]["metadata"]["annotations"][
            "cert-manager.io/inject-ca-from"
        ]
        == f"{cert['metadata']['namespace']}/{cert['metadata']['name']}"
    )
    assert env["OMNITRAIN_RESYNC_SECONDS"] == "10", "the base Deployment's env is kept"
