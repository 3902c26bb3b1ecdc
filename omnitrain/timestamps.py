"""RFC 3339 times as the API server writes them (second resolution, UTC, e.g. 2026-11-25T08:00:00Z): shared by the
operator (status, ConfigMap) and the trainer (the job's creation time its goodput counts from)."""

from __future__ import annotations

import datetime as dt


def now_rfc3339() -> str:
    return dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def parse_rfc3339(text: str | None) -> float | None:
    """Epoch seconds; None when absent or not a time."""
    if not text:
        return None
    try:
        return dt.datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()
    except ValueError:
        return None
