"""Gang admission with Kueue on kwok GPU nodes (issue 16): one stream of OmniTrainingJobs of mixed sizes and
priorities, applied over time, once without a queue (the operator's own scheduleTimeoutSeconds takes down gangs
it cannot place whole) and once through the real Kueue (a ClusterQueue with an nvidia.com/gpu quota), side by side
in one run on one control plane.

    .venv/bin/python bench/admission.py                                   # 64 nodes x 8 GPUs, quota 384, 24 jobs
    .venv/bin/python bench/admission.py --nodes 16 --quota 96 --jobs 12   # smaller

Measured from watches of the jobs' pods (and, with Kueue, of its Workloads), on the bench's monotonic clock:
- per job, from the create call to admitted (every pod of the attempt exists and none carries Kueue's scheduling
  gate `kueue.x-k8s.io/admission` any more) and to every pod of the attempt Running (kwok starts a pod as soon as
  it is bound);
- every second, GPUs held by bound pods of gangs that are not fully placed (others of the same attempt unbound or
  not created yet: GPUs idle while a rendezvous would wait) and, with Kueue, by bound pods of pod groups whose
  Workload is not Admitted (must be 0 at every sample);
- with Kueue, per preemption of a low job by a high one (its Workload Evicted, as the Workload watch first sees
  it): the seconds until the victim's quota is released, the preemptor is admitted, and the victim's next attempt
  is admitted again and Running again;
- without a queue, the gangs the operator took down unplaced after scheduleTimeoutSeconds, and the time until they
  ran again.
Both runs have the same GPU budget by default: the Kueue run all nodes under the quota, the run without a queue a
pool of quota / 8 nodes (`--baseline-nodes`). Starts etcd, kube-apiserver, kube-controller-manager, kube-scheduler
and kwok like bench/launch.py (helpers in bench/kwokbench.py), the operator in this process, Kueue v0.17.0 as a
process for the second run (omnitrain.devcluster.kueue_up; built from its Go module the first time).
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import os
import random
import re
import statistics
import sys
import threading
import time
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from kwokbench import create_job, job_status, kwok_cluster, kwok_job_spec, run_operator, watch_forever  # noqa: E402

from omnitrain.devcluster.testing import wait_for  # noqa: E402
from omnitrain.operator import plan  # noqa: E402
from omnitrain.operator.admission import (  # noqa: E402
    ADMISSION_GATE,
    WORKLOAD_GROUP,
    WORKLOAD_PLURAL,
    WORKLOAD_VERSION,
    workload_conditions,
)

GPUS_PER_NODE = 8
SIZES = (2, 4, 8, 16)  # nodes per job
HIGH, LOW = "omnitrain-high", "omnitrain-low"
POOL_LABEL = "omnitrain.dev/bench-pool"  # the nodes the run without a queue may use
FINISHED = ("Succeeded", "Failed")
SAMPLE_S = 1.0
PROGRESS_S = 10.0
NOT_MEASURED = (
    "not measured: resuming from the step saved on SIGTERM. kwok runs no trainer, so a preempted job's pods save "
    "nothing; the bench keeps the job's Running seconds across a preemption as if it resumed "
    "(the real trainer's resume is checked by tests/resilience/test_e2e_faults.py)."
)


# ---- the stream ------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class JobPlan:
    name: str
    nodes: int
    priority: str
    arrive_s: float  # after the stream starts
    run_s: float  # seconds with every pod Running before the bench ends it (kwok pods never end by themselves)


def make_stream(
    count: int, seed: int, gap_s: float, run_s: float, sizes: list[int], high_fraction: float
) -> list[JobPlan]:
    """The same jobs for both runs, from one seed: sizes, priorities, arrivals (gaps of 0.5-1.5 x `gap_s`) and
    run times (0.7-1.3 x `run_s`)."""
    rng = random.Random(seed)
    jobs, t = [], 0.0
    for i in range(count):
        priority = HIGH if rng.random() < high_fraction else LOW
        jobs.append(JobPlan(f"j{i:02d}", rng.choice(sizes), priority, round(t, 1), run_s * rng.uniform(0.7, 1.3)))
        t += gap_s * rng.uniform(0.5, 1.5)
    return jobs


def job_spec(job: JobPlan, queue: str | None, pool: str | None, timeout_s: int, backoff_s: int) -> dict:
    """The job on the kwok nodes; only queueName (and the node pool) differ between the runs."""
    spec = kwok_job_spec(job.nodes)
    sched = spec["scheduling"]
    sched |= {
        "priorityClassName": job.priority,
        "scheduleTimeoutSeconds": timeout_s,
        "requeueBackoffSeconds": backoff_s,
    }
    if queue:
        sched["queueName"] = queue
    if pool:
        sched["nodeSelector"] = {**sched["nodeSelector"], POOL_LABEL: pool}
    return spec


# ---- what the watches see ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class PodView:
    uid: str
    name: str
    job: str
    attempt: int
    node: str | None
    phase: str
    gated: bool  # Kueue's admission gate still on
    terminating: bool

    @property
    def live(self) -> bool:
        return not self.terminating and self.phase not in FINISHED


def pod_view(pod: Any) -> PodView:
    labels = pod.metadata.labels or {}
    gates = [g.name for g in (pod.spec.scheduling_gates or [])]
    return PodView(
        uid=pod.metadata.uid,
        name=pod.metadata.name,
        job=labels.get(plan.LABEL_JOB, ""),
        attempt=int(labels.get(plan.LABEL_ATTEMPT, "0")),
        node=pod.spec.node_name,
        phase=(pod.status.phase if pod.status else None) or "Pending",
        gated=ADMISSION_GATE in gates,
        terminating=pod.metadata.deletion_timestamp is not None,
    )


@dataclass
class GroupClock:
    """When one attempt (one Kueue pod group) of a job first reached each state (monotonic seconds)."""

    admitted: float | None = None  # every pod exists and none is gated
    running: float | None = None  # every pod Running
    torn_down: float | None = None  # a pod of it deleted: preempted by Kueue, or taken down unplaced by the operator
    partial_since: float | None = None  # holds GPUs (a live bound pod) while not every pod is placed, since then
    longest_partial_s: float = 0.0  # the longest such period, timed from the watch's events


def group_state(pods: Iterable[PodView], nodes: int) -> tuple[bool, bool]:
    """(admitted, running) of one attempt's pods: all `nodes` of them there (none being deleted) and ungated; and
    all of them Running too."""
    present = [p for p in pods if not p.terminating]
    complete = len(present) == nodes
    admitted = complete and not any(p.gated for p in present)
    return admitted, admitted and all(p.phase == "Running" for p in present)


def partially_placed(pods: Iterable[PodView], nodes: int) -> bool:
    """Some pod of the attempt holds a node while not all `nodes` are placed (unbound, or not created yet). A pod
    that Succeeded counts as placed: the bench ends a gang pod by pod, and an ending gang waits for nothing."""
    placed = [p for p in pods if p.node and not p.terminating]
    return any(p.live for p in placed) and len(placed) < nodes


def time_partial(clock: GroupClock, partial: bool, now: float) -> None:
    """Times the group's periods of partial placement (from events: the 1 s samples would round a sub-second
    binding of a just-admitted gang up to a second, and a stuck gang's 15 s down to whole samples)."""
    if partial and clock.partial_since is None:
        clock.partial_since = now
    elif not partial and clock.partial_since is not None:
        clock.longest_partial_s = max(clock.longest_partial_s, now - clock.partial_since)
        clock.partial_since = None


