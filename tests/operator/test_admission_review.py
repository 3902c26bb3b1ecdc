"""The validating webhook's answers (omnitrain.operator.admission_review), without a cluster."""

import pytest

from omnitrain.operator.admission_review import changed_fields, review

GOOD = {"parallelism": {"nodes": 2, "gpusPerNode": 2}, "training": {"steps": 100}}


def test_a_valid_create_is_allowed_and_an_invalid_one_names_every_field():
    assert review("CREATE", GOOD, "video-1").allowed
    bad = {
        "parallelism": {"nodes": 1, "gpusPerNode": 2, "tensor": 4},
        "model": {"hiddenSize": 100, "numHeads": 3},
        "training": {"steps": 0},
    }
    answer = review("CREATE", bad, "video-1")
    assert not answer.allowed
    text = answer.message("video-1")
    assert text.startswith("OmniTrainingJob video-1 refused: ")
    assert "spec.training.steps" in text


def test_semantic_problems_each_name_their_field():
    answer = review("CREATE", {"parallelism": {"nodes": 1, "gpusPerNode": 2, "tensor": 4}}, "j")
    assert not answer.allowed and all(p.startswith("spec.") for p in answer.problems), answer.problems
    assert any("spec.parallelism" in p for p in answer.problems)


def test_a_name_its_service_cannot_have_is_refused_on_create():
    answer = review("CREATE", GOOD, "7-videos")
    assert not answer.allowed and any("metadata.name" in p for p in answer.problems), answer.problems


@pytest.mark.parametrize(
    "edit, field",
    [
        ({"parallelism": {"nodes": 4, "gpusPerNode": 2}}, "spec.parallelism.nodes"),
        ({"training": {"steps": 200}}, "spec.training.steps"),
        ({"image": "omnitrain:v2"}, "spec.image"),
        ({"model": {"preset": "small"}}, "spec.model.preset"),
    ],
)
def test_what_the_gang_is_cannot_change_while_it_runs(edit, field):
    new = {**GOOD, **edit}
    answer = review("UPDATE", new, "j", old_spec=GOOD, phase="Running")
    assert not answer.allowed
    assert any(p.startswith(f"{field}: cannot change while the job is Running") for p in answer.problems), answer
    assert "spec.suspend: true" in answer.problems[0]
    # suspended or finished: the same edit is taken (the next attempt is rendered from it)
    assert review("UPDATE", new, "j", old_spec=GOOD, phase="Suspended").allowed
    assert review("UPDATE", new, "j", old_spec=GOOD, phase="Succeeded").allowed


def test_operator_side_fields_are_taken_while_running_and_say_when():
    new = {**GOOD, "resilience": {"maxRestarts": 9}, "suspend": True}
    answer = review("UPDATE", new, "j", old_spec=GOOD, phase="Running")
    assert answer.allowed
    assert "spec.resilience.maxRestarts applies at the next failure" in answer.applied_later
    assert any(a.startswith("spec.suspend applies at once") for a in answer.applied_later)


def test_an_update_that_leaves_the_spec_alone_is_never_refused():
    """The operator's finalizer and kopf's annotations on a job whose spec would not pass any more."""
    broken = {"training": {"steps": 0}}
    assert review("UPDATE", broken, "j", old_spec=broken, phase="Failed").allowed
    assert review("DELETE", None, "j").allowed


def test_writing_a_default_out_is_no_change():
    explicit = {**GOOD, "image": "omnitrain:latest", "resilience": {"maxRestarts": 3}}
    assert changed_fields(GOOD | {}, GOOD) == []
    assert review("UPDATE", explicit, "j", old_spec=GOOD, phase="Running").allowed


def test_an_invalid_update_is_refused_whatever_the_phase():
    answer = review("UPDATE", {**GOOD, "training": {"steps": -1}}, "j", old_spec=GOOD, phase="Suspended")
    assert not answer.allowed and "spec.training.steps" in answer.problems[0]
