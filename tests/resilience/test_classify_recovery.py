"""Failure classification and recovery planning: tables of observed pods/nodes -> class -> action."""

from __future__ import annotations

import pytest

from omnitrain.contract import ExitCode, TerminationMessage
from omnitrain.resilience.classify import (
    FailureClass,
    NodeObservation,
    PodObservation,
    classify,
    observe_node,
    observe_pod,
)
from omnitrain.resilience.recovery import ActionKind, RecoveryState, backoff_seconds, plan_recovery
from omnitrain.spec import ResilienceSpec


def running(name: str, node: str) -> PodObservation:
    return PodObservation(name=name, node=node, phase="Running")


def failed(name: str, node: str, code: int, reason: str = "Error", message: str | None = None) -> PodObservation:
    return PodObservation(
        name=name, node=node, phase="Failed", exit_code=code, container_reason=reason, termination_message=message
    )


HANG_MSG = TerminationMessage(
    reason="HangDetected", message="no step progress", step=17, evidence={"stalled_ranks": [3]}
).to_json()
HW_MSG = TerminationMessage(reason="HardwareFault", message="GPU 2: critical XID 79").to_json()
CONFIG_MSG = TerminationMessage(reason="ConfigError", message="spec.data.path: no shards").to_json()


@pytest.mark.parametrize(
    "pods, nodes, cls, reason, bad_nodes",
    [
        # one rank crashed, the others' collectives broke: a crash
        ([failed("p0", "n0", 1), failed("p1", "n1", 1)], [], FailureClass.CRASH, "Crash", ()),
        # the watchdog ended a pod, the others crashed afterwards: the hang explains them
        (
            [failed("p0", "n0", 1), failed("p1", "n1", ExitCode.HANG, message=HANG_MSG)],
            [],
            FailureClass.HANG,
            "HangDetected",
            (),
        ),
        ([failed("p0", "n0", 137, "OOMKilled"), failed("p1", "n1", 1)], [], FailureClass.OOM, "OOMKilled", ()),
        (
            [failed("p0", "n0", ExitCode.HARDWARE, message=HW_MSG), failed("p1", "n1", 1)],
            [],
            FailureClass.HARDWARE,
            "HardwareFault",
            ("n0",),
        ),
        (
            [failed("p0", "n0", ExitCode.CONFIG, message=CONFIG_MSG), failed("p1", "n1", ExitCode.CONFIG)],
            [],
            FailureClass.PERMANENT,
            "ConfigError",
            (),
        ),
        ([failed("p0", "n0", ExitCode.NO_PROGRESS)], [], FailureClass.PERMANENT, "NoProgress", ()),
        (
            [PodObservation("p0", "n0", phase="Pending", waiting_reason="ImagePullBackOff"), running("p1", "n1")],
            [],
            FailureClass.PERMANENT,
            "ImagePullBackOff",
            (),
        ),
        # node deleted under a running pod; the pod on the healthy node crashed as a consequence
        (
            [running("p0", "n0"), failed("p1", "n1", 1)],
            [NodeObservation("n0", ready=False, exists=False)],
            FailureClass.NODE_LOST,
            "NodeLost",
            ("n0",),
        ),
        ([running("p0", "n0")], [NodeObservation("n0", ready=False)], FailureClass.NODE_LOST, "NodeLost", ("n0",)),
        (
            [PodObservation("p0", "n0", phase="Failed", pod_reason="Evicted"), failed("p1", "n1", 1)],
            [],
            FailureClass.PREEMPTED,
            "Preempted",
            (),
        ),
        (
            [PodObservation("p0", "n0", phase="Running", disruption_reason="PreemptionByScheduler", deleted=True)],
            [],
            FailureClass.PREEMPTED,
            "Preempted",
            (),
        ),
        (
            [PodObservation("p0", "n0", phase="Failed", exit_code=137, disruption_reason="DeletionByTaintManager")],
            [],
            FailureClass.NODE_LOST,
            "NodeLost",
            ("n0",),
        ),
        ([PodObservation("p0", "n0", phase="Running", deleted=True)], [], FailureClass.CRASH, "PodDeleted", ()),
        # permanent beats hardware: restarting would not help anyway
        (
            [failed("p0", "n0", ExitCode.HARDWARE), failed("p1", "n1", ExitCode.CONFIG)],
            [],
            FailureClass.PERMANENT,
            "ConfigError",
            (),
        ),
    ],
)
def test_classification_table(pods, nodes, cls, reason, bad_nodes):
    failure = classify(pods, nodes)
    assert failure is not None
    assert (failure.failure_class, failure.reason, failure.nodes) == (cls, reason, bad_nodes)
    assert failure.isolate is (cls is FailureClass.HARDWARE)
    assert failure.counts_toward_budget is (cls is not FailureClass.PREEMPTED)


