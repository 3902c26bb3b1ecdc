"""Gang admission on a shared pool (issue 16): a stream of OmniTrainingJobs of mixed sizes and priorities on kwok
GPU nodes, once through the real Kueue (ClusterQueue with an nvidia.com/gpu quota) and once without a queue (the
operator's own scheduleTimeoutSeconds), side by side in one run on one control plane.

    .venv/bin/python bench/admission.py [--nodes 64] [--quota 384] [--jobs 24] [--seed 7]

Per job: seconds from apply to its gang placed whole (every pod of the attempt bound to a node; with Kueue that
follows admission) and to phase Running. Every second: GPUs held by pods of gangs that are not placed whole (some
pods bound, others waiting: GPUs idle while rendezvous waits), and with Kueue also GPUs held by pods whose pod group
Kueue has not admitted (must be 0 at every sample). High-priority jobs preempt low ones under Kueue: the time from
Preempted to the low job admitted again. kwok runs no trainer, so a job "finishes" when the bench deletes it after
it has been Running for its run time, and "resumed from step" is not measured here (the e2e test with the real
trainer checks that: tests/resilience/test_e2e_faults.py).
"""

from __future__ import annotations

import argparse
import os
import random
import statistics
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from kwokbench import create_job, kwok_cluster, kwok_job_spec, run_operator  # noqa: E402

GPUS_PER_NODE = 8
SIZES = (2, 4, 8, 16)  # nodes per job


@dataclass
class Job:
    name: str
    nodes: int
    priority: str
    arrive_s: float  # after the stream starts
    run_s: float  # Running this long, then the bench deletes it (kwok pods never end by themselves)
    applied: float | None = None
    placed: float | None = None
    running: float | None = None
    running_since: float | None = None
    preempted_at: list[float] = field(default_factory=list)
    readmitted_after: list[float] = field(default_factory=list)
    done: bool = False


def stream(count: int, seed: int, gap_s: float, run_s: float, largest: int) -> list[Job]:
    """The same jobs for both runs: sizes (at most `largest` nodes, what the quota holds), priorities (a quarter
    high), arrivals and run times from one seed."""
    rng = random.Random(seed)
    sizes = [n for n in SIZES if n <= largest] or [largest]
    return [
        Job(
            name=f"j{i:02d}",
            nodes=rng.choice(sizes),
            priority="omnitrain-high" if rng.random() < 0.25 else "omnitrain-low",
            arrive_s=i * gap_s,
            run_s=run_s * rng.uniform(0.7, 1.3),
        )
        for i in range(count)
    ]


def job_spec(job: Job, queue: str | None) -> dict:
    spec = kwok_job_spec(job.nodes)
    spec["scheduling"] |= {
        "priorityClassName": job.priority,
        "scheduleTimeoutSeconds": 15,
        "requeueBackoffSeconds": 5,
    }
    if queue:
        spec["scheduling"]["queueName"] = queue
    return spec


@dataclass
class Sample:
    t: float
    partial_gang_gpus: int  # bound pods of attempts with some pods still unbound
    unadmitted_gpus: int  # bound pods of pod groups Kueue has not admitted (Kueue run only)


def admitted_groups(api, namespace: str) -> set[str]:
    from kubernetes import client

    from omnitrain.operator.admission import WORKLOAD_GROUP, WORKLOAD_PLURAL, WORKLOAD_VERSION

    listed = client.CustomObjectsApi(api).list_namespaced_custom_object(
        WORKLOAD_GROUP, WORKLOAD_VERSION, namespace, WORKLOAD_PLURAL
    )
    out = set()
    for w in listed["items"]:
        conditions = {c["type"]: c["status"] for c in (w.get("status") or {}).get("conditions") or []}
        if conditions.get("Admitted") == "True":
            out.add(w["metadata"]["name"])
    return out


