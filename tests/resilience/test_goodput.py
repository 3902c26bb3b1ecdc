"""Goodput from event timelines worked out by hand."""

from __future__ import annotations

import pytest

from omnitrain.resilience.goodput import BADPUT_CAUSES, Event, EventKind, compute_goodput, with_reserved_capacity

K = EventKind


def steps(attempt: int, first_step: int, count: int, start: float, seconds: float, data: float = 0.0) -> list[Event]:
    return [
        Event(start + (i + 1) * seconds, K.STEP, attempt, step=first_step + i, seconds=seconds, data_seconds=data)
        for i in range(count)
    ]


def test_uninterrupted_run():
    # created at 0, first step begins at 10 (startup), 10 steps of 2 s with 0.5 s input wait each,
    # one save blocking 1 s after step 5 (steps after it shift by 1 s), end at 31.
    events = [Event(0, K.ATTEMPT_START, 0)]
    events += steps(0, 1, 5, start=10, seconds=2, data=0.5)
    events += [Event(21, K.CHECKPOINT_SAVE, 0, step=5, seconds=1)]
    events += steps(0, 6, 5, start=21, seconds=2, data=0.5)
    events += [Event(31, K.JOB_END, 0)]
    report = compute_goodput(events)
    assert report.wall_seconds == 31
    assert report.productive_seconds == pytest.approx(15)  # 10 x (2 - 0.5)
    assert report.badput_seconds == pytest.approx(
        {
            "startup": 10,
            "data_loading": 5,
            "data_encoding": 0,
            "checkpoint_save": 1,
            "checkpoint_restore": 0,
            "wasted_progress": 0,
            "recovery": 0,
            "restart_barrier": 0,
            "spare_promotion": 0,
            "peer_restore": 0,
            "other": 0,
        }
    )
    assert report.goodput == pytest.approx(15 / 31)
    assert report.recoveries == []


def test_failure_restart_from_checkpoint():
    # Attempt 0: created 0, steps 1..6 of 1 s from t=5 (ends 11); checkpoint at step 4 (blocking 0.5 s, included
    # in the timeline after step 4 ends at 9 -> steps 5, 6 end at 10.5, 11.5). Fault at 12 (0.5 s into step 7),
    # detected at 20 (watchdog), pods Running again at 30; restore 2 s (ends 32) from step 4; steps 5..10 of 1 s
    # from 33; job ends at 39.
    events = [Event(0, K.ATTEMPT_START, 0)]
    events += steps(0, 1, 4, start=5, seconds=1)
    events += [Event(9.5, K.CHECKPOINT_SAVE, 0, step=4, seconds=0.5)]
    events += steps(0, 5, 2, start=9.5, seconds=1)
    events += [
        Event(12, K.FAILURE, 0),
        Event(20, K.DETECTION, 0),
        Event(22, K.ATTEMPT_START, 1),
        Event(30, K.PODS_RUNNING, 1),
        Event(32, K.RESTORE, 1, step=4, seconds=2),
    ]
    events += steps(1, 5, 6, start=33, seconds=1)
    events += [Event(39, K.JOB_END, 1)]
    report = compute_goodput(events)
    b = report.badput_seconds
    assert report.wall_seconds == 39
    assert report.productive_seconds == pytest.approx(4 + 6)  # steps 1-4 of attempt 0 and 5-10 of attempt 1
    assert b["wasted_progress"] == pytest.approx(2 + 0.5)  # steps 5, 6 redone + half of step 7 lost
    assert b["recovery"] == pytest.approx(30 - 12)  # fault -> pods Running again
    assert b["checkpoint_restore"] == pytest.approx(2)
    assert b["checkpoint_save"] == pytest.approx(0.5)
    assert b["startup"] == pytest.approx(5 + (33 - 30 - 2))  # attempt 0: 5 s; attempt 1: 1 s after restore
    assert b["restart_barrier"] == 0  # a recreated attempt starts up; only an in-place generation has a barrier
    assert b["other"] == pytest.approx(39 - 10 - sum(v for k, v in b.items() if k != "other"))
    assert sum(b.values()) + report.productive_seconds == pytest.approx(39)
    [rec] = report.recoveries
    assert (rec.attempt, rec.detection_seconds, rec.relaunch_seconds, rec.first_step_seconds) == (0, 8, 10, 4)
    status = report.to_status()
    assert status["ratio"] == round(10 / 39, 4) and set(status["badputSeconds"]) == set(BADPUT_CAUSES)


