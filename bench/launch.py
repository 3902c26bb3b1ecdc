"""Launch latency of the operator against kwok nodes: time from `create OmniTrainingJob` to all pods created and to
all pods Running, and the operator's API calls per pod, for 64- and 512-node jobs; pod creation one at a time vs.
concurrent (OMNITRAIN_CREATE_WORKERS), side by side in one run.

    .venv/bin/python bench/launch.py [--nodes 64 512] [--workers 1 16]

Starts etcd, kube-apiserver, kube-controller-manager, kube-scheduler and kwok ($OMNITRAIN_CACHE/bin, `make
cluster-bins`); fake GPU nodes (8 x nvidia.com/gpu) are created here with kwok's annotation and taint. The operator
runs in this process (kopf in a thread) so its API calls can be counted.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from kwokbench import (  # noqa: E402
    PodClock,
    create_job,
    delete_job,
    job_status,
    kwok_cluster,
    kwok_job_spec,
    run_operator,
)

from omnitrain.devcluster.testing import wait_for  # noqa: E402


def measure(api, kube, nodes: int, workers: int, tag: str) -> dict:
    ns = f"bench-{tag}"
    clock = PodClock(api, ns, "launch", nodes)
    calls0 = kube.counter.calls
    t0 = time.monotonic()
    create_job(api, ns, "launch", kwok_job_spec(nodes))
    last = [time.monotonic()]

    def progress():
        if time.monotonic() - last[0] > 5:
            last[0] = time.monotonic()
            print(f"  ... {len(clock.created)}/{nodes} created, {len(clock.running)}/{nodes} running", flush=True)
        return clock.done()

    wait_for(progress, 600, f"{nodes} pods Running", interval=0.2)
    # the operator sees Running too and writes the phase: count its calls until then
    wait_for(lambda: job_status(api, ns, "launch").get("phase") == "Running", 120, "phase Running", interval=0.2)
    calls = kube.counter.calls - calls0
    clock.stop.set()
    created = max(clock.created.values()) - t0
    running = max(clock.running.values()) - t0
    delete_job(api, ns, "launch")
    return {
        "nodes": nodes,
        "workers": workers,
        "created_s": created,
        "running_s": running,
        "calls_per_pod": calls / nodes,
        "created_at": sorted(t - t0 for t in clock.created.values()),
        "running_at": sorted(t - t0 for t in clock.running.values()),
    }


def plot(results: list[dict], path: Path) -> None:
    """Pods created / Running over time after the apply, one panel per job size."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    sizes = sorted({r["nodes"] for r in results})
    fig, axes = plt.subplots(1, len(sizes), figsize=(5.5 * len(sizes), 4), squeeze=False)
    for ax, nodes in zip(axes[0], sizes):
        for r in (r for r in results if r["nodes"] == nodes):
            for key, style in (("created_at", "--"), ("running_at", "-")):
                xs = r[key]
                ax.step(
                    xs,
                    range(1, len(xs) + 1),
                    style,
                    where="post",
                    label=f"{key.split('_')[0]}, {r['workers']} create worker(s)",
                )
        ax.set_title(f"{nodes}-node job on kwok nodes")
        ax.set_xlabel("seconds after create OmniTrainingJob")
        ax.set_ylabel("pods")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)


def main() -> int:
    import signal

    # SIGTERM (e.g. `timeout`) unwinds through the context managers, so the control plane is stopped too
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--nodes", type=int, nargs="+", default=[64, 512])
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 16])
    parser.add_argument("--plot", type=Path, default=REPO / "docs" / "img" / "launch.png")
    args = parser.parse_args()
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    from kubernetes import client

    from omnitrain.operator.kube import Kube

    with kwok_cluster("omnitrain-bench-launch-", max(args.nodes)) as (api, health):
        kube = Kube(client.ApiClient())
        stop, thread = run_operator(kube, args.workers[0])
        results = []
        try:
            for nodes in args.nodes:
                for workers in args.workers:
                    kube.create_workers = workers
                    r = measure(api, kube, nodes, workers, f"{nodes}-{workers}")
                    print(
                        f"nodes={nodes:4d} workers={workers:2d}: all created {r['created_s']:6.2f} s, "
                        f"all Running {r['running_s']:6.2f} s, operator API calls/pod {r['calls_per_pod']:.2f}",
                        flush=True,
                    )
                    results.append(r)
        finally:
            stop.set()
            thread.join(30)
        # kwok nodes must stay Ready for the whole run: a flap would restart the job and spoil the figures
        print(health.summary())
        print("\n| nodes | create workers | all pods created (s) | all pods Running (s) | operator API calls / pod |")
        print("|---|---|---|---|---|")
        for r in results:
            print(
                f"| {r['nodes']} | {r['workers']} | {r['created_s']:.2f} | {r['running_s']:.2f} | "
                f"{r['calls_per_pod']:.2f} |"
            )
        plot(results, args.plot)
        print(f"plot: {args.plot}")
        for nodes in args.nodes:
            by = {r["workers"]: r for r in results if r["nodes"] == nodes}
            if len(by) >= 2:
                lo, hi = min(by), max(by)
                print(
                    f"nodes={nodes}: created {by[lo]['created_s'] / by[hi]['created_s']:.2f}x faster with "
                    f"{hi} workers than {lo}; Running {by[lo]['running_s'] / by[hi]['running_s']:.2f}x"
                )
    return 0


if __name__ == "__main__":
    sys.exit(main())
