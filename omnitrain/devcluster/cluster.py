"""The whole local cluster: control plane + node agent + optional kwok, under one folder. `up` is idempotent."""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from omnitrain.devcluster import kwok, procs, provisioner, runtime
from omnitrain.devcluster.binaries import REPO_ROOT, ensure_binaries
from omnitrain.devcluster.controlplane import ControlPlane, free_port
from omnitrain.devcluster.nodes import LOCAL_LABEL, NodeShape, create_node, delete_node, kwok_node_body, local_node_body
from omnitrain.devcluster.podspec import claim_dir

DEFAULT_ROOT = REPO_ROOT / ".dev" / "cluster"


def local_node_names(count: int) -> list[str]:
    return [f"local-node-{i}" for i in range(count)]


def kwok_node_names(count: int) -> list[str]:
    return [f"kwok-node-{i}" for i in range(count)]


@dataclass
class LocalCluster:
    """Handle on a local cluster folder (see the package docstring for the interface tests rely on)."""

    root: Path = DEFAULT_ROOT

    def __post_init__(self):
        self.root = Path(self.root).resolve()

    # -- paths the tests use ---------------------------------------------------------------------------------
    @property
    def kubeconfig(self) -> Path:
        return self.root / "kubeconfig"

    @property
    def node_names(self) -> list[str]:
        return sorted(
            n["metadata"]["name"]
            for n in self._list_nodes(f"{LOCAL_LABEL}=true")
            if "kwok.x-k8s.io/node" not in (n["metadata"].get("annotations") or {})
        )

    def node_dir(self, node: str) -> Path:
        return self.root / "nodes" / node

    def pv_dir(self, claim: str) -> Path:
        return claim_dir(self.root, claim)

    def pod_dir(self, namespace: str, name: str) -> Path:
        return runtime.pod_dir(self.root, namespace, name)

    def container_log(self, namespace: str, name: str, container: str) -> Path:
        return runtime.container_log(self.root, namespace, name, container)

    def api_client(self):
        from kubernetes import config

        return config.new_client_from_config(str(self.kubeconfig))

    # -- lifecycle -------------------------------------------------------------------------------------------
    def control_plane(self) -> ControlPlane:
        from omnitrain.devcluster.binaries import bin_dir

        return ControlPlane(self.root, bin_dir())

    @property
    def agent_pid(self) -> Path:
        return self.root / "pids" / "agent.pid"

    @property
    def kwok_pid(self) -> Path:
        return self.root / "pids" / "kwok.pid"

    def up(
        self, nodes: int = 2, gpus_per_node: int = 2, kwok_nodes: int = 0, log: Callable[[str], None] = print
    ) -> LocalCluster:
        started = time.monotonic()
        ensure_binaries(log)
        self.control_plane().start(log)
        from kubernetes import client

        core = client.CoreV1Api(self.api_client())
        for i, name in enumerate(local_node_names(nodes)):
            if create_node(core, local_node_body(name, NodeShape(gpus=gpus_per_node, rack=f"rack-{i // 2}"))):
                log(f"[dev] registered node {name} ({gpus_per_node} nvidia.com/gpu)")
        if provisioner.ensure_storage_class(client.StorageV1Api(self.api_client())):
            log(
                f"[dev] default StorageClass {provisioner.STORAGE_CLASS} (provisioner {provisioner.PROVISIONER}, "
                f"volumes under {self.root / 'pv'})"
            )
        self.start_agent(log)
        if kwok_nodes:
            self.start_kwok(kwok_nodes, log)
        self.wait_nodes_ready(local_node_names(nodes) + kwok_node_names(kwok_nodes), log)
        self.wait_default_service_account(log)
        log(f"[dev] cluster up in {time.monotonic() - started:.1f} s")
        log(f"export KUBECONFIG={self.kubeconfig}")
        return self

    def start_agent(self, log: Callable[[str], None] = print) -> None:
        if procs.running(self.agent_pid):
            log("[dev] node agent already running")
            return
        pid = procs.spawn_detached(
            [
                sys.executable,
                "-m",
                "omnitrain.devcluster.agent",
                "--root",
                str(self.root),
                "--kubeconfig",
                str(self.control_plane().kubeconfig("agent")),
            ],
            self.root / "logs" / "agent.log",
            self.agent_pid,
        )
        log(f"[dev] started node agent (pid {pid}, log {self.root / 'logs' / 'agent.log'})")

    def stop_agent(self, log: Callable[[str], None] = print) -> None:
        """Stops the agent only: pods keep running under their shims (a new agent re-adopts them)."""
        if procs.stop(self.agent_pid, grace_s=10, group=False):
            log("[dev] stopped node agent")

    def start_kwok(self, count: int, log: Callable[[str], None] = print) -> list[str]:
        """Starts kwok (once) and registers `count` fake 8-GPU nodes kwok-node-0..; returns their names."""
        from kubernetes import client

        if not procs.running(self.kwok_pid):
            from omnitrain.devcluster.binaries import bin_dir

            config = kwok.write_config(self.root / "kwok")
            pid = procs.spawn_detached(
                kwok.kwok_argv(bin_dir(), self.control_plane().kubeconfig("agent"), config, free_port(), free_port()),
                self.root / "logs" / "kwok.log",
                self.kwok_pid,
            )
            log(f"[dev] started kwok (pid {pid})")
        core = client.CoreV1Api(self.api_client())
        names = kwok_node_names(count)
        for i, name in enumerate(names):
            create_node(core, kwok_node_body(name, rack=f"kwok-rack-{i // 4}"))
        return names

    def start_kueue(
        self, namespaces: list[str] = (), gpus: int | None = None, log: Callable[[str], None] = print
    ) -> None:
        """Kueue's manager (built once, cached like the control plane) with its CRDs and webhooks; with `gpus`, the
        queues: ClusterQueue kueue.CLUSTER_QUEUE with that nvidia.com/gpu quota and LocalQueue kueue.LOCAL_QUEUE
        in each of `namespaces`, which are marked as Kueue's (omnitrain/devcluster/kueue.py)."""
        from omnitrain.devcluster import kueue_up

        kueue_up.start_kueue(self.root, self.api_client(), log)
        if gpus is not None:
            kueue_up.add_queues(self.api_client(), list(namespaces), gpus)

    def ensure_persistent_claim(self, namespace: str, claim: str, size: str = "10Gi") -> Path:
        """A ReadWriteMany PersistentVolumeClaim of the default class, waited for until Bound (the scheduler refuses
        pods whose claim is missing or unbound); the agent's provisioner backs it with `pv_dir(claim)`.
        Idempotent (an existing claim is left as it is); returns that folder."""
        from kubernetes import client
        from kubernetes.client.exceptions import ApiException

        core = client.CoreV1Api(self.api_client())
        pvc = {
            "apiVersion": "v1",
            "kind": "PersistentVolumeClaim",
            "metadata": {"name": claim},
            "spec": {
                "accessModes": ["ReadWriteMany"],
                "storageClassName": provisioner.STORAGE_CLASS,
                "resources": {"requests": {"storage": size}},
            },
        }
        try:
            core.create_namespaced_persistent_volume_claim(namespace, pvc)
        except ApiException as exc:
            if exc.status != 409:
                raise
        deadline = time.monotonic() + 60
        while core.read_namespaced_persistent_volume_claim(claim, namespace).status.phase != "Bound":
            if time.monotonic() > deadline:
                raise TimeoutError(
                    f"PersistentVolumeClaim {namespace}/{claim} not Bound within 60 s (the node agent "
                    f"provisions it: see {self.root / 'logs' / 'agent.log'} and the claim's events)"
                )
            time.sleep(0.2)  # polling the provisioner and the PV controller's binding with a deadline
        folder = self.pv_dir(claim)
        # a claim bound to a volume made by hand maps to the same folder, which then may not exist yet
        folder.mkdir(parents=True, exist_ok=True)
        return folder

    def add_node(self, name: str, gpus: int = 2) -> None:
        from kubernetes import client

        create_node(client.CoreV1Api(self.api_client()), local_node_body(name, NodeShape(gpus=gpus)))

    def delete_node(self, name: str) -> bool:
        from kubernetes import client

        return delete_node(client.CoreV1Api(self.api_client()), name)

    def wait_nodes_ready(self, names: list[str], log: Callable[[str], None] = print, timeout_s: float = 60) -> None:
        deadline = time.monotonic() + timeout_s
        last = 0.0
        while True:
            nodes = {n["metadata"]["name"]: n for n in self._list_nodes()}
            pending = [n for n in names if not _node_ready(nodes.get(n))]
            if not pending:
                return
            if time.monotonic() > deadline:
                raise TimeoutError(f"nodes not Ready within {timeout_s:.0f} s: {pending} (logs: {self.root / 'logs'})")
            if time.monotonic() - last > 5:
                log(f"[dev] waiting for nodes to be Ready: {', '.join(pending)}")
                last = time.monotonic()
            time.sleep(0.2)  # polling node conditions with a deadline

    def wait_default_service_account(
        self, log: Callable[[str], None] = print, namespace: str = "default", timeout_s: float = 60
    ) -> None:
        """Pods are refused until the controller-manager has created the namespace's `default` ServiceAccount."""
        from kubernetes import client
        from kubernetes.client.exceptions import ApiException

        core = client.CoreV1Api(self.api_client())
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                core.read_namespaced_service_account("default", namespace)
                return
            except ApiException as exc:
                if exc.status != 404:
                    raise
            if time.monotonic() > deadline:
                raise TimeoutError(
                    f"ServiceAccount {namespace}/default not created within {timeout_s:.0f} s; "
                    f"see {self.root / 'logs' / 'kube-controller-manager.log'}"
                )
            time.sleep(0.2)  # polling with a deadline

    def down(self, log: Callable[[str], None] = print) -> None:
        """Stops kwok, the agent, every pod process and the control plane. State stays (a later `up` resumes)."""
        if procs.stop(self.kwok_pid, grace_s=10):
            log("[dev] stopped kwok")
        if procs.stop(self.root / "pids" / "kueue.pid", grace_s=10):
            log("[dev] stopped Kueue")
        self.stop_agent(log)
        for pod_json in (self.root / "pods").glob("*/*/pod.json"):
            runtime.kill_leftovers(pod_json.parent)
        self.control_plane().stop(log)

    def status(self) -> dict:
        cp = self.control_plane()
        running = cp.running()
        running["node-agent"] = procs.running(self.agent_pid)
        running["kwok"] = procs.running(self.kwok_pid)
        report = {"root": str(self.root), "kubeconfig": str(self.kubeconfig), "processes": running}
        if running["kube-apiserver"]:
            ok, detail = cp.probe(f"{cp.server}/readyz")
            report["apiserver"] = {"url": cp.server, "ready": ok}
            if ok:
                report["nodes"] = {n["metadata"]["name"]: _node_ready(n) for n in self._list_nodes()}
        return report

    def _list_nodes(self, selector: str = "") -> list[dict]:
        from kubernetes import client

        core = client.CoreV1Api(self.api_client())
        return json.loads(core.list_node(label_selector=selector, _preload_content=False).data)["items"]


NOT_READY_TAINTS = ("node.kubernetes.io/not-ready", "node.kubernetes.io/unreachable")


def _node_ready(node: dict | None) -> bool:
    """Ready, and schedulable: a new Node carries the not-ready taint (TaintNodesByCondition admission) until the
    node lifecycle controller has seen the Ready condition."""
    if node is None:
        return False
    if any(t["key"] in NOT_READY_TAINTS for t in node.get("spec", {}).get("taints") or []):
        return False
    return any(c["type"] == "Ready" and c["status"] == "True" for c in node.get("status", {}).get("conditions") or [])
