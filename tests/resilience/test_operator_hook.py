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
    assert out.action.exclude_nodes == ("gpu-1",) and out.action.isolate_nodes == ()
    waiting = decide([View("j-a0-n0", "gpu-0", "Running")], {"gpu-0": READY, "gpu-1": None}, {}, SPEC,
                     missing_pods=[View("j-a0-n1", "gpu-1", "Running")], usable_nodes=["gpu-0", "gpu-1"])
    assert waiting.action.kind is ActionKind.WAIT


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
