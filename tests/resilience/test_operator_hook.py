"""The operator's entry points into resilience: the one recovery decision (decide over typed pod and node
observations, the job's status and spec), node isolation, the pod command."""

from __future__ import annotations

import subprocess
import sys

from omnitrain.contract import CONFIG_PATH, ExitCode, TerminationMessage
from omnitrain.resilience.classify import NodeObservation, PodObservation, observe_pod
from omnitrain.resilience.decide import decide, last_failure
from omnitrain.resilience.operator_hook import isolation_patch, watchdog_command
from omnitrain.resilience.recovery import ISOLATION_KEY, ActionKind, Fail, GangRestart, Wait
from omnitrain.spec import JobSpec
from omnitrain.status import JobStatus, LastCheckpoint


def pod(name, node, phase, exit_code=None, reason=None, message=None, rank=-1, **kw):
    return PodObservation(
        name=name,
        node=node,
        phase=phase,
        exit_code=exit_code,
        container_reason=reason,
        termination_message=message,
        rank=rank,
        **kw,
    )


def ready(*names):
    return {n: NodeObservation(n) for n in names}


SPEC = JobSpec.model_validate({"parallelism": {"nodes": 2}, "resilience": {"maxRestarts": 2}})


def test_hardware_fault_restarts_without_the_node_and_records_state():
    hw = TerminationMessage(reason="HardwareFault", message="GPU 1: critical XID 79").to_json()
    pods = [pod("j-a0-n0", "gpu-0", "Failed", ExitCode.HARDWARE, "Error", hw), pod("j-a0-n1", "gpu-1", "Failed", 1)]
    status = JobStatus(restarts=0, last_checkpoint=LastCheckpoint(step=200), excluded_nodes=["gpu-7"])
    action = decide(pods, ready("gpu-0", "gpu-1"), status, SPEC)
    assert isinstance(action, GangRestart) and action.kind is ActionKind.GANG_RESTART
    assert action.reason == "GangRestart" and action.message.startswith("[Hardware] ")
    assert action.isolate_nodes == ("gpu-0",)
    stored = action.state.apply(status)
    assert stored.excluded_nodes == ["gpu-0", "gpu-7"]
    assert stored.restarts == 1 and stored.checkpoint_step_at_last_failure == 200
    assert action.failure.failure_class.value == "Hardware"
    seen = last_failure(action.failure, "t")
    assert (seen.pod, seen.node, seen.exit_code, seen.reason) == ("j-a0-n0", "gpu-0", 43, "HardwareFault")
    assert seen.message == "GPU 1: critical XID 79"


def test_deleted_node_and_vanished_pod_is_node_lost():
    nodes = {"gpu-0": NodeObservation("gpu-0"), "gpu-1": NodeObservation("gpu-1", ready=False, exists=False)}
    running = [pod("j-a0-n0", "gpu-0", "Running"), pod("j-a0-n1", "gpu-1", "Running")]
    action = decide(running, nodes, JobStatus(), SPEC)
    assert action.failure.failure_class.value == "NodeLost"
    assert isinstance(action, GangRestart)
    assert action.exclude_nodes == () and action.isolate_nodes == ()
    seen = last_failure(action.failure, "t")
    assert (seen.pod, seen.node, seen.reason, seen.exit_code) == ("j-a0-n1", "gpu-1", "NodeLost", None)
    assert "deleted" in seen.message
    waiting = decide(running, nodes, JobStatus(), SPEC, usable_nodes=["gpu-0"])
    assert isinstance(waiting, Wait) and waiting.kind is ActionKind.WAIT and waiting.reason == "InsufficientNodes"
    # a Wait does not advance the recovery state: the same picture gives the same answer next time
    assert waiting.state.apply(JobStatus()) == JobStatus(
        restarts=0, total_restarts=0, preemptions=0, no_progress_restarts=0
    )


def test_a_missing_pod_is_pod_lost_and_a_real_exit_explains_more():
    running = [pod("j-a0-n0", "gpu-0", "Running", rank=0)]
    action = decide(running, ready("gpu-0"), JobStatus(), SPEC, missing=["j-a0-n1"])
    assert isinstance(action, GangRestart)
    seen = last_failure(action.failure, "t")
    assert (seen.pod, seen.reason) == ("j-a0-n1", "PodLost") and "disappeared" in seen.message
    crashed = [pod("j-a0-n0", "gpu-0", "Failed", 1, "Error", rank=0)]
    seen = last_failure(decide(crashed, ready("gpu-0"), JobStatus(), SPEC, missing=["j-a0-n1"]).failure, "t")
    assert (seen.pod, seen.exit_code, seen.reason) == ("j-a0-n0", 1, "Error")


