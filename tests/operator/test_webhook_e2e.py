"""The validating admission webhook (issue 16, "Refused at apply"), with the real kube-apiserver calling the real
operator over TLS and the real kubectl: semantic errors the CRD schema cannot see are refused at `kubectl apply`
with every field named and nothing created; an edit that changes what an active gang is is refused naming the
field, one the operator reads later is taken with a warning saying when, and a suspended job takes any valid edit.

The operator keeps the ValidatingWebhookConfiguration itself here (OMNITRAIN_WEBHOOK_CONFIGURATION, URL
https://127.0.0.1:<port>), with a certificate made like the cluster's own; it is deleted after the test, since it
applies to every namespace of the shared control plane."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
import yaml
from control_plane import find_binaries, wait_until
from jobs import status
from kubernetes import client
from kubernetes.client.exceptions import ApiException

from omnitrain.devcluster.certs import ensure_webhook_pki
from omnitrain.devcluster.controlplane import free_port
from omnitrain.operator import crd
from omnitrain.operator.admission_review import review

pytestmark = pytest.mark.e2e

CONFIGURATION = "omnitrain.io"
T = 60
TINY_HEADS = {"preset": "tiny", "numHeads": 6, "hiddenSize": 384}
# Specs the CRD schema accepts and the operator's checks refuse: (spec, the field the message must name).
INVALID = {
    "heads-vs-tensor": ({"parallelism": {"nodes": 1, "gpusPerNode": 4, "tensor": 4}, "model": TINY_HEADS}, "tensor"),
    "heads-vs-ulysses": (
        {"parallelism": {"nodes": 1, "gpusPerNode": 4, "ulysses": 4}, "model": TINY_HEADS},
        "spec.parallelism.ulysses",
    ),
    "world-size": (
        {"parallelism": {"nodes": 2, "gpusPerNode": 2, "tensor": 2, "pipeline": 2, "data": 2, "microBatches": 2}},
        "spec.parallelism.data",
    ),
    "hidden-vs-heads": ({"model": {"hiddenSize": 100, "numHeads": 3}}, "spec.model.numHeads"),
    "mlp-vs-tensor": (
        {"parallelism": {"nodes": 1, "gpusPerNode": 2, "tensor": 2}, "model": {"mlpRatio": 3.3}},
        "spec.parallelism.tensor",
    ),
    "idle-stages": ({"parallelism": {"nodes": 1, "gpusPerNode": 2, "pipeline": 2}}, "spec.parallelism.microBatches"),
    "offload": ({"memory": {"offload": "pipelineAware"}}, "spec.memory.offload"),
    "spares-recreate": ({"resilience": {"spareNodes": 1}}, "spec.resilience.spareNodes"),
    "queue-in-place": (
        {"scheduling": {"queueName": "omnitrain"}, "resilience": {"restartMode": "InPlace"}},
        "spec.scheduling.queueName",
    ),
    "host-path": ({"checkpoint": {"localPath": "/etc"}}, "spec.checkpoint.localPath"),
    "promotion-claim": ({"promotion": {"distill": {"steps": 10}}}, "spec.checkpoint.persistentClaim"),
}


def kubectl(kubeconfig: Path, *args: str, stdin: str | None = None) -> subprocess.CompletedProcess:
    bins = find_binaries()
    assert bins is not None and (bins / "kubectl").exists(), "no kubectl; run `make cluster-bins`"
    return subprocess.run(
        [str(bins / "kubectl"), "--kubeconfig", str(kubeconfig), *args],
        input=stdin,
        capture_output=True,
        text=True,
        timeout=60,
    )


def manifest(name: str, spec: dict) -> str:
    return yaml.safe_dump({"apiVersion": crd.API_VERSION, "kind": crd.KIND, "metadata": {"name": name}, "spec": spec})


def jobs_in(api, namespace: str) -> list[str]:
    listed = client.CustomObjectsApi(api).list_namespaced_custom_object(crd.GROUP, crd.VERSION, namespace, crd.PLURAL)
    return [j["metadata"]["name"] for j in listed["items"]]


@pytest.fixture
def webhook_operator(e2e_kubeconfig, api, start_operator, namespace, tmp_path):
    pki = ensure_webhook_pki(tmp_path / "pki", "omnitrain-webhook-ca", ["omnitrain-operator.omnitrain-system.svc"])
    op = start_operator(
        {
            "OMNITRAIN_NAMESPACES": namespace,
            "OMNITRAIN_WEBHOOK_PORT": str(free_port()),
            "OMNITRAIN_WEBHOOK_ADDRESS": "127.0.0.1",
            "OMNITRAIN_WEBHOOK_HOST": "127.0.0.1",
            "OMNITRAIN_WEBHOOK_CERT_DIR": str(pki.folder),
            "OMNITRAIN_WEBHOOK_CONFIGURATION": CONFIGURATION,
        }
    )
    admission = client.AdmissionregistrationV1Api(api)
    try:
        # serving once a semantic error comes back as the webhook's refusal; a server-side dry run, because the API
        # server may not see a new configuration at once, and a probe it let through would then exist (and apply it
        # again would be an unchanged update, which is allowed)
        probe = manifest("probe", INVALID["offload"][0])
        wait_until(
            lambda: (
                "refused: "
                in kubectl(e2e_kubeconfig, "apply", "--dry-run=server", "-n", namespace, "-f", "-", stdin=probe).stderr
            ),
            T,
            f"the webhook to answer (operator log: {op.log})",
        )
        yield op
    finally:
        op.stop()
        try:
            admission.delete_validating_webhook_configuration(CONFIGURATION)
        except ApiException as exc:
            if exc.status != 404:
                raise


def test_invalid_specs_are_refused_by_kubectl_apply_naming_the_field_and_nothing_is_created(
    e2e_kubeconfig, api, namespace, webhook_operator
):
    assert len(INVALID) >= 10
    for case, (spec, field) in INVALID.items():
        out = kubectl(e2e_kubeconfig, "apply", "-n", namespace, "-f", "-", stdin=manifest(f"bad-{case}", spec))
        assert out.returncode != 0, (case, out.stdout)
        assert 'admission webhook "validate-spec.omnitrain.io" denied the request' in out.stderr, (case, out.stderr)
        assert f"OmniTrainingJob bad-{case} refused: " in out.stderr and field in out.stderr, (case, out.stderr)
        # every problem the checks find is in the one message, as the pure review words it
        for problem in review("CREATE", spec, f"bad-{case}").problems:
            assert problem in out.stderr, (case, problem)
    # a name its Service could not have (leading digit) is refused too, naming metadata.name
    out = kubectl(e2e_kubeconfig, "apply", "-n", namespace, "-f", "-", stdin=manifest("7-videos", {}))
    assert out.returncode != 0 and "metadata.name" in out.stderr, out.stderr
    assert jobs_in(api, namespace) == []


def test_an_active_gang_refuses_what_it_is_takes_what_is_read_later_and_a_suspended_job_takes_any_edit(
    e2e_kubeconfig, api, namespace, webhook_operator
):
    spec = {"parallelism": {"nodes": 2, "gpusPerNode": 1}, "training": {"steps": 50}}
    out = kubectl(e2e_kubeconfig, "apply", "-n", namespace, "-f", "-", stdin=manifest("edits", spec))
    assert out.returncode == 0, out.stderr
    # no node runs its pods here: the gang waits Pending, which is active
    wait_until(lambda: status(api, namespace, "edits").get("phase") == "Pending", T, "edits Pending")

    def patch(body: dict) -> subprocess.CompletedProcess:
        return kubectl(e2e_kubeconfig, "patch", "otj", "edits", "-n", namespace, "--type=merge", "-p", yaml.dump(body))

    for body, field in (
        ({"spec": {"parallelism": {"nodes": 4}}}, "spec.parallelism.nodes"),
        ({"spec": {"training": {"steps": 80}}}, "spec.training.steps"),
        ({"spec": {"image": "omnitrain:v2"}}, "spec.image"),
    ):
        out = patch(body)
        assert out.returncode != 0, out.stdout
        assert f"{field}: cannot change while the job is Pending" in out.stderr, out.stderr
    job = client.CustomObjectsApi(api).get_namespaced_custom_object(
        crd.GROUP, crd.VERSION, namespace, crd.PLURAL, "edits"
    )
    assert job["spec"]["parallelism"]["nodes"] == 2 and job["spec"]["training"]["steps"] == 50

    out = patch({"spec": {"resilience": {"maxRestarts": 7}}})
    assert out.returncode == 0, out.stderr
    assert "spec.resilience.maxRestarts applies at the next failure" in out.stderr, out.stderr  # kubectl's Warning:

    assert patch({"spec": {"suspend": True}}).returncode == 0
    wait_until(lambda: status(api, namespace, "edits").get("phase") == "Suspended", T, "edits Suspended")
    out = patch({"spec": {"parallelism": {"nodes": 1}, "training": {"steps": 80}}})
    assert out.returncode == 0, out.stderr
    # and an invalid edit is refused whatever the phase
    out = patch({"spec": {"memory": {"offload": "pipelineAware"}}})
    assert out.returncode != 0 and "spec.memory.offload" in out.stderr, out.stderr
