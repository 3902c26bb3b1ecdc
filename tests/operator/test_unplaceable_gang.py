"""A gang the scheduler cannot place whole (spec.scheduling.scheduleTimeoutSeconds): the pods that got nodes must not
hold them. Pure decisions over observed pods, as the reconcile tests do."""

import dataclasses

import pytest

from omnitrain.operator import plan
from omnitrain.operator.reconcile import (
    PENDING,
    QUEUED,
    RUNNING,
    add_seconds,
    parse_spec,
    reconcile,
)
from omnitrain.resilience.classify import PodObservation, observe_pod
from omnitrain.resilience.recovery import MAX_BACKOFF_SECONDS

BACKOFF = 30  # spec.scheduling.requeueBackoffSeconds's default

JOB = plan.JobRef(name="j", namespace="ns", uid="uid-1")
T0 = "2026-12-02T10:00:00Z"
NO_ROOM = "0/4 nodes are available: 1 Insufficient nvidia.com/gpu, 3 node(s) didn't match Pod's node affinity/selector."


def spec(timeout=60, nodes=3, **resilience):
    return {
        "parallelism": {"nodes": nodes, "gpusPerNode": 1},
        "scheduling": {"scheduleTimeoutSeconds": timeout},
        "resilience": {"maxRestarts": 1, **resilience},
    }


def gang(attempt, placed, unplaced, nodes=3):
    """`placed` pods Running on nodes, `unplaced` Pending with the scheduler's Unschedulable message."""
    out = []
    for r in range(nodes):
        if r < placed:
            out.append(PodObservation(name=plan.pod_name("j", attempt, r), attempt=attempt, rank=r, node=f"n{r}"))
        elif r < placed + unplaced:
            out.append(
                PodObservation(
                    name=plan.pod_name("j", attempt, r), attempt=attempt, rank=r, phase="Pending", unschedulable=NO_ROOM
                )
            )
    return out


def step(s, status, observed, now):
    return reconcile(JOB, parse_spec(s), status, observed, now, generation=1)


def launched(s, now=T0):
    d = step(s, None, [], now)
    assert d.create_attempt == 0
    return d.status


def test_the_scheduler_message_is_read_from_the_pod_scheduled_condition():
    pending = {
        "metadata": {"name": "p"},
        "status": {
            "phase": "Pending",
            "conditions": [{"type": "PodScheduled", "status": "False", "reason": "Unschedulable", "message": NO_ROOM}],
        },
    }
    assert observe_pod(pending).unschedulable == NO_ROOM
    gated = {  # a queue (Kueue) holds the pod back: not the scheduler's verdict
        "metadata": {"name": "p"},
        "status": {
            "phase": "Pending",
            "conditions": [{"type": "PodScheduled", "status": "False", "reason": "SchedulingGated"}],
        },
    }
    assert observe_pod(gated).unschedulable is None
    assert observe_pod({"metadata": {"name": "p"}, "status": {"phase": "Running"}}).unschedulable is None


def test_an_unplaced_pod_starts_the_clock_and_the_job_says_when_it_is_taken_down():
    s = spec(timeout=60)
    st = launched(s)
    d = step(s, st, gang(0, 2, 1), add_seconds(T0, 5))
    assert d.status.phase == PENDING and d.delete_pods == [] and d.create_attempt is None
    assert d.status.unschedulable_since == add_seconds(T0, 5)
    assert NO_ROOM in d.status.message and add_seconds(T0, 65) in d.status.message, d.status.message
    assert d.requeue_after_seconds == pytest.approx(60)
    # the clock does not restart on later passes
    d = step(s, d.status, gang(0, 2, 1), add_seconds(T0, 35))
    assert d.status.unschedulable_since == add_seconds(T0, 5) and d.requeue_after_seconds == pytest.approx(30)