def test_without_failure_or_running_events():
    # Only detection known (e.g. a pod Failed): the fault is dated at its detection; time since the last step is lost.
    events = (
        [Event(0, K.ATTEMPT_START, 0)]
        + steps(0, 1, 3, start=0, seconds=1)
        + [Event(5, K.DETECTION, 0), Event(6, K.ATTEMPT_START, 1)]
        + steps(1, 1, 3, start=6, seconds=1)
    )
    report = compute_goodput(events)
    assert report.badput_seconds["wasted_progress"] == pytest.approx(3 + 2)  # 3 steps redone + 3..5 in flight
    assert report.badput_seconds["recovery"] == pytest.approx(1)
    assert report.productive_seconds == pytest.approx(3)
    assert report.recoveries[0].detection_seconds == 0


def test_in_place_restart_counts_the_barrier_from_the_announcement():
    """An in-place generation: the pods stay, so there is no `pods Running` event; node rank 0's watchdog dates
    the announcement (`generation` record). Fault -> announcement is recovery, announcement -> first step (less the
    restore) is the restart barrier, not start-up."""
    from omnitrain.resilience.goodput import events_from_metrics_log

    records = [
        {"kind": "generation", "time": 1.0, "attempt": 0, "generation": 0},  # the first generation: start-up
        {"kind": "start", "time": 10.0, "attempt": 0, "step": 0},
        {"kind": "step", "time": 12.0, "attempt": 0, "step": 1, "step_seconds": 2.0},
        {"kind": "step", "time": 14.0, "attempt": 0, "step": 2, "step_seconds": 2.0},
        {"kind": "generation", "time": 16.0, "attempt": 1, "generation": 1},
        {"kind": "restore", "time": 18.0, "attempt": 1, "step": 2, "seconds": 1.0},
        {"kind": "start", "time": 18.0, "attempt": 1, "step": 2},
        {"kind": "step", "time": 20.0, "attempt": 1, "step": 3, "step_seconds": 2.0},
        {"kind": "end", "time": 20.0, "attempt": 1, "step": 3, "reason": "Completed"},
    ]
    report = compute_goodput(events_from_metrics_log(records, job_started=0.0))
    b = report.badput_seconds
    assert report.wall_seconds == 20 and report.productive_seconds == pytest.approx(6)
    assert b["startup"] == pytest.approx(10)  # attempt 0 only
    assert b["recovery"] == pytest.approx(16 - 14)  # last sign of life -> the next generation announced
    assert b["restart_barrier"] == pytest.approx(18 - 16 - 1)
    assert b["checkpoint_restore"] == 1 and b["wasted_progress"] == 0 and b["other"] == pytest.approx(0)
    [rec] = report.recoveries
    assert rec.first_step_seconds == pytest.approx(20 - 16)


def test_empty_timeline():
    report = compute_goodput([])
    assert report.goodput == 0 and report.wall_seconds == 0


