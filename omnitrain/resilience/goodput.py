"""Goodput of a job from its timeline of events (pure), with ml-goodput-measurement's definitions:

  goodput = productive step time / job wall time
  badput  = the rest, by cause:
    startup             attempt created (or its pods Running again, after a restart) -> its first step begins,
                        less the restore time
    data_loading        the part of steps spent waiting for input
    data_encoding       of that, the frozen VAE and text encoder (online encoding)
    checkpoint_save     time the training loop was blocked by saves
    checkpoint_restore  loading the checkpoint a restarted attempt resumes from
    peer_restore        the same, when a rank read its shards from a peer node's copy (checkpoint.peerReplicas)
    wasted_progress     steps redone because the next attempt resumed from an older checkpoint, and the work in
                        flight between the last completed step and the failure
    recovery            infrastructure recovery: failure -> detection -> teardown -> pods Running again (in-place
                        restarts: failure -> the next generation announced)
    restart_barrier     in-place restarts: the generation announced -> its first step begins, less the restore
                        (workers stopped and started again in pods that stay, the rendezvous of the whole gang);
                        what `startup` is for a recreated attempt
    spare_promotion     the restart barrier of a generation in which a hot spare became a rank
    other               whatever the events do not explain (wall - everything above)

Events are plain data; the operator builds them from pod/job transitions and the metrics log, bench/recovery.py
from what it injects and observes. Times are wall-clock seconds; a STEP event is stamped at the step's end and
carries its duration (excluding checkpoint blocking, which CHECKPOINT_SAVE carries).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from enum import Enum

BADPUT_CAUSES = (
    "startup",
    "data_loading",
    "data_encoding",
    "checkpoint_save",
    "checkpoint_restore",
    "wasted_progress",
    "recovery",
    "restart_barrier",
    "spare_promotion",
    "peer_restore",
    "other",
)
# The metrics log record node rank 0's watchdog writes for an in-place generation, stamped at its announcement.
GENERATION_RECORD = "generation"


class EventKind(str, Enum):
    ATTEMPT_START = "attempt_start"  # the attempt's pods were created (attempt 0: the job started)
    PODS_RUNNING = "pods_running"  # every pod of the attempt is Running
    GENERATION_ANNOUNCED = "generation_announced"  # in-place restart: the operator announced this attempt's generation
    RESTORE = "restore"  # stamped at its end; seconds = duration, step = the step resumed from
    STEP = "step"  # stamped at its end; seconds = duration, data_seconds = input wait in it
    CHECKPOINT_SAVE = "checkpoint_save"  # seconds = time the loop was blocked
    FAILURE = "failure"  # the fault happened (injected, or the last sign of life)
    DETECTION = "detection"  # the fault was noticed (watchdog exit, pod Failed, node NotReady)
    JOB_END = "job_end"


@dataclass(frozen=True)
class Event:
    time: float
    kind: EventKind
    attempt: int = 0
    step: int | None = None
    seconds: float = 0.0
    data_seconds: float = 0.0
    encode_seconds: float = 0.0  # STEP: the part of data_seconds in the encoders
    source: str = ""  # RESTORE: the slowest tier a rank read (local, peer, persistent); GENERATION_ANNOUNCED: "spare"


@dataclass(frozen=True)
class RecoveryTiming:
    """One failure and what it took to get back to training."""

    attempt: int  # the attempt that failed
    detection_seconds: float | None  # failure -> detection
    relaunch_seconds: float | None  # detection -> the next attempt's pods Running
    first_step_seconds: float | None  # pods Running -> the next attempt's first completed step


@dataclass
class GoodputReport:
    wall_seconds: float
    productive_seconds: float
    badput_seconds: dict[str, float]
    recoveries: list[RecoveryTiming] = field(default_factory=list)

    @property
    def goodput(self) -> float:
        return self.productive_seconds / self.wall_seconds if self.wall_seconds > 0 else 0.0

    def to_status(self) -> dict:
        """The shape the operator puts in status.goodput (camelCase)."""
        return {
            "ratio": round(self.goodput, 4),
            "wallSeconds": round(self.wall_seconds, 1),
            "productiveSeconds": round(self.productive_seconds, 1),
            "badputSeconds": {k: round(v, 1) for k, v in self.badput_seconds.items()},
        }


def with_reserved_capacity(goodput: dict, nodes: int, spares: int) -> dict:
    """status.goodput (GoodputReport.to_status's shape) with the hot spares counted as reserved capacity, never as
    productive: `spareNodeSeconds` = wall x spares, and `reservedRatio` = productive node time / node time held =
    ratio x nodes / (nodes + spares), which is `ratio` itself without spares. The spares are taken as held for the
    job's whole wall time: they start with the gang and a promoted one is replaced in the background."""
    ratio, wall = goodput.get("ratio"), goodput.get("wallSeconds")
    if not isinstance(ratio, (int, float)) or nodes <= 0:
        return goodput
    out = {**goodput, "reservedRatio": round(ratio * nodes / (nodes + max(0, spares)), 4)}
    if isinstance(wall, (int, float)):
        out["spareNodeSeconds"] = round(wall * max(0, spares), 1)
    return out


def _first(events: list[Event], kind: EventKind) -> Event | None:
    return next((e for e in events if e.kind is kind), None)


def compute_goodput(events: list[Event]) -> GoodputReport:
    if not events:
        return GoodputReport(0.0, 0.0, {c: 0.0 for c in BADPUT_CAUSES})
    events = sorted(events, key=lambda e: e.time)
    attempts = sorted({e.attempt for e in events})
    by_attempt = {a: [e for e in events if e.attempt == a] for a in attempts}
    t0 = min(e.time for e in events)
    end = _first(events, EventKind.JOB_END)
    t_end = end.time if end is not None else max(e.time for e in events)
    badput = {c: 0.0 for c in BADPUT_CAUSES}
    productive = 0.0

    def resumed_from(a: int) -> int:
        restore = _first(by_attempt[a], EventKind.RESTORE)
        if restore is not None and restore.step is not None:
            return restore.step
        first = _first(by_attempt[a], EventKind.STEP)
        return (first.step - 1) if first is not None and first.step is not None else 0

    resumes = {a: resumed_from(a) for a in attempts}
    for a in attempts:
        later = [resumes[b] for b in attempts if b > a]
        redo_bound = min(later) if later else None
        for e in by_attempt[a]:
            if e.kind is EventKind.STEP:
                data = min(max(e.data_seconds, 0.0), e.seconds)
                encode = min(max(e.encode_seconds, 0.0), data)
                if redo_bound is not None and e.step is not None and e.step > redo_bound:
                    badput["wasted_progress"] += e.seconds
                else:
                    productive += e.seconds - data
                    badput["data_loading"] += data - encode
                    badput["data_encoding"] += encode
            elif e.kind is EventKind.CHECKPOINT_SAVE:
                badput["checkpoint_save"] += e.seconds
            elif e.kind is EventKind.RESTORE:
                badput["peer_restore" if e.source == "peer" else "checkpoint_restore"] += e.seconds

    def began(a: int, previous_failed: bool) -> float:
        """Where an attempt's own time starts: after a restart, its generation announced (in place) or its pods
        Running (recreated); else its creation."""
        evs = by_attempt[a]
        announced = _first(evs, EventKind.GENERATION_ANNOUNCED)
        running = _first(evs, EventKind.PODS_RUNNING)
        start = _first(evs, EventKind.ATTEMPT_START)
        if previous_failed and announced is not None:
            return announced.time
        if previous_failed and running is not None:
            return running.time
        return start.time if start is not None else evs[0].time

    recoveries: list[RecoveryTiming] = []
    for i, a in enumerate(attempts):
        evs = by_attempt[a]
        steps = [e for e in evs if e.kind is EventKind.STEP]
        restore = sum(e.seconds for e in evs if e.kind is EventKind.RESTORE)
        start = began(a, i > 0)
        if steps:
            first_step_begins = steps[0].time - steps[0].seconds
            announced = _first(evs, EventKind.GENERATION_ANNOUNCED) if i > 0 else None
            cause = "startup" if announced is None else "restart_barrier"
            if announced is not None and announced.source == "spare":
                cause = "spare_promotion"
            badput[cause] += max(0.0, first_step_begins - start - restore)
        if i + 1 >= len(attempts):
            continue
        nxt = attempts[i + 1]
        last_step_end = steps[-1].time if steps else start
        failure = _first(evs, EventKind.FAILURE)
        detection = _first(evs, EventKind.DETECTION)
        t_fail = failure.time if failure is not None else (detection.time if detection is not None else last_step_end)
        badput["wasted_progress"] += max(0.0, t_fail - last_step_end)  # the step in flight when it failed
        t_back = began(nxt, True)
        badput["recovery"] += max(0.0, t_back - t_fail)
        next_steps = [e for e in by_attempt[nxt] if e.kind is EventKind.STEP]
        recoveries.append(
            RecoveryTiming(
                attempt=a,
                detection_seconds=None if detection is None else max(0.0, detection.time - t_fail),
                relaunch_seconds=None if detection is None else max(0.0, t_back - detection.time),
                first_step_seconds=None if not next_steps else max(0.0, next_steps[0].time - t_back),
            )
        )

    wall = max(0.0, t_end - t0)
    badput["other"] = max(0.0, wall - productive - sum(v for k, v in badput.items() if k != "other"))
    return GoodputReport(wall_seconds=wall, productive_seconds=productive, badput_seconds=badput, recoveries=recoveries)


def events_from_metrics_log(
    records: list[dict], operator_events: Sequence[Event] = (), job_started: float | None = None
) -> list[Event]:
    """Events from the job's metrics log (omnitrain.metrics_log records: start, step, checkpoint,
    restore, hang, end) plus what only the operator saw (attempt creation, pods Running, failure detection).

    Without an operator ATTEMPT_START for an attempt, its `start` record stands in, moved back to where the restore
    the checkpointer reported before it began. A failed attempt's last sign of life is its last record: the log
    cannot see the crash itself, only a hang the watchdog reported (DETECTION). `job_started` (the job's creation):
    the first attempt starts there, so scheduling and start-up count as badput."""
    events = list(operator_events)
    if job_started is not None:
        events.append(Event(job_started, EventKind.ATTEMPT_START, 0))
    started = {e.attempt for e in events if e.kind is EventKind.ATTEMPT_START}
    restore_begins: dict[int, float] = {}
    for r in records:
        if r.get("kind") == "restore":
            attempt, t = int(r.get("attempt", 0)), float(r.get("time", 0.0))
            begin = t - float(r.get("seconds") or 0.0)
            restore_begins[attempt] = min(restore_begins.get(attempt, begin), begin)
    for r in records:
        kind, attempt, t = r.get("kind"), int(r.get("attempt", 0)), float(r.get("time", 0.0))
        step = r.get("step")
        if kind == "start" and attempt not in started:
            events.append(Event(min(t, restore_begins.get(attempt, t)), EventKind.ATTEMPT_START, attempt, step=step))
        elif kind == "step":
            events.append(
                Event(
                    t,
                    EventKind.STEP,
                    attempt,
                    step=step,
                    seconds=float(r.get("step_seconds") or 0.0),
                    data_seconds=float(r.get("data_seconds") or 0.0),
                    encode_seconds=float(r.get("encode_seconds") or 0.0),
                )
            )
        elif kind == "checkpoint" and r.get("blocking_seconds") is not None:
            events.append(Event(t, EventKind.CHECKPOINT_SAVE, attempt, step=step, seconds=float(r["blocking_seconds"])))
        elif kind == "restore":
            seconds, source = float(r.get("seconds") or 0.0), str(r.get("source") or "")
            events.append(Event(t, EventKind.RESTORE, attempt, step=step, seconds=seconds, source=source))
        elif kind == "hang":
            events.append(Event(t, EventKind.DETECTION, attempt, step=step))
        elif kind == GENERATION_RECORD:
            source = "spare" if r.get("promoted") else ""
            events.append(Event(t, EventKind.GENERATION_ANNOUNCED, attempt, source=source))
        elif kind == "end" and r.get("reason", "Completed") == "Completed":
            events.append(Event(t, EventKind.JOB_END, attempt, step=step))
    return sorted(events, key=lambda e: e.time)