def workload_admitted(workload: dict) -> bool:
    return (workload_conditions(workload).get("Admitted") or {}).get("status") == "True"


def quota_released(conditions: dict[str, dict]) -> bool:
    """An evicted Workload no longer counts against the quota: its reservation dropped, or (a pod group that does
    not retry its pods: plan.ANNOTATION_RETRIABLE_IN_GROUP) it finished."""
    reserved = (conditions.get("QuotaReserved") or {}).get("status") == "True"
    return not reserved or (conditions.get("Finished") or {}).get("status") == "True"


PREEMPTOR_UID = re.compile(r"Preempted to accommodate a workload \(UID: ([0-9a-f-]+)")


@dataclass
class Eviction:
    """One preemption as Kueue's Workload watch shows it (monotonic seconds)."""

    victim: str  # the evicted Workload (= pod group <job>-a<attempt>)
    preemptor_uid: str
    evicted: float  # Evicted=True first seen
    released: float | None = None  # quota_released first seen: the quota is free for the preemptor


@dataclass
class ClusterWatch:
    """The namespace's pods from one list+watch (listed again whenever a watch ends, so a missed deletion is not
    kept), the per-attempt clocks they give, and with Kueue the Workloads that are Admitted."""

    api: Any
    namespace: str
    sizes: dict[str, int]  # job -> nodes
    kueue: bool
    pods: dict[str, PodView] = field(default_factory=dict)
    groups: dict[tuple[str, int], GroupClock] = field(default_factory=dict)
    admitted: set[str] = field(default_factory=set)
    admitted_at: dict[str, float] = field(default_factory=dict)  # Workload -> Admitted=True first seen
    uids: dict[str, str] = field(default_factory=dict)  # Workload uid -> name (Kueue names a preemptor by uid)
    evictions: dict[str, Eviction] = field(default_factory=dict)
    lock: threading.Lock = field(default_factory=threading.Lock)
    stop: threading.Event = field(default_factory=threading.Event)

    def start(self) -> ClusterWatch:
        threading.Thread(target=watch_forever, args=(self.stop, "pod", self._pods), daemon=True).start()
        if self.kueue:
            threading.Thread(target=watch_forever, args=(self.stop, "workload", self._workloads), daemon=True).start()
        return self

    def _pods(self) -> None:
        from kubernetes import client, watch

        core = client.CoreV1Api(self.api)
        listing: Any = core.list_namespaced_pod(self.namespace)
        now = time.monotonic()
        with self.lock:
            gone = set(self.pods) - {p.metadata.uid for p in listing.items}
            for uid in gone:
                self._saw(self.pods[uid], now, deleted=True)
            for pod in listing.items:
                self._saw(pod_view(pod), now, deleted=False)
        for ev in watch.Watch().stream(
            core.list_namespaced_pod,
            self.namespace,
            resource_version=listing.metadata.resource_version,
            timeout_seconds=300,
        ):
            if ev["type"] in ("ADDED", "MODIFIED", "DELETED"):
                with self.lock:
                    self._saw(pod_view(ev["object"]), time.monotonic(), deleted=ev["type"] == "DELETED")
            if self.stop.is_set():
                return

    def _saw(self, view: PodView, now: float, deleted: bool) -> None:
        if deleted:
            self.pods.pop(view.uid, None)
        else:
            self.pods[view.uid] = view
        nodes = self.sizes.get(view.job)
        if nodes is None:
            return  # not a pod of the stream
        clock = self.groups.setdefault((view.job, view.attempt), GroupClock())
        if (deleted or view.terminating) and clock.torn_down is None and view.phase not in FINISHED:
            clock.torn_down = now
        members = [p for p in self.pods.values() if (p.job, p.attempt) == (view.job, view.attempt)]
        admitted, running = group_state(members, nodes)
        if admitted and clock.admitted is None:
            clock.admitted = now
        if running and clock.running is None:
            clock.running = now
        time_partial(clock, partially_placed(members, nodes), now)

    def _workloads(self) -> None:
        from kubernetes import client, watch

        custom = client.CustomObjectsApi(self.api)
        args = (WORKLOAD_GROUP, WORKLOAD_VERSION, self.namespace, WORKLOAD_PLURAL)
        listing: Any = custom.list_namespaced_custom_object(*args)
        with self.lock:
            self.admitted = set()
            for w in listing["items"]:
                self._saw_workload(w, time.monotonic(), deleted=False)
        for ev in watch.Watch().stream(
            custom.list_namespaced_custom_object,
            *args,
            resource_version=listing["metadata"]["resourceVersion"],
            timeout_seconds=300,
        ):
            with self.lock:
                self._saw_workload(ev["object"], time.monotonic(), deleted=ev["type"] == "DELETED")
            if self.stop.is_set():
                return

    def _saw_workload(self, w: dict, now: float, deleted: bool) -> None:
        name = w["metadata"]["name"]
        self.uids[w["metadata"]["uid"]] = name
        conditions = workload_conditions(w)
        if not deleted and workload_admitted(w):
            self.admitted.add(name)
            self.admitted_at.setdefault(name, now)
        else:
            self.admitted.discard(name)
        evicted = conditions.get("Evicted") or {}
        if evicted.get("status") == "True" and name not in self.evictions:
            m = PREEMPTOR_UID.search(evicted.get("message") or "")
            if m:
                self.evictions[name] = Eviction(name, m.group(1), now)
        eviction = self.evictions.get(name)
        if eviction and eviction.released is None and (deleted or quota_released(conditions)):
            eviction.released = now

    def snapshot(self) -> tuple[list[PodView], dict[tuple[str, int], GroupClock], set[str]]:
        with self.lock:
            groups = {k: dataclasses.replace(c) for k, c in self.groups.items()}
            return list(self.pods.values()), groups, set(self.admitted)

    def preemptions(self) -> list[Preemption]:
        """Each eviction with its preemptor's name and when that was admitted."""
        with self.lock:
            out = []
            for e in self.evictions.values():
                preemptor = self.uids.get(e.preemptor_uid, e.preemptor_uid)
                out.append(Preemption(e.victim, preemptor, e.evicted, e.released, self.admitted_at.get(preemptor)))
            return sorted(out, key=lambda p: p.evicted)


