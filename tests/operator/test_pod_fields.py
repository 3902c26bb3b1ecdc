"""Specs the API server accepts but a pod cannot have (issue 14, case 3a): the operator runs the pod API's checks
of everything the spec puts into a child before it creates anything; the job ends Failed, Valid=False, InvalidSpec,
`<field>: <problem> (<fix>)`, and `omnitrain validate` says the same. No cluster."""

from __future__ import annotations

import pytest
import yaml

from omnitrain import k8s_names
from omnitrain.cli import main
from omnitrain.operator import crd, plan
from omnitrain.operator.reconcile import parse_spec, reconcile

JOB = plan.JobRef(name="j", namespace="ns", uid="u")


@pytest.mark.parametrize("text", ["a", "abc-1", "0", "a" * 63])
def test_dns1123_labels(text):
    assert k8s_names.dns1123_label_problem(text) is None


@pytest.mark.parametrize("text", ["", "A", "-a", "a-", "a.b", "a_b", "a" * 64])
def test_not_dns1123_labels(text):
    assert k8s_names.dns1123_label_problem(text)


@pytest.mark.parametrize(
    ("text", "ok"),
    [("a", True), ("1a", False), ("a.b", False), ("job-1", True), ("a-", False), ("", False), ("a" * 64, False)],
)
def test_dns1035_labels(text, ok):
    assert (k8s_names.dns1035_label_problem(text) is None) == ok


@pytest.mark.parametrize(
    ("text", "ok"),
    [("a.b.c", True), ("a..b", False), ("A.b", False), ("a-b.c-d", True), ("a" * 254, False), (".a", False)],
)
def test_dns1123_subdomains(text, ok):
    assert (k8s_names.dns1123_subdomain_problem(text) is None) == ok


@pytest.mark.parametrize(
    ("text", "ok"),
    [
        ("pool", True),
        ("kubernetes.io/hostname", True),
        ("topology.kubernetes.io/rack", True),
        ("My_Key.1", True),
        ("bad key!", False),
        ("", False),
        ("/name", False),
        ("prefix/", False),
        ("a/b/c", False),
        ("Bad.Prefix/name", False),
        ("a" * 64, False),
        ("-a", False),
    ],
)
def test_qualified_names(text, ok):
    assert (k8s_names.qualified_name_problem(text) is None) == ok


@pytest.mark.parametrize(
    ("text", "ok"), [("", True), ("gpu", True), ("A-b_c.d", True), ("a b", False), ("-a", False), ("a" * 64, False)]
)
def test_label_values(text, ok):
    assert (k8s_names.label_value_problem(text) is None) == ok


@pytest.mark.parametrize(
    ("text", "ok"),
    [
        ("nvidia.com/gpu", True),
        ("amd.com/gpu", True),
        ("", False),
        ("gpu", False),
        ("kubernetes.io/gpu", False),
        ("node.kubernetes.io/gpu", False),
        ("nvidia.com/", False),
        ("nvidia.com/bad gpu", False),
    ],
)
def test_extended_resource_names(text, ok):
    assert (k8s_names.extended_resource_problem(text) is None) == ok


@pytest.mark.parametrize(
    ("text", "ok"), [("omnitrain:latest", True), ("r.example.com:5000/a/b@sha256:ab", True), ("", False), (" x", False)]
)
def test_images(text, ok):
    assert (k8s_names.image_problem(text) is None) == ok


# Each spec the API server accepts (the CRD schema), the field the operator names, and words of the message.
CASES = [
    ({"image": ""}, "spec.image", "is empty"),
    ({"image": "omnitrain:latest "}, "spec.image", "whitespace"),
    ({"scheduling": {"nodeSelector": {"bad key!": "x"}}}, "spec.scheduling.nodeSelector['bad key!']", "qualified"),
    ({"scheduling": {"nodeSelector": {"pool": "a b"}}}, "spec.scheduling.nodeSelector['pool']", "label value"),
    ({"scheduling": {"gpuResource": ""}}, "spec.scheduling.gpuResource", "extended resource name"),
    ({"scheduling": {"gpuResource": "kubernetes.io/gpu"}}, "spec.scheduling.gpuResource", "kubernetes.io"),
    ({"scheduling": {"tolerations": [{"key": "bad key"}]}}, "spec.scheduling.tolerations[0].key", "qualified"),
    ({"scheduling": {"tolerations": [{"operator": "Equal"}]}}, "spec.scheduling.tolerations[0].operator", "Exists"),
    (
        {"scheduling": {"tolerations": [{"key": "k", "operator": "Exists", "value": "v"}]}},
        "spec.scheduling.tolerations[0].value",
        "must be empty",
    ),
    (
        {"scheduling": {"tolerations": [{"key": "k", "value": "a b"}]}},
        "spec.scheduling.tolerations[0].value",
        "label value",
    ),
    (
        {"scheduling": {"tolerations": [{"key": "k", "effect": "NoSchedule", "tolerationSeconds": 5}]}},
        "spec.scheduling.tolerations[0].tolerationSeconds",
        "NoExecute",
    ),
    ({"scheduling": {"priorityClassName": "High_Prio"}}, "spec.scheduling.priorityClassName", "subdomain"),
    ({"scheduling": {"schedulerName": "Volcano!"}}, "spec.scheduling.schedulerName", "subdomain"),
    ({"scheduling": {"queueName": "team queue"}}, "spec.scheduling.queueName", "label value"),
    ({"checkpoint": {"persistentClaim": "My Claim"}}, "spec.checkpoint.persistentClaim", "subdomain"),
    ({"checkpoint": {"localPath": ""}}, "spec.checkpoint.localPath", "not absolute"),
    ({"checkpoint": {"localPath": "/mnt/../x"}}, "spec.checkpoint.localPath", "'..'"),
    ({"checkpoint": {"localPath": "/etc/omnitrain"}}, "spec.checkpoint.localPath", "system folder /etc"),
    (
        {"checkpoint": {"persistentClaim": "c", "localPath": "/ckpt", "persistentPath": "/ckpt"}},
        "spec.checkpoint.persistentPath",
        "overlap",
    ),
]


