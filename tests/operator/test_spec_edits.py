"""Which edits an active gang takes and which it holds (omnitrain.operator.spec_edits), without a cluster."""

from __future__ import annotations

from omnitrain.operator.spec_edits import applies_while_active, changed_fields, effective_spec, held_edits

LAUNCHED = {
    "parallelism": {"nodes": 2, "gpusPerNode": 1},
    "training": {"steps": 50},
    "resilience": {"maxRestarts": 3},
    "image": "omnitrain:v1",
}


def test_changed_fields_are_leaf_paths_and_a_list_is_one_leaf():
    edited = {**LAUNCHED, "parallelism": {"nodes": 4, "gpusPerNode": 1}, "args": ["--a"]}
    assert changed_fields(LAUNCHED, edited) == ["spec.args", "spec.parallelism.nodes"]
    assert changed_fields(LAUNCHED, LAUNCHED) == []


def test_what_the_gang_is_is_held_and_what_the_operator_reads_later_is_taken():
    assert applies_while_active("spec.resilience.maxRestarts") == "at the next failure"
    assert applies_while_active("spec.promotion.distill.steps") == "when training succeeds"  # under a prefix
    assert applies_while_active("spec.parallelism.nodes") is None
    edited = {
        **LAUNCHED,
        "parallelism": {"nodes": 4, "gpusPerNode": 1},
        "training": {"steps": 80},
        "resilience": {"maxRestarts": 9},
    }
    assert held_edits(LAUNCHED, edited) == ["spec.parallelism.nodes", "spec.training.steps"]


def test_the_effective_spec_is_the_current_one_with_held_fields_as_launched():
    edited = {
        "parallelism": {"nodes": 4, "gpusPerNode": 1},
        "training": {"steps": 50},
        "resilience": {"maxRestarts": 9},
        "image": "omnitrain:v1",
        "model": {"preset": "small"},  # added: held, so it goes
    }
    effective = effective_spec(LAUNCHED, edited)
    assert effective == {**LAUNCHED, "resilience": {"maxRestarts": 9}}
    assert edited["parallelism"]["nodes"] == 4  # the input is not changed
    # a field removed by the edit comes back as launched
    assert effective_spec(LAUNCHED, {k: v for k, v in LAUNCHED.items() if k != "image"}) == LAUNCHED


# ---- without the webhook: the reconcile holds what the gang is (a fake Kube, no cluster) ----------------------------


def test_an_edit_of_what_a_running_gang_is_is_held_with_a_condition_until_suspend_and_resume():
    from omnitrain.operator import plan
    from omnitrain.operator.handlers import Controller
    from omnitrain.operator.settings import OperatorSettings
    from tests.operator.test_isolation import FakeKube, cond, job, run_all_pods

    obj = job("j")
    obj["spec"] = {"parallelism": {"nodes": 2, "gpusPerNode": 1}, "training": {"steps": 50}}
    kube = FakeKube(obj, poisoned=set())

    def apply(j, decision, children):  # FakeKube's, plus the deletions and events the Controller asks for
        for name in decision.delete_pods:
            kube.pods.pop(name, None)
        kube.events.extend((j["metadata"]["name"], e.type, e.reason) for e in decision.events)
        FakeKube.apply(kube, j, decision, children)

    kube.apply = apply  # type: ignore[method-assign]
    controller = Controller(kube, OperatorSettings())  # type: ignore[arg-type]
    controller.reconcile("ns", "j")
    run_all_pods(kube)
    controller.reconcile("ns", "j")
    assert kube.jobs["j"]["status"]["phase"] == "Running"
    assert kube.jobs["j"]["status"]["launchedSpec"]["parallelism"]["nodes"] == 2

    # kubectl patch at step 48, no webhook: nodes and steps are what the gang is; maxRestarts is read later
    kube.jobs["j"]["spec"] = {
        "parallelism": {"nodes": 4, "gpusPerNode": 1},
        "training": {"steps": 80},
        "resilience": {"maxRestarts": 7},
    }
    kube.jobs["j"]["metadata"]["generation"] = 2
    controller.reconcile("ns", "j")
    st = kube.jobs["j"]["status"]
    held = cond(kube, "j", "SpecApplied")
    assert held["status"] == "False" and held["reason"] == "HeldUntilResume", held
    assert "spec.parallelism.nodes, spec.training.steps edited while the job is Running" in held["message"]
    assert "maxRestarts" not in held["message"] and "suspended (spec.suspend: true) and resumed" in held["message"]
    assert ("j", "Warning", "SpecEditHeld") in kube.events
    assert sorted(kube.pods) == [plan.pod_name("j", 0, r) for r in range(2)]  # no pod for the edit
    assert st["observedGeneration"] == 2 and st["launchedSpec"]["training"]["steps"] == 50
    controller.reconcile("ns", "j")
    assert kube.events.count(("j", "Warning", "SpecEditHeld")) == 1  # said once, not once per pass

    # suspend, then resume: the next gang is the edited one
    kube.jobs["j"]["spec"]["suspend"] = True
    controller.reconcile("ns", "j")
    assert kube.jobs["j"]["status"]["phase"] == "Suspended" and not kube.pods
    kube.jobs["j"]["spec"]["suspend"] = False
    for _ in range(3):  # resume, then launch
        controller.reconcile("ns", "j")
    st = kube.jobs["j"]["status"]
    assert sorted(kube.pods) == [plan.pod_name("j", 1, r) for r in range(4)]
    assert st["launchedSpec"]["parallelism"]["nodes"] == 4 and st["launchedSpec"]["training"]["steps"] == 80
    applied = cond(kube, "j", "SpecApplied")
    assert applied["status"] == "True" and applied["reason"] == "Applied", applied