@dataclass(frozen=True)
class Preemption:
    victim: str
    preemptor: str
    evicted: float
    released: float | None
    preemptor_admitted: float | None


# ---- per-second GPU accounting ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Sample:
    t: float  # seconds after the stream started
    busy: int  # GPUs of gangs whose every pod is Running
    partial: int  # GPUs of live bound pods of gangs not fully placed (others unbound, or not created yet)
    unadmitted: int | None  # GPUs of live bound pods whose pod group Kueue has not admitted (None: no Kueue)
    releasing: int  # GPUs of bound pods being deleted (preempted or taken down): held until they are gone


def gpu_sample(t: float, pods: list[PodView], sizes: dict[str, int], admitted: set[str] | None) -> Sample:
    """The GPUs of the stream's pods by what they do. A pod that Succeeded counts as placed (its gang is ending,
    not waiting), so the bench ending a gang pod by pod is not a partial gang."""
    groups: dict[tuple[str, int], list[PodView]] = {}
    for p in pods:
        if p.job in sizes:
            groups.setdefault((p.job, p.attempt), []).append(p)
    busy = partial = unadmitted = releasing = 0
    for (job, attempt), members in groups.items():
        live_bound = [p for p in members if p.node and p.live]
        releasing += GPUS_PER_NODE * sum(1 for p in members if p.node and p.terminating and p.phase not in FINISHED)
        if partially_placed(members, sizes[job]):
            partial += GPUS_PER_NODE * len(live_bound)
        if len(live_bound) == sizes[job] and all(p.phase == "Running" for p in live_bound):
            busy += GPUS_PER_NODE * len(live_bound)
        if admitted is not None and plan.pod_group_name(job, attempt) not in admitted:
            unadmitted += GPUS_PER_NODE * len(live_bound)
    return Sample(t, busy, partial, unadmitted if admitted is not None else None, releasing)


