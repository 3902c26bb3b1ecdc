"""What the operator's pods and nodes get from resilience besides the recovery decision (omnitrain.resilience.decide):
the watchdog in front of torchrun and the isolation patch for a node with hardware evidence. Pure; no torch, no kopf.

    from omnitrain.resilience.operator_hook import isolation_patch, watchdog_command
    for node in action.isolate_nodes: patch the Node with isolation_patch(node_object)
"""

from __future__ import annotations

from omnitrain import contract
from omnitrain.resilience.recovery import ISOLATION_KEY


def isolation_patch(node: dict, reason: str = "HardwareFault") -> dict:
    """Merge patch for a Node with hardware evidence: label + NoSchedule taint `omnitrain.dev/isolated`, keeping its
    other taints. Idempotent; a human removes both after repair (docs/resilience.md)."""
    taints = list(((node.get("spec") or {}).get("taints")) or [])
    if not any(t.get("key") == ISOLATION_KEY for t in taints):
        taints.append({"key": ISOLATION_KEY, "value": reason, "effect": "NoSchedule"})
    return {"metadata": {"labels": {ISOLATION_KEY: "true"}}, "spec": {"taints": taints}}


def watchdog_command(train_command: list[str], config_path: str = contract.CONFIG_PATH) -> list[str]:
    """The pod command with the watchdog as the container's main process in front of torchrun."""
    return ["omnitrain", "watchdog", "--config", config_path, "--", *train_command]


__all__ = ["isolation_patch", "watchdog_command"]