def test_no_failure_while_running_or_succeeded():
    assert classify([running("p0", "n0"), running("p1", "n1")], [NodeObservation("n0"), NodeObservation("n1")]) is None
    ok = PodObservation("p0", "n0", phase="Succeeded", exit_code=0, container_reason="Completed")
    assert classify([ok]) is None


def test_hang_carries_the_watchdog_step_and_evidence():
    failure = classify([failed("p1", "n1", ExitCode.HANG, message=HANG_MSG), failed("p2", "n2", ExitCode.HANG)])
    assert failure.step == 17
    assert failure.evidence == {"stalled_ranks": [3]}
    assert failure.pods == ("p1", "p2")
    assert "no step progress" in failure.message and "1 more pod" in failure.message


def test_observe_pod_and_node_from_api_dicts():
    pod = {
        "metadata": {"name": "job-node-1", "deletionTimestamp": None},
        "spec": {"nodeName": "gpu-3"},
        "status": {
            "phase": "Failed",
            "conditions": [{"type": "DisruptionTarget", "status": "False", "reason": "PreemptionByScheduler"}],
            "containerStatuses": [
                {"name": "sidecar", "state": {"running": {}}},
                {"name": "trainer", "state": {"terminated": {"exitCode": 42, "reason": "Error", "message": HANG_MSG}}},
            ],
        },
    }
    obs = observe_pod(pod, main_container="trainer")
    assert (obs.name, obs.node, obs.phase, obs.exit_code, obs.disruption_reason, obs.deleted) == (
        "job-node-1",
        "gpu-3",
        "Failed",
        42,
        None,
        False,
    )
    assert classify([obs]).failure_class is FailureClass.HANG
    waiting = observe_pod(
        {
            "metadata": {"name": "p"},
            "status": {
                "phase": "Pending",
                "containerStatuses": [{"name": "trainer", "state": {"waiting": {"reason": "ErrImagePull"}}}],
            },
        }
    )
    assert waiting.waiting_reason == "ErrImagePull" and waiting.node is None
    assert observe_node(None, "gone") == NodeObservation("gone", ready=False, exists=False)
    node = {"status": {"conditions": [{"type": "Ready", "status": "Unknown"}]}}
    assert observe_node(node, "n").ready is False


# --- recovery planning ------------------------------------------------------------------------------------

POLICY = ResilienceSpec(max_restarts=3, restart_backoff_seconds=10, max_no_progress_restarts=2)
CRASH = classify([failed("p0", "n0", 1)])
HW = classify([failed("p0", "n0", ExitCode.HARDWARE, message=HW_MSG)])
LOST = classify([running("p0", "n0")], [NodeObservation("n0", ready=False, exists=False)])
PREEMPT = classify([PodObservation("p0", "n0", phase="Failed", pod_reason="Evicted")])
CONFIG = classify([failed("p0", "n0", ExitCode.CONFIG, message=CONFIG_MSG)])


def test_first_crash_restarts_without_backoff_base_and_counts():
    action = plan_recovery(CRASH, RecoveryState(), POLICY, last_checkpoint_step=50)
    assert action.kind is ActionKind.GANG_RESTART
    assert action.delay_seconds == 10
    assert action.state.restarts == 1 and action.state.checkpoint_step_at_last_failure == 50
    assert "from checkpoint step 50" in action.message and "restart 1/3" in action.message


