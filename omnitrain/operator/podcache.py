"""The jobs' pods as the operator's pod watch last showed them, so that a reconcile pass does not list every pod of
the job (issue 15: at 1,024 nodes each LIST is ~4 MB of JSON to serve, send and parse, once per pod event).

The shape of client-go's informer store, kept pure (no API calls): `observe` takes the watch's events for every
pod with a job label; `prime` installs a LIST (a job's first pass, and again every `relist_seconds`, so that a
deletion a broken watch never delivered is forgotten within that bound); `created` / `deleted` write the
operator's own calls through, so that the next pass does not act again on what its previous pass changed. Objects
are compared by resourceVersion (etcd's revision: a later write has a larger one), so an event that arrives late
never replaces a newer object and a LIST never brings back a pod whose deletion was already seen.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass, field

from omnitrain.timestamps import now_rfc3339

RELIST_SECONDS = 60.0


def resource_version(obj: dict) -> int:
    """An object's resourceVersion as a number (-1 when absent or not a number: older than anything)."""
    try:
        return int((obj.get("metadata") or {}).get("resourceVersion") or -1)
    except (TypeError, ValueError):
        return -1


@dataclass
class _JobPods:
    pods: dict[str, dict] = field(default_factory=dict)  # name -> the newest object seen
    primed_at: float | None = None  # when a LIST was last installed (None: never; the watch alone is not enough)


class PodCache:
    """Pods by (namespace, value of the job label)."""

    def __init__(self, job_label: str, clock: Callable[[], float], relist_seconds: float = RELIST_SECONDS) -> None:
        self.job_label, self.clock, self.relist_seconds = job_label, clock, relist_seconds
        self._lock = threading.Lock()
        self._jobs: dict[tuple[str, str], _JobPods] = {}
        # (namespace, pod) -> (resourceVersion of its deletion, when seen); kept relist_seconds, longer than a LIST
        # in flight takes, so a LIST taken before the deletion cannot bring the pod back
        self._gone: dict[tuple[str, str], tuple[int, float]] = {}

    def _job_of(self, pod: dict) -> tuple[str, str] | None:
        meta = pod.get("metadata") or {}
        job = (meta.get("labels") or {}).get(self.job_label)
        return (meta.get("namespace") or "", job) if job else None

    def pods(self, namespace: str, job: str) -> list[dict] | None:
        """The job's pods, or None when the job must be listed (never, or `relist_seconds` ago)."""
        with self._lock:
            entry = self._jobs.get((namespace, job))
            if entry is None or entry.primed_at is None or self.clock() - entry.primed_at >= self.relist_seconds:
                return None
            return list(entry.pods.values())

    def prime(self, namespace: str, job: str, items: list[dict], list_version: int) -> list[dict]:
        """Install a LIST taken at `list_version`, keeping what the watch delivered since (newer objects and
        deletions); returns the job's pods as the cache now has them."""
        with self._lock:
            self._expire_tombstones()
            old = self._jobs.get((namespace, job)) or _JobPods()
            entry = _JobPods(primed_at=self.clock())
            for pod in items:
                name = pod["metadata"]["name"]
                seen = old.pods.get(name)
                newest = seen if seen is not None and resource_version(seen) > resource_version(pod) else pod
                if not self._deleted_since(namespace, newest):
                    entry.pods[name] = newest
            for name, pod in old.pods.items():
                if name not in entry.pods and resource_version(pod) > list_version:  # created after the snapshot
                    entry.pods[name] = pod
            self._jobs[(namespace, job)] = entry
            return list(entry.pods.values())

    def observe(self, event_type: str | None, pod: dict) -> None:
        """One watch event (kopf's types: None for the initial listing, ADDED, MODIFIED, DELETED)."""
        key = self._job_of(pod)
        if key is None:
            return
        name, version = pod["metadata"]["name"], resource_version(pod)
        with self._lock:
            entry = self._jobs.setdefault(key, _JobPods())
            if event_type == "DELETED":
                self._gone[(key[0], name)] = (version, self.clock())
                current = entry.pods.get(name)
                if current is not None and resource_version(current) <= version:
                    del entry.pods[name]
                return
            self._offer(entry, key[0], pod)

    def created(self, pod: dict) -> None:
        """The API server's answer to our create: the next pass sees the pod before its watch event arrives."""
        key = self._job_of(pod)
        if key is None:
            return
        with self._lock:
            self._offer(self._jobs.setdefault(key, _JobPods()), key[0], pod)

    def deleted(self, namespace: str, name: str, answer: dict) -> None:
        """Our delete went through: the answer's object (the pod, now terminating) when the API server sent one,
        else (a Status) the pod as we knew it, marked terminating."""
        with self._lock:
            for (ns, _), entry in self._jobs.items():
                if ns != namespace or name not in entry.pods:
                    continue
                if answer.get("kind") == "Pod":
                    self._offer(entry, ns, answer)
                else:
                    pod = entry.pods[name]
                    meta = {"deletionTimestamp": now_rfc3339(), **(pod.get("metadata") or {})}
                    entry.pods[name] = {**pod, "metadata": meta}

    def vanished(self, namespace: str, name: str) -> None:
        """The API server says the pod does not exist (404): whatever the watch has not told yet, it is gone."""
        with self._lock:
            for (ns, _), entry in self._jobs.items():
                if ns == namespace:
                    entry.pods.pop(name, None)

    def forget(self, namespace: str, job: str) -> None:
        """The job is gone: its pods go with it (the garbage collector's DELETED events would remove them too)."""
        with self._lock:
            self._jobs.pop((namespace, job), None)

    def _offer(self, entry: _JobPods, namespace: str, pod: dict) -> None:
        name, current = pod["metadata"]["name"], entry.pods.get(pod["metadata"]["name"])
        if self._deleted_since(namespace, pod):
            return
        if current is None or resource_version(current) <= resource_version(pod):
            entry.pods[name] = pod

    def _deleted_since(self, namespace: str, pod: dict) -> bool:
        gone = self._gone.get((namespace, pod["metadata"]["name"]))
        return gone is not None and gone[0] >= resource_version(pod)

    def _expire_tombstones(self) -> None:
        horizon = self.clock() - self.relist_seconds
        self._gone = {k: v for k, v in self._gone.items() if v[1] >= horizon}