def test_eviction_is_free_and_running_pods_need_nothing():
    status = JobStatus(
        restarts=2, total_restarts=2, last_checkpoint=LastCheckpoint(step=10), checkpoint_step_at_last_failure=10
    )
    evicted = pod("p", "gpu-0", "Failed", pod_reason="Evicted")
    action = decide([evicted], ready("gpu-0"), status, SPEC)
    assert isinstance(action, GangRestart) and not action.counted
    assert action.state.restarts == 2 and action.state.total_restarts == 2 and action.state.preemptions == 1
    assert decide([pod("p", "gpu-0", "Running")], ready("gpu-0"), status, SPEC) is None
    # the budget is spent for a counted failure
    spent = decide([pod("p", "gpu-0", "Failed", 1)], ready("gpu-0"), status, SPEC)
    assert isinstance(spent, Fail) and spent.kind is ActionKind.FAIL and spent.reason == "RestartLimitExceeded"


def test_the_operators_reasons_and_the_no_progress_counter():
    spec = JobSpec.model_validate({"resilience": {"maxRestarts": 2}})
    config = TerminationMessage(reason="ConfigError", message="spec.data.path has no shards").to_json()
    permanent = decide([pod("p", "gpu-0", "Failed", ExitCode.CONFIG, "Error", config)], {}, JobStatus(), spec)
    assert isinstance(permanent, Fail) and permanent.reason == "PermanentFailure"
    assert "spec.data.path has no shards" in permanent.message
    assert last_failure(permanent.failure, "t").reason == "ConfigError"
    hang_msg = TerminationMessage(reason="HangDetected", message="no progress").to_json()
    hang = decide(
        [pod("p", "gpu-0", "Failed", ExitCode.HANG, "Error", hang_msg)],
        {},
        JobStatus(last_checkpoint=LastCheckpoint(step=40)),
        spec,
    )
    assert isinstance(hang, GangRestart) and hang.reason == "GangRestart" and hang.counted
    assert hang.failure.failure_class.value == "Hang"
    assert hang.state.restarts == 1 and hang.state.checkpoint_step_at_last_failure == 40
    hw = decide([pod("p", "gpu-3", "Failed", ExitCode.HARDWARE)], {}, JobStatus(), spec)
    assert hw.exclude_nodes == ("gpu-3",) and hw.isolate_nodes == ("gpu-3",)
    off = JobSpec.model_validate({"resilience": {"isolateNodes": False}})
    assert decide([pod("p", "gpu-3", "Failed", 43)], {}, JobStatus(), off).exclude_nodes == ()
    stuck = JobStatus(
        restarts=1, last_checkpoint=LastCheckpoint(step=40), checkpoint_step_at_last_failure=40, no_progress_restarts=1
    )
    no_progress = decide([pod("p", "gpu-0", "Failed", 1)], {}, stuck, spec)
    assert isinstance(no_progress, Fail) and no_progress.reason == "NoProgress"
    # a Fail restarts nothing: the restart counters stay, the no-progress record is kept
    assert no_progress.state.restarts == 1 and no_progress.state.no_progress_restarts == 2


def test_observe_pod_parses_the_termination_message_once_and_reads_the_labels():
    msg = TerminationMessage(reason="HangDetected", message="no step for 60 s", step=7).to_json()
    obj = {
        "metadata": {"name": "j-a1-n0", "labels": {"a": "1", "r": "0"}, "deletionTimestamp": "2026-01-01T00:00:00Z"},
        "spec": {"nodeName": "gpu-0"},
        "status": {
            "phase": "Failed",
            "podIP": "10.0.0.1",
            "containerStatuses": [
                {"name": "trainer", "state": {"terminated": {"exitCode": 42, "reason": "Error", "message": msg}}}
            ],
        },
    }
    seen = observe_pod(obj, "trainer", attempt_label="a", rank_label="r")
    assert (seen.attempt, seen.rank, seen.pod_ip, seen.deleted) == (1, 0, "10.0.0.1", True)
    assert seen.termination == TerminationMessage(reason="HangDetected", message="no step for 60 s", step=7)


def test_isolation_patch_is_idempotent_and_keeps_other_taints():
    node = {"metadata": {"name": "gpu-0"}, "spec": {"taints": [{"key": "nvidia.com/gpu", "effect": "NoSchedule"}]}}
    patch = isolation_patch(node)
    assert patch["metadata"]["labels"] == {ISOLATION_KEY: "true"}
    assert [t["key"] for t in patch["spec"]["taints"]] == ["nvidia.com/gpu", ISOLATION_KEY]
    node["spec"] = patch["spec"]
    assert isolation_patch(node)["spec"]["taints"] == patch["spec"]["taints"]


def test_watchdog_command_wraps_torchrun():
    cmd = watchdog_command(["torchrun", "--nnodes=$(PET_NNODES)", "-m", "omnitrain", "train"])
    assert cmd[:5] == ["omnitrain", "watchdog", "--config", CONFIG_PATH, "--"] and cmd[5] == "torchrun"


def test_operator_side_imports_no_torch():
    code = (
        "import sys, omnitrain.resilience.decide, omnitrain.resilience.operator_hook, "
        "omnitrain.resilience.goodput; assert 'torch' not in sys.modules and 'kopf' not in sys.modules"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)