# ---- one run of the stream ---------------------------------------------------------------------------------------


@dataclass
class JobRun:
    plan: JobPlan
    applied: float | None = None  # monotonic, just before the create call
    ran_s: float = 0.0  # seconds seen with every pod of its current attempt Running (kept across a preemption)
    ended: float | None = None  # the bench marked its pods Succeeded
    reported: bool = False


@dataclass
class RunResult:
    label: str
    kueue: bool
    budget: int  # GPUs the run may use: the quota, or the pool's
    jobs: list[JobRun]
    groups: dict[tuple[str, int], GroupClock]
    samples: list[Sample]
    preemptions: list[Preemption]
    t0: float  # monotonic start of the stream
    wall_s: float
    statuses: dict[str, dict] = field(default_factory=dict)  # the jobs' status at the end


def current_group(job: str, groups: dict[tuple[str, int], GroupClock]) -> tuple[int, GroupClock] | None:
    attempts = [a for (j, a) in groups if j == job]
    return (max(attempts), groups[(job, max(attempts))]) if attempts else None


def end_job(core: Any, namespace: str, pods: list[PodView]) -> None:
    """What the kubelet reports when training exits 0: the pods Succeeded. The operator then marks the job
    Succeeded and Kueue finishes its Workload, freeing the quota (kwok's stages leave a finished pod alone)."""
    now = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    terminated = {"exitCode": 0, "reason": "Completed", "startedAt": now, "finishedAt": now}
    for p in pods:
        body = {
            "status": {
                "phase": "Succeeded",
                "conditions": [{"type": "Ready", "status": "False", "reason": "PodCompleted"}],
                "containerStatuses": [
                    {
                        "name": plan.MAIN_CONTAINER,
                        "image": "omnitrain",
                        "imageID": "",
                        "ready": False,
                        "restartCount": 0,
                        "state": {"terminated": terminated},
                    }
                ],
            }
        }
        core.patch_namespaced_pod_status(p.name, namespace, body)


def account(jobs: dict[str, JobRun], groups: dict[tuple[str, int], GroupClock], dt: float) -> None:
    """Adds `dt` to the Running seconds of every job whose current attempt has all its pods Running."""
    for r in jobs.values():
        if r.applied is None or r.ended is not None:
            continue
        current = current_group(r.plan.name, groups)
        if current and current[1].running is not None and current[1].torn_down is None:
            r.ran_s += dt


def report_running(
    label: str, t: float, jobs: dict[str, JobRun], groups: dict[tuple[str, int], GroupClock], kueue: bool
) -> None:
    """One line per job when its first attempt is all Running: the per-job figures as they come."""
    for r in jobs.values():
        first = first_times(r, groups)
        if r.reported or first["running"] is None:
            continue
        r.reported = True
        admitted = f"admitted {first['admitted']:.1f} s, " if kueue and first["admitted"] is not None else ""
        print(
            f"  [{label} t={t:5.0f} s] {r.plan.name} ({r.plan.nodes:2d} nodes, {r.plan.priority}): "
            f"{admitted}all pods Running {first['running']:.1f} s after apply",
            flush=True,
        )


def progress(label: str, s: Sample, jobs: dict[str, JobRun], groups: dict[tuple[str, int], GroupClock]) -> None:
    applied = [r for r in jobs.values() if r.applied is not None]
    running = sum(
        1
        for r in applied
        if r.ended is None and (g := current_group(r.plan.name, groups)) and g[1].running and not g[1].torn_down
    )
    torn = sum(1 for (j, _), c in groups.items() if c.torn_down is not None and j in jobs)
    unadmitted = f", of unadmitted groups {s.unadmitted}" if s.unadmitted is not None else ""
    print(
        f"  [{label} t={s.t:5.0f} s] applied {len(applied)}/{len(jobs)}, running {running}, "
        f"waiting {len(applied) - running - sum(r.ended is not None for r in applied)}, "
        f"ended {sum(r.ended is not None for r in applied)}; GPUs busy {s.busy}, in partial gangs {s.partial}"
        f"{unadmitted}, releasing {s.releasing}; gangs taken down {torn}",
        flush=True,
    )


