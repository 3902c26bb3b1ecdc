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
import asyncio
import os
import sys
import tempfile
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from omnitrain.devcluster.testing import wait_for  # noqa: E402
from omnitrain.devcluster.throwaway import control_plane  # noqa: E402
from omnitrain.operator import plan  # noqa: E402

KWOK = "kwok.x-k8s.io/node"


def make_nodes(core, count: int, racks: int = 8) -> None:
    from concurrent.futures import ThreadPoolExecutor

    capacity = {"cpu": "96", "memory": "1536Gi", "pods": "110", "nvidia.com/gpu": "8"}

    def one(i: int) -> None:
        name = f"gpu-{i:04d}"
        core.create_node(
            {
                "metadata": {
                    "name": name,
                    "annotations": {KWOK: "fake"},
                    "labels": {
                        "type": "kwok",
                        "kubernetes.io/hostname": name,
                        "topology.kubernetes.io/rack": f"rack-{i % racks}",
                    },
                },
                "spec": {"taints": [{"key": KWOK, "value": "fake", "effect": "NoSchedule"}]},
            }
        )
        core.patch_node_status(name, {"status": {"capacity": capacity, "allocatable": capacity}})

    with ThreadPoolExecutor(16) as pool:
        list(pool.map(one, range(count)))


class PodClock:
    """Watches the job's pods: when the last one was created and when the last one was Running."""

    def __init__(self, api, namespace: str, job: str, expected: int) -> None:
        self.api, self.ns, self.job, self.expected = api, namespace, job, expected
        self.created: dict[str, float] = {}
        self.running: dict[str, float] = {}
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._watch, daemon=True)
        self.thread.start()

    def _watch(self) -> None:
        from kubernetes import client, watch

        core = client.CoreV1Api(self.api)
        w = watch.Watch()
        while not self.stop.is_set():
            try:
                for ev in w.stream(
                    core.list_namespaced_pod,
                    self.ns,
                    label_selector=plan.job_selector(self.job),
                    timeout_seconds=5,
                ):
                    pod, now = ev["object"], time.monotonic()
                    self.created.setdefault(pod.metadata.name, now)
                    if pod.status and pod.status.phase == "Running":
                        self.running.setdefault(pod.metadata.name, now)
                    if self.stop.is_set():
                        break
            except Exception as exc:  # an overloaded API server answers a watch with 504: watch again (relists)
                print(f"  (pod watch: {exc.__class__.__name__}; watching again)", flush=True)

    def done(self) -> bool:
        return len(self.running) >= self.expected


def run_operator(kube, workers: int):
    import kopf

    from omnitrain.operator import handlers
    from omnitrain.operator.settings import OperatorSettings

    settings = OperatorSettings(resync_seconds=5.0, create_workers=workers)
    kube.create_workers = workers
    handlers.install(settings, kube=kube)

    # kopf's default login reads the kubernetes client's default kubeconfig path, fixed when `kubernetes` was
    # first imported (before this process set KUBECONFIG): without this, kopf's watches never start and only the
    # resync thread launches jobs.
    @kopf.on.login()
    def login(**kwargs):
        return kopf.login_with_kubeconfig(**kwargs)

    stop, ready = threading.Event(), threading.Event()
    thread = threading.Thread(
        target=lambda: asyncio.run(kopf.operator(clusterwide=True, standalone=True, stop_flag=stop, ready_flag=ready)),
        daemon=True,
    )
    thread.start()
    ready.wait(60)
    return stop, thread


def measure(api, kube, nodes: int, workers: int, tag: str) -> dict:
    from kubernetes import client

    from omnitrain.operator import crd

    ns = f"bench-{tag}"
    client.CoreV1Api(api).create_namespace({"metadata": {"name": ns}})
    spec = {
        "parallelism": {"nodes": nodes, "gpusPerNode": 8},
        "training": {"steps": 10},
        "scheduling": {
            "nodeSelector": {"type": "kwok"},
            "tolerations": [{"key": KWOK, "operator": "Exists", "effect": "NoSchedule"}],
        },
    }
    clock = PodClock(api, ns, "launch", nodes)
    calls0 = kube.counter.calls
    t0 = time.monotonic()
    client.CustomObjectsApi(api).create_namespaced_custom_object(
        crd.GROUP,
        crd.VERSION,
        ns,
        crd.PLURAL,
        {"apiVersion": crd.API_VERSION, "kind": crd.KIND, "metadata": {"name": "launch"}, "spec": spec},
    )
    last = [time.monotonic()]

    def progress():
        if time.monotonic() - last[0] > 5:
            last[0] = time.monotonic()
            print(f"  ... {len(clock.created)}/{nodes} created, {len(clock.running)}/{nodes} running", flush=True)
        return clock.done()

    wait_for(progress, 600, f"{nodes} pods Running", interval=0.2)
    # the operator sees Running too and writes the phase: count its calls until then
    wait_for(
        lambda: (
            (
                client.CustomObjectsApi(api)
                .get_namespaced_custom_object(crd.GROUP, crd.VERSION, ns, crd.PLURAL, "launch")
                .get("status")
                or {}
            ).get("phase")
            == "Running"
        ),
        120,
        "phase Running",
        interval=0.2,
    )
    calls = kube.counter.calls - calls0
    clock.stop.set()
    created = max(clock.created.values()) - t0
    running = max(clock.running.values()) - t0
    # clean up: the next measurement starts from empty nodes
    client.CustomObjectsApi(api).delete_namespaced_custom_object(crd.GROUP, crd.VERSION, ns, crd.PLURAL, "launch")
    core = client.CoreV1Api(api)
    core.delete_collection_namespaced_pod(ns, grace_period_seconds=0)
    wait_for(lambda: not core.list_namespaced_pod(ns, limit=1).items, 300, "pods gone", interval=0.5)
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
    from kubernetes import client, config

    from omnitrain.operator.kube import Kube

    with (
        tempfile.TemporaryDirectory(prefix="omnitrain-bench-launch-") as tmp,
        control_plane(Path(tmp), scheduler=True, kwok=True) as kubeconfig,
    ):
        os.environ["KUBECONFIG"] = str(kubeconfig)
        config.load_kube_config(str(kubeconfig))
        api = config.new_client_from_config(str(kubeconfig))
        import yaml

        client.ApiextensionsV1Api(api).create_custom_resource_definition(
            yaml.safe_load((REPO / "manifests" / "crd" / "omnitrainingjobs.yaml").read_text())
        )
        most = max(args.nodes)
        print(f"creating {most} kwok nodes ...", flush=True)
        make_nodes(client.CoreV1Api(api), most)
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
