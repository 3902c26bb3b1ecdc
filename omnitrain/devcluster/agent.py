"""The local node agent: a kubelet stand-in that really runs pods as process groups on this machine.

`python -m omnitrain.devcluster.agent --root CLUSTER --kubeconfig FILE` (started detached by `omnitrain dev up`).
It manages every Node labelled omnitrain.dev/local=true (keeps its Ready condition and Lease fresh), watches all
pods and runs those bound to its nodes: one shim (omnitrain.devcluster.shim) per container run, state in
<root>/pods/<ns>/<name>/. One watch of all ConfigMaps keeps the configMap volumes of running pods up to date, as a
kubelet does (a supervisor follows the gang announcement through its mounted file). Status is patched only when it
changed. A restarted agent re-adopts running pods from those folders. Deleting a managed Node kills its pods'
processes (a lost machine). It also runs the provisioner of the default StorageClass (omnitrain.devcluster.provisioner):
the process that owns the folders owns the volumes.

This module only wires the parts together, one concern each:
  watch.py         list+watch threads -> typed events -> one loop that dispatches them through a table, and ticks
  registration.py  which nodes are ours; their Leases, Ready conditions, addresses and kubelet port
  kubelet.py       the kubelet's HTTPS endpoint the API server dials for `kubectl logs`
  pods.py          admitting/adopting pods, starting containers, restarts, deletion, status patches
  launch.py        a container's spec for its shim: env, argv, DNS names and volumes resolved, mounts
  filevolumes.py   configMap/secret volume folders, written and updated atomically (`..data` swapped)
  probes.py        readiness probes
  podstatus.py     the pod status as a pure function of the pod and what the shims recorded
  runtime.py       the on-disk state of pods and containers (what the shims write), pod IPs
  agentapi.py      the API calls
"""

from __future__ import annotations

import argparse
import logging
import queue
import signal
import sys
import threading
import time
from pathlib import Path

from omnitrain.devcluster import provisioner, watch
from omnitrain.devcluster.agentapi import AgentApi
from omnitrain.devcluster.certs import ClusterPKI
from omnitrain.devcluster.kubelet import KubeletServer
from omnitrain.devcluster.launch import Launcher, mount_namespaces_work
from omnitrain.devcluster.pods import PodSupervisor
from omnitrain.devcluster.registration import NodeRegistry
from omnitrain.devcluster.watch import Change

log = logging.getLogger(__name__)


class Agent:
    def __init__(self, root: Path, kubeconfig: Path) -> None:
        from kubernetes import config

        self.root = root
        self.kubeconfig = kubeconfig
        api_client = config.new_client_from_config(str(kubeconfig))
        (root / "agent").mkdir(parents=True, exist_ok=True)
        self.api = AgentApi(api_client)
        self.events: queue.Queue = queue.Queue()
        self.stop_event = threading.Event()
        self.kubelet = KubeletServer(root, ClusterPKI(root / "pki"), self.stop_event)
        self.nodes = NodeRegistry(self.api, root, self.kubelet.port)
        self.launcher = Launcher(root, self.api, mount_namespaces_work(), api_server_address(api_client))
        self.pods = PodSupervisor(root, self.api, self.launcher, self.nodes.manages)
        self.provisioner = provisioner.Provisioner(api_client, root, self.stop_event)
        self.handlers: watch.Handlers = {
            watch.NodesListed: self._nodes_listed,
            watch.NodeSeen: self._node_seen,
            watch.NodeDeleted: self._node_deleted,
            watch.PodsListed: lambda e: self.pods.listed(e.pods, e.resource_version),
            watch.PodChanged: lambda e: self.pods.changed(e.change, e.pod),
            watch.ConfigMapsListed: lambda e: self.pods.configmaps_changed(e.configmaps),
            watch.ConfigMapChanged: lambda e: self.pods.configmaps_changed([e.configmap]),
        }

    def run(self) -> None:
        log.info(
            "agent starting (root %s, mount namespaces %s, kubelet endpoint https://127.0.0.1:%d)",
            self.root,
            "on" if self.launcher.mount_ns else "off",
            self.kubelet.port,
        )
        stop = self.stop_event
        threads = {
            "nodes": lambda: watch.watch_nodes(self.api, self.events, stop),
            "pods": lambda: watch.watch_pods(self.api, self.events, stop),
            "configmaps": lambda: watch.watch_configmaps(self.api, self.events, stop),
            "beat": lambda: self.nodes.heartbeat(stop),
            "pvc-watch": self.provisioner.watch_claims,
            "pv-watch": self.provisioner.watch_volumes,
            "provisioner": self.provisioner.reconcile_loop,
            "kubelet": self.kubelet.serve_forever,
        }
        for name, target in threads.items():
            threading.Thread(target=watch.guarded(name, target, stop), name=name, daemon=True).start()
        watch.run_loop(self.events, self.handlers, lambda: self.pods.tick(time.monotonic()), stop)

    # -- node events (on the loop's thread) ------------------------------------------------------------------
    def _nodes_listed(self, event: watch.NodesListed) -> None:
        listed = {n["metadata"]["name"] for n in event.nodes}
        for gone in self.nodes.names() - listed:
            self._lose_node(gone)
        for node in event.nodes:
            self._node_seen(watch.NodeSeen(node))

    def _node_seen(self, event: watch.NodeSeen) -> None:
        name = event.node["metadata"]["name"]
        if self.nodes.take_over(event.node):
            # pods bound before we managed the node (e.g. an explicit nodeName)
            for pod in self.api.list_pods(field_selector=f"spec.nodeName={name}")["items"]:
                self.pods.changed(Change.ADDED, pod)

    def _node_deleted(self, event: watch.NodeDeleted) -> None:
        if self.nodes.manages(event.name):
            self._lose_node(event.name)

    def _lose_node(self, name: str) -> None:
        log.warning("node %s deleted: killing its pods' processes", name)
        self.nodes.release(name)
        self.pods.node_lost(name)


def api_server_address(api_client) -> tuple[str, str]:
    """(host, port) of the API server the agent talks to: what its pods get as KUBERNETES_SERVICE_HOST/PORT."""
    from urllib.parse import urlsplit

    url = urlsplit(api_client.configuration.host)
    return url.hostname or "127.0.0.1", str(url.port or 443)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="omnitrain-dev-agent")
    parser.add_argument("--root", type=Path, required=True)
    parser.add_argument("--kubeconfig", type=Path, required=True)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(threadName)s %(message)s")
    logging.getLogger("urllib3").setLevel(logging.ERROR)
    agent = Agent(args.root, args.kubeconfig)
    signal.signal(signal.SIGTERM, lambda *_: agent.stop_event.set())
    agent.run()
    log.info("agent stopped (pods keep running under their shims; a new agent re-adopts them)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
