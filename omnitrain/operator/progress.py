"""Training progress from rank 0's Prometheus endpoint -> the job's status with it. A missing or broken endpoint is
"no news": the trainer may not serve yet, or may be between attempts; it is never an error the operator retries on."""

from __future__ import annotations

import urllib.request

from prometheus_client.parser import text_string_to_metric_families

from omnitrain import contract
from omnitrain.resilience.goodput import with_reserved_capacity
from omnitrain.spec import JobSpec
from omnitrain.status import JobStatus, LastCheckpoint


def parse_progress(text: str) -> dict:
    """The contract metrics present in an exposition text (others ignored): name -> value, and for the badput
    gauge name -> {cause: seconds}."""
    wanted = {
        contract.METRIC_STEP,
        contract.METRIC_TOTAL_STEPS,
        contract.METRIC_LAST_CHECKPOINT_STEP,
        contract.METRIC_GOODPUT,
    }
    found: dict = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name in wanted and sample.name not in found:
                found[sample.name] = sample.value
            elif sample.name == contract.METRIC_BADPUT and "cause" in sample.labels:
                found.setdefault(sample.name, {})[sample.labels["cause"]] = sample.value
    return found


def progress_status(metrics: dict, status: JobStatus, spec: JobSpec, checkpoint_root: str, now: str) -> JobStatus:
    """`status` with what the metrics say is new (equal to `status` when nothing is)."""
    new = status.model_copy(deep=True)
    if contract.METRIC_STEP in metrics:
        new.current_step = int(metrics[contract.METRIC_STEP])
    if contract.METRIC_TOTAL_STEPS in metrics:
        new.total_steps = int(metrics[contract.METRIC_TOTAL_STEPS])
    if contract.METRIC_LAST_CHECKPOINT_STEP in metrics:
        ck = int(metrics[contract.METRIC_LAST_CHECKPOINT_STEP])
        if ck > 0 and ck != (status.last_checkpoint.step if status.last_checkpoint else None):  # 0: none yet
            new.last_checkpoint = LastCheckpoint(step=ck, path=checkpoint_root, time=now)
    if contract.METRIC_GOODPUT in metrics:
        badput = metrics.get(contract.METRIC_BADPUT, {})
        scraped = {
            "ratio": round(metrics[contract.METRIC_GOODPUT], 4),
            "badputSeconds": {k: round(v, 1) for k, v in sorted(badput.items())},
        }
        merged = {**(status.goodput or {}), **scraped}  # keeps what the trainer's final figures added
        new.goodput = with_reserved_capacity(merged, spec.parallelism.nodes, spec.resilience.spare_nodes)
    return new


def scrape(pod_ip: str, port: int, timeout: float = 2.0) -> dict:
    try:
        with urllib.request.urlopen(f"http://{pod_ip}:{port}/metrics", timeout=timeout) as response:
            return parse_progress(response.read().decode("utf-8", "replace"))
    except (OSError, ValueError):
        return {}
