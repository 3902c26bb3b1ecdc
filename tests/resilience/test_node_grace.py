"""A NotReady blip is not a lost node: the rule of spec.resilience.nodeNotReadySeconds (omnitrain.resilience.
node_grace) and how the recovery decision uses it (decide: the job's own evidence ends the grace early)."""

from __future__ import annotations

import pytest

from omnitrain.contract import ExitCode, TerminationMessage
from omnitrain.resilience.classify import NodeObservation, PodObservation, observe_node
from omnitrain.resilience.decide import decide, last_failure
from omnitrain.resilience.node_grace import NODE_NOT_READY, grace_of, nodes_in_grace, usable, wait_message
from omnitrain.resilience.recovery import GangRestart, Wait
from omnitrain.spec import JobSpec
from omnitrain.status import JobStatus

SINCE = "2026-12-01T10:00:00Z"


def not_ready(name="n1", since=SINCE, exists=True):
    return NodeObservation(name, ready=False, exists=exists, not_ready_since=since)


@pytest.mark.parametrize(
    ("node", "now", "grace", "left"),
    [
        (NodeObservation("n1"), "2026-12-01T10:00:05Z", 60, None),  # Ready: nothing to wait for
        (not_ready(exists=False), "2026-12-01T10:00:05Z", 60, None),  # deleted: lost at once
        (not_ready(), "2026-12-01T10:00:05Z", 0, None),  # nodeNotReadySeconds 0: lost at once
        (not_ready(), "2026-12-01T10:00:05Z", 60, 55.0),  # 5 s into a 60 s grace
        (not_ready(), "2026-12-01T10:00:59Z", 60, 1.0),
        (not_ready(), "2026-12-01T10:01:00Z", 60, None),  # the deadline itself: lost
        (not_ready(), "2026-12-01T10:05:00Z", 60, None),
        (not_ready(since=None), "2026-12-01T10:00:05Z", 60, None),  # cannot be timed: lost, never an endless wait
        (not_ready(), None, 60, None),
        (not_ready(), "t", 60, None),
    ],
)
def test_a_not_ready_node_is_in_its_grace_until_the_deadline(node, now, grace, left):
    judged = grace_of(node, now, grace)
    if left is None:
        assert judged is None
    else:
        assert judged is not None and judged.seconds_left == left
        assert judged.since == SINCE and judged.deadline == "2026-12-01T10:01:00Z"


def test_observe_node_keeps_when_ready_stopped_being_true():
    node = {"status": {"conditions": [{"type": "Ready", "status": "Unknown", "lastTransitionTime": SINCE}]}}
    assert observe_node(node, "n1") == not_ready()
    ready = {"status": {"conditions": [{"type": "Ready", "status": "True", "lastTransitionTime": SINCE}]}}
    assert observe_node(ready, "n1") == NodeObservation("n1")  # a Ready node has no NotReady time
    assert observe_node({"status": {}}, "n1") == NodeObservation("n1", ready=False)  # no Ready condition: untimed


def pod(name, node, phase="Running", **kw):
    return PodObservation(name=name, node=node, phase=phase, **kw)


def test_only_nodes_that_run_an_unfinished_pod_of_the_attempt_wait():
    nodes = {"n0": NodeObservation("n0"), "n1": not_ready("n1"), "n2": not_ready("n2")}
    pods = [pod("p0", "n0"), pod("p1", "n1"), pod("p2", "n2", phase="Succeeded")]
    assert list(nodes_in_grace(pods, nodes, "2026-12-01T10:00:10Z", 60)) == ["n1"]
    # a node in its grace keeps its running pod but takes no new one
    assert usable(["n0", "n1", "n2", "n3"], nodes) == ["n0", "n3"] and usable(None, nodes) is None
    message = wait_message(nodes_in_grace(pods, nodes, "2026-12-01T10:00:10Z", 60).values(), 60)
    assert "node n1 NotReady since 2026-12-01T10:00:00Z: counted lost at 2026-12-01T10:01:00Z" in message
    assert "nodeNotReadySeconds=60" in message