def test_after_the_timeout_every_pod_goes_and_the_job_is_queued_without_spending_a_restart():
    s = spec(timeout=60)
    st = launched(s)
    st = step(s, st, gang(0, 2, 1), T0).status
    d = step(s, st, gang(0, 2, 1), add_seconds(T0, 60))
    assert sorted(d.delete_pods) == [plan.pod_name("j", 0, r) for r in range(3)]
    assert d.create_attempt is None
    st = d.status
    assert st.phase == QUEUED and st.attempt == 1 and st.requeues == 1
    assert st.restarts == 0 and st.total_restarts == 0, "a gang that never ran spends no restart"
    queued = st.condition("Queued")
    assert queued.status == "True" and queued.reason == "GangUnschedulable"
    assert "scheduling.scheduleTimeoutSeconds=60" in queued.message and NO_ROOM in queued.message
    assert st.condition("Running").status == "False"
    assert [e.reason for e in d.events] == ["GangUnschedulable"] and d.events[0].type == "Warning"
    assert d.requeue_after_seconds == BACKOFF
    assert st.restart_not_before == add_seconds(T0, 60 + BACKOFF)


def test_the_queued_gang_waits_for_the_old_pods_and_the_back_off_then_launches_a_new_attempt():
    s = spec(timeout=60)
    st = step(s, step(s, launched(s), gang(0, 2, 1), T0).status, gang(0, 2, 1), add_seconds(T0, 60)).status
    terminating = [dataclasses.replace(p, deleted=True) for p in gang(0, 2, 0)]
    d = step(s, st, terminating, add_seconds(T0, 61))
    assert d.status.phase == QUEUED and d.create_attempt is None
    d = step(s, st, [], add_seconds(T0, 61))  # old pods gone, back-off not over
    assert d.status.phase == QUEUED and d.create_attempt is None and d.requeue_after_seconds == pytest.approx(29)
    d = step(s, st, [], st.restart_not_before)
    assert d.create_attempt == 1 and d.status.phase == PENDING
    assert d.status.children.pods == [plan.pod_name("j", 1, r) for r in range(3)]
    assert d.status.condition("Queued").status == "False"
    d = step(s, d.status, gang(1, 3, 0), add_seconds(st.restart_not_before, 5))
    assert d.status.phase == RUNNING and d.status.restarts == 0 and d.status.unschedulable_since is None


def test_the_back_off_doubles_per_requeue_up_to_its_cap():
    s = spec(timeout=10)
    st, now = launched(s), T0
    delays = []
    for attempt in range(7):
        st = step(s, st, gang(attempt, 1, 2), now).status
        now = add_seconds(now, 10)
        d = step(s, st, gang(attempt, 1, 2), now)
        delays.append(d.requeue_after_seconds)
        now = d.status.restart_not_before
        d = step(s, d.status, [], now)
        assert d.create_attempt == attempt + 1
        st = d.status
    assert delays == [min(MAX_BACKOFF_SECONDS, BACKOFF * 2**i) for i in range(7)]
    assert st.requeues == 7 and st.restarts == 0


def test_a_gang_placed_in_time_is_left_alone():
    s = spec(timeout=60)
    st = step(s, launched(s), gang(0, 2, 1), T0).status
    d = step(s, st, gang(0, 3, 0), add_seconds(T0, 59))
    assert d.status.phase == RUNNING and d.status.unschedulable_since is None and d.delete_pods == []
    d = step(s, d.status, gang(0, 3, 0), add_seconds(T0, 600))
    assert d.status.phase == RUNNING and d.delete_pods == []


def test_no_timeout_waits_for_ever():
    s = spec(timeout=None)
    st = launched(s)
    d = step(s, st, gang(0, 2, 1), add_seconds(T0, 86400))
    assert d.status.phase == PENDING and d.delete_pods == [] and d.status.unschedulable_since is None


def test_in_place_the_queued_gang_is_a_new_one_with_its_spares():
    s = spec(timeout=30, restartMode="InPlace", spareNodes=1)
    st = launched(s)
    spare = PodObservation(name=plan.spare_name("j", 0), attempt=0, rank=-1, phase="Pending", unschedulable=NO_ROOM)
    observed = [*gang(0, 2, 1), spare]
    st = step(s, st, observed, T0).status
    d = step(s, st, observed, add_seconds(T0, 30))
    assert sorted(d.delete_pods) == sorted(p.name for p in observed)
    d = step(s, d.status, [], d.status.restart_not_before)
    assert d.create_attempt == 1
    assert d.status.children.pods == [plan.pod_name("j", 1, r) for r in range(3)]
    assert d.status.children.spares == [plan.spare_name("j", 1)]