def run_stream(
    api: Any,
    label: str,
    plans: list[JobPlan],
    namespace: str,
    queue: str | None,
    pool: str | None,
    budget: int,
    args: Any,
) -> RunResult:
    """Applies the jobs at their arrival times, samples the GPUs every second, ends each job after its run time;
    until all have ended or `args.timeout` passes."""
    from kubernetes import client

    core = client.CoreV1Api(api)
    jobs = {p.name: JobRun(p) for p in plans}
    watch = ClusterWatch(api, namespace, {p.name: p.nodes for p in plans}, queue is not None).start()
    samples: list[Sample] = []
    pool_exec = ThreadPoolExecutor(8)  # ending a gang is one status patch per pod: off the sampling loop
    t0 = last = time.monotonic()
    last_line = -PROGRESS_S
    try:
        while not all(r.ended is not None for r in jobs.values()):
            now = time.monotonic()
            if now - t0 > args.timeout:
                print(f"  [{label}] stopped after {args.timeout:.0f} s with jobs not ended", flush=True)
                break
            for r in jobs.values():
                if r.applied is None and now - t0 >= r.plan.arrive_s:
                    r.applied = time.monotonic()
                    spec = job_spec(r.plan, queue, pool, args.schedule_timeout, args.requeue_backoff)
                    create_job(api, namespace, r.plan.name, spec)
            pods, groups, admitted = watch.snapshot()
            samples.append(gpu_sample(now - t0, pods, watch.sizes, admitted if queue else None))
            account(jobs, groups, now - last)
            last = now
            for r in jobs.values():
                if r.ended is None and r.ran_s >= r.plan.run_s:
                    attempt, _ = current_group(r.plan.name, groups) or (0, None)
                    members = [p for p in pods if (p.job, p.attempt) == (r.plan.name, attempt) and p.live]
                    r.ended = now
                    pool_exec.submit(end_job, core, namespace, members)
            report_running(label, now - t0, jobs, groups, queue is not None)
            if now - t0 - last_line >= PROGRESS_S:
                last_line = now - t0
                progress(label, samples[-1], jobs, groups)
            time.sleep(SAMPLE_S)  # the sampling interval (the GPU figures are per-second samples)
    finally:
        pool_exec.shutdown(wait=True)
        watch.stop.set()
    ended = [r.ended for r in jobs.values() if r.ended is not None]
    _, groups, _ = watch.snapshot()
    wall = max(ended) - t0 if ended else time.monotonic() - t0
    kueue = queue is not None
    return RunResult(label, kueue, budget, list(jobs.values()), groups, samples, watch.preemptions(), t0, wall)


def clean_namespace(api: Any, namespace: str) -> None:
    """Delete the run's jobs and pods and wait until the pods are gone: the next run starts from empty nodes."""
    from kubernetes import client

    from omnitrain.operator import crd

    custom, core = client.CustomObjectsApi(api), client.CoreV1Api(api)
    custom.delete_collection_namespaced_custom_object(crd.GROUP, crd.VERSION, namespace, crd.PLURAL)
    core.delete_collection_namespaced_pod(namespace, grace_period_seconds=0)
    wait_for(lambda: not core.list_namespaced_pod(namespace, limit=1).items, 300, "pods gone", interval=0.5)


def statuses_of(api: Any, namespace: str, plans: list[JobPlan]) -> dict[str, dict]:
    return {p.name: job_status(api, namespace, p.name) for p in plans}


# ---- figures ----------------------------------------------------------------------------------------------------


def first_times(r: JobRun, groups: dict[tuple[str, int], GroupClock]) -> dict[str, float | None]:
    """Seconds from the create call to the job's first admission and first attempt all Running."""
    mine = [c for (j, _), c in groups.items() if j == r.plan.name]
    out: dict[str, float | None] = {}
    for key in ("admitted", "running"):
        times = [getattr(c, key) for c in mine if getattr(c, key) is not None]
        out[key] = min(times) - r.applied if times and r.applied is not None else None
    return out


def teardowns(r: JobRun, groups: dict[tuple[str, int], GroupClock]) -> list[tuple[float | None, float | None]]:
    """Per attempt of the job taken down before the bench ended it (with Kueue: preempted; without: unplaced past
    its timeout): seconds from its pods' deletion to the next attempt admitted, and to it all Running."""
    out = []
    for (job, attempt), c in sorted(groups.items()):
        if job != r.plan.name or c.torn_down is None or (r.ended is not None and c.torn_down >= r.ended):
            continue
        nxt = groups.get((job, attempt + 1))
        admitted = nxt.admitted - c.torn_down if nxt and nxt.admitted is not None else None
        running = nxt.running - c.torn_down if nxt and nxt.running is not None else None
        out.append((admitted, running))
    return out


def victim_again(p: Preemption, groups: dict[tuple[str, int], GroupClock]) -> tuple[float | None, float | None]:
    """Seconds from the eviction to the victim job's next attempt admitted, and all its pods Running."""
    job, _, attempt = p.victim.rpartition("-a")
    nxt = groups.get((job, int(attempt) + 1)) if attempt.isdigit() else None
    if nxt is None:
        return None, None
    return (
        nxt.admitted - p.evicted if nxt.admitted is not None else None,
        nxt.running - p.evicted if nxt.running is not None else None,
    )


