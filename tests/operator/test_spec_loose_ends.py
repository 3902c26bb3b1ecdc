"""Issue 14, case 9 (the spec's part): a warm-up longer than the run is refused naming both fields; tokenBudget is
bounded (a hard maximum in the schema, and the pod's memory when resources.memory is set); every object-valued
field of the CRD has a description (`kubectl explain otj.spec`); no Python None or list repr in messages."""

from __future__ import annotations

import pytest

from omnitrain.operator import crd, plan
from omnitrain.operator.reconcile import parse_spec
from omnitrain.resilience.classify import FailureClass, classify, observe_pod
from omnitrain.resilience.recovery import RecoveryState, plan_recovery
from omnitrain.spec import DEFAULT_WARMUP_STEPS, TOKEN_BUDGET_MAX, JobSpec, ResilienceSpec, step_input_bytes


def test_a_warm_up_longer_than_the_run_is_refused_naming_both_fields():
    problems = parse_spec({"training": {"steps": 5, "warmupSteps": 6}}).problems
    assert len(problems) == 1 and problems[0].startswith("spec.training.warmupSteps: warmupSteps=6 ")
    assert "steps=5" in problems[0] and "set warmupSteps <= 5" in problems[0]
    assert parse_spec({"training": {"steps": 5, "warmupSteps": 5}}).problems == []


def test_the_default_warm_up_fits_a_short_run():
    """Unset, the warm-up is 10 steps, or the whole run when it is shorter: a short run is not refused for a
    default it never wrote, and its learning rate still reaches the peak."""
    assert JobSpec.model_validate({"training": {"steps": 5}}).training.warmup == 5
    assert JobSpec.model_validate({"training": {"steps": 500}}).training.warmup == DEFAULT_WARMUP_STEPS
    assert JobSpec.model_validate({"training": {"steps": 5, "warmupSteps": 0}}).training.warmup == 0
    assert parse_spec({"training": {"steps": 5}}).problems == []
    assert "default" not in crd.spec_schema()["properties"]["training"]["properties"]["warmupSteps"]


def test_token_budget_has_a_hard_bound_in_the_schema_and_the_operator():
    assert crd.spec_schema()["properties"]["data"]["properties"]["tokenBudget"]["maximum"] == TOKEN_BUDGET_MAX
    (problem,) = parse_spec({"data": {"tokenBudget": 10**15}}).problems
    assert problem.startswith("spec.data.tokenBudget: ") and str(TOKEN_BUDGET_MAX) in problem
    assert parse_spec({"data": {"tokenBudget": TOKEN_BUDGET_MAX}}).problems == []


def test_token_budget_is_bounded_by_the_pods_memory_when_it_is_known():
    raw = {
        "parallelism": {"nodes": 1, "gpusPerNode": 4},
        "data": {"tokenBudget": TOKEN_BUDGET_MAX},
        "resources": {"memory": "1Gi"},
    }
    (problem,) = parse_spec(raw).problems
    assert problem.startswith("spec.data.tokenBudget: tokenBudget=4194304: the pod's 4 workers")
    assert "resources.memory=1Gi" in problem and "4.0 GiB" in problem
    most = int(problem.rsplit("set tokenBudget <= ", 1)[1].split(",")[0])
    assert parse_spec({**raw, "data": {"tokenBudget": most}}).problems == []
    assert parse_spec({**raw, "data": {"tokenBudget": most + 1}}).problems
    spec = JobSpec.model_validate({**raw, "data": {"tokenBudget": most}})
    assert step_input_bytes(spec, spec.model.resolve()) <= 2**30
    assert parse_spec({**raw, "resources": {}}).problems == []  # unknown memory: the hard bound only


def _undescribed(node: dict, path: str) -> list[str]:
    """Properties without a description, anywhere below `node` (object-valued ones were the complaint; every
    field has one now)."""
    missing = []
    for name, sub in (node.get("properties") or {}).items():
        where = f"{path}.{name}"
        if not sub.get("description"):
            missing.append(where)
        missing += _undescribed(sub, where)
    if isinstance(node.get("items"), dict):
        missing += _undescribed(node["items"], f"{path}[]")
    return missing


