"""RFC 3339 times as the API server writes them (second resolution, UTC, e.g. 2026-11-25T08:00:00Z): shared by the
operator (status, ConfigMap) and the trainer (the job's creation time its goodput counts from)."""

from __future__ import annotations

import datetime as dt
import time


def now_rfc3339(t: float | None = None) -> str:
    """Now (or epoch seconds `t`) as the API server writes times."""
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(time.time() if t is None else t))


def parse_rfc3339(text: str | None) -> float | None:
    """Epoch seconds; None when absent or not a time."""
    if not text:
        return None
    try:
        return dt.datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()
    except ValueError:
        return None