def preemption_figures(result: RunResult) -> list[dict[str, float | None]]:
    """Per preemption, seconds after Kueue evicted the victim: its pods deleted, its quota released, the preemptor
    admitted, the victim admitted again and Running again."""
    out = []
    for p in result.preemptions:
        admitted, running = victim_again(p, result.groups)
        job, _, attempt = p.victim.rpartition("-a")
        victim = result.groups.get((job, int(attempt))) if attempt.isdigit() else None
        deleted = victim.torn_down if victim is not None else None
        out.append(
            {
                "deleted": deleted - p.evicted if deleted is not None else None,
                "released": p.released - p.evicted if p.released is not None else None,
                "preemptor": p.preemptor_admitted - p.evicted if p.preemptor_admitted is not None else None,
                "admitted": admitted,
                "running": running,
            }
        )
    return out


def preemption_table(result: RunResult) -> str:
    lines = [
        f"{result.label}, preemptions (s after the victim's Workload was Evicted):",
        "| victim | preemptor | evicted at (s) | victim's pods deleted | quota released | preemptor admitted "
        "| victim admitted again | victim Running again |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for p, f in zip(result.preemptions, preemption_figures(result)):
        lines.append(
            f"| {p.victim} | {p.preemptor} | {p.evicted - result.t0:.1f} | {fmt(f['deleted'])} | {fmt(f['released'])} "
            f"| {fmt(f['preemptor'])} | {fmt(f['admitted'])} | {fmt(f['running'])} |"
        )
    return "\n".join(lines) if result.preemptions else f"{result.label}: no preemption"


def quantiles(values: list[float]) -> str:
    """median / p90 / max (p90: nearest rank)."""
    if not values:
        return "-"
    values = sorted(values)
    p90 = values[max(0, math.ceil(0.9 * len(values)) - 1)]
    return f"{statistics.median(values):.1f} / {p90:.1f} / {values[-1]:.1f}"


def per_job_table(result: RunResult) -> str:
    lines = [
        f"{result.label}, per job (s after apply; preempted / taken down -> admitted again, Running again):",
        "| job | nodes | priority | arrives (s) | admitted | all pods Running | attempts | taken down -> admitted "
        "/ Running again | longest held GPUs not fully placed (s) | status at the end |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in result.jobs:
        first = first_times(r, result.groups)
        downs = teardowns(r, result.groups)
        st = result.statuses.get(r.plan.name) or {}
        # without a queue nothing is admitted: only the time to Running again
        again = ", ".join(f"{fmt(a)} / {fmt(b)}" if result.kueue else fmt(b) for a, b in downs) or "-"
        admitted = fmt(first["admitted"]) if result.kueue else "n/a"
        mine = [c for (j, _), c in result.groups.items() if j == r.plan.name]
        partial = max((c.longest_partial_s for c in mine), default=0.0)
        lines.append(
            f"| {r.plan.name} | {r.plan.nodes} | {r.plan.priority.removeprefix('omnitrain-')} | {r.plan.arrive_s:.1f} "
            f"| {admitted} | {fmt(first['running'])} | {len(mine)} | {again} | {partial:.1f} "
            f"| {st.get('phase', '-')} |"
        )
    return "\n".join(lines)


def fmt(x: float | None) -> str:
    return "-" if x is None else f"{x:.1f}"


def gpu_seconds(samples: list[Sample], attr: str) -> float:
    return sum((getattr(a, attr) or 0) * (b.t - a.t) for a, b in zip(samples, samples[1:]))


NA = "n/a (no admission)"


def timing_rows(result: RunResult) -> dict[str, str]:
    firsts = [(r, first_times(r, result.groups)) for r in result.jobs]

    def running(priority: str | None) -> str:
        return quantiles(
            [f["running"] for r, f in firsts if f["running"] is not None and priority in (None, r.plan.priority)]
        )

    admitted = quantiles([f["admitted"] for _, f in firsts if f["admitted"] is not None])
    return {
        "jobs ended / applied": f"{sum(r.ended is not None for r in result.jobs)} / "
        f"{sum(r.applied is not None for r in result.jobs)}",
        "apply -> admitted (s), median / p90 / max": admitted if result.kueue else NA,
        "apply -> all pods Running (s)": running(None),
        "... omnitrain-high jobs": running(HIGH),
        "... omnitrain-low jobs": running(LOW),
    }


def longest_partial(result: RunResult) -> float:
    """The longest period any gang held GPUs without every pod placed; one still open at the end counts until
    then."""
    end = result.t0 + result.wall_s
    return max(
        (max(c.longest_partial_s, end - c.partial_since if c.partial_since else 0.0) for c in result.groups.values()),
        default=0.0,
    )


def gpu_rows(result: RunResult) -> dict[str, str]:
    samples = result.samples
    busy = statistics.mean(s.busy for s in samples) if samples else 0.0
    unadmitted = max((s.unadmitted or 0 for s in samples), default=0)
    return {
        "GPUs held by pods of groups not admitted, max of samples": str(unadmitted) if result.kueue else NA,
        "GPUs held by gangs not fully placed, max of samples": str(max((s.partial for s in samples), default=0)),
        "... GPU-seconds": f"{gpu_seconds(samples, 'partial'):.0f}",
        "... longest one gang held GPUs not fully placed (s, from events)": f"{longest_partial(result):.1f}",
        "GPUs held by pods being deleted, max of samples": str(max((s.releasing for s in samples), default=0)),
        "GPUs busy (whole gangs Running), mean / budget": f"{busy:.0f} / {result.budget} ({busy / result.budget:.0%})",
        "samples (1 s apart)": str(len(samples)),
    }


def teardown_rows(result: RunResult) -> dict[str, str]:
    """Gangs taken down before their end: by Kueue's preemption, or by the operator's schedule timeout."""
    st = result.statuses.values()
    downs = [d for r in result.jobs for d in teardowns(r, result.groups)]
    pre = preemption_figures(result)

    def kueue_only(key: str) -> str:
        return quantiles([x for f in pre if (x := f[key]) is not None]) if result.kueue else "n/a (no Kueue)"

    return {
        "gangs taken down (pods deleted before their end)": str(len(downs)),
        "... status.preemptions / status.requeues / restarts spent": f"{sum(s.get('preemptions') or 0 for s in st)}"
        f" / {sum(s.get('requeues') or 0 for s in st)} / {sum(s.get('totalRestarts') or 0 for s in st)}",
        "taken down -> all pods Running again (s)": quantiles([b for _, b in downs if b is not None]),
        "preemptions (Workloads Evicted by Kueue)": str(len(pre)) if result.kueue else "n/a (no Kueue)",
        "preempted -> victim's pods deleted (s)": kueue_only("deleted"),
        "preempted -> victim's quota released (s)": kueue_only("released"),
        "preempted -> preemptor admitted (s)": kueue_only("preemptor"),
        "preempted -> victim admitted again (s)": kueue_only("admitted"),
        "preempted -> victim all pods Running again (s)": kueue_only("running"),
        "wall, first apply -> last job ended (s)": f"{result.wall_s:.0f}",
    }


def summary_rows(result: RunResult) -> dict[str, str]:
    """The run's column of the side-by-side table."""
    return {**timing_rows(result), **gpu_rows(result), **teardown_rows(result)}


def side_by_side(results: list[RunResult]) -> str:
    columns = [summary_rows(r) for r in results]
    lines = ["| | " + " | ".join(r.label for r in results) + " |", "|---" * (len(results) + 1) + "|"]
    for key in columns[0]:
        lines.append(f"| {key} | " + " | ".join(c[key] for c in columns) + " |")
    return "\n".join(lines)


def plot(results: list[RunResult], path: Path) -> None:
    """GPUs held by gangs that cannot run (top) and GPUs of whole gangs Running (bottom) over time, both runs."""
    try:
        import matplotlib
    except ImportError:
        print("matplotlib is not installed in this virtualenv: no plot")
        return
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (held, busy) = plt.subplots(2, 1, figsize=(9, 6), sharex=True)
    for r in results:
        ts = [s.t for s in r.samples]
        held.step(ts, [s.partial for s in r.samples], where="post", label=f"{r.label}: gangs not fully placed")
        if r.kueue:
            unadmitted = [s.unadmitted or 0 for s in r.samples]
            held.step(ts, unadmitted, ":", where="post", label=f"{r.label}: pod groups not admitted")
        busy.step(ts, [s.busy for s in r.samples], where="post", label=r.label)
    busy.axhline(results[0].budget, color="grey", ls="--", lw=1, label="GPU budget")
    held.set_ylabel("GPUs held, not training")
    busy.set_ylabel("GPUs of whole gangs Running")
    busy.set_xlabel("seconds after the first apply")
    for ax in (held, busy):
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    held.set_title("The same job stream without a queue and with Kueue (kwok nodes)")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    print(f"plot: {path}")


# ---- main ---------------------------------------------------------------------------------------------------------


def label_pool(api: Any, count: int) -> None:
    """The first `count` kwok nodes form the pool of the run without a queue (its GPU budget)."""
    from kubernetes import client

    core = client.CoreV1Api(api)
    for i in range(count):
        core.patch_node(f"gpu-{i:04d}", {"metadata": {"labels": {POOL_LABEL: "baseline"}}})


def start_kueue(api: Any, root: Path, namespace: str, quota: int) -> None:
    """Kueue's manager against the throwaway plane, its queue with the GPU quota, and the namespace as Kueue's;
    waits until the ClusterQueue is Active (jobs applied before would wait for it, and the bench would time that)."""
    from kubernetes import client

    from omnitrain.devcluster import kueue, kueue_up

    (root / "pids").mkdir(exist_ok=True)  # kueue_up keeps its pid file there, as in the local cluster's folder
    kueue_up.start_kueue(root, api)
    client.CoreV1Api(api).create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(name=namespace)))
    kueue_up.add_queues(api, [namespace], quota)
    custom = client.CustomObjectsApi(api)

    def active() -> bool:
        cq: Any = custom.get_cluster_custom_object(WORKLOAD_GROUP, "v1beta2", "clusterqueues", kueue.CLUSTER_QUEUE)
        return any(
            c["type"] == "Active" and c["status"] == "True" for c in (cq.get("status") or {}).get("conditions") or []
        )

    wait_for(active, 60, "ClusterQueue Active", interval=0.5)


