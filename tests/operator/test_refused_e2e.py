"""Specs the API server accepts but a pod cannot have, against the real API server with the operator running
(issue 14, case 3). Before: no phase, no condition, no event, and the Service and ConfigMap left behind. Now each
job ends Failed with a condition naming the field, a Warning event, and no children; a ConfigMap of the job's
name that the job does not own is left exactly as it was. The API's own answers for the pods such specs would make
are read through the operator's translation (ChildRefused.from_api, spec_field), so the field table is checked
against what kube-apiserver really says."""

from __future__ import annotations

import subprocess

import pytest
from control_plane import wait_until
from jobs import cond, create_job, events, status
from kubernetes import client
from kubernetes.client.exceptions import ApiException

from omnitrain.operator import plan
from omnitrain.operator.reconcile import ChildRefused, spec_field
from omnitrain.spec import JobSpec

pytestmark = pytest.mark.e2e

T = 30  # seconds one transition may take on a busy shared machine
SPEC = {"parallelism": {"nodes": 2, "gpusPerNode": 1}, "training": {"steps": 5}}
BAD = {
    "image": ({"image": ""}, "spec.image"),
    "selector": ({"scheduling": {"nodeSelector": {"bad key!": "x"}}}, "spec.scheduling.nodeSelector"),
    "gpu": ({"scheduling": {"gpuResource": ""}}, "spec.scheduling.gpuResource"),
}


def children(api, ns: str, job: str) -> list[str]:
    """Every Pod, Service and ConfigMap of the namespace with the job's label (what the operator would create)."""
    core, selector = client.CoreV1Api(api), plan.job_selector(job)
    found = [f"Pod/{p.metadata.name}" for p in core.list_namespaced_pod(ns, label_selector=selector).items]
    found += [f"Service/{s.metadata.name}" for s in core.list_namespaced_service(ns, label_selector=selector).items]
    found += [
        f"ConfigMap/{c.metadata.name}" for c in core.list_namespaced_config_map(ns, label_selector=selector).items
    ]
    return found


def failed(api, ns, name):
    return lambda: status(api, ns, name).get("phase") == "Failed"


@pytest.mark.parametrize("case", sorted(BAD))
def test_a_spec_a_pod_cannot_have_fails_the_job_and_creates_nothing(api, operator, namespace, case):
    extra, field = BAD[case]
    name = f"bad-{case}"
    create_job(api, namespace, name, {**SPEC, **extra})  # the CRD schema accepts it
    wait_until(failed(api, namespace, name), T, f"{name} Failed")
    st = status(api, namespace, name)
    valid, fail = cond(st, "Valid"), cond(st, "Failed")
    assert valid["status"] == "False" and valid["reason"] == "InvalidSpec" and field in valid["message"], st
    assert fail["status"] == "True" and st["message"].startswith("invalid spec: ")
    assert children(api, namespace, name) == []
    assert not cond(st, "ReconcileError"), operator.tail()
    wait_until(lambda: "InvalidSpec" in {e.reason for e in events(api, namespace, name)}, T, "InvalidSpec event")


@pytest.mark.parametrize("case", sorted(BAD))
def test_the_api_servers_refusal_of_such_a_pod_translates_to_the_spec_field(api, namespace, case):
    """The pod the spec would make (validation skipped), sent to the real API server: its 422 names the field that
    the operator's translation turns into the spec field (what a refusal the checks miss would report)."""
    extra, field = BAD[case]
    spec = JobSpec.model_validate({**SPEC, **extra})
    pod = plan.plan_children(plan.JobRef(name="raw", namespace=namespace, uid="u"), spec, 0)[2]
    with pytest.raises(ApiException) as raised:
        client.CoreV1Api(api).create_namespaced_pod(namespace, pod)
    assert raised.value.status == 422
    err = ChildRefused.from_api("Pod", pod["metadata"]["name"], 422, raised.value.body)
    assert err.causes and {spec_field("Pod", f) for f, _ in err.causes} == {field}, err.causes


