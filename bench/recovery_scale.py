"""Recovery at scale on kwok nodes: delete one pod of a Running job and time until the whole gang is Running again,
with the operator's API calls and the pods deleted and created per recovery, per job size and restart mode, side
by side in one run (issue 15: recovery time that does not grow with the job).

    .venv/bin/python bench/recovery_scale.py [--nodes 64 512 1024] [--mode InPlace InPlaceSpare Recreate] [--repeats 3]
        [--busy-window 2]

The fault is what a platform team would try first: `kubectl delete pod` of one rank (grace 0) of a job whose pods
are all Running. "Recovered" depends on the mode: for Recreate, every pod of a newer attempt Running; in place
(InPlace, InPlaceSpare: one hot spare), a newer generation announced and every member it names Running.
Starts etcd, kube-apiserver, kube-controller-manager, kube-scheduler and kwok like bench/launch.py (helpers in
bench/kwokbench.py, kwok nodes kept Ready for the whole run and checked); the operator runs in this process so its
API calls can be counted (those through `Kube`; kopf's own status patches are not counted, as in bench/launch.py).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from kwokbench import (  # noqa: E402
    NodeHealth,
    create_job,
    delete_job,
    job_status,
    kwok_cluster,
    kwok_job_spec,
    run_operator,
    watch_forever,
)

from omnitrain.devcluster.testing import wait_for  # noqa: E402
from omnitrain.gang import GangAnnouncement  # noqa: E402
from omnitrain.gang_watch import announcement_of  # noqa: E402
from omnitrain.operator import plan  # noqa: E402

JOB = "rec"
RECOVERY_TIMEOUT_S = 600
BUSY_WINDOW_S = 2.0  # default of --busy-window: the operator's API calls are counted this long before each fault
MANY_CALLS = 40  # a recovery with more operator API calls prints them by kind


@dataclass(frozen=True)
class PodView:
    """What recovery is judged by, of one pod."""

    name: str
    uid: str
    phase: str
    attempt: int
    terminating: bool


@dataclass(frozen=True)
class Before:
    """The gang just before the fault."""

    nodes: int
    attempt: int
    uids: frozenset[str]
    victim_uid: str


def recreated(pods: list[PodView], before: Before) -> bool:
    """Recreate: `nodes` pods of an attempt newer than the fault's, none terminating, all Running."""
    newer = [p for p in pods if p.attempt > before.attempt and not p.terminating]
    return len(newer) == before.nodes and all(p.phase == "Running" for p in newer)


def in_place_recovered(pods: list[PodView], before: Before, announced: GangAnnouncement | None) -> bool:
    """InPlace: a generation newer than the fault's is announced (<job>-gang, as the bench's watch last saw it) and
    every member it names is a Running pod. No supervisor needs emulating for this: the operator waits for no
    acknowledgement (a real gang's supervisors join when the announcement reaches them; kwok runs no process, so the
    bench stops at the announcement with every member's pod Running, which is what Recreate's figure measures too:
    pods Running, not training)."""
    if announced is None or announced.generation <= before.attempt:
        return False
    live = {p.name: p for p in pods if not p.terminating}
    return all(name in live and live[name].phase == "Running" for name in announced.members)


# mode -> (spec.resilience, spare pods); the recovered check is chosen in `measure` (in place: by the announcement)
MODES: dict[str, tuple[dict, int]] = {
    "Recreate": ({"restartMode": "Recreate"}, 0),
    "InPlace": ({"restartMode": "InPlace"}, 0),
    "InPlaceSpare": ({"restartMode": "InPlace", "spareNodes": 1}, 1),
}


def pod_view(pod) -> PodView:
    labels = pod.metadata.labels or {}
    return PodView(
        name=pod.metadata.name,
        uid=pod.metadata.uid,
        phase=(pod.status.phase if pod.status else None) or "Pending",
        attempt=int(labels.get(plan.LABEL_ATTEMPT, "0")),
        terminating=pod.metadata.deletion_timestamp is not None,
    )