SPEC = JobSpec.model_validate({"parallelism": {"nodes": 2}, "resilience": {"maxRestarts": 2}})
NOW = "2026-12-01T10:00:10Z"  # 10 s into the default 60 s grace
HANG = TerminationMessage(reason="HangDetected", message="rank 1: no heartbeat for 60 s").to_json()


def test_within_the_grace_and_without_evidence_the_job_waits_for_the_node():
    nodes = {"n0": NodeObservation("n0"), "n1": not_ready("n1")}
    running = [pod("j-a0-n0", "n0", rank=0), pod("j-a0-n1", "n1", rank=1)]
    waiting = decide(running, nodes, JobStatus(restarts=1), SPEC, now=NOW)
    assert isinstance(waiting, Wait) and waiting.reason == NODE_NOT_READY and waiting.failure is None
    assert waiting.recheck_after_seconds == 50.0 and "node n1" in waiting.message
    assert waiting.state.restarts == 1  # nothing is counted
    # the Node comes back Ready: nothing happened
    assert decide(running, {**nodes, "n1": NodeObservation("n1")}, JobStatus(), SPEC, now=NOW) is None


@pytest.mark.parametrize(
    ("what", "pods", "node1", "now", "grace"),
    [
        # the grace ran out
        ("past the grace", [pod("a", "n0", rank=0), pod("b", "n1", rank=1)], not_ready(), "2026-12-01T10:01:00Z", 60),
        # the Node object was deleted
        ("deleted", [pod("a", "n0", rank=0), pod("b", "n1", rank=1)], not_ready(exists=False), NOW, 60),
        # the node's own pod was deleted (e.g. by a person, or the taint manager)
        ("own pod deleted", [pod("a", "n0", rank=0), pod("b", "n1", rank=1, deleted=True)], not_ready(), NOW, 60),
        # a peer's watchdog saw the node's ranks stop: its hang names the NotReady node's pod as the lost one
        (
            "peer hang",
            [
                pod("a", "n0", "Failed", rank=0, exit_code=ExitCode.HANG, termination_message=HANG),
                pod("b", "n1", rank=1),
            ],
            not_ready(),
            NOW,
            60,
        ),
        # nodeNotReadySeconds 0 is judged as before the rule
        ("grace 0", [pod("a", "n0", rank=0), pod("b", "n1", rank=1)], not_ready(), NOW, 0),
    ],
)
def test_the_node_counts_as_lost_past_the_grace_or_when_the_jobs_evidence_agrees(what, pods, node1, now, grace):
    nodes = {"n0": NodeObservation("n0"), "n1": node1}
    spec = JobSpec.model_validate({"parallelism": {"nodes": 2}, "resilience": {"nodeNotReadySeconds": grace}})
    action = decide(pods, nodes, JobStatus(), spec, now=now)
    assert isinstance(action, GangRestart), what
    assert action.failure is not None and action.failure.failure_class.value == "NodeLost"
    # the lost node's pod explains the attempt (not the peer that hung or crashed because of it)
    assert action.failure.nodes == ("n1",) and last_failure(action.failure, "t").pod == "b"


def test_a_missing_pod_is_evidence_too():
    nodes = {"n0": NodeObservation("n0"), "n1": not_ready("n1")}
    action = decide([pod("j-a0-n1", "n1", rank=1)], nodes, JobStatus(), SPEC, missing=["j-a0-n0"], now=NOW)
    assert isinstance(action, GangRestart) and action.failure is not None
    assert action.failure.failure_class.value == "NodeLost" and action.failure.nodes == ("n1",)


def test_a_node_in_its_grace_is_not_usable_for_the_next_gang():
    # a peer crashed (evidence): the NotReady node is lost, and with it only one usable node is left of two
    nodes = {"n0": NodeObservation("n0"), "n1": not_ready("n1")}
    crashed = [pod("a", "n0", "Failed", rank=0, exit_code=1), pod("b", "n1", rank=1)]
    waiting = decide(crashed, nodes, JobStatus(), SPEC, usable_nodes=["n0", "n1"], now=NOW)
    assert isinstance(waiting, Wait) and waiting.reason == "InsufficientNodes"
    spare = decide(crashed, nodes, JobStatus(), SPEC, usable_nodes=["n0", "n1", "n2"], now=NOW)
    assert isinstance(spare, GangRestart)
