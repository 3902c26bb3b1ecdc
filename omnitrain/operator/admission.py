"""What Kueue says of an attempt's pod group (its Workload, named as the group: plan.pod_group_name). Pure."""

from __future__ import annotations

ADMISSION_GATE = "kueue.x-k8s.io/admission"  # the scheduling gate Kueue's pod webhook puts on a grouped pod
WORKLOAD_GROUP, WORKLOAD_VERSION, WORKLOAD_PLURAL = "kueue.x-k8s.io", "v1beta2", "workloads"


def workload_conditions(workload: dict) -> dict[str, dict]:
    """A Workload's conditions by type."""
    return {c.get("type", ""): c for c in (workload.get("status") or {}).get("conditions") or []}


def waiting_message(workload: dict | None, name: str) -> str:
    """Why the group waits, in Kueue's words: the first condition that is not True among QuotaReserved and
    Admitted (e.g. "couldn't assign flavors to pod set main: insufficient unused quota for nvidia.com/gpu in flavor
    default-flavor, 2 more needed"), or that its Workload does not exist yet."""
    if workload is None:
        return f"Kueue has not created workload {name} yet"
    conditions = workload_conditions(workload)
    for kind in ("QuotaReserved", "Admitted"):
        c = conditions.get(kind)
        if c is not None and c.get("status") != "True":
            return f"workload {name}: {kind} {c.get('reason') or 'False'}: {c.get('message') or ''}".rstrip(": ")
    if (conditions.get("Admitted") or {}).get("status") == "True":
        return f"workload {name} admitted; its pods are being released"
    return f"workload {name} waits for a ClusterQueue to reserve quota"


__all__ = [
    "ADMISSION_GATE",
    "WORKLOAD_GROUP",
    "WORKLOAD_PLURAL",
    "WORKLOAD_VERSION",
    "waiting_message",
    "workload_conditions",
]