@dataclass
class GangWatch:
    """The job's pods from one list+watch (listed again when a watch ends, so a missed deletion is not kept), with
    the times pods were first seen and seen deleted, for counting the churn of a recovery."""

    api: object
    namespace: str
    pods: dict[str, PodView] = field(default_factory=dict)
    first_seen: dict[str, float] = field(default_factory=dict)
    deleted_at: dict[str, float] = field(default_factory=dict)
    # <job>-gang's announcement from its own watch, which wakes waiters too: with a hot spare no pod changes when
    # the spare is named a member, so a waiter woken by pod events alone saw the announcement only at the next pod
    # event (the background spare's creation) or its 1 s wake-up, and the spare rows measured that.
    announced: GangAnnouncement | None = None
    changed: threading.Condition = field(default_factory=threading.Condition)
    stop: threading.Event = field(default_factory=threading.Event)

    def start(self) -> GangWatch:
        threading.Thread(target=watch_forever, args=(self.stop, "pod", self._stream), daemon=True).start()
        threading.Thread(
            target=watch_forever, args=(self.stop, "announcement", self._announcements), daemon=True
        ).start()
        return self

    def _announcements(self) -> None:
        from kubernetes import client, watch

        core = client.CoreV1Api(self.api)
        for ev in watch.Watch().stream(
            core.list_namespaced_config_map,
            self.namespace,
            field_selector=f"metadata.name={plan.gang_config_map_name(JOB)}",
            timeout_seconds=300,
        ):
            announcement = announcement_of(ev["raw_object"]) if ev["type"] in ("ADDED", "MODIFIED") else None
            if announcement is not None:
                with self.changed:
                    self.announced = announcement
                    self.changed.notify_all()
            if self.stop.is_set():
                return

    def _stream(self) -> None:
        from kubernetes import client, watch

        core = client.CoreV1Api(self.api)
        selector = plan.job_selector(JOB)
        listing = core.list_namespaced_pod(self.namespace, label_selector=selector)
        with self.changed:
            self.pods = {p.metadata.uid: pod_view(p) for p in listing.items}
            now = time.monotonic()
            for uid in self.pods:
                self.first_seen.setdefault(uid, now)
            self.changed.notify_all()
        for ev in watch.Watch().stream(
            core.list_namespaced_pod,
            self.namespace,
            label_selector=selector,
            resource_version=listing.metadata.resource_version,
            timeout_seconds=300,
        ):
            if ev["type"] not in ("ADDED", "MODIFIED", "DELETED"):
                continue
            view, now = pod_view(ev["object"]), time.monotonic()
            with self.changed:
                if ev["type"] == "DELETED":
                    self.pods.pop(view.uid, None)
                    self.deleted_at.setdefault(view.uid, now)
                else:
                    self.pods[view.uid] = view
                    self.first_seen.setdefault(view.uid, now)
                self.changed.notify_all()
            if self.stop.is_set():
                return

    def wait(self, predicate: Callable[[list[PodView]], bool], timeout_s: float, what: str) -> float:
        """Waits (woken by each pod or announcement event) until predicate(pods) holds; returns the monotonic time
        it first did."""
        deadline = time.monotonic() + timeout_s
        with self.changed:
            while not predicate(list(self.pods.values())):
                left = deadline - time.monotonic()
                if left <= 0:
                    raise TimeoutError(f"timed out after {timeout_s:.0f} s waiting for {what}")
                self.changed.wait(min(left, 1.0))
            return time.monotonic()


def gang_running(nodes: int) -> Callable[[list[PodView]], bool]:
    def check(pods: list[PodView]) -> bool:
        live = [p for p in pods if not p.terminating]
        return len(live) == nodes and all(p.phase == "Running" for p in live)

    return check