def test_events_from_the_metrics_log_and_operator_events():
    from omnitrain.resilience.goodput import events_from_metrics_log

    records = [
        {"kind": "start", "time": 10.0, "attempt": 0, "step": 0},
        {"kind": "step", "time": 12.0, "attempt": 0, "step": 1, "step_seconds": 2.0},
        {"kind": "checkpoint", "time": 12.5, "attempt": 0, "step": 1, "blocking_seconds": 0.5},
        {"kind": "checkpoint", "time": 13.0, "attempt": 0, "step": 1, "complete": True},
        {"kind": "step", "time": 14.5, "attempt": 0, "step": 2, "step_seconds": 2.0},
        {"kind": "restore", "time": 31.0, "attempt": 1, "step": 1, "seconds": 1.0},
        {"kind": "start", "time": 31.0, "attempt": 1, "step": 1},
        {"kind": "step", "time": 33.0, "attempt": 1, "step": 2, "step_seconds": 2.0},
        {"kind": "end", "time": 33.0, "attempt": 1, "step": 2, "reason": "Completed"},
    ]
    operator = [Event(0.0, K.ATTEMPT_START, 0), Event(20.0, K.DETECTION, 0), Event(29.0, K.PODS_RUNNING, 1)]
    events = events_from_metrics_log(records, operator)
    starts = sorted((e.attempt, e.time) for e in events if e.kind is K.ATTEMPT_START)
    assert starts == [(0, 0.0), (1, 30.0)]  # attempt 1 from its start record less the restore
    report = compute_goodput(events)
    assert report.wall_seconds == 33
    assert report.productive_seconds == pytest.approx(4)  # steps 1 (attempt 0) and 2 (attempt 1)
    b = report.badput_seconds
    assert b["wasted_progress"] == pytest.approx(2 + 5.5)  # step 2 redone; 14.5 -> 20 in flight until detection
    assert b["recovery"] == pytest.approx(29 - 20)
    assert b["checkpoint_save"] == 0.5 and b["checkpoint_restore"] == 1
    assert b["startup"] == pytest.approx(10 + (31 - 29 - 1))


def test_a_generation_with_a_promoted_spare_and_a_peer_restore_names_those_causes():
    """The same timeline, but generation 1's announcement names a promoted spare and the restore read a peer's
    copy: the barrier is `spare_promotion`, the restore `peer_restore`; nothing else moves."""
    from omnitrain.resilience.goodput import events_from_metrics_log

    records = [
        {"kind": "start", "time": 10.0, "attempt": 0, "step": 0},
        {"kind": "step", "time": 12.0, "attempt": 0, "step": 1, "step_seconds": 2.0},
        {"kind": "generation", "time": 16.0, "attempt": 1, "generation": 1, "promoted": ["j-s0"]},
        {"kind": "restore", "time": 18.0, "attempt": 1, "step": 1, "seconds": 1.0, "source": "peer"},
        {"kind": "start", "time": 18.0, "attempt": 1, "step": 1},
        {"kind": "step", "time": 20.0, "attempt": 1, "step": 2, "step_seconds": 2.0},
        {"kind": "end", "time": 20.0, "attempt": 1, "step": 2, "reason": "Completed"},
    ]
    b = compute_goodput(events_from_metrics_log(records, job_started=0.0)).badput_seconds
    assert b["spare_promotion"] == pytest.approx(18 - 16 - 1) and b["restart_barrier"] == 0
    assert b["peer_restore"] == 1 and b["checkpoint_restore"] == 0
    assert b["recovery"] == pytest.approx(16 - 12)


def test_spares_are_reserved_capacity_in_the_status_goodput():
    """K hot spares held beside N nodes: the same productive time over (N + K) nodes' time, never productive."""
    report = compute_goodput(
        [
            Event(0.0, EventKind.ATTEMPT_START),
            Event(10.0, EventKind.STEP, step=1, seconds=8.0),
            Event(10.0, EventKind.JOB_END),
        ]
    ).to_status()
    held = with_reserved_capacity(report, nodes=3, spares=1)
    assert held["ratio"] == report["ratio"] == 0.8
    assert held["reservedRatio"] == 0.6 and held["spareNodeSeconds"] == 10.0
    assert with_reserved_capacity(report, nodes=3, spares=0)["reservedRatio"] == report["ratio"]
    assert with_reserved_capacity({"badputSeconds": {}}, nodes=3, spares=1) == {"badputSeconds": {}}
