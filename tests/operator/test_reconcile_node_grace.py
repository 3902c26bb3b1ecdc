"""The operator's passes while a node of the job is NotReady (spec.resilience.nodeNotReadySeconds): a blip shorter
than the grace restarts nothing; past the grace, or when a pod of the attempt fails meanwhile, the gang restarts."""

import dataclasses

from omnitrain.contract import ExitCode, TerminationMessage
from omnitrain.operator import plan
from omnitrain.operator.reconcile import RESTARTING, RUNNING, parse_spec, reconcile
from omnitrain.resilience.classify import PodObservation, observe_node

JOB = plan.JobRef(name="j", namespace="ns", uid="uid-1")

SPEC = {"parallelism": {"nodes": 2, "gpusPerNode": 2}, "resilience": {"maxRestarts": 2, "nodeNotReadySeconds": 30}}
SINCE = "2026-12-01T10:00:00Z"


def node(name, ready="True", since=SINCE):
    return {
        "metadata": {"name": name},
        "status": {"conditions": [{"type": "Ready", "status": ready, "lastTransitionTime": since}]},
    }


def nodes(a1="True"):
    """node-a0 Ready, node-a1 as given, both observed as the kube layer hands them to reconcile."""
    return {n: observe_node(obj, n) for n, obj in {"node-a0": node("node-a0"), "node-a1": node("node-a1", a1)}.items()}


def pods(*phases, codes=(None, None)):
    """Attempt 0's pods, rank r on node-a<r>."""
    return [
        PodObservation(name=plan.pod_name("j", 0, r), attempt=0, rank=r, phase=ph, node=f"node-a{r}", exit_code=c)
        for r, (ph, c) in enumerate(zip(phases, codes))
    ]


def step(status, observed, now, seen):
    return reconcile(JOB, parse_spec(SPEC), status, observed, now, generation=1, nodes=seen)


def condition(status, type_):
    c = status.condition(type_)
    return None if c is None else c.model_dump(by_alias=True, exclude_none=True)


def running_job():
    created = step(None, [], "2026-12-01T09:58:00Z", {})
    assert created.create_attempt == 0
    return step(created.status, pods("Running", "Running"), "2026-12-01T09:59:00Z", nodes()).status


def test_a_blip_shorter_than_the_grace_restarts_nothing_and_says_so():
    running = pods("Running", "Running")
    d = step(running_job(), running, "2026-12-01T10:00:05Z", nodes("Unknown"))
    assert d.status.phase == RUNNING and d.status.attempt == 0 and d.status.restarts == 0
    assert d.delete_pods == [] and d.force_delete_pods == [] and d.create_attempt is None
    assert d.status.last_failure is None
    restarting = condition(d.status, "Restarting")
    assert restarting["status"] == "False" and restarting["reason"] == "NodeNotReady"
    assert (
        "node node-a1 NotReady since 2026-12-01T10:00:00Z: counted lost at 2026-12-01T10:00:30Z"
        in (restarting["message"])
    )
    assert "node-a1" in d.status.message and "2026-12-01T10:00:30Z" in d.status.message
    assert [(e.type, e.reason) for e in d.events] == [("Warning", "NodeNotReady")]
    assert d.requeue_after_seconds == 25  # the operator looks again at the deadline
    # the next pass within the grace: the same wait, no second event, the deadline nearer
    again = step(d.status, running, "2026-12-01T10:00:20Z", nodes("False"))
    assert again.status.phase == RUNNING and again.events == [] and again.requeue_after_seconds == 10
    # Ready again: nothing happened
    back = step(again.status, running, "2026-12-01T10:00:25Z", nodes())
    assert back.status.phase == RUNNING and back.status.attempt == 0 and back.delete_pods == []
    assert [(e.type, e.reason) for e in back.events] == [("Normal", "NodeReady")]
    assert condition(back.status, "Restarting")["reason"] == "NodeReady" and "node-a1" not in back.status.message
    assert back.requeue_after_seconds is None
    assert step(back.status, running, "2026-12-01T10:00:30Z", nodes()).events == []


def test_past_the_grace_the_node_is_lost_and_the_gang_restarts():
    running = pods("Running", "Running")
    waiting = step(running_job(), running, "2026-12-01T10:00:05Z", nodes("Unknown")).status
    d = step(waiting, running, "2026-12-01T10:00:30Z", nodes("Unknown"))
    assert d.status.phase == RESTARTING and d.status.attempt == 1 and d.status.restarts == 1
    assert d.status.last_failure.reason == "NodeLost" and d.status.last_failure.node == "node-a1"
    assert condition(d.status, "Restarting")["status"] == "True"
    assert d.delete_pods == ["j-a0-n0"] and d.force_delete_pods == ["j-a0-n1"]


def test_a_peer_failing_within_the_grace_is_evidence_enough():
    waiting = step(running_job(), pods("Running", "Running"), "2026-12-01T10:00:05Z", nodes("Unknown")).status
    hang = TerminationMessage(reason="HangDetected", message="rank 1: no heartbeat").to_json()
    observed = pods("Failed", "Running", codes=[ExitCode.HANG, None])
    observed[0] = dataclasses.replace(observed[0], termination_message=hang)
    d = step(waiting, observed, "2026-12-01T10:00:08Z", nodes("Unknown"))
    assert d.status.phase == RESTARTING and d.status.attempt == 1
    # the NotReady node explains the hang of its peer, and its pod goes with grace period 0
    assert d.status.last_failure_class == "NodeLost" and d.status.last_failure.node == "node-a1"
    assert d.force_delete_pods == ["j-a0-n1"]


def test_a_second_node_joining_the_wait_is_announced_and_the_first_deadline_is_looked_at():
    running = pods("Running", "Running")
    d = step(running_job(), running, "2026-12-01T10:00:05Z", nodes("Unknown"))
    later = "2026-12-01T10:00:10Z"
    both = {**nodes("Unknown"), "node-a0": observe_node(node("node-a0", "False", since=later), "node-a0")}
    again = step(d.status, running, later, both)
    assert again.status.phase == RUNNING and [e.reason for e in again.events] == ["NodeNotReady"]
    message = condition(again.status, "Restarting")["message"]
    assert message.index("node node-a1") < message.index("node node-a0")  # earliest deadline first
    assert again.requeue_after_seconds == 20  # node-a1's deadline, not node-a0's (10:00:40)
