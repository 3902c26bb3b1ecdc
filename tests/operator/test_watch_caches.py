"""What the operator keeps from its watches: the pod cache (omnitrain/operator/podcache.py) a pass reads instead
of a LIST of the job, observations memoized by version, and the Node cache's wake-ups."""

from __future__ import annotations

from omnitrain.operator import plan
from omnitrain.operator.podcache import PodCache


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def pod(name: str, rv: int, job: str = "j", phase: str = "Running", ns: str = "ns", **meta) -> dict:
    return {
        "kind": "Pod",
        "metadata": {
            "name": name,
            "namespace": ns,
            "resourceVersion": str(rv),
            "labels": {plan.LABEL_JOB: job},
            **meta,
        },
        "status": {"phase": phase},
    }


def phases(pods: list[dict] | None) -> dict[str, str]:
    assert pods is not None
    return {p["metadata"]["name"]: p["status"]["phase"] for p in pods}


def cache(clock: Clock | None = None) -> PodCache:
    return PodCache(plan.LABEL_JOB, clock or Clock(), relist_seconds=60)


def test_a_job_is_listed_first_and_again_after_the_relist_period():
    clock = Clock()
    c = cache(clock)
    c.observe(None, pod("a", 5))
    assert c.pods("ns", "j") is None  # the watch alone never stands for a LIST
    assert phases(c.prime("ns", "j", [pod("a", 5), pod("b", 6)], 6)) == {"a": "Running", "b": "Running"}
    assert phases(c.pods("ns", "j")) == {"a": "Running", "b": "Running"}
    assert c.pods("ns", "other") is None and c.pods("ns2", "j") is None
    clock.now += 59.9
    assert c.pods("ns", "j") is not None
    clock.now += 0.1
    assert c.pods("ns", "j") is None


def test_events_update_the_job_and_a_late_event_never_replaces_a_newer_object():
    c = cache()
    c.prime("ns", "j", [pod("a", 5, phase="Pending")], 5)
    c.observe("MODIFIED", pod("a", 9, phase="Running"))
    c.observe("MODIFIED", pod("a", 7, phase="Pending"))  # delivered late
    c.observe("ADDED", pod("b", 8, phase="Pending"))
    c.observe("ADDED", pod("x", 8, job="other"))
    assert phases(c.pods("ns", "j")) == {"a": "Running", "b": "Pending"}
    c.observe("DELETED", pod("b", 10))
    assert phases(c.pods("ns", "j")) == {"a": "Running"}


def test_a_list_taken_before_a_deletion_does_not_bring_the_pod_back():
    c = cache()
    c.prime("ns", "j", [pod("a", 5), pod("b", 5)], 5)
    c.observe("DELETED", pod("b", 12))
    # a LIST whose snapshot (revision 11) predates the deletion, installed after its event arrived
    assert phases(c.prime("ns", "j", [pod("a", 5), pod("b", 5)], 11)) == {"a": "Running"}


def test_a_list_keeps_what_the_watch_delivered_after_its_snapshot_and_drops_what_it_missed():
    c = cache()
    c.prime("ns", "j", [pod("a", 5), pod("gone", 4)], 5)
    c.observe("MODIFIED", pod("a", 20, phase="Failed"))
    c.observe("ADDED", pod("new", 21, phase="Pending"))
    # snapshot at 15: "gone" was deleted before it (its DELETED event was lost), "new" came after it
    got = c.prime("ns", "j", [pod("a", 14, phase="Running")], 15)
    assert phases(got) == {"a": "Failed", "new": "Pending"}


def test_our_own_creates_and_deletes_are_seen_before_their_events():
    c = cache()
    c.prime("ns", "j", [pod("a", 5)], 5)
    c.created(pod("b", 6, phase="Pending"))
    assert phases(c.pods("ns", "j")) == {"a": "Running", "b": "Pending"}
    c.deleted("ns", "a", {"kind": "Status", "status": "Success"})  # the answer of an immediate deletion
    a = next(p for p in c.pods("ns", "j") or [] if p["metadata"]["name"] == "a")
    assert a["metadata"]["deletionTimestamp"]
    c.deleted("ns", "b", pod("b", 7, deletionTimestamp="2026-12-02T00:00:00Z"))  # a graceful one answers the pod
    b = next(p for p in c.pods("ns", "j") or [] if p["metadata"]["name"] == "b")
    assert b["metadata"]["deletionTimestamp"] == "2026-12-02T00:00:00Z"
    c.vanished("ns", "b")  # a 404: gone whatever the watch says later
    c.observe("MODIFIED", pod("b", 7))
    assert sorted(phases(c.pods("ns", "j"))) == ["a", "b"]  # an event newer than what we knew still counts
    c.observe("DELETED", pod("b", 8))
    assert sorted(phases(c.pods("ns", "j"))) == ["a"]


def test_a_deleted_job_is_forgotten():
    c = cache()
    c.prime("ns", "j", [pod("a", 5)], 5)
    c.forget("ns", "j")
    assert c.pods("ns", "j") is None


def test_an_unchanged_pod_is_observed_once_and_a_new_version_again():
    from omnitrain.operator.kube import ObservationMemo

    calls: list[str] = []

    def observe(obj: dict) -> str:
        calls.append(obj["metadata"]["resourceVersion"])
        return obj["status"]["phase"]

    memo = ObservationMemo()
    running = pod("a", 5, uid="u1")
    assert memo.get(running, observe) == memo.get(dict(running), observe) == "Running" and calls == ["5"]
    assert memo.get(pod("a", 6, uid="u1", phase="Failed"), observe) == "Failed" and calls == ["5", "6"]
    assert memo.get(pod("a", 5, uid="u2"), observe) == "Running" and calls == ["5", "6", "5"]  # another pod
    fake = {"metadata": {"name": "f"}, "status": {"phase": "Pending"}}  # no resourceVersion: never memoized
    memo.get(fake, lambda o: calls.append("fake"))
    memo.get(fake, lambda o: calls.append("fake"))
    assert calls[-2:] == ["fake", "fake"]


def test_the_node_watch_wakes_the_operator_for_a_lost_node_and_for_one_ready_again():
    import threading

    from omnitrain.operator.kube import Kube

    def node(ready: str) -> dict:
        return {"metadata": {"name": "n1"}, "status": {"conditions": [{"type": "Ready", "status": ready}]}}

    kube = Kube.__new__(Kube)  # only the Node cache is used
    kube._nodes, kube._nodes_lock = {}, threading.Lock()
    assert kube.observe_node(None, node("True")) is None  # kopf's initial listing
    assert kube.observe_node("MODIFIED", node("True")) is None
    assert kube.observe_node("MODIFIED", node("Unknown")) == "not Ready"
    assert kube.observe_node("MODIFIED", node("False")) is None  # still not Ready: its grace is not restarted
    assert kube.observe_node("MODIFIED", node("True")) == "Ready again"
    assert kube.observe_node("DELETED", node("True")) == "deleted"
    assert kube.observe_node("ADDED", node("True")) is None  # a new Ready node changes nothing for a job
    assert kube.nodes(["n1"])["n1"].ready