def test_every_field_of_the_crd_has_a_description():
    """`kubectl explain otj.spec` showed <no description> for model, parallelism, checkpoint, ...: the $ref'd
    models now carry their docstrings into the generated schema."""
    version = crd.build_crd()["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    assert _undescribed(version["properties"]["spec"], "spec") == []
    assert _undescribed(version["properties"]["status"], "status") == []
    spec = version["properties"]["spec"]["properties"]
    assert spec["model"]["description"].startswith("The model's size")
    assert spec["scheduling"]["properties"]["tolerations"]["items"]["properties"]["key"]["description"]


def test_a_pod_failed_before_its_container_ran_is_described_without_none():
    """A kubelet that refuses a pod at admission (phase Failed, reason OutOfnvidia.com/gpu) leaves no container
    state: the message said `failed (exit None, None)`."""
    pod = {
        "metadata": {"name": "j-a0-n0", "labels": {plan.LABEL_ATTEMPT: "0", plan.LABEL_NODE_RANK: "0"}},
        "spec": {"nodeName": "node-1"},
        "status": {"phase": "Failed", "reason": "OutOfnvidia.com/gpu", "message": "Pod was rejected"},
    }
    failure = classify([observe_pod(pod, plan.MAIN_CONTAINER, plan.LABEL_ATTEMPT, plan.LABEL_NODE_RANK)])
    assert failure is not None and failure.failure_class is FailureClass.CRASH
    assert "None" not in failure.message and "OutOfnvidia.com/gpu" in failure.message
    pod["status"] = {"phase": "Failed"}
    bare = classify([observe_pod(pod, plan.MAIN_CONTAINER, plan.LABEL_ATTEMPT, plan.LABEL_NODE_RANK)])
    assert bare is not None and "None" not in bare.message and "no exit code or reason reported" in bare.message


@pytest.mark.parametrize("excluded", [(), ("node-b", "node-a")])
def test_recovery_messages_name_nodes_without_a_python_list(excluded):
    pod = {
        "metadata": {"name": "j-a0-n0", "labels": {plan.LABEL_ATTEMPT: "0", plan.LABEL_NODE_RANK: "0"}},
        "spec": {"nodeName": "node-1"},
        "status": {
            "phase": "Failed",
            "containerStatuses": [{"name": plan.MAIN_CONTAINER, "state": {"terminated": {"exitCode": 1}}}],
        },
    }
    failure = classify([observe_pod(pod, plan.MAIN_CONTAINER, plan.LABEL_ATTEMPT, plan.LABEL_NODE_RANK)])
    state = RecoveryState(excluded_nodes=excluded)
    wait = plan_recovery(failure, state, ResilienceSpec(), None, nodes_needed=2, usable_nodes=["node-1"])
    restart = plan_recovery(failure, state, ResilienceSpec(), None)
    for message in (wait.message, restart.message):
        assert "[" not in message and "None" not in message, message
    assert ("excluded (none)" if not excluded else "excluded (node-a, node-b)") in wait.message
    assert ("excluding node-a, node-b" in restart.message) == bool(excluded)


def test_a_spec_that_is_not_a_mapping_is_named_without_a_trailing_dot():
    (problem,) = parse_spec(5).problems  # type: ignore[arg-type]
    assert problem.startswith("spec: ") and "dictionary" in problem


def test_model_dimensions_are_bounded_so_no_arithmetic_overflows():
    """mlpRatio 1e308 made the MLP width infinite: the operator's pass raised instead of judging the spec (found by
    tests/operator/test_generated_specs.py). The schema bounds every dimension; the API server refuses with 422."""
    (problem,) = parse_spec({"model": {"mlpRatio": 1e308}}).problems
    assert problem.startswith("spec.model.mlpRatio: ") and "16" in problem
    for field, value in (("hiddenSize", 10**15), ("depth", 10**6), ("numHeads", 10**4), ("textDim", 10**6)):
        (problem,) = parse_spec({"model": {field: value}}).problems
        assert problem.startswith(f"spec.model.{field}: ")
    assert parse_spec({"model": {"patchSize": [1, 2, 1000]}}).problems
    assert parse_spec({"model": {"preset": "14b", "mlpRatio": 4.0}}).problems == []