def sample(api, namespace: str, t: float, with_kueue: bool) -> tuple[Sample, dict[tuple[str, str], tuple[int, int]]]:
    """GPUs held now by gangs not placed whole (and, with Kueue, by groups not admitted); per (job, attempt):
    (pods bound, pods)."""
    from kubernetes import client

    from omnitrain.operator import plan

    pods = client.CoreV1Api(api).list_namespaced_pod(namespace).items
    gangs: dict[tuple[str, str], list] = {}
    for pod in pods:
        if pod.metadata.deletion_timestamp:
            continue
        labels = pod.metadata.labels or {}
        gangs.setdefault((labels.get(plan.LABEL_JOB, ""), labels.get(plan.LABEL_ATTEMPT, "")), []).append(pod)
    admitted = admitted_groups(api, namespace) if with_kueue else set()
    partial = unadmitted = 0
    counts = {}
    for (job, attempt), members in gangs.items():
        bound = sum(1 for p in members if p.spec.node_name)
        counts[(job, attempt)] = (bound, len(members))
        if 0 < bound < len(members):
            partial += bound * GPUS_PER_NODE
        if with_kueue and plan.pod_group_name(job, int(attempt or 0)) not in admitted:
            unadmitted += bound * GPUS_PER_NODE
    return Sample(t, partial, unadmitted), counts


def run_stream(api, jobs: list[Job], namespace: str, queue: str | None, timeout_s: float) -> list[Sample]:
    """Apply the jobs at their arrival times, watch them, delete each after its run time; until all are done."""
    from kubernetes import client

    from omnitrain.operator import crd, plan

    custom = client.CustomObjectsApi(api)
    samples: list[Sample] = []
    t0 = time.monotonic()
    last_line = 0.0
    while not all(j.done for j in jobs):
        now = time.monotonic() - t0
        if now > timeout_s:
            print(f"  timed out after {timeout_s:.0f} s with {sum(not j.done for j in jobs)} jobs left", flush=True)
            break
        for j in jobs:
            if j.applied is None and now >= j.arrive_s:
                create_job(api, namespace, j.name, job_spec(j, queue))
                j.applied = now
        s, gangs = sample(api, namespace, now, queue is not None)
        samples.append(s)
        statuses = {
            o["metadata"]["name"]: o.get("status") or {}
            for o in custom.list_namespaced_custom_object(crd.GROUP, crd.VERSION, namespace, crd.PLURAL)["items"]
        }
        for j in jobs:
            st = statuses.get(j.name)
            if j.done or j.applied is None or st is None:
                continue
            attempt = str(st.get("attempt") or 0)
            bound, total = gangs.get((plan.label_value(j.name), attempt), (0, 0))
            if j.placed is None and total == j.nodes and bound == total:
                j.placed = now - j.applied
            preempted = next((c for c in st.get("conditions") or [] if c["type"] == "Preempted"), None)
            if preempted and preempted["status"] == "True" and len(j.preempted_at) == (st.get("preemptions") or 0) - 1:
                j.preempted_at.append(now)
                j.running_since = None  # its run starts again when it runs again
            if st.get("phase") == "Running":
                if j.running is None:
                    j.running = now - j.applied
                if j.running_since is None:
                    if len(j.readmitted_after) < len(j.preempted_at):
                        j.readmitted_after.append(now - j.preempted_at[-1])
                    j.running_since = now
                if now - j.running_since >= j.run_s:
                    custom.delete_namespaced_custom_object(crd.GROUP, crd.VERSION, namespace, crd.PLURAL, j.name)
                    j.done = True
        if now - last_line >= 10:
            last_line = now
            states = [
                "done" if j.done else "running" if j.running_since else "waiting" if j.applied is not None else "-"
                for j in jobs
            ]
            print(
                f"  t={now:5.0f} s  applied {sum(j.applied is not None for j in jobs)}/{len(jobs)}, "
                f"running {states.count('running')}, waiting {states.count('waiting')}, done {states.count('done')}; "
                f"GPUs in partial gangs {s.partial_gang_gpus}"
                + (f", in unadmitted groups {s.unadmitted_gpus}" if queue else ""),
                flush=True,
            )
        time.sleep(1.0)  # the sampling interval (the figures are per-second samples, not a synchronisation)
    return samples


def quantiles(values: list[float]) -> str:
    if not values:
        return "-"
    values = sorted(values)
    p90 = values[min(len(values) - 1, round(0.9 * (len(values) - 1)))]
    return f"{statistics.median(values):.1f} / {p90:.1f} / {values[-1]:.1f}"


def gpu_seconds(samples: list[Sample], attr: str) -> float:
    return sum(getattr(a, attr) * (b.t - a.t) for a, b in zip(samples, samples[1:], strict=False))


