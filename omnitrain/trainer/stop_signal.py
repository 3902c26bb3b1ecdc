"""Stopping early on SIGTERM with a final checkpoint (preemption, eviction, a drained node).

Kubernetes ends a pod with SIGTERM and waits the pod's terminationGracePeriodSeconds (spec.scheduling) before
SIGKILL. The handler only records the request: the loop looks at it once per step, in the all-reduce it already
makes for the step time, so every rank stops after the same step whichever rank got the signal first (a rank that
stopped alone would leave the others in their next collective). Then the usual final save runs and the process
exits with ExitCode.PREEMPTED.
"""

from __future__ import annotations

import signal
import threading
from types import FrameType


class StopRequest:
    """SIGTERM recorded, not acted on: `requested` is read at the next step boundary. A context manager that puts
    the previous handler back (tests and `omnitrain train` in one process run the loop more than once)."""

    def __init__(self, signals: tuple[int, ...] = (signal.SIGTERM,)) -> None:
        self.signals = signals
        self.signum: int | None = None
        self._previous: dict[int, object] = {}

    @property
    def requested(self) -> bool:
        return self.signum is not None

    def _record(self, signum: int, _frame: FrameType | None) -> None:
        self.signum = signum

    def __enter__(self) -> StopRequest:
        if threading.current_thread() is threading.main_thread():  # signal handlers live on the main thread only
            self._previous = {s: signal.signal(s, self._record) for s in self.signals}
        return self

    def __exit__(self, *exc: object) -> None:
        for s, handler in self._previous.items():
            signal.signal(s, handler)  # type: ignore[arg-type]
        self._previous = {}


__all__ = ["StopRequest"]
