"""Leader election for several operator replicas (OMNITRAIN_LEADER_ELECTION): the thin layer that reads and writes
the Lease; what to write is decided by omnitrain.operator.leader_lease.

A standby blocks in `wait_to_lead` before it starts anything (no kopf, no webhook, no metrics port), so the
Deployment's readiness probe on the metrics port makes the leader the one Ready pod and the Services (webhook,
metrics) send to it alone. The leader renews from a thread of its own, not from kopf's event loop, and ends the
process (exit LOST_LEASE_EXIT) the moment it can no longer prove it holds the Lease: the standby may act as soon as
the lease runs out, and two replicas acting at once could both create a gang.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from datetime import UTC, datetime
from typing import Any

from kubernetes import client
from kubernetes.client.exceptions import ApiException

from omnitrain.operator.leader_lease import LeaseRecord, LeaseTerms, next_record, still_leading

log = logging.getLogger("omnitrain.operator")

LOST_LEASE_EXIT = 3  # the process ends with this when it stopped being the leader (the Deployment restarts it)


def _micro_time(t: datetime) -> str:
    return t.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")  # MicroTime: always six fractional digits


class LeaseClient:
    """The Lease as a LeaseRecord plus its resourceVersion; writes are compare-and-swap on that version."""

    def __init__(self, terms: LeaseTerms, api: client.ApiClient | None = None):
        self.terms = terms
        self.api = client.CoordinationV1Api(api)

    def read(self) -> tuple[LeaseRecord | None, str | None]:
        try:
            lease = self.api.read_namespaced_lease(self.terms.name, self.terms.namespace)
        except ApiException as exc:
            if exc.status == 404:
                return None, None
            raise
        spec, meta = lease.spec or client.V1LeaseSpec(), lease.metadata or client.V1ObjectMeta()
        record = LeaseRecord(
            holder=spec.holder_identity or None,
            duration_s=spec.lease_duration_seconds or self.terms.duration_s,
            acquired=spec.acquire_time,
            renewed=spec.renew_time,
            transitions=spec.lease_transitions or 0,
        )
        return record, meta.resource_version

    def write(self, record: LeaseRecord, version: str | None) -> bool:
        """True when written; False when another replica wrote first (409) or created it first."""
        spec: dict[str, Any] = {
            "holderIdentity": record.holder or "",
            "leaseDurationSeconds": record.duration_s,
            "leaseTransitions": record.transitions,
        }
        if record.acquired:
            spec["acquireTime"] = _micro_time(record.acquired)
        if record.renewed:
            spec["renewTime"] = _micro_time(record.renewed)
        # a plain body, not V1Lease: the client would write a MicroTime with datetime.isoformat(), which drops the
        # fraction at .000000 and the API server then refuses it
        body: Any = {
            "apiVersion": "coordination.k8s.io/v1",
            "kind": "Lease",
            "metadata": {"name": self.terms.name, "namespace": self.terms.namespace},
            "spec": spec,
        }
        try:
            if version is None:
                self.api.create_namespaced_lease(self.terms.namespace, body)
            else:
                body["metadata"]["resourceVersion"] = version
                self.api.replace_namespaced_lease(self.terms.name, self.terms.namespace, body)
        except ApiException as exc:
            if exc.status in (409, 422):  # someone else's write won the race (422: created meanwhile, same name)
                return False
            raise
        return True


class LeaderElector:
    def __init__(self, terms: LeaseTerms, lease: LeaseClient | None = None):
        self.terms = terms
        self.lease = lease or LeaseClient(terms)
        self._seen: tuple[str | None, datetime | None] | None = None
        self._seen_at = time.monotonic()
        self._renewed_at = 0.0
        self._stop = threading.Event()

    def _observe(self, record: LeaseRecord | None) -> None:
        key = (record.holder, record.renewed) if record else None
        if key != self._seen:
            self._seen, self._seen_at = key, time.monotonic()

    def _try(self) -> bool:
        try:
            record, version = self.lease.read()
        except (ApiException, OSError) as exc:  # the API server away for a moment: try again at the next tick
            log.warning("leader election: reading lease %s/%s: %s", self.terms.namespace, self.terms.name, exc)
            return False
        self._observe(record)
        wanted = next_record(record, self._seen_at, time.monotonic(), datetime.now(UTC), self.terms)
        if wanted is None:
            return False
        try:
            written = self.lease.write(wanted, version)
        except (ApiException, OSError) as exc:
            log.warning("leader election: writing lease %s/%s: %s", self.terms.namespace, self.terms.name, exc)
            return False
        if written:
            self._renewed_at = time.monotonic()
        return written

    def wait_to_lead(self) -> float:
        """Block until this replica holds the Lease; the seconds it waited."""
        started = time.monotonic()
        announced: str | None = None
        while not self._try():
            holder = self._seen[0] if self._seen else None
            if holder != announced:
                log.info(
                    "omnitrain operator: standby; lease %s/%s is held by %s (taken over %s s after its last renewal)",
                    self.terms.namespace,
                    self.terms.name,
                    holder,
                    self.terms.duration_s,
                )
                announced = holder
            time.sleep(self.terms.retry_s)
        waited = time.monotonic() - started
        log.info(
            "omnitrain operator: leading as %s (lease %s/%s) after %.1f s",
            self.terms.identity,
            self.terms.namespace,
            self.terms.name,
            waited,
        )
        return waited

    def keep_leading(self) -> threading.Thread:
        """Renew in the background; end the process when the renew deadline passes without a renewal."""

        def renew() -> None:
            while not self._stop.wait(self.terms.retry_s):
                if self._try():
                    continue
                if self._stop.is_set():
                    return
                holder = self._seen[0] if self._seen else None
                taken = holder is not None and holder != self.terms.identity
                if taken or not still_leading(self._renewed_at, time.monotonic(), self.terms):
                    log.error(
                        "omnitrain operator: lost lease %s/%s (%s); exiting so that only one replica acts",
                        self.terms.namespace,
                        self.terms.name,
                        f"now held by {holder}" if taken else f"no renewal for {self.terms.renew_deadline_s} s",
                    )
                    logging.shutdown()
                    os._exit(LOST_LEASE_EXIT)  # not SystemExit: kopf's handlers must not run one more step

        thread = threading.Thread(target=renew, name="lease-renewal", daemon=True)
        thread.start()
        return thread

    def release(self) -> None:
        """On a clean shutdown: an empty holder, so a standby takes over at its next try."""
        self._stop.set()
        try:
            record, version = self.lease.read()
            if record and record.holder == self.terms.identity:
                self.lease.write(LeaseRecord(holder=None, duration_s=1, transitions=record.transitions), version)
                log.info("omnitrain operator: released lease %s/%s", self.terms.namespace, self.terms.name)
        except (ApiException, OSError) as exc:
            log.warning("leader election: releasing lease: %s (a standby takes over when it runs out)", exc)