def summary(label: str, jobs: list[Job], samples: list[Sample], with_kueue: bool) -> dict:
    return {
        "run": label,
        "placed": quantiles([j.placed for j in jobs if j.placed is not None]),
        "running": quantiles([j.running for j in jobs if j.running is not None]),
        "partial_max": max((s.partial_gang_gpus for s in samples), default=0),
        "partial_gpu_s": gpu_seconds(samples, "partial_gang_gpus"),
        "unadmitted_max": max((s.unadmitted_gpus for s in samples), default=0) if with_kueue else None,
        "preemptions": sum(len(j.preempted_at) for j in jobs),
        "readmitted": quantiles([x for j in jobs for x in j.readmitted_after]),
        "wall_s": samples[-1].t if samples else 0.0,
        "finished": sum(j.done for j in jobs),
    }


def plot(runs: dict[str, list[Sample]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 3.8))
    for label, samples in runs.items():
        ts = [s.t for s in samples]
        ax.step(ts, [s.partial_gang_gpus for s in samples], where="post", label=f"{label}: GPUs in partial gangs")
        if label == "Kueue":
            ax.step(
                ts, [s.unadmitted_gpus for s in samples], ":", where="post", label="Kueue: GPUs of unadmitted groups"
            )
    ax.set_xlabel("seconds after the first job")
    ax.set_ylabel("GPUs held, nothing running")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)


def main() -> int:
    import signal

    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # unwind the context managers: the cluster stops
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--nodes", type=int, default=64)
    parser.add_argument("--quota", type=int, default=384, help="Kueue's nvidia.com/gpu quota")
    parser.add_argument("--jobs", type=int, default=24)
    parser.add_argument("--gap", type=float, default=3.0, help="seconds between arrivals")
    parser.add_argument("--run", type=float, default=30.0, help="mean seconds a job runs before it is deleted")
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument(
        "--timeout", type=float, default=420.0, help="per run (a stream without a queue may never drain)"
    )
    parser.add_argument("--plot", type=Path, default=REPO / "docs" / "img" / "admission.png")
    args = parser.parse_args()
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    from kubernetes import client

    from omnitrain.devcluster import kueue, kueue_up
    from omnitrain.operator.kube import Kube

    results, runs = [], {}
    with kwok_cluster("omnitrain-bench-admission-", args.nodes) as (api, health):
        for obj in kueue.priority_classes():  # both runs' jobs name them
            kueue_up.apply(api, obj)
        kube = Kube(client.ApiClient())
        stop, thread = run_operator(kube, 16)
        root = Path(os.environ["KUBECONFIG"]).parent  # the throwaway control plane's folder: Kueue's state too
        for folder in ("pids", "logs"):
            (root / folder).mkdir(exist_ok=True)
        try:
            for label, queue in (("no queue", None), ("Kueue", kueue.LOCAL_QUEUE)):
                jobs = stream(args.jobs, args.seed, args.gap, args.run, min(args.nodes, args.quota // GPUS_PER_NODE))
                namespace = "bench-kueue" if queue else "bench-plain"
                client.CoreV1Api(api).create_namespace({"metadata": {"name": namespace}})
                if queue:
                    kueue_up.start_kueue(root, api)
                    kueue_up.add_queues(api, [namespace], args.quota)
                demand = sum(j.nodes for j in jobs) * GPUS_PER_NODE
                print(
                    f"{label}: {len(jobs)} jobs ({demand} GPUs in all) on {args.nodes} nodes x {GPUS_PER_NODE} GPUs"
                    + (f", quota {args.quota} GPUs" if queue else ""),
                    flush=True,
                )
                samples = run_stream(api, jobs, namespace, queue, args.timeout)
                runs[label] = samples
                results.append(summary(label, jobs, samples, queue is not None))
        finally:
            stop.set()
            thread.join(30)
            kueue_up.stop_kueue(root)
        print(health.summary())
    print(
        "\n| run | apply -> gang placed (s, median / p90 / max) | apply -> Running (s) | GPUs in partial gangs, max "
        "| ... GPU-seconds | GPUs of unadmitted groups, max | preemptions | preempted -> running again (s) "
        "| jobs finished | wall (s) |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|")
    for r in results:
        unadmitted = "-" if r["unadmitted_max"] is None else r["unadmitted_max"]
        print(
            f"| {r['run']} | {r['placed']} | {r['running']} | {r['partial_max']} | {r['partial_gpu_s']:.0f} | "
            f"{unadmitted} | {r['preemptions']} | {r['readmitted']} | {r['finished']} | {r['wall_s']:.0f} |"
        )
    plot(runs, args.plot)
    print(f"plot: {args.plot}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