def test_without_a_back_off_the_next_try_comes_once_the_old_pods_are_gone():
    s = {**spec(timeout=5), "scheduling": {"scheduleTimeoutSeconds": 5, "requeueBackoffSeconds": 0}}
    st = step(s, launched(s), gang(0, 1, 2), T0).status
    d = step(s, st, gang(0, 1, 2), add_seconds(T0, 5))
    assert d.status.phase == QUEUED and d.status.restart_not_before is None and len(d.delete_pods) == 3
    d = step(s, d.status, [], add_seconds(T0, 6))
    assert d.create_attempt == 1


def test_the_operator_counts_a_requeue_in_its_metrics():
    """Through the Controller (a fake Kube): a job whose unplaced pod's clock ran out is requeued, and
    omnitrain_operator_requeues_total{reason="GangUnschedulable"} counts it."""
    from prometheus_client import CollectorRegistry

    from omnitrain.observability.operator_metrics import METRIC_REQUEUES, OperatorMetrics
    from omnitrain.operator.handlers import Controller
    from omnitrain.operator.settings import OperatorSettings
    from tests.operator.test_isolation import FakeKube, job

    obj = job("j")
    obj["spec"] = spec(timeout=5, nodes=2)
    kube = FakeKube(obj, poisoned=set())
    metrics = OperatorMetrics(CollectorRegistry())
    controller = Controller(kube, OperatorSettings(), metrics=metrics)  # type: ignore[arg-type]
    controller.reconcile("ns", "j")  # launches attempt 0
    names = sorted(kube.pods)
    assert names == [plan.pod_name("j", 0, r) for r in range(2)]
    kube.pods[names[0]]["status"] = {"phase": "Running"}
    kube.pods[names[0]]["spec"]["nodeName"] = "n0"
    kube.pods[names[1]]["status"] = {
        "phase": "Pending",
        "conditions": [{"type": "PodScheduled", "status": "False", "reason": "Unschedulable", "message": NO_ROOM}],
    }
    kube.jobs["j"]["status"]["unschedulableSince"] = "2000-01-01T00:00:00Z"  # the timeout ran out long ago
    deleted: list[str] = []
    apply = kube.apply
    kube.apply = lambda j, decision, children: deleted.extend(decision.delete_pods) or apply(j, decision, children)  # type: ignore[method-assign]
    controller.reconcile("ns", "j")
    assert kube.jobs["j"]["status"]["phase"] == QUEUED and sorted(deleted) == names
    total = metrics.registry.get_sample_value(
        METRIC_REQUEUES + "_total", {"namespace": "ns", "omnitrain_job": "j", "reason": "GangUnschedulable"}
    )
    assert total == 1


# ---- a queue's gate (Kueue: spec.scheduling.queueName) -------------------------------------------------------------


def test_gated_pods_make_the_job_queued_with_the_queues_words_and_admission_hands_on():
    from omnitrain.operator.admission import ADMISSION_GATE, waiting_message

    s = {**spec(timeout=5, nodes=2), "scheduling": {"queueName": "omnitrain", "scheduleTimeoutSeconds": 5}}
    st = launched(s)
    workload = {
        "status": {
            "conditions": [
                {"type": "QuotaReserved", "status": "False", "reason": "Pending", "message": "insufficient quota"}
            ]
        }
    }
    why = waiting_message(workload, "j-a0")
    assert why == "workload j-a0: QuotaReserved Pending: insufficient quota"
    assert waiting_message(None, "j-a0") == "Kueue has not created workload j-a0 yet"
    gated = [
        dataclasses.replace(p, phase="Pending", node=None, scheduling_gates=(ADMISSION_GATE,)) for p in gang(0, 2, 0, 2)
    ]
    d = reconcile(JOB, parse_spec(s), st, gated, add_seconds(T0, 600), generation=1, admission=why)
    st = d.status
    assert st.phase == QUEUED and why in st.message and d.delete_pods == [], "a gated gang never times out"
    assert st.condition("Queued").reason == "WaitingForAdmission" and [e.reason for e in d.events] == ["Queued"]
    d = step(s, st, gang(0, 2, 0, 2), add_seconds(T0, 610))
    assert d.status.phase == RUNNING and d.status.condition("Queued").reason == "Admitted"
    assert [e.reason for e in d.events] == ["Admitted", "Running"]