def test_exponential_backoff_and_budget():
    assert [backoff_seconds(10, n) for n in range(4)] == [10, 20, 40, 80]
    assert backoff_seconds(10, 20) == 600
    assert backoff_seconds(0, 5) == 0
    state, step, delays = RecoveryState(), 0, []
    for _ in range(3):
        step += 50  # every attempt saved a newer checkpoint
        action = plan_recovery(CRASH, state, POLICY, last_checkpoint_step=step)
        assert action.kind is ActionKind.GANG_RESTART
        delays.append(action.delay_seconds)
        state = action.state
    assert delays == [10, 20, 40]
    final = plan_recovery(CRASH, state, POLICY, last_checkpoint_step=step + 50)
    assert final.kind is ActionKind.FAIL and final.reason == "RestartBudgetExhausted"
    assert "maxRestarts=3" in final.message


def test_no_progress_restarts_end_the_job():
    state = plan_recovery(CRASH, RecoveryState(), POLICY, last_checkpoint_step=100).state
    second = plan_recovery(CRASH, state, POLICY, last_checkpoint_step=100)  # no newer checkpoint
    assert second.kind is ActionKind.GANG_RESTART and second.state.no_progress_restarts == 1
    third = plan_recovery(CRASH, second.state, POLICY, last_checkpoint_step=100)
    assert third.kind is ActionKind.FAIL and third.reason == "NoProgress"
    # progress resets the counter
    moved = plan_recovery(CRASH, second.state, POLICY, last_checkpoint_step=150)
    assert moved.kind is ActionKind.GANG_RESTART and moved.state.no_progress_restarts == 0


def test_crash_loop_without_any_checkpoint_is_no_progress():
    state = plan_recovery(CRASH, RecoveryState(), POLICY, last_checkpoint_step=None).state
    state = plan_recovery(CRASH, state, POLICY, last_checkpoint_step=None).state
    assert state.no_progress_restarts == 1
    assert plan_recovery(CRASH, state, POLICY, last_checkpoint_step=None).reason == "NoProgress"


def test_preemption_is_free():
    state = RecoveryState(restarts=3, no_progress_restarts=1, checkpoint_step_at_last_failure=10)
    action = plan_recovery(PREEMPT, state, POLICY, last_checkpoint_step=10)
    assert action.kind is ActionKind.GANG_RESTART and action.delay_seconds == 0
    assert action.state.restarts == 3 and action.state.no_progress_restarts == 1
    # a preemption is not a failure: it counts as one, not as a gang restart
    assert action.state.total_restarts == 0 and action.state.preemptions == 1
    assert "not counted" in action.message
    assert RecoveryState.from_status(action.state.to_status()) == action.state


def _kueue_evicted(name: str, rank: int, message: str | None, deleted: bool = True) -> dict:
    """A pod of a pod group as Kueue leaves it when it preempts the group's Workload: TerminationTarget True, then
    deleted; its container may have exited already (`message`: the trainer's termination message)."""
    statuses = (
        [{"name": "trainer", "state": {"terminated": {"exitCode": 44, "reason": "Error", "message": message}}}]
        if message
        else [{"name": "trainer", "state": {"running": {}}}]
    )
    return {
        "metadata": {
            "name": name,
            "deletionTimestamp": "2026-12-03T07:00:00Z" if deleted else None,
            "labels": {"omnitrain.dev/rank": str(rank)},
        },
        "spec": {"nodeName": f"n{rank}"},
        "status": {
            "phase": "Failed" if message else "Running",
            "conditions": [
                {
                    "type": "TerminationTarget",
                    "status": "True",
                    "reason": "WorkloadEvictedDueToPreempted",
                    "message": "Preempted to accommodate a workload (UID: 42) due to prioritization in the CQ",
                }
            ],
            "containerStatuses": statuses,
        },
    }


