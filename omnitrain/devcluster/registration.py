"""The nodes the agent stands in for: which ones it manages, and keeping each one alive to the control plane
(its Lease renewed every LEASE_RENEW_S, its Ready condition posted every NODE_STATUS_S, with the addresses and the
port of the agent's kubelet endpoint, kubelet.py), as a kubelet does.

A node is managed when it carries the local label and is not one of kwok's fake nodes. Without renewals the
node lifecycle controller marks the node NotReady once its Lease (LEASE_SECONDS) runs out, as for a lost machine.
"""

from __future__ import annotations

import logging
import threading
import time
from pathlib import Path

from omnitrain.devcluster.agentapi import AgentApi
from omnitrain.devcluster.nodes import KWOK_ANNOTATION, LOCAL_LABEL, node_status_patch
from omnitrain.timestamps import now_rfc3339

log = logging.getLogger(__name__)

LEASE_SECONDS = 40
LEASE_RENEW_S = 10
NODE_STATUS_S = 30
NODE_SELECTOR = f"{LOCAL_LABEL}=true"


def is_ours(node: dict) -> bool:
    """Not one of kwok's fake nodes: kwok plays their kubelet."""
    return (node["metadata"].get("annotations") or {}).get(KWOK_ANNOTATION) != "fake"


class NodeRegistry:
    """Managed nodes (name -> uid). Changed by the agent's event loop, read by the heartbeat thread."""

    def __init__(self, api: AgentApi, root: Path, kubelet_port: int) -> None:
        self.api = api
        self.root = root
        self.kubelet_port = kubelet_port
        self._nodes: dict[str, str] = {}
        self._lock = threading.Lock()

    def manages(self, name: str | None) -> bool:
        with self._lock:
            return name in self._nodes

    def names(self) -> set[str]:
        with self._lock:
            return set(self._nodes)

    def take_over(self, node: dict) -> bool:
        """Manage this node (again); True when it is new to this agent: then it is announced Ready at once."""
        name, uid = node["metadata"]["name"], node["metadata"]["uid"]
        with self._lock:
            known = name in self._nodes
            self._nodes[name] = uid
        if known:
            return False
        log.info("managing node %s", name)
        (self.root / "nodes" / name).mkdir(parents=True, exist_ok=True)
        self.post_ready(name)
        self.api.renew_lease(name, uid, LEASE_SECONDS)
        return True

    def release(self, name: str) -> bool:
        """Stop managing a node (its object is gone); True when it was managed."""
        with self._lock:
            return self._nodes.pop(name, None) is not None

    def post_ready(self, name: str) -> None:
        self.api.patch_node_status(name, node_status_patch(name, now_rfc3339(), self.kubelet_port))

    def heartbeat(self, stop: threading.Event) -> None:
        """Runs until `stop`: Leases every LEASE_RENEW_S, Ready conditions every NODE_STATUS_S."""
        last_status = 0.0
        while not stop.is_set():
            with self._lock:
                nodes = dict(self._nodes)
            status_due = time.monotonic() - last_status > NODE_STATUS_S
            for name, uid in nodes.items():
                try:
                    self.api.renew_lease(name, uid, LEASE_SECONDS)
                    if status_due:
                        self.post_ready(name)
                except Exception as exc:
                    log.warning("heartbeat of %s failed: %s", name, exc)
            if status_due:
                last_status = time.monotonic()
            stop.wait(LEASE_RENEW_S)