def test_a_preempted_gang_is_queued_again_resumes_and_spends_no_restart():
    """Kueue evicts the attempt's Workload for a higher priority: its pods carry TerminationTarget and are deleted;
    the ranks save and exit 44. The job says Preempted (Kueue's reason and words), waits for the old gang, queues the
    next attempt behind the gate, and Preempted turns False once it runs again; no counter but `preemptions` moves."""
    from omnitrain.contract import ExitCode, TerminationMessage
    from omnitrain.operator.admission import ADMISSION_GATE

    s = {**spec(timeout=5, nodes=2), "scheduling": {"queueName": "omnitrain", "priorityClassName": "omnitrain-low"}}
    st = step(s, launched(s), gang(0, 2, 0, 2), T0).status
    assert st.phase == RUNNING
    said = "Preempted to accommodate a workload (UID: 7) due to prioritization in the ClusterQueue"
    saved = TerminationMessage(reason="Preempted", message="SIGTERM", step=6, checkpoint_step=6).to_json()
    evicted = [
        dataclasses.replace(
            p,
            deleted=True,
            deletion_timestamp=add_seconds(T0, 130),
            disruption_reason="WorkloadEvictedDueToPreempted",
            disruption_message=said,
            **({"phase": "Failed", "exit_code": int(ExitCode.PREEMPTED), "termination_message": saved} if r else {}),
        )
        for r, p in enumerate(gang(0, 2, 0, 2))
    ]
    d = step(s, st, evicted, add_seconds(T0, 10))
    st = d.status
    preempted = st.condition("Preempted")
    assert preempted is not None and preempted.status == "True" and preempted.reason == "WorkloadEvictedDueToPreempted"
    assert said in (preempted.message or "") and "not counted toward maxRestarts" in (preempted.message or "")
    assert (st.restarts, st.total_restarts, st.preemptions, st.attempt) == (0, 0, 1, 1)
    assert d.delete_pods == [], "Kueue deletes them already; each pod keeps its grace period to save"
    assert st.last_failure is not None and st.last_failure.reason == "Preempted" and st.last_failure.exit_code == 44
    # the old gang still saving: nothing new yet, and not force-deleted inside its grace period
    w = step(s, st, evicted, add_seconds(T0, 60))
    assert w.create_attempt is None and w.force_delete_pods == []
    # gone: attempt 1, held at Kueue's gate
    n = step(s, w.status, [], add_seconds(T0, 140))
    assert n.create_attempt == 1
    gated = [
        dataclasses.replace(p, phase="Pending", node=None, scheduling_gates=(ADMISSION_GATE,)) for p in gang(1, 2, 0, 2)
    ]
    q = reconcile(JOB, parse_spec(s), n.status, gated, add_seconds(T0, 150), generation=1, admission="no quota")
    assert q.status.phase == QUEUED and q.status.condition("Preempted").status == "True"
    r = step(s, q.status, gang(1, 2, 0, 2), add_seconds(T0, 300))
    assert r.status.phase == RUNNING and r.status.condition("Preempted").status == "False"
    assert r.status.condition("Preempted").reason == "Resumed"
    assert (r.status.restarts, r.status.total_restarts, r.status.preemptions) == (0, 0, 1)


def test_the_time_a_gang_waited_for_admission_is_measured_when_the_queue_admits_it():
    from omnitrain.operator.handlers import admission_wait_seconds
    from omnitrain.status import JobStatus

    waiting = JobStatus(phase=QUEUED)
    waiting.set_condition("Queued", True, "WaitingForAdmission", "workload j-a0: QuotaReserved Pending", T0)
    still = JobStatus(phase=QUEUED)
    still.set_condition("Queued", True, "WaitingForAdmission", "insufficient quota", add_seconds(T0, 30))
    admitted = JobStatus(phase="Pending")
    admitted.set_condition("Queued", False, "Admitted", "workload j-a0 admitted", add_seconds(T0, 95))
    assert admission_wait_seconds(waiting, still) is None  # still waiting
    assert admission_wait_seconds(waiting, admitted) == 95.0
    assert admission_wait_seconds(admitted, admitted) is None  # admitted before this pass: counted once
    assert admission_wait_seconds(JobStatus(), admitted) is None  # never seen waiting: no wait to tell