def test_kueue_preemption_is_classified_with_its_words():
    stopped = TerminationMessage(reason="Preempted", message="SIGTERM", step=7, checkpoint_step=7).to_json()
    pods = [
        observe_pod(_kueue_evicted("j-a0-n0", 0, stopped), "trainer", rank_label="omnitrain.dev/rank"),
        observe_pod(_kueue_evicted("j-a0-n1", 1, None), "trainer", rank_label="omnitrain.dev/rank"),
    ]
    assert pods[1].disruption_reason == "WorkloadEvictedDueToPreempted" and "prioritization" in (
        pods[1].disruption_message or ""
    )
    failure = classify(pods)
    assert failure is not None and failure.failure_class is FailureClass.PREEMPTED and not failure.counts_toward_budget
    assert failure.primary is not None and failure.primary.name == "j-a0-n0"  # the rank that exited explains it
    assert "WorkloadEvictedDueToPreempted: Preempted to accommodate a workload" in failure.message
    assert failure.step == 7


def test_the_ranks_own_sigterm_exit_is_a_preemption():
    """Exit 44 without any condition (a drain's SIGTERM, a kubelet shutdown): resumed, no restart spent."""
    stopped = TerminationMessage(reason="Preempted", message="SIGTERM", step=9, checkpoint_step=9).to_json()
    failure = classify([failed("p0", "n0", ExitCode.PREEMPTED, message=stopped), failed("p1", "n1", 1)])
    assert failure is not None and failure.failure_class is FailureClass.PREEMPTED
    assert "final checkpoint at step 9" in failure.message
    # the code alone is enough (a termination message can be lost with its file)
    bare = classify([failed("p0", "n0", ExitCode.PREEMPTED)])
    assert bare is not None and bare.failure_class is FailureClass.PREEMPTED


def test_permanent_fails_at_once():
    action = plan_recovery(CONFIG, RecoveryState(), POLICY, last_checkpoint_step=10)
    assert action.kind is ActionKind.FAIL and action.reason == "ConfigError"
    assert "spec.data.path" in action.message and "restarting cannot fix" in action.message


def test_hardware_isolates_and_excluded_nodes_accumulate():
    action = plan_recovery(HW, RecoveryState(excluded_nodes=("n9",)), POLICY, last_checkpoint_step=5)
    assert action.kind is ActionKind.GANG_RESTART
    assert action.isolate_nodes == ("n0",) and action.exclude_nodes == ("n0", "n9")
    assert action.state.excluded_nodes == ("n0", "n9")
    no_isolation = ResilienceSpec(isolate_nodes=False)
    assert plan_recovery(HW, RecoveryState(), no_isolation, 5).isolate_nodes == ()
    assert plan_recovery(HW, RecoveryState(), no_isolation, 5).exclude_nodes == ()
    lost = plan_recovery(LOST, RecoveryState(), POLICY, last_checkpoint_step=5)
    assert lost.exclude_nodes == () and lost.isolate_nodes == ()  # left to the scheduler (NotReady taints)


def test_wait_for_capacity_when_too_few_nodes_remain():
    action = plan_recovery(HW, RecoveryState(), POLICY, 5, nodes_needed=2, usable_nodes=["n0", "n1"])
    assert action.kind is ActionKind.WAIT and action.reason == "InsufficientNodes"
    ok = plan_recovery(HW, RecoveryState(), POLICY, 5, nodes_needed=2, usable_nodes=["n0", "n1", "n2"])
    assert ok.kind is ActionKind.GANG_RESTART


def test_state_round_trips_through_status():
    state = RecoveryState(
        restarts=2,
        total_restarts=3,
        no_progress_restarts=1,
        checkpoint_step_at_last_failure=40,
        excluded_nodes=("a", "b"),
    )
    assert RecoveryState.from_status(state.to_status()) == state
    assert RecoveryState.from_status(None) == RecoveryState()
    assert plan_recovery(None, state, POLICY, 40).kind is ActionKind.WAIT
