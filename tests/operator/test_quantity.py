"""Resource quantities as Kubernetes writes them (issue 14, case 4): numbers or strings, checked by the grammar of
apimachinery's resource.Quantity; a bad one fails the job with the field named and an example."""

from fractions import Fraction

import pytest

from omnitrain.operator import plan
from omnitrain.operator.reconcile import parse_spec, reconcile
from omnitrain.spec import JobSpec, parse_quantity


@pytest.mark.parametrize(
    ("text", "value"),
    [
        ("2", 2),
        ("500m", Fraction(1, 2)),
        ("4Gi", 4 * 2**30),
        ("1e3", 1000),
        ("1E-2", Fraction(1, 100)),
        ("1.5Gi", 3 * 2**29),
        (".5", Fraction(1, 2)),
        ("64M", 64 * 10**6),
        ("100k", 100_000),
        ("+3", 3),
    ],
)
def test_parses_kubernetes_quantities(text, value):
    assert parse_quantity(text) == value


@pytest.mark.parametrize("text", ["lots", "", "4GB", "4 Gi", "1.2.3", "Gi", "e3", "0x10", "4gi"])
def test_refuses_what_is_not_a_quantity(text):
    with pytest.raises(ValueError, match="not a Kubernetes quantity"):
        parse_quantity(text)


def test_numbers_and_strings_are_both_accepted_and_rendered_as_strings():
    spec = JobSpec.model_validate({"resources": {"cpu": 2, "memory": "4Gi"}})
    assert spec.resources.cpu == "2" and spec.resources.memory == "4Gi"
    pod = plan.plan_children(plan.JobRef(name="j", namespace="ns", uid="u"), spec, 0)[2]
    assert pod["spec"]["containers"][0]["resources"]["requests"]["cpu"] == "2"


def test_a_bad_quantity_fails_the_job_naming_the_field_and_creates_nothing():
    checked = parse_spec({"resources": {"cpu": 2, "memory": "lots"}})
    assert checked.problems == ["spec.resources.memory: 'lots' is not a Kubernetes quantity (e.g. 64Gi)"]
    d = reconcile(plan.JobRef(name="j", namespace="ns", uid="u"), checked, None, [], "t", generation=1)
    assert d.status.phase == "Failed" and d.create_attempt is None
    valid = d.status.condition("Valid")
    assert valid is not None and valid.reason == "InvalidSpec" and "spec.resources.memory" in (valid.message or "")
    assert parse_spec({"resources": {"cpu": "-1"}}).problems == [
        "spec.resources.cpu: '-1' is negative; a request is >= 0 (e.g. 8)"
    ]
    assert parse_spec({"resources": {"cpu": True}}).problems  # a YAML boolean is no quantity
