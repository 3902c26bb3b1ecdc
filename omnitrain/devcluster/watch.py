"""The agent's watch loop: list+watch threads turn API changes into typed events on one queue; one thread takes
them off in order and dispatches each by its type through a table (`Handlers`), with a periodic tick between.

Every change of agent state happens on that one thread, so handlers need no locks among themselves; only the
threads that start containers or run probes touch a pod concurrently (through the pod's own lock).
"""

from __future__ import annotations

import enum
import logging
import queue
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from omnitrain.devcluster.agentapi import AgentApi
from omnitrain.devcluster.registration import NODE_SELECTOR, is_ours

log = logging.getLogger(__name__)

TICK_S = 0.2
WATCH_TIMEOUT_S = 300


class Change(enum.Enum):
    """A watch event's type, as the API server names it."""

    ADDED = "ADDED"
    MODIFIED = "MODIFIED"
    DELETED = "DELETED"


_CHANGES = {c.value: c for c in Change}  # BOOKMARK and ERROR are not changes


@dataclass(frozen=True)
class NodesListed:
    """A fresh listing of the managed nodes: any other node the agent managed is gone."""

    nodes: list[dict]


@dataclass(frozen=True)
class NodeSeen:
    node: dict


@dataclass(frozen=True)
class NodeDeleted:
    name: str
    uid: str | None


@dataclass(frozen=True)
class PodsListed:
    """A fresh listing of all pods, at `resource_version`."""

    pods: list[dict]
    resource_version: str


@dataclass(frozen=True)
class PodChanged:
    change: Change
    pod: dict


@dataclass(frozen=True)
class ConfigMapsListed:
    """A fresh listing of all ConfigMaps (after a start or a broken watch: updates may have been missed)."""

    configmaps: list[dict]


@dataclass(frozen=True)
class ConfigMapChanged:
    """A ConfigMap was created or updated (a deleted one leaves the files the pods have, as with the kubelet)."""

    configmap: dict


Event = NodesListed | NodeSeen | NodeDeleted | PodsListed | PodChanged | ConfigMapsListed | ConfigMapChanged
EVENT_TYPES: tuple[type, ...] = (
    NodesListed,
    NodeSeen,
    NodeDeleted,
    PodsListed,
    PodChanged,
    ConfigMapsListed,
    ConfigMapChanged,
)
Handlers = Mapping[type, Callable[[Any], None]]


def check_handlers(handlers: Handlers) -> None:
    """Every event type has a handler (checked once at start-up, not at the first event of a kind)."""
    missing = [t.__name__ for t in EVENT_TYPES if t not in handlers]
    if missing:
        raise ValueError(f"no handler for {', '.join(missing)}")


def dispatch(event: Event, handlers: Handlers) -> None:
    handlers[type(event)](event)


def run_loop(
    events: queue.Queue, handlers: Handlers, tick: Callable[[], None], stop: threading.Event, tick_s: float = TICK_S
) -> None:
    """Until `stop`: dispatch queued events in order, and tick at least every `tick_s`. A failing handler or tick
    is logged; the loop goes on (the next listing or tick repairs what it missed)."""
    check_handlers(handlers)
    while not stop.is_set():
        deadline = time.monotonic() + tick_s
        while True:
            try:
                event = events.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                break
            try:
                dispatch(event, handlers)
            except Exception:
                log.exception("handling %s", type(event).__name__)
        try:
            tick()
        except Exception:
            log.exception("tick")


def guarded(what: str, fn: Callable[[], None], stop: threading.Event) -> Callable[[], None]:
    """A thread body that runs `fn` again (a second later after a failure) until `stop`: a watch ends every
    WATCH_TIMEOUT_S or on an error, and then lists again."""

    def loop() -> None:
        while not stop.is_set():
            try:
                fn()
            except Exception:
                log.exception("%s failed; retrying", what)
                stop.wait(1.0)

    return loop


def watch_nodes(api: AgentApi, events: queue.Queue, stop: threading.Event) -> None:
    """One list+watch of the managed nodes (run under `guarded`)."""
    from kubernetes import watch

    listing = api.list_nodes(NODE_SELECTOR)
    events.put(NodesListed([n for n in listing["items"] if is_ours(n)]))
    rv = listing["metadata"]["resourceVersion"]
    for event in watch.Watch().stream(
        api.core.list_node,
        label_selector=NODE_SELECTOR,
        resource_version=rv,
        timeout_seconds=WATCH_TIMEOUT_S,
        allow_watch_bookmarks=True,
    ):
        if stop.is_set() or event["type"] == "ERROR":
            return  # an ERROR (e.g. too old a resourceVersion): list again
        obj, change = event["raw_object"], _CHANGES.get(event["type"])
        if change in (Change.ADDED, Change.MODIFIED) and is_ours(obj):
            events.put(NodeSeen(obj))
        elif change is Change.DELETED:
            events.put(NodeDeleted(obj["metadata"]["name"], obj["metadata"].get("uid")))


def watch_pods(api: AgentApi, events: queue.Queue, stop: threading.Event) -> None:
    """One list+watch of all pods (run under `guarded`); bookmarks are dropped."""
    from kubernetes import watch

    listing = api.list_pods()
    rv = listing["metadata"]["resourceVersion"]
    events.put(PodsListed(listing["items"], rv))
    for event in watch.Watch().stream(
        api.core.list_pod_for_all_namespaces,
        resource_version=rv,
        timeout_seconds=WATCH_TIMEOUT_S,
        allow_watch_bookmarks=True,
    ):
        if stop.is_set() or event["type"] == "ERROR":
            return
        change = _CHANGES.get(event["type"])
        if change is not None:
            events.put(PodChanged(change, event["raw_object"]))


def watch_configmaps(api: AgentApi, events: queue.Queue, stop: threading.Event) -> None:
    """One list+watch of all ConfigMaps (run under `guarded`): the agent's one watch for every pod's configMap
    volumes, however many pods mount them. Which of them some pod shows is the handler's business."""
    from kubernetes import watch

    listing = api.list_configmaps()
    events.put(ConfigMapsListed(listing["items"]))
    for event in watch.Watch().stream(
        api.core.list_config_map_for_all_namespaces,
        resource_version=listing["metadata"]["resourceVersion"],
        timeout_seconds=WATCH_TIMEOUT_S,
        allow_watch_bookmarks=True,
    ):
        if stop.is_set() or event["type"] == "ERROR":
            return
        if _CHANGES.get(event["type"]) in (Change.ADDED, Change.MODIFIED):
            events.put(ConfigMapChanged(event["raw_object"]))
