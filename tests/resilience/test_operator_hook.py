"""The operator's entry points: decide() over PodView-like objects and Node dicts, node isolation, pod command."""

from __future__ import annotations

import subprocess
import sys
from dataclasses import dataclass

from omnitrain.contract import CONFIG_PATH, ExitCode, TerminationMessage
from omnitrain.resilience.operator_hook import decide, isolation_patch, watchdog_command
from omnitrain.resilience.recovery import ISOLATION_KEY, ActionKind
from omnitrain.spec import JobSpec


@dataclass(frozen=True)
class View:   # the attributes of omnitrain.operator.reconcile.PodView
    name: str
    node: str | None
    phase: str
    exit_code: int | None = None
    reason: str | None = None
    message: str | None = None
    deleting: bool = False


READY = {"status": {"conditions": [{"type": "Ready", "status": "True"}]}}
SPEC = JobSpec.model_validate({"parallelism": {"nodes": 2}, "resilience": {"maxRestarts": 2}})


def test_hardware_fault_restarts_without_the_node_and_records_state():
    hw = TerminationMessage(reason="HardwareFault", message="GPU 1: critical XID 79").to_json()
    pods = [View("j-a0-n0", "gpu-0", "Failed", ExitCode.HARDWARE, "Error", hw), View("j-a0-n1", "gpu-1", "Failed", 1)]
    status = {"restarts": 0, "lastCheckpoint": {"step": 200}, "excludedNodes": ["gpu-7"]}
    out = decide(pods, {"gpu-0": READY, "gpu-1": READY}, status, SPEC)
    assert out.action.kind is ActionKind.GANG_RESTART
    assert out.action.isolate_nodes == ("gpu-0",)
    assert out.status_patch["excludedNodes"] == ["gpu-0", "gpu-7"]
    assert out.status_patch["restarts"] == 1 and out.status_patch["checkpointStepAtLastFailure"] == 200
    assert out.status_patch["lastFailureClass"] == "Hardware"


def test_deleted_node_and_vanished_pod_is_node_lost():
    out = decide([View("j-a0-n0", "gpu-0", "Running")], {"gpu-0": READY, "gpu-1": None}, {}, SPEC,
                 missing_pods=[View("j-a0-n1", "gpu-1", "Running")])
    assert out.failure.failure_class.value == "NodeLost"
    assert out.action.kind is ActionKind.GANG_RESTART
    assert out.action.exclude_nodes == () and out.action.isolate_nodes == ()
    waiting = decide([View("j-a0-n0", "gpu-0", "Running")], {"gpu-0": READY, "gpu-1": None}, {}, SPEC,
                     missing_pods=[View("j-a0-n1", "gpu-1", "Running")], usable_nodes=["gpu-0"])
    assert waiting.action.kind is ActionKind.WAIT and waiting.action.reason == "InsufficientNodes"


def test_eviction_is_free_and_running_pods_need_nothing():
    status = {"restarts": 2, "totalRestarts": 2, "lastCheckpoint": {"step": 10}, "checkpointStepAtLastFailure": 10}
    out = decide([View("p", "gpu-0", "Failed", None, "Evicted")], {"gpu-0": READY}, status, SPEC)
    assert out.action.kind is ActionKind.GANG_RESTART
    assert out.status_patch["restarts"] == 2 and out.status_patch["totalRestarts"] == 3
    assert decide([View("p", "gpu-0", "Running")], {"gpu-0": READY}, status, SPEC).action.kind is ActionKind.WAIT
    # the budget is spent for a counted failure
    assert decide([View("p", "gpu-0", "Failed", 1)], {"gpu-0": READY}, status, SPEC).action.kind is ActionKind.FAIL


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
    code = ("import sys, omnitrain.resilience.operator_hook, omnitrain.resilience.goodput; "
            "assert 'torch' not in sys.modules and 'kopf' not in sys.modules")
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)


@dataclass(frozen=True)
class Failure:   # the attributes of omnitrain.operator.reconcile.PodFailure
    pod: str
    node: str | None
    exit_code: int | None
    reason: str
    message: str


def test_drop_in_decide_recovery_keeps_the_operators_reasons():
    from omnitrain.resilience.operator_hook import decide_recovery
    spec = JobSpec.model_validate({"resilience": {"maxRestarts": 2}})
    config = TerminationMessage(reason="ConfigError", message="spec.data.path has no shards").to_json()
    permanent = decide_recovery(Failure("p", "gpu-0", ExitCode.CONFIG, "Error", config), 0, spec)
    assert (permanent.restart, permanent.reason) == (False, "PermanentFailure")
    assert "spec.data.path has no shards" in permanent.message
    hang = decide_recovery(Failure("p", "gpu-0", ExitCode.HANG, "HangDetected", "no progress"), 0, spec,
                           status={"lastCheckpoint": {"step": 40}})
    assert (hang.restart, hang.reason, hang.count_restart, hang.failure_class) == (True, "GangRestart", True, "Hang")
    assert hang.status_patch["restarts"] == 1 and hang.status_patch["checkpointStepAtLastFailure"] == 40
    spent = decide_recovery(Failure("p", "gpu-0", 1, "Error", ""), 2, spec)
    assert (spent.restart, spent.reason) == (False, "RestartLimitExceeded")
    hw = decide_recovery(Failure("p", "gpu-3", ExitCode.HARDWARE, "HardwareFault", "xid 79"), 0, spec)
    assert hw.exclude_nodes == ("gpu-3",) and hw.isolate_nodes == ("gpu-3",)
    off = JobSpec.model_validate({"resilience": {"isolateNodes": False}})
    assert decide_recovery(Failure("p", "gpu-3", 43, "x", ""), 0, off).exclude_nodes == ()
    evicted = decide_recovery(Failure("p", "gpu-1", None, "Evicted", ""), 2, spec)
    assert evicted.restart and not evicted.count_restart          # preemption does not use the budget
    lost = decide_recovery(Failure("p", "gpu-1", None, "PodLost", "gone"), 0, spec, nodes={"gpu-1": None})
    assert lost.restart and lost.failure_class == "NodeLost"
    no_progress = decide_recovery(Failure("p", "gpu-0", 1, "Error", ""), 1, spec,
                                  status={"lastCheckpoint": {"step": 40}, "checkpointStepAtLastFailure": 40,
                                          "noProgressRestarts": 1})
    assert (no_progress.restart, no_progress.reason) == (False, "NoProgress")
    # without the job's status there is no checkpoint history: the no-progress rule cannot be judged
    strict = JobSpec.model_validate({"resilience": {"maxRestarts": 5, "maxNoProgressRestarts": 1}})
    assert decide_recovery(Failure("p", "gpu-0", 1, "Error", ""), 1, strict).restart
