"""`omnitrain status`: one job at a glance, rendered as text from the dicts the API server returns.

`render_status` is a pure function of (job, pods, events, now), tested without a cluster; the fetch lives in
status_fetch.py. The job's status is read through its model (omnitrain.status.JobStatus); a field the operator has
not written yet shows as "-", never as an error.
"""

from __future__ import annotations

from datetime import UTC, datetime

from omnitrain.status import JobStatus

BAR_WIDTH = 30
MAX_EVENTS = 10


def parse_time(value) -> datetime | None:
    """RFC 3339 from the API server (or a datetime from the client library) -> aware datetime."""
    if value is None or value == "":
        return None
    if isinstance(value, datetime):
        return value if value.tzinfo else value.replace(tzinfo=UTC)
    try:
        return datetime.fromisoformat(str(value).replace("Z", "+00:00"))
    except ValueError:
        return None


def format_duration(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    seconds = int(max(0, round(seconds)))
    days, rest = divmod(seconds, 86400)
    hours, rest = divmod(rest, 3600)
    minutes, secs = divmod(rest, 60)
    if days:
        return f"{days}d{hours}h"
    if hours:
        return f"{hours}h{minutes:02d}m"
    if minutes:
        return f"{minutes}m{secs:02d}s"
    return f"{secs}s"


def progress_bar(current: int, total: int, width: int = BAR_WIDTH) -> str:
    fraction = min(1.0, max(0.0, current / total)) if total > 0 else 0.0
    filled = int(round(fraction * width))
    return f"[{'#' * filled}{'-' * (width - filled)}] {100 * fraction:5.1f}%"


def estimate_eta(
    current: int, total: int, start: datetime | None, now: datetime, resumed_from: int = 0
) -> float | None:
    """Seconds left at the average rate since the job started (restarts included, so it errs on the late side)."""
    if start is None or current <= resumed_from or total <= current:
        return 0.0 if total and current >= total else None
    elapsed = (now - start).total_seconds()
    if elapsed <= 0:
        return None
    rate = (current - resumed_from) / elapsed
    return (total - current) / rate


def _goodput_text(goodput: dict | None) -> str:
    """{ratio|value, badputSeconds{cause: s}} (JobStatus reads a bare number as the ratio)."""
    if goodput is None:
        return "-"
    ratio = goodput.get("ratio", goodput.get("value", goodput.get("goodput")))
    text = f"{100 * float(ratio):.1f}%" if ratio is not None else "-"
    badput = goodput.get("badputSeconds") or goodput.get("badput") or {}
    if isinstance(badput, dict) and badput:
        parts = ", ".join(
            f"{cause} {format_duration(float(s))}"
            for cause, s in sorted(badput.items(), key=lambda kv: -float(kv[1]))
            if float(s) > 0
        )
        if parts:
            text += f"  (badput: {parts})"
    return text


def _container_state(pod: dict) -> str:
    statuses = (pod.get("status") or {}).get("containerStatuses") or []
    if not statuses:
        return "-"
    state = statuses[0].get("state") or {}
    if "running" in state:
        return "running"
    if "waiting" in state:
        return f"waiting: {(state['waiting'] or {}).get('reason', '')}".rstrip(": ")
    if "terminated" in state:
        term = state["terminated"] or {}
        return f"exited {term.get('exitCode', '?')} {term.get('reason', '')}".rstrip()
    return "-"


def _age(timestamp, now: datetime) -> str:
    when = parse_time(timestamp)
    return format_duration((now - when).total_seconds()) if when else "-"


def _table(rows: list[list[str]]) -> list[str]:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return ["  " + "  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip() for row in rows]


def _event_time(event: dict):
    return (
        parse_time(event.get("lastTimestamp"))
        or parse_time(event.get("eventTime"))
        or parse_time((event.get("metadata") or {}).get("creationTimestamp"))
    )


def _live_text(live: dict[str, float]) -> str:
    """Figures scraped from rank 0's endpoint (metric name -> value)."""
    from omnitrain import contract
    from omnitrain.observability import trainer_metrics as tm

    parts = []
    if tm.METRIC_TOKENS_PER_SECOND in live:
        parts.append(f"{live[tm.METRIC_TOKENS_PER_SECOND]:,.0f} tokens/s")
    if tm.METRIC_MFU in live:
        parts.append(f"MFU {100 * live[tm.METRIC_MFU]:.1f}%")
    count, total = live.get(tm.METRIC_STEP_SECONDS + "_count"), live.get(tm.METRIC_STEP_SECONDS + "_sum")
    if count and total is not None:
        parts.append(f"step {total / count:.2f}s (mean)")
    if contract.METRIC_LOSS in live:
        parts.append(f"loss {live[contract.METRIC_LOSS]:.4g}")
    return "   ".join(parts) if parts else "-"


def _layout_text(spec: dict, status: JobStatus) -> str:
    """An elastic job's node count: shrunk (and to what), or back at full size after layout changes; "" for a job
    that never changed its layout."""
    nodes = (spec.get("parallelism") or {}).get("nodes")
    changes = status.layout_changes or 0
    if status.active_nodes is None and not changes:
        return ""
    resized = status.condition("Resized")
    text = f"{status.active_nodes} of {nodes} nodes (shrunk)" if status.active_nodes is not None else f"{nodes} nodes"
    text += f", {changes} layout change(s)"
    if status.grow_after_checkpoint is not None:
        text += f"; grows after a checkpoint newer than step {status.grow_after_checkpoint}"
    if resized is not None and resized.message:
        text += f"; last: {resized.message}"
    return text


def render_status(
    job: dict, pods: list[dict], events: list[dict], now: datetime | None = None, live: dict[str, float] | None = None
) -> str:
    """The text of `omnitrain status` for one OmniTrainingJob object and its pods and events; `live` holds figures
    scraped from rank 0's metrics endpoint when it could be reached."""
    now = now or datetime.now(UTC)
    meta, spec = job.get("metadata") or {}, job.get("spec") or {}
    status = JobStatus.from_wire(job.get("status"))
    name, namespace = meta.get("name", "?"), meta.get("namespace", "default")
    lines = [f"OmniTrainingJob {namespace}/{name}"]

    phase = status.phase or "Pending"
    start, end = parse_time(status.start_time), parse_time(status.completion_time)
    runtime = ((end or now) - start).total_seconds() if start else None
    lines.append(
        f"  Phase:        {phase}"
        + (
            f"   (running for {format_duration(runtime)})"
            if runtime and not end
            else f"   (took {format_duration(runtime)})"
            if runtime
            else ""
        )
    )

    max_restarts = (spec.get("resilience") or {}).get("maxRestarts")
    restarts = status.restarts or 0
    total_restarts = status.total_restarts
    lines.append(
        f"  Attempt:      {status.attempt or 0}   restarts {restarts}"
        + (f"/{max_restarts}" if max_restarts is not None else "")
        + (f" (all gang restarts incl. resumes: {total_restarts})" if total_restarts not in (None, restarts) else "")
        + (f"   preempted {status.preemptions}x (no restart spent)" if status.preemptions else "")
    )
    if status.message:
        lines.append(f"  Message:      {status.message}")

    total = status.total_steps or (spec.get("training") or {}).get("steps") or 0
    current = status.current_step
    if current is None:
        lines.append(f"  Progress:     - / {total or '-'}")
    else:
        eta = estimate_eta(int(current), int(total), start, now) if not end else None
        eta_text = f"   ETA {format_duration(eta)}" if eta else ""
        lines.append(f"  Progress:     {progress_bar(int(current), int(total))}  step {current}/{total}{eta_text}")

    checkpoint = status.last_checkpoint
    if checkpoint is not None:
        lines.append(
            f"  Checkpoint:   step {checkpoint.step if checkpoint.step is not None else '-'}  "
            f"{checkpoint.path or ''}  ({_age(checkpoint.time, now)} ago)"
        )
    else:
        lines.append("  Checkpoint:   none yet")
    lines.append(f"  Goodput:      {_goodput_text(status.goodput)}")
    excluded = status.excluded_nodes
    lines.append(f"  Excluded:     {', '.join(excluded) if excluded else 'none'}")
    layout = _layout_text(spec, status)
    if layout:
        lines.append(f"  Layout:       {layout}")
    if live:
        lines.append(f"  Live:         {_live_text(live)}")
    failure = status.last_failure
    if failure is not None:
        exit_code = f" exited {failure.exit_code}" if failure.exit_code is not None else ""
        lines.append(
            f"  Last failure: {failure.reason or '?'}: pod {failure.pod or '?'} on "
            f"{failure.node or '?'}{exit_code} ({_age(failure.time, now)} ago)"
            + (f" - {failure.message}" if failure.message else "")
        )
    promotion = status.promotion
    stages = [
        f"{stage} {info.phase or '?'}" + (f" ({info.name})" if info.name else "")
        for stage, info in (
            (("training", promotion.training), ("distill", promotion.distill), ("inference", promotion.inference))
            if promotion
            else ()
        )
        if info is not None
    ]
    if stages:
        lines.append(f"  Promotion:    {', '.join(stages)}")

    if status.conditions:
        lines.append("Conditions:")
        rows = [["TYPE", "STATUS", "REASON", "AGE", "MESSAGE"]]
        for c in status.conditions:
            rows.append([c.type, c.status, c.reason or "", _age(c.last_transition_time, now), c.message or ""])
        lines += _table(rows)
    lines.append("Pods:" if pods else "Pods: none")
    if pods:
        rows = [["NAME", "NODE", "PHASE", "CONTAINER", "RESTARTS", "AGE"]]
        for pod in sorted(pods, key=lambda p: (p.get("metadata") or {}).get("name", "")):
            pmeta, pstatus = pod.get("metadata") or {}, pod.get("status") or {}
            container_restarts = sum(cs.get("restartCount", 0) for cs in pstatus.get("containerStatuses") or [])
            rows.append(
                [
                    pmeta.get("name", ""),
                    (pod.get("spec") or {}).get("nodeName") or "<unscheduled>",
                    pstatus.get("phase", ""),
                    _container_state(pod),
                    str(container_restarts),
                    _age(pmeta.get("creationTimestamp"), now),
                ]
            )
        lines += _table(rows)

    oldest = datetime.min.replace(tzinfo=UTC)
    recent = sorted(events, key=lambda e: _event_time(e) or oldest)[-MAX_EVENTS:]
    lines.append("Events:" if recent else "Events: none")
    if recent:
        rows = [["AGE", "TYPE", "REASON", "OBJECT", "MESSAGE"]]
        for e in recent:
            involved = e.get("involvedObject") or {}
            count = e.get("count") or 1
            rows.append(
                [
                    _age(_event_time(e), now),
                    e.get("type", ""),
                    e.get("reason", ""),
                    f"{(involved.get('kind') or '').lower()}/{involved.get('name', '')}",
                    (e.get("message") or "") + (f" (x{count})" if count > 1 else ""),
                ]
            )
        lines += _table(rows)
    return "\n".join(lines) + "\n"


__all__ = ["estimate_eta", "format_duration", "parse_time", "progress_bar", "render_status"]