@pytest.mark.parametrize(("raw", "field", "words"), CASES)
def test_a_spec_a_pod_cannot_have_fails_the_job_naming_the_field_and_creates_nothing(raw, field, words):
    checked = parse_spec(raw, "j")
    assert len(checked.problems) == 1, checked.problems
    problem = checked.problems[0]
    assert problem.startswith(f"{field}: ") and words in problem and problem.endswith(")")  # `(<fix>)` last
    d = reconcile(JOB, checked, None, [], "t", generation=1)
    assert d.status.phase == "Failed" and d.create_attempt is None and not d.delete_pods
    valid = d.status.condition("Valid")
    assert valid is not None and valid.status == "False" and valid.reason == "InvalidSpec"
    assert field in (valid.message or "")
    assert [e.reason for e in d.events] == ["InvalidSpec"]


def test_what_the_pod_api_accepts_passes():
    raw = {
        "scheduling": {
            "nodeSelector": {"topology.kubernetes.io/zone": "z1", "pool": ""},
            "tolerations": [
                {"operator": "Exists"},
                {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"},
                {"key": "k", "value": "v", "effect": "NoExecute", "tolerationSeconds": 30},
            ],
            "priorityClassName": "high",
            "schedulerName": "volcano",
            "queueName": "team-a",
            "gpuResource": "amd.com/gpu",
        },
        "checkpoint": {"persistentClaim": "ckpt"},
    }
    assert parse_spec(raw, "job-1").problems == []


@pytest.mark.parametrize("name", ["a.b", "1job"])
def test_a_job_name_that_cannot_name_its_service_is_refused(name):
    """A job name is a DNS-1123 subdomain, its Service's name must be a DNS-1035 label (no dot, a letter first)."""
    problems = parse_spec({}, name).problems
    assert len(problems) == 1 and problems[0].startswith(f"metadata.name: {name!r}") and "DNS-1035" in problems[0]
    fix = problems[0].rsplit("e.g. ", 1)[1].strip("')")
    assert k8s_names.dns1035_label_problem(fix) is None and parse_spec({}, fix).problems == []
    assert parse_spec({}).problems == []  # without a name (a bare spec), nothing to check


def test_omnitrain_validate_reports_the_same(tmp_path, capsys):
    path = tmp_path / "job.yaml"
    body = {"image": "", "scheduling": {"nodeSelector": {"bad key!": "x"}, "gpuResource": ""}}
    path.write_text(
        yaml.safe_dump({"apiVersion": crd.API_VERSION, "kind": crd.KIND, "metadata": {"name": "x"}, "spec": body})
    )
    assert main(["validate", str(path)]) == 1
    err = capsys.readouterr().err
    for problem in parse_spec(body, "x").problems:
        assert f"x: {problem}" in err
    assert "spec.image" in err and "nodeSelector['bad key!']" in err and "spec.scheduling.gpuResource" in err


def test_the_rendezvous_port_never_equals_the_metrics_port():
    """The Service carries both; one port twice is refused by the API (422 spec.ports[1]: Duplicate value), and the
    user cannot choose around a port derived from the uid, so the plan does."""
    job = plan.JobRef(name="j", namespace="ns", uid="some-uid")
    taken = plan.master_port(job.uid)
    spec = parse_spec({"metricsPort": taken}).spec
    assert spec is not None
    service, pod = plan.plan_children(job, spec, 0)[1:3]
    ports = [p["port"] for p in service["spec"]["ports"]]
    assert len(set(ports)) == 2 and taken in ports
    env = {e["name"]: e.get("value") for e in pod["spec"]["containers"][0]["env"]}
    assert int(env["MASTER_PORT"]) == plan.master_port(job.uid, taken) != taken
    assert plan.master_port(job.uid, 9400) == taken  # unchanged for every other metrics port