def one_run(
    api: Any,
    label: str,
    plans: list[JobPlan],
    namespace: str,
    queue: str | None,
    pool: str | None,
    budget: int,
    args: Any,
) -> RunResult:
    demand = sum(p.nodes for p in plans) * GPUS_PER_NODE
    print(f"{label}: {len(plans)} jobs ({demand} GPUs in all), GPU budget {budget}", flush=True)
    result = run_stream(api, label, plans, namespace, queue, pool, budget, args)
    time.sleep(3)  # the operator writes the last Succeeded phases before the statuses are read
    result.statuses = statuses_of(api, namespace, plans)
    print(per_job_table(result), flush=True)
    if result.kueue:
        print(preemption_table(result), flush=True)
    return result


def keep_logs(root: Path, folder: Path) -> None:
    """The throwaway plane's logs and Kueue's, copied before its folder is removed."""
    import shutil

    folder.mkdir(parents=True, exist_ok=True)
    for log in [*root.glob("*.log"), *(root / "logs").glob("*.log")]:
        shutil.copyfile(log, folder / log.name)
    print(f"logs: {folder}")


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--nodes", type=int, default=64, help="kwok nodes of 8 GPUs")
    parser.add_argument("--quota", type=int, default=384, help="Kueue's nvidia.com/gpu quota")
    parser.add_argument("--baseline-nodes", type=int, help="nodes the run without a queue may use (quota / 8)")
    parser.add_argument("--jobs", type=int, default=24)
    parser.add_argument("--gap", type=float, default=3.0, help="mean seconds between two arrivals")
    parser.add_argument("--run", type=float, default=30.0, help="mean seconds a job runs before it ends")
    parser.add_argument("--high-fraction", type=float, default=0.25, help="share of omnitrain-high jobs")
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--schedule-timeout", type=int, default=15, help="spec.scheduling.scheduleTimeoutSeconds")
    parser.add_argument("--requeue-backoff", type=int, default=5, help="spec.scheduling.requeueBackoffSeconds")
    parser.add_argument("--timeout", type=float, default=420.0, help="per run: a stream that does not drain stops")
    parser.add_argument("--plot", type=Path, default=REPO / "docs" / "img" / "admission.png")
    parser.add_argument("--keep-logs", type=Path, help="copy the control plane's and Kueue's logs here at the end")
    return parser.parse_args()


