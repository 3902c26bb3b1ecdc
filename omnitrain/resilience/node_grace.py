"""When a NotReady node counts as lost. Pure; no torch, no kopf.

Kubernetes itself does not give up on a node the moment it stops reporting: the node lifecycle controller marks it
Ready=Unknown only after node-monitor-grace-period without a heartbeat, and the taint manager evicts its pods only
after their not-ready/unreachable toleration (tolerationSeconds 300 by default). A gang restart costs every rank the
progress since the last checkpoint plus a relaunch, so a heartbeat that lapses for a moment (a busy API server, a
kubelet restart, a network blip) must not cost one. The rule, for a node an unfinished pod of the attempt runs on:

  Node deleted                                  lost at once (nothing will come back under that object)
  Ready                                         fine
  NotReady/Unknown, nodeNotReadySeconds 0       lost at once
  ... not timed (no lastTransitionTime/now)     lost at once: judged as before the rule, never a wait without end
  ... for >= nodeNotReadySeconds                lost
  ... for less                                  in its grace: its pods keep their ranks, no restart; the operator
                                                looks again at the deadline

A node in its grace is lost sooner when the job's own evidence agrees (decide.py): a pod of the attempt failed, was
deleted or went missing (the node's own pod, or a peer whose watchdog saw the node's ranks stop: a hang). Then the
normal classification applies, with the node lost. The grace counts from the Ready condition's lastTransitionTime,
so an operator restart neither resets nor extends it.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, replace

from omnitrain.resilience.classify import NodeObservation, PodObservation, on_lost_node
from omnitrain.timestamps import now_rfc3339, parse_rfc3339

NODE_NOT_READY = "NodeNotReady"  # reason of the wait (condition, event, Wait action)
NODE_READY = "NodeReady"  # reason once every node of the wait is Ready again


@dataclass(frozen=True)
class NodeGrace:
    """A NotReady node still within spec.resilience.nodeNotReadySeconds."""

    node: str
    since: str  # the Ready condition's lastTransitionTime
    deadline: str  # when it counts as lost (RFC 3339)
    seconds_left: float


def grace_of(node: NodeObservation, now: str | None, grace_seconds: int) -> NodeGrace | None:
    """The node's grace while it is NotReady and within it; None when it is Ready, gone, or counts as lost."""
    if not node.exists or node.ready or grace_seconds <= 0:
        return None
    since, at = parse_rfc3339(node.not_ready_since), parse_rfc3339(now)
    if since is None or at is None:
        return None
    left = since + grace_seconds - at
    if left <= 0:
        return None
    deadline = now_rfc3339(since + grace_seconds)
    return NodeGrace(node=node.name, since=node.not_ready_since or "", deadline=deadline, seconds_left=left)


def nodes_in_grace(
    pods: Iterable[PodObservation], nodes: Mapping[str, NodeObservation], now: str | None, grace_seconds: int
) -> dict[str, NodeGrace]:
    """The NotReady nodes within their grace that an unfinished pod of `pods` runs on, by name."""
    out: dict[str, NodeGrace] = {}
    for pod in pods:
        if pod.node is None or pod.node in out or not on_lost_node(pod, nodes):
            continue
        grace = grace_of(nodes[pod.node], now, grace_seconds)
        if grace is not None:
            out[pod.node] = grace
    return out


def as_ready(nodes: Mapping[str, NodeObservation], waiting: Iterable[str]) -> dict[str, NodeObservation]:
    """`nodes` with those in their grace shown Ready: what classification sees while no evidence says otherwise."""
    keep = set(waiting)
    return {name: replace(n, ready=True) if name in keep else n for name, n in nodes.items()}


def usable(usable_nodes: list[str] | None, nodes: Mapping[str, NodeObservation]) -> list[str] | None:
    """The usable nodes without those seen NotReady or gone: a node in its grace keeps its running pods, but a new
    pod should not be placed on it (the scheduler would not either: the not-ready taint)."""
    if usable_nodes is None:
        return None
    return [n for n in usable_nodes if n not in nodes or (nodes[n].exists and nodes[n].ready)]


def wait_message(graces: Iterable[NodeGrace], grace_seconds: int) -> str:
    """`node n1 NotReady since T: counted lost at D ...`, one clause per node, earliest deadline first."""
    parts = [
        f"node {g.node} NotReady since {g.since}: counted lost at {g.deadline}"
        for g in sorted(graces, key=lambda g: (g.deadline, g.node))
    ]
    return (
        "; ".join(parts) + f" (spec.resilience.nodeNotReadySeconds={grace_seconds}) unless Ready again; "
        "sooner if a pod of the job fails"
    )


__all__ = [
    "NODE_NOT_READY",
    "NODE_READY",
    "NodeGrace",
    "as_ready",
    "grace_of",
    "nodes_in_grace",
    "usable",
    "wait_message",
]
