"""The status model: the wire format kubectl users see (camelCase, unset fields absent) and its helpers."""

from __future__ import annotations

from omnitrain.status import JobStatus, LastFailure

WIRE = {
    "phase": "Restarting",
    "attempt": 2,
    "launchedAttempt": 1,
    "restarts": 1,
    "totalRestarts": 2,
    "noProgressRestarts": 0,
    "checkpointStepAtLastFailure": 40,
    "lastFailureClass": "Hang",
    "restartNotBefore": "2026-01-01T00:00:30Z",
    "currentStep": 41,
    "totalSteps": 100,
    "lastCheckpoint": {"step": 40, "path": "/ck/j", "time": "2026-01-01T00:00:00Z"},
    "excludedNodes": ["n3"],
    "children": {"pods": ["j-a1-n0"], "service": "j", "configMap": "j-config"},
    "startTime": "2026-01-01T00:00:00Z",
    "lastFailure": {
        "pod": "j-a1-n0",
        "node": "n0",
        "exitCode": 42,
        "reason": "HangDetected",
        "message": "m",
        "time": "2026-01-01T00:00:00Z",
    },
    "goodput": {"ratio": 0.9, "wallSeconds": 10.0, "badputSeconds": {"startup": 1.0}, "someday": "kept"},
    "message": "restarting",
    "observedGeneration": 3,
    "conditions": [
        {
            "type": "Valid",
            "status": "True",
            "reason": "SpecValid",
            "message": "ok",
            "lastTransitionTime": "2026-01-01T00:00:00Z",
        }
    ],
    "promotion": {"training": {"phase": "Succeeded", "name": "j"}, "chain": "training:Succeeded"},
}


def test_wire_round_trip_is_identical():
    assert JobStatus.from_wire(WIRE).to_wire() == WIRE
    assert JobStatus.from_wire(WIRE).total_restarts == 2


def test_unset_fields_and_empty_lists_stay_off_the_wire():
    assert JobStatus.from_wire(None).to_wire() == {}
    st = JobStatus(phase="Pending", last_failure=LastFailure(pod="p", reason="PodLost"))
    assert st.to_wire() == {"phase": "Pending", "lastFailure": {"pod": "p", "reason": "PodLost"}}
    st.restart_not_before = None
    assert "restartNotBefore" not in st.to_wire()


def test_a_bare_goodput_number_is_the_ratio():
    assert JobStatus.from_wire({"goodput": 0.97}).goodput == {"ratio": 0.97}


def test_set_condition_keeps_the_transition_time_until_the_status_flips():
    st = JobStatus()
    st.set_condition("Running", True, "PodsRunning", "all running", "t1")
    st.set_condition("Running", True, "PodsRunning", "still running", "t2")
    assert st.condition("Running").last_transition_time == "t1" and st.condition("Running").message == "still running"
    st.set_condition("Running", False, "Completed", "done", "t3")
    assert st.condition("Running").last_transition_time == "t3" and len(st.conditions) == 1
    assert st.condition("Failed") is None


def test_the_status_write_is_a_merge_patch_that_removes_what_disappeared():
    from omnitrain.operator.kube import status_patch

    old = {
        "phase": "Restarting",
        "restartNotBefore": "2026-01-01T00:00:30Z",
        "attempt": 1,
        "lastFailure": {"pod": "p", "exitCode": 1, "reason": "Error"},
        "conditions": [{"type": "Valid", "status": "True"}],
    }
    new = JobStatus.from_wire(
        {**old, "restartNotBefore": None, "phase": "Pending", "lastFailure": {"pod": "q", "reason": "NodeLost"}}
    ).to_wire()
    assert status_patch(old, new) == {
        "phase": "Pending",
        "restartNotBefore": None,
        "lastFailure": {"pod": "q", "exitCode": None, "reason": "NodeLost"},
    }
    assert status_patch(new, new) == {}
