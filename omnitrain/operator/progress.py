"""Training progress from rank 0's Prometheus endpoint -> a status patch. A missing or broken endpoint is "no news":
the trainer may not serve yet, or may be between attempts; it is never an error the operator retries on."""

from __future__ import annotations

import urllib.request

from prometheus_client.parser import text_string_to_metric_families

from omnitrain import contract


def parse_progress(text: str) -> dict[str, float]:
    """The contract metrics present in an exposition text (others ignored)."""
    wanted = {contract.METRIC_STEP, contract.METRIC_TOTAL_STEPS, contract.METRIC_LAST_CHECKPOINT_STEP}
    found: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name in wanted and sample.name not in found:
                found[sample.name] = sample.value
    return found


def progress_patch(metrics: dict[str, float], status: dict, checkpoint_root: str, now: str) -> dict:
    """The status fields that change (empty when nothing is new)."""
    patch: dict = {}
    if contract.METRIC_STEP in metrics:
        step = int(metrics[contract.METRIC_STEP])
        if step != status.get("currentStep"):
            patch["currentStep"] = step
    if contract.METRIC_TOTAL_STEPS in metrics:
        total = int(metrics[contract.METRIC_TOTAL_STEPS])
        if total != status.get("totalSteps"):
            patch["totalSteps"] = total
    if contract.METRIC_LAST_CHECKPOINT_STEP in metrics:
        ck = int(metrics[contract.METRIC_LAST_CHECKPOINT_STEP])
        if ck >= 0 and ck != (status.get("lastCheckpoint") or {}).get("step"):
            patch["lastCheckpoint"] = {"step": ck, "path": checkpoint_root, "time": now}
    return patch


def scrape(pod_ip: str, port: int, timeout: float = 2.0) -> dict[str, float]:
    try:
        with urllib.request.urlopen(f"http://{pod_ip}:{port}/metrics", timeout=timeout) as response:
            return parse_progress(response.read().decode("utf-8", "replace"))
    except (OSError, ValueError):
        return {}
