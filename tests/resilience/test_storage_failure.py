"""A full (or read-only, or forbidden) checkpoint disk fails the job at once (issue 14, case 6): it used to be
retried like a crash, two gang restarts from scratch before Failed/NoProgress, with "step None" in the message."""

from __future__ import annotations

import errno

from omnitrain.contract import ExitCode, storage_termination
from omnitrain.operator import plan
from omnitrain.operator.reconcile import FAILED, parse_spec, reconcile
from omnitrain.resilience.classify import FailureClass, PodObservation, classify
from omnitrain.resilience.decide import decide
from omnitrain.resilience.recovery import ActionKind, Fail, RecoveryState, plan_recovery
from omnitrain.spec import JobSpec, ResilienceSpec
from omnitrain.status import JobStatus

FULL = storage_termination("/mnt/nvme/omnitrain", errno.ENOSPC).to_json()
JOB = plan.JobRef(name="j", namespace="ns", uid="uid-1")
SPEC = {"parallelism": {"nodes": 2, "gpusPerNode": 1}}


def _pod(rank: int, code: int | None, message: str | None = None, phase: str = "Failed") -> PodObservation:
    return PodObservation(
        name=plan.pod_name("j", 0, rank),
        node=f"n{rank}",
        phase=phase,
        exit_code=code,
        termination_message=message,
        attempt=0,
        rank=rank,
    )


def test_a_storage_error_is_permanent_whatever_exit_code_torchrun_gave_it():
    # under torchrun the worker's exit 5 reaches the pod as torchrun's 1; the termination reason says what it was
    for code in (1, ExitCode.STORAGE):
        failure = classify([_pod(0, 1), _pod(1, code, FULL)])
        assert failure is not None and failure.failure_class is FailureClass.PERMANENT
        assert failure.reason == "StorageError" and failure.primary is not None and failure.primary.rank == 1
    bare = classify([_pod(0, ExitCode.STORAGE)])  # no message left (termination log not writable)
    assert bare is not None and bare.failure_class is FailureClass.PERMANENT and bare.reason == "StorageError"


def test_decide_fails_at_once_with_the_path_the_error_and_the_fix_and_no_restart():
    action = decide([_pod(0, 1, FULL), _pod(1, 1)], {}, JobStatus(), JobSpec.model_validate(SPEC))
    assert isinstance(action, Fail) and action.reason == "StorageError"
    assert "/mnt/nvme/omnitrain" in action.message and "ENOSPC" in action.message and "free space" in action.message
    assert action.state.total_restarts == 0 and action.state.restarts == 0


def test_reconcile_ends_the_job_failed_with_a_storage_condition_and_stops_the_other_pods():
    launched = reconcile(JOB, parse_spec(SPEC), None, [], "t", generation=1)
    both = [_pod(0, None, phase="Running"), _pod(1, None, phase="Running")]
    running = reconcile(JOB, parse_spec(SPEC), launched.status, both, "t", generation=1)
    d = reconcile(JOB, parse_spec(SPEC), running.status, [both[0], _pod(1, 1, FULL)], "t", generation=1)
    assert d.status.phase == FAILED and d.create_attempt is None and d.delete_pods == ["j-a0-n0"]
    failed = d.status.condition("Failed")
    assert failed is not None and failed.reason == "StorageError" and "/mnt/nvme/omnitrain" in failed.message
    assert "/mnt/nvme/omnitrain" in (d.status.message or "") and not d.status.total_restarts
    assert d.status.last_failure is not None and d.status.last_failure.reason == "StorageError"


def test_no_progress_without_any_checkpoint_says_so_and_never_none():
    crash = classify([_pod(0, 1)])
    policy = ResilienceSpec(max_restarts=5, max_no_progress_restarts=1)
    state = plan_recovery(crash, RecoveryState(), policy, last_checkpoint_step=None).state
    final = plan_recovery(crash, state, policy, last_checkpoint_step=None)
    assert final.kind is ActionKind.FAIL and final.reason == "NoProgress"
    assert "without any checkpoint" in final.message and "None" not in final.message
    later = plan_recovery(crash, state, policy, last_checkpoint_step=40)
    assert later.kind is ActionKind.GANG_RESTART  # a checkpoint appeared: progress
    state = plan_recovery(crash, RecoveryState(), policy, last_checkpoint_step=40).state
    stuck = plan_recovery(crash, state, policy, last_checkpoint_step=40)
    assert "without a newer checkpoint than step 40" in stuck.message