def main() -> int:
    import signal

    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # unwind the context managers: everything stops
    args = parse_args()
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    baseline_nodes = args.baseline_nodes or min(args.nodes, args.quota // GPUS_PER_NODE)
    sizes = [n for n in SIZES if n * GPUS_PER_NODE <= args.quota and n <= min(args.nodes, baseline_nodes)]
    plans = make_stream(args.jobs, args.seed, args.gap, args.run, sizes, args.high_fraction)
    from kubernetes import client

    from omnitrain.devcluster import kueue, kueue_up
    from omnitrain.operator.kube import Kube

    results = []
    with kwok_cluster("omnitrain-bench-admission-", args.nodes) as (api, health):
        root = Path(os.environ["KUBECONFIG"]).parent  # the throwaway plane's folder holds Kueue's state too
        label_pool(api, baseline_nodes)
        for obj in kueue.priority_classes():  # both runs' jobs name them; without Kueue they only order the queue
            kueue_up.apply(api, obj)
        kube = Kube(client.ApiClient())
        stop, thread = run_operator(kube, 16)
        try:
            budget = baseline_nodes * GPUS_PER_NODE
            results.append(one_run(api, "no queue", plans, "adm-plain", None, "baseline", budget, args))
            clean_namespace(api, "adm-plain")
            start_kueue(api, root, "adm-kueue", args.quota)
            results.append(one_run(api, "Kueue", plans, "adm-kueue", kueue.LOCAL_QUEUE, None, args.quota, args))
        finally:
            stop.set()
            thread.join(30)
            kueue_up.stop_kueue(root)  # a detached process: the control plane's teardown would not stop it
            if args.keep_logs:
                keep_logs(root, args.keep_logs)
        print(health.summary())  # a figure measured across a node flap is not an admission time
    print(
        f"\n{args.jobs} jobs (seed {args.seed}, sizes {sizes} x {GPUS_PER_NODE} GPUs, "
        f"{args.high_fraction:.0%} high), {args.nodes} kwok nodes; no queue: {baseline_nodes}-node pool, "
        f"scheduleTimeoutSeconds {args.schedule_timeout}; Kueue: quota {args.quota} GPUs\n"
    )
    print(side_by_side(results))
    print(NOT_MEASURED)
    plot(results, args.plot)
    return 0


if __name__ == "__main__":
    sys.exit(main())
