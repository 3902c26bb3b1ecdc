"""The nodes the agent stands in for: which ones it manages, and keeping each one alive to the control plane
(its Lease renewed every LEASE_RENEW_S, its Ready condition posted every NODE_STATUS_S, with the addresses and the
port of the agent's kubelet endpoint, kubelet.py), as a kubelet does.

A node is managed when it carries the local label and is not one of kwok's fake nodes. Without renewals the
node lifecycle controller marks the node NotReady once its Lease (LEASE_SECONDS) runs out, as for a lost machine.

Fault injection: a node annotated `omnitrain.dev/heartbeat: paused` gets neither Lease renewals nor status posts
while the annotation is there (its pods keep running): a kubelet cut off from the API server, so a NotReady blip
can be staged (patch its Ready condition, then remove the annotation: Ready is posted again at once).
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
HEARTBEAT_ANNOTATION = "omnitrain.dev/heartbeat"
HEARTBEAT_PAUSED = "paused"


def heartbeat_paused(node: dict) -> bool:
    return (node["metadata"].get("annotations") or {}).get(HEARTBEAT_ANNOTATION) == HEARTBEAT_PAUSED


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
        self._paused: set[str] = set()  # managed nodes whose heartbeats are paused (HEARTBEAT_ANNOTATION)
        self._lock = threading.Lock()
        self._beat_lock = threading.Lock()  # held for one node's renewal + post: a pause waits out the one in flight

    def manages(self, name: str | None) -> bool:
        with self._lock:
            return name in self._nodes

    def names(self) -> set[str]:
        with self._lock:
            return set(self._nodes)

    def paused(self, name: str) -> bool:
        with self._lock:
            return name in self._paused

    def take_over(self, node: dict) -> bool:
        """Manage this node (again); True when it is new to this agent: then it is announced Ready at once."""
        name, uid = node["metadata"]["name"], node["metadata"]["uid"]
        paused = heartbeat_paused(node)
        with self._lock:
            known = name in self._nodes
            self._nodes[name] = uid
            was_paused = name in self._paused
            if paused:
                self._paused.add(name)
            else:
                self._paused.discard(name)
        if paused and not was_paused:
            with self._beat_lock:  # once this is logged, nothing is posted for the node until the pause ends
                log.warning("node %s: heartbeats paused (annotation %s)", name, HEARTBEAT_ANNOTATION)
        if known and not (was_paused and not paused):
            return False
        if known:
            log.info("node %s: heartbeats resumed", name)
        else:
            log.info("managing node %s", name)
            (self.root / "nodes" / name).mkdir(parents=True, exist_ok=True)
        if not paused:
            self.post_ready(name)
            self.api.renew_lease(name, uid, LEASE_SECONDS)
        return not known

    def release(self, name: str) -> bool:
        """Stop managing a node (its object is gone); True when it was managed."""
        with self._lock:
            self._paused.discard(name)
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
                with self._beat_lock:
                    if self.paused(name):
                        continue
                    try:
                        self.api.renew_lease(name, uid, LEASE_SECONDS)
                        if status_due:
                            self.post_ready(name)
                    except Exception as exc:
                        log.warning("heartbeat of %s failed: %s", name, exc)
            if status_due:
                last_status = time.monotonic()
            stop.wait(LEASE_RENEW_S)