def test_a_foreign_config_map_of_the_jobs_name_is_left_alone_and_the_job_fails_naming_it(api, operator, namespace):
    core, name = client.CoreV1Api(api), "taken"
    theirs = core.create_namespaced_config_map(
        namespace, {"metadata": {"name": plan.config_map_name(name)}, "data": {"owner": "someone else"}}
    )
    create_job(api, namespace, name, SPEC)
    wait_until(failed(api, namespace, name), T, f"{name} Failed")
    st = status(api, namespace, name)
    fail = cond(st, "Failed")
    assert fail["reason"] == "NameConflict" and f"ConfigMap '{name}-config'" in fail["message"], st
    after = core.read_namespaced_config_map(plan.config_map_name(name), namespace)
    assert after.metadata.resource_version == theirs.metadata.resource_version  # not patched, not adopted
    assert after.data == {"owner": "someone else"} and not after.metadata.owner_references
    assert children(api, namespace, name) == []  # neither the Service nor any pod
    assert core.list_namespaced_pod(namespace).items == []
    wait_until(lambda: "NameConflict" in {e.reason for e in events(api, namespace, name)}, T, "NameConflict event")


REFUSED_IMAGE = "refused.example.com/omnitrain:1"


@pytest.fixture
def pod_policy(api, namespace):
    """A cluster policy (ValidatingAdmissionPolicy, as Kyverno or Gatekeeper would be) that refuses pods of one
    image in this test's namespace with 422 Invalid: a child the API refuses although every spec check passed."""
    admission = client.AdmissionregistrationV1Api(api)
    name = f"refuse-image-{namespace}"
    admission.create_validating_admission_policy(
        {
            "metadata": {"name": name},
            "spec": {
                "failurePolicy": "Fail",
                "matchConstraints": {
                    "resourceRules": [
                        {"apiGroups": [""], "apiVersions": ["v1"], "operations": ["CREATE"], "resources": ["pods"]}
                    ]
                },
                "validations": [
                    {
                        "expression": f"object.spec.containers.all(c, c.image != '{REFUSED_IMAGE}')",
                        "message": "images from refused.example.com are not allowed in this namespace",
                        "reason": "Invalid",
                    }
                ],
            },
        }
    )
    admission.create_validating_admission_policy_binding(
        {
            "metadata": {"name": name},
            "spec": {
                "policyName": name,
                "validationActions": ["Deny"],
                "matchResources": {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": namespace}}},
            },
        }
    )
    probe = {
        "metadata": {"name": "probe"},
        "spec": {"containers": [{"name": "c", "image": REFUSED_IMAGE}]},
    }

    def refusing() -> bool:  # the policy is in force once the API server's informer has it
        try:
            client.CoreV1Api(api).create_namespaced_pod(namespace, probe, dry_run="All")
        except ApiException as exc:
            return exc.status == 422
        return False

    wait_until(refusing, T, "the admission policy in force")
    yield
    admission.delete_validating_admission_policy_binding(name)
    admission.delete_validating_admission_policy(name)


def test_a_pod_the_api_refuses_fails_the_job_in_that_pass_and_removes_its_children(
    api, operator, namespace, pod_policy
):
    name = "policed"
    create_job(api, namespace, name, {**SPEC, "image": REFUSED_IMAGE})
    wait_until(failed(api, namespace, name), T, f"{name} Failed")
    st = status(api, namespace, name)
    fail, valid = cond(st, "Failed"), cond(st, "Valid")
    assert fail["reason"] == "ChildRefused" and valid["status"] == "False", st
    assert "not allowed in this namespace" in fail["message"] and f"Pod '{name}-a0-n0'" in fail["message"]
    # the ConfigMap and Service were created before the pod was refused, and deleted in the same pass (before the
    # status was written); a pod of another rank created meanwhile may still be terminating
    assert [c for c in children(api, namespace, name) if not c.startswith("Pod/")] == []
    wait_until(lambda: children(api, namespace, name) == [], T, "no children left")
    assert not cond(st, "ReconcileError"), operator.tail()
    wait_until(lambda: "ChildRefused" in {e.reason for e in events(api, namespace, name)}, T, "ChildRefused event")


@pytest.mark.parametrize("path", ["otj.spec", "otj.spec.checkpoint", "otj.spec.scheduling.tolerations", "otj.status"])
def test_kubectl_explain_describes_every_field(e2e_kubeconfig, path):
    """Issue 14, case 9: `kubectl explain otj.spec` showed `<no description>` for every object field (model,
    parallelism, checkpoint, ...), as served by the API server from the installed CRD."""
    from control_plane import find_binaries

    bins = find_binaries()
    if bins is None or not (bins / "kubectl").exists():
        pytest.skip("no kubectl in the control-plane binaries")
    out = subprocess.run(
        [str(bins / "kubectl"), "--kubeconfig", str(e2e_kubeconfig), "explain", path],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 0, out.stderr
    assert "FIELDS:" in out.stdout and "<no description>" not in out.stdout, out.stdout
