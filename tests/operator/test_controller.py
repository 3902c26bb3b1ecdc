"""The Controller honours a Decision's requeue_after_seconds with one timed pass per job (no sleeping: the timer
and the clock are injected)."""

from __future__ import annotations

from omnitrain.operator.handlers import Controller
from omnitrain.operator.settings import OperatorSettings


class FakeTimer:
    def __init__(self, delay, fn) -> None:
        self.delay, self.fn = delay, fn
        self.started = self.cancelled = False

    def start(self) -> None:
        self.started = True

    def cancel(self) -> None:
        self.cancelled = True


def controller(requeues):
    timers: list[FakeTimer] = []
    now = [100.0]
    c = Controller(
        kube=None,
        settings=OperatorSettings(),
        timer=lambda d, fn: timers.append(FakeTimer(d, fn)) or timers[-1],
        clock=lambda: now[0],
    )
    passes: list[tuple[str, str]] = []

    def once(namespace, name):
        passes.append((namespace, name))
        return requeues.pop(0) if requeues else None

    c._reconcile_once = once
    return c, timers, passes, now


def test_a_requeue_schedules_one_more_pass_at_that_time():
    c, timers, passes, _ = controller([20.0, None])
    c.reconcile("ns", "j")
    assert passes == [("ns", "j")]
    assert len(timers) == 1 and timers[0].delay == 20.0 and timers[0].started
    timers[0].fn()  # the back-off ended: the timer fires the next pass
    assert passes == [("ns", "j"), ("ns", "j")]
    assert len(timers) == 1  # that pass asked for nothing more
    c.reconcile("ns", "j")  # and the fired timer is forgotten: a new requeue gets a new timer
    assert len(timers) == 1


def test_one_timer_per_job_and_the_earliest_wins():
    c, timers, passes, now = controller([])
    c.schedule("ns", "j", 30.0)
    c.schedule("ns", "j", 40.0)  # later than the pending one: nothing new
    assert len(timers) == 1
    now[0] += 5.0
    c.schedule("ns", "j", 10.0)  # due at 115 < 130: replaces it
    assert len(timers) == 2 and timers[0].cancelled and timers[1].delay == 10.0
    c.schedule("ns", "other", 30.0)  # other jobs have their own
    assert len(timers) == 3
    timers[0].fn()  # a cancelled timer that fires anyway runs a pass but keeps the new one
    assert passes == [("ns", "j")]
    c.schedule("ns", "j", 60.0)
    assert len(timers) == 3
