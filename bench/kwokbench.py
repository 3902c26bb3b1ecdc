"""What the benchmarks on kwok nodes share: fake GPU nodes, the operator in this process (so its API calls can be
counted), a clock of the job's pods, and a watch that proves the nodes stayed Ready for the whole run.

Why the last one: in a 512-node measurement kwok nodes whose Lease renewals fell behind turned Ready=Unknown for a
moment and the operator restarted a healthy job; a figure measured across such a flap is not a launch or a
recovery time. `NodeHealth` counts Ready transitions and the longest gap between two renewals of any node's Lease,
and the benchmarks print both next to their figures.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import tempfile
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from omnitrain.operator import plan

REPO = Path(__file__).resolve().parents[1]
KWOK = "kwok.x-k8s.io/node"
NODE_LEASE_NAMESPACE = "kube-node-lease"
KWOK_NODE_LABELS = "type=kwok"


def make_nodes(core, count: int, racks: int = 8) -> None:
    """`count` fake 8-GPU nodes `gpu-0000`..., labelled type=kwok, tainted so only the bench's pods go there."""
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


@contextlib.contextmanager
def kwok_cluster(prefix: str, nodes: int) -> Iterator[tuple[object, NodeHealth]]:
    """(api client, node health) of a throwaway control plane with kwok, the CRD installed and `nodes` kwok nodes
    Ready; KUBECONFIG points at it (the in-process operator reads it). Health is watched until the block ends."""
    import yaml
    from kubernetes import client, config

    from omnitrain.devcluster.testing import wait_for
    from omnitrain.devcluster.throwaway import control_plane

    with (
        tempfile.TemporaryDirectory(prefix=prefix) as tmp,
        control_plane(Path(tmp), scheduler=True, kwok=True) as kubeconfig,
    ):
        os.environ["KUBECONFIG"] = str(kubeconfig)
        config.load_kube_config(str(kubeconfig))
        api = config.new_client_from_config(str(kubeconfig))
        client.ApiextensionsV1Api(api).create_custom_resource_definition(
            yaml.safe_load((REPO / "manifests" / "crd" / "omnitrainingjobs.yaml").read_text())
        )
        print(f"creating {nodes} kwok nodes ...", flush=True)
        make_nodes(client.CoreV1Api(api), nodes)
        health = NodeHealth().start(api)
        try:
            wait_for(lambda: len(health.ready) >= nodes, 300, f"{nodes} kwok nodes Ready", interval=0.5)
            yield api, health
        finally:
            health.stop.set()


def kwok_job_spec(nodes: int, **sections: dict) -> dict:
    """An OmniTrainingJob spec whose pods go to the kwok nodes; `sections` (e.g. resilience=...) are added."""
    return {
        "parallelism": {"nodes": nodes, "gpusPerNode": 8},
        "training": {"steps": 10},
        "scheduling": {
            "nodeSelector": {"type": "kwok"},
            "tolerations": [{"key": KWOK, "operator": "Exists", "effect": "NoSchedule"}],
        },
        **sections,
    }


def create_job(api, namespace: str, name: str, spec: dict) -> None:
    """The namespace (if new) and an OmniTrainingJob in it."""
    from kubernetes import client
    from kubernetes.client.exceptions import ApiException

    from omnitrain.operator import crd

    try:
        client.CoreV1Api(api).create_namespace({"metadata": {"name": namespace}})
    except ApiException as exc:
        if exc.status != 409:
            raise
    client.CustomObjectsApi(api).create_namespaced_custom_object(
        crd.GROUP,
        crd.VERSION,
        namespace,
        crd.PLURAL,
        {"apiVersion": crd.API_VERSION, "kind": crd.KIND, "metadata": {"name": name}, "spec": spec},
    )


def job_status(api, namespace: str, name: str) -> dict:
    from kubernetes import client

    from omnitrain.operator import crd

    job = client.CustomObjectsApi(api).get_namespaced_custom_object(crd.GROUP, crd.VERSION, namespace, crd.PLURAL, name)
    return job.get("status") or {}


def delete_job(api, namespace: str, name: str) -> None:
    """Delete the job and its pods at once, and wait until they are gone: the next measurement starts from empty
    nodes."""
    from kubernetes import client

    from omnitrain.devcluster.testing import wait_for
    from omnitrain.operator import crd

    client.CustomObjectsApi(api).delete_namespaced_custom_object(crd.GROUP, crd.VERSION, namespace, crd.PLURAL, name)
    core = client.CoreV1Api(api)
    core.delete_collection_namespaced_pod(namespace, grace_period_seconds=0)
    wait_for(lambda: not core.list_namespaced_pod(namespace, limit=1).items, 300, "pods gone", interval=0.5)


def watch_forever(stop: threading.Event, what: str, stream) -> None:
    """Runs `stream()` (a finite watch) again until `stop`: an overloaded API server ends watches with a 504. Silent
    once `stop` is set: a watch still open when the control plane goes away at the end is no news."""
    while not stop.is_set():
        try:
            stream()
        except Exception as exc:
            if not stop.is_set():
                print(f"  ({what} watch: {exc.__class__.__name__}; watching again)", flush=True)


