"""The node agent's event loop without a cluster: typed events dispatched in order through the handler table."""

from __future__ import annotations

import queue
import threading

import pytest

from omnitrain.devcluster import watch
from omnitrain.devcluster.watch import (
    Change,
    ConfigMapChanged,
    ConfigMapsListed,
    NodeDeleted,
    NodeSeen,
    NodesListed,
    PodChanged,
    PodsListed,
)


def test_events_reach_their_handlers_in_order_and_a_failing_handler_does_not_stop_the_loop():
    events: queue.Queue = queue.Queue()
    stop = threading.Event()
    seen: list[tuple[str, object]] = []
    ticks: list[int] = []

    def pod_changed(event: PodChanged) -> None:
        seen.append(("pod", (event.change, event.pod["metadata"]["name"])))
        if event.pod["metadata"]["name"] == "bad":
            raise RuntimeError("handler bug")

    def node_deleted(event: NodeDeleted) -> None:
        seen.append(("node-deleted", event.name))
        stop.set()

    handlers: watch.Handlers = {
        NodesListed: lambda e: seen.append(("nodes", len(e.nodes))),
        NodeSeen: lambda e: seen.append(("node", e.node["metadata"]["name"])),
        NodeDeleted: node_deleted,
        PodsListed: lambda e: seen.append(("pods", e.resource_version)),
        PodChanged: pod_changed,
        ConfigMapsListed: lambda e: seen.append(("configmaps", len(e.configmaps))),
        ConfigMapChanged: lambda e: seen.append(("configmap", e.configmap["metadata"]["name"])),
    }
    for event in (
        NodesListed([]),
        NodeSeen({"metadata": {"name": "n0"}}),
        PodsListed([], "7"),
        PodChanged(Change.ADDED, {"metadata": {"name": "bad"}}),
        PodChanged(Change.DELETED, {"metadata": {"name": "ok"}}),
        ConfigMapsListed([]),
        ConfigMapChanged({"metadata": {"name": "job-gang"}}),
        NodeDeleted("n0", None),
    ):
        events.put(event)
    watch.run_loop(events, handlers, lambda: ticks.append(len(seen)), stop, tick_s=0.01)
    assert seen == [
        ("nodes", 0),
        ("node", "n0"),
        ("pods", "7"),
        ("pod", (Change.ADDED, "bad")),
        ("pod", (Change.DELETED, "ok")),
        ("configmaps", 0),
        ("configmap", "job-gang"),
        ("node-deleted", "n0"),
    ]
    assert ticks, "the loop ticks between batches of events"


def test_a_table_without_a_handler_for_every_event_type_is_refused_up_front():
    with pytest.raises(ValueError, match="no handler for NodeDeleted"):
        watch.run_loop(
            queue.Queue(),
            {t: print for t in watch.EVENT_TYPES if t is not NodeDeleted},
            lambda: None,
            threading.Event(),
        )
