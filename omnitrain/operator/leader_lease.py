"""Leader election over a coordination.k8s.io/v1 Lease, the decision part (pure): given the Lease as read, when it
was last seen to change and the clock, what to write to take or keep it, or that another replica holds it.

It follows client-go's leaderelection, which every Kubernetes controller manager uses, so an SRE reads the Lease as
they read kube-scheduler's: `holderIdentity`, `renewTime`, `leaseDurationSeconds`, `leaseTransitions`.
- Expiry is judged by the local clock since this replica last saw the record change, not by comparing the holder's
  `renewTime` with our clock: clocks of two nodes may disagree by more than a lease lasts.
- The holder renews every `retry_s`; if no renewal succeeds for `renew_deadline_s` it stops acting (the process
  exits), strictly before `duration_s` passes, so an old leader has stopped before a standby may take over.
- A holder that shuts down cleanly writes an empty holder: a standby takes over at its next try, not a lease later.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from datetime import datetime


@dataclass(frozen=True)
class LeaseTerms:
    """How one replica campaigns: the Lease's name and namespace, its own identity and client-go's three times."""

    name: str
    namespace: str
    identity: str
    duration_s: int = 15  # a standby waits this long after the last change it saw before taking the lease
    renew_deadline_s: float = 10.0  # the leader gives up (stops acting) after failing to renew for this long
    retry_s: float = 2.0  # how often the leader renews and a standby tries

    def problems(self) -> list[str]:
        out = []
        if not self.name or not self.identity:
            out.append("the lease name and this replica's identity must not be empty")
        if not 0 < self.retry_s < self.renew_deadline_s < self.duration_s:
            out.append(
                f"retry ({self.retry_s} s) < renew deadline ({self.renew_deadline_s} s) < lease duration "
                f"({self.duration_s} s) must hold, so that a leader stops before a standby may take over; "
                "client-go's defaults are 2 < 10 < 15"
            )
        return out


@dataclass(frozen=True)
class LeaseRecord:
    """The Lease's spec, as the API has it."""

    holder: str | None = None
    duration_s: int = 15
    acquired: datetime | None = None
    renewed: datetime | None = None
    transitions: int = 0

    @property
    def released(self) -> bool:
        return not self.holder


def next_record(
    current: LeaseRecord | None, seen_changed_s: float, now_s: float, wall: datetime, terms: LeaseTerms
) -> LeaseRecord | None:
    """The record to write to take or keep the lease, or None while another replica's lease is live.

    `seen_changed_s`: this replica's monotonic time when it first read `current` as it is now (a new holder or a
    new renewTime); `now_s`: the monotonic time now; `wall`: the time written into the record.
    """
    mine = LeaseRecord(holder=terms.identity, duration_s=terms.duration_s, acquired=wall, renewed=wall)
    if current is None:
        return mine
    if current.holder == terms.identity:
        return replace(current, renewed=wall, duration_s=terms.duration_s)
    expired = now_s - seen_changed_s >= current.duration_s
    if current.released or expired:
        return replace(mine, transitions=current.transitions + 1)
    return None


def still_leading(last_renewed_s: float, now_s: float, terms: LeaseTerms) -> bool:
    """False once no renewal has succeeded for the renew deadline: the leader must stop acting now."""
    return now_s - last_renewed_s < terms.renew_deadline_s