def measure(
    api, kube, health: NodeHealth, nodes: int, mode: str, repeats: int, busy_window_s: float = BUSY_WINDOW_S
) -> list[dict]:
    from kubernetes import client

    ns = f"rec-{nodes}-{mode.lower()}"
    restarts = repeats + 2
    resilience, spares = MODES[mode]
    spec = kwok_job_spec(nodes, resilience={**resilience, "maxRestarts": restarts, "maxNoProgressRestarts": restarts})
    gang = GangWatch(api, ns).start()

    def recovered(pods: list[PodView], before: Before) -> bool:
        return recreated(pods, before) if mode == "Recreate" else in_place_recovered(pods, before, gang.announced)

    create_job(api, ns, JOB, spec)
    core = client.CoreV1Api(api)
    rows = []
    try:
        for repeat in range(repeats):
            gang.wait(gang_running(nodes + spares), RECOVERY_TIMEOUT_S, f"{nodes + spares} pods Running")
            wait_for(lambda: job_status(api, ns, JOB).get("phase") == "Running", 120, "phase Running", interval=0.2)
            with gang.changed:
                pods = sorted(gang.pods.values(), key=lambda p: p.name)
            status = job_status(api, ns, JOB)
            members = set(status["children"]["pods"])
            victim = sorted((p for p in pods if p.name in members), key=lambda p: p.name)[len(members) // 2]
            before = Before(nodes, int(status["attempt"]), frozenset(p.uid for p in pods), victim.uid)
            # Is the operator still busy with the launch (or the last recovery) when the fault comes? Counted over
            # a short window before it, so a slow first recovery after a large launch can be told apart.
            busy0 = kube.counter.calls
            time.sleep(busy_window_s)
            busy = kube.counter.calls - busy0
            flaps0, calls0, kinds0 = len(health.transitions), kube.counter.calls, kube.counter.snapshot()
            t0 = time.monotonic()
            core.delete_namespaced_pod(victim.name, ns, grace_period_seconds=0)
            t1 = gang.wait(lambda ps: recovered(ps, before), RECOVERY_TIMEOUT_S, f"{mode} recovery")
            # the operator sees the gang Running too and writes the phase: count its calls until then
            wait_for(lambda: job_status(api, ns, JOB).get("phase") == "Running", 120, "phase Running", interval=0.2)
            calls = kube.counter.calls - calls0
            kinds = kube.counter.snapshot() - kinds0
            with gang.changed:
                gone = [t - t0 for uid, t in gang.deleted_at.items() if t >= t0 and uid in before.uids]
                new = [t - t0 for uid, t in gang.first_seen.items() if t >= t0 and uid not in before.uids]
            deleted, created = len(gone), len(new)
            rows.append(
                {
                    "nodes": nodes,
                    "mode": mode,
                    "repeat": repeat,
                    "recovery_s": t1 - t0,
                    "calls": calls,
                    "deleted": deleted,
                    "created": created,
                    "flaps": len(health.transitions) - flaps0,
                    "busy_before": busy,
                    # where the time goes: the last old pod gone, the last new pod created (s after the fault)
                    "last_gone_s": max(gone, default=0.0),
                    "last_created_s": max(new, default=0.0),
                }
            )
            r = rows[-1]
            print(
                f"nodes={nodes:4d} mode={mode} #{repeat}: whole gang Running again {r['recovery_s']:6.2f} s "
                f"(last old pod gone {r['last_gone_s']:.2f} s, last new pod created {r['last_created_s']:.2f} s), "
                f"operator API calls {calls}, pods deleted {deleted} / created {created}, node flaps {r['flaps']}, "
                f"operator calls in the {busy_window_s:.0f} s before the fault {busy}",
                flush=True,
            )
            if calls > MANY_CALLS:  # where an expensive recovery went
                print("  calls by kind: " + ", ".join(f"{n} x {k}" for k, n in kinds.most_common(4)), flush=True)
    finally:
        gang.stop.set()
        delete_job(api, ns, JOB)
    return rows


def table(rows: list[dict]) -> str:
    """One line per (nodes, mode): medians (and ranges) over the repeats."""
    lines = [
        "| nodes | mode | recovery, median (s) | range (s) | operator API calls / recovery | pods deleted / created "
        "| node flaps |",
        "|---|---|---|---|---|---|---|",
    ]
    for key in sorted({(r["nodes"], r["mode"]) for r in rows}):
        rs = [r for r in rows if (r["nodes"], r["mode"]) == key]
        times = [r["recovery_s"] for r in rs]
        lines.append(
            f"| {key[0]} | {key[1]} | {statistics.median(times):.2f} | {min(times):.2f}-{max(times):.2f} | "
            f"{statistics.median(r['calls'] for r in rs):.0f} | "
            f"{statistics.median(r['deleted'] for r in rs):.0f} / {statistics.median(r['created'] for r in rs):.0f} "
            f"| {sum(r['flaps'] for r in rs)} |"
        )
    return "\n".join(lines)


def size_ratios(rows: list[dict]) -> list[str]:
    """The headline: median recovery at the largest size / at the smallest, per mode (goal for in-place <= 1.5)."""
    out = []
    for mode in sorted({r["mode"] for r in rows}):
        sizes = {r["nodes"] for r in rows if r["mode"] == mode}
        by = {
            n: statistics.median(r["recovery_s"] for r in rows if (r["mode"], r["nodes"]) == (mode, n)) for n in sizes
        }
        if len(by) >= 2:
            lo, hi = min(by), max(by)
            out.append(f"{mode}: {hi}-node / {lo}-node recovery time = {by[hi] / by[lo]:.2f}")
    return out


def plot(rows: list[dict], path: Path) -> None:
    """Recovery time and operator API calls per recovery against the job's size, one line per mode (log-log)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4))
    for mode in sorted({r["mode"] for r in rows}):
        sizes = sorted({r["nodes"] for r in rows if r["mode"] == mode})
        med = {
            key: [statistics.median(r[key] for r in rows if (r["mode"], r["nodes"]) == (mode, n)) for n in sizes]
            for key in ("recovery_s", "calls")
        }
        left.plot(sizes, med["recovery_s"], "o-", label=mode)
        right.plot(sizes, med["calls"], "o-", label=mode)
    for ax, what in ((left, "fault -> whole gang Running again (s, median)"), (right, "operator API calls / recovery")):
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_xlabel("job size (kwok nodes)")
        ax.set_ylabel(what)
        ax.grid(alpha=0.3, which="both")
        ax.legend(fontsize=8)
    fig.suptitle("One pod deleted from a Running job: recovery by restart mode")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)


def rows_from_log(text: str) -> list[dict]:
    """The per-recovery lines a run printed (`nodes=  64 mode=InPlace #0: ... 0.29 s ... calls 23, ...`), as rows:
    a long run's table and plot can be made again from its log."""
    import re

    line = re.compile(
        r"nodes=\s*(\d+) mode=(\w+) #(\d+): whole gang Running again\s+([\d.]+) s .*?operator API calls (\d+), "
        r"pods deleted (\d+) / created (\d+), node flaps (\d+)"
    )
    rows = []
    for m in line.finditer(text):
        nodes, mode, repeat, secs, calls, deleted, created, flaps = m.groups()
        rows.append(
            {
                "nodes": int(nodes),
                "mode": mode,
                "repeat": int(repeat),
                "recovery_s": float(secs),
                "calls": int(calls),
                "deleted": int(deleted),
                "created": int(created),
                "flaps": int(flaps),
            }
        )
    return rows


def main() -> int:
    import signal

    # SIGTERM (e.g. `timeout`) unwinds through the context managers, so the control plane is stopped too
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--nodes", type=int, nargs="+", default=[64, 512], help="job sizes (e.g. 64 512 1024)")
    parser.add_argument("--mode", nargs="+", default=sorted(MODES), choices=sorted(MODES))
    parser.add_argument("--repeats", type=int, default=3, help="faults per (size, mode); the table shows medians")
    parser.add_argument(
        "--busy-window",
        type=float,
        default=BUSY_WINDOW_S,
        help="seconds between 'gang Running' and the fault, over which the operator's calls are counted (0: the "
        "fault comes as soon as the gang is Running, e.g. right behind a large launch's event tail)",
    )
    parser.add_argument("--plot", type=Path, help="PNG of recovery time and API calls against job size")
    parser.add_argument("--from-log", type=Path, help="no run: the table and plot from an earlier run's output")
    args = parser.parse_args()
    if args.from_log:
        rows = rows_from_log(args.from_log.read_text())
        print(table(rows))
        for line in size_ratios(rows):
            print(line)
        if args.plot:
            plot(rows, args.plot)
        return 0
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    from kubernetes import client

    from omnitrain.operator.kube import Kube

    # room for a spare and the spare requested after its promotion
    with kwok_cluster("omnitrain-bench-recovery-", max(args.nodes) + 2) as (api, health):
        kube = Kube(client.ApiClient())
        kube.counter.track_kinds()  # a costly recovery prints its calls by kind
        stop, thread = run_operator(kube, 16)
        rows: list[dict] = []
        try:
            for nodes in args.nodes:
                for mode in args.mode:
                    rows += measure(api, kube, health, nodes, mode, args.repeats, args.busy_window)
        finally:
            stop.set()
            thread.join(30)
        print()
        print(table(rows))
        for line in size_ratios(rows):
            print(line)
        if args.plot:
            plot(rows, args.plot)
        # a recovery measured across a node flap is not a recovery time (kwokbench.NodeHealth)
        print(health.summary())
    return 0


if __name__ == "__main__":
    sys.exit(main())