class PodClock:
    """Watches the job's pods: when each was first seen, and when each was first Running."""

    def __init__(self, api, namespace: str, job: str, expected: int) -> None:
        self.api, self.ns, self.job, self.expected = api, namespace, job, expected
        self.created: dict[str, float] = {}
        self.running: dict[str, float] = {}
        self.stop = threading.Event()
        self.thread = threading.Thread(target=watch_forever, args=(self.stop, "pod", self._stream), daemon=True)
        self.thread.start()

    def _stream(self) -> None:
        from kubernetes import client, watch

        core = client.CoreV1Api(self.api)
        for ev in watch.Watch().stream(
            core.list_namespaced_pod, self.ns, label_selector=plan.job_selector(self.job), timeout_seconds=5
        ):
            pod, now = ev["object"], time.monotonic()
            self.created.setdefault(pod.metadata.name, now)
            if pod.status and pod.status.phase == "Running":
                self.running.setdefault(pod.metadata.name, now)
            if self.stop.is_set():
                return

    def done(self) -> bool:
        return len(self.running) >= self.expected


class NodeHealth:
    """Ready transitions of the kwok nodes and the longest gap between renewals of their Leases, from watches.

    A transition is a change of a node's Ready status from the one seen before (a node first seen counts from its
    first Ready=True, so start-up does not count). The gap is measured between two renewTimes of one Lease as the
    API server recorded them, so a loaded bench process does not inflate it."""

    def __init__(self) -> None:
        self.api = None
        self.ready: dict[str, str] = {}
        self.transitions: list[tuple[float, str, str]] = []  # (monotonic time, node, new status)
        self.renewed: dict[str, float] = {}  # lease -> last renewTime (epoch seconds)
        self.longest_gap_s = 0.0
        self.longest_gap_node = ""
        self.renewals = 0  # renewals seen after a Lease's first sighting (the gaps measured)
        self.lock = threading.Lock()
        self.stop = threading.Event()

    def start(self, api) -> NodeHealth:
        """Watch the kwok nodes and their Leases through `api` until `stop`."""
        self.api = api
        for what, stream in (("node", self._nodes), ("lease", self._leases)):
            threading.Thread(target=watch_forever, args=(self.stop, what, stream), daemon=True).start()
        return self

    def _nodes(self) -> None:
        from kubernetes import client, watch

        core = client.CoreV1Api(self.api)
        for ev in watch.Watch().stream(core.list_node, label_selector=KWOK_NODE_LABELS, timeout_seconds=30):
            node = ev["object"]
            ready = next((c.status for c in (node.status.conditions or []) if c.type == "Ready"), "Unknown")
            self.saw_ready(node.metadata.name, ready)
            if self.stop.is_set():
                return

    def saw_ready(self, node: str, status: str) -> None:
        with self.lock:
            before = self.ready.get(node)
            if before is None and status != "True":
                return  # not Ready yet since its creation: start-up, not a flap
            if before is not None and before != status:
                self.transitions.append((time.monotonic(), node, status))
            self.ready[node] = status

    def _leases(self) -> None:
        from kubernetes import client, watch

        coord = client.CoordinationV1Api(self.api)
        for ev in watch.Watch().stream(
            coord.list_namespaced_lease, NODE_LEASE_NAMESPACE, timeout_seconds=30, allow_watch_bookmarks=False
        ):
            lease = ev["object"]
            if lease.spec and lease.spec.renew_time:
                self.saw_renewal(lease.metadata.name, lease.spec.renew_time.timestamp())
            if self.stop.is_set():
                return

    def saw_renewal(self, lease: str, renewed_at: float) -> None:
        with self.lock:
            before = self.renewed.get(lease)
            if before is not None and renewed_at > before:
                self.renewals += 1
            if before is not None and renewed_at - before > self.longest_gap_s:
                self.longest_gap_s, self.longest_gap_node = renewed_at - before, lease
            self.renewed[lease] = max(renewed_at, before or 0.0)

    def not_ready_now(self) -> list[str]:
        with self.lock:
            return sorted(n for n, s in self.ready.items() if s != "True")

    def summary(self) -> str:
        with self.lock:
            flaps = len(self.transitions)
            nodes = len({n for _, n, _ in self.transitions})
            gap = (
                f"longest Lease renewal gap {self.longest_gap_s:.1f} s ({self.longest_gap_node}) over "
                f"{self.renewals} renewals of {len(self.renewed)} leases"
                if self.renewals
                else f"no renewal of the {len(self.renewed)} leases seen yet (a run shorter than their 10 s period)"
            )
            return f"node Ready transitions during the run: {flaps} ({nodes} nodes); {gap}"


def run_operator(kube, workers: int):
    """kopf with the project's handlers in a thread of this process, API calls counted by `kube.counter`;
    returns (stop flag, thread)."""
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
