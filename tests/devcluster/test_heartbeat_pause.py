"""The node agent's heartbeat pause (omnitrain.devcluster.registration): a node annotated
omnitrain.dev/heartbeat=paused gets no Lease renewal and no status post until the annotation goes; then Ready is
posted at once. The e2e NotReady-blip test stages its blips with it."""

from __future__ import annotations

import threading

from omnitrain.devcluster.registration import HEARTBEAT_ANNOTATION, NodeRegistry


class FakeApi:
    def __init__(self) -> None:
        self.calls: list[tuple[str, str]] = []

    def renew_lease(self, name, uid, seconds):
        self.calls.append(("lease", name))

    def patch_node_status(self, name, patch):
        assert patch["conditions"][0]["status"] == "True"
        self.calls.append(("ready", name))


def node(name, paused=False):
    annotations = {HEARTBEAT_ANNOTATION: "paused"} if paused else {}
    return {"metadata": {"name": name, "uid": f"uid-{name}", "annotations": annotations}}


class OneBeat(threading.Event):
    """Stops the heartbeat loop after one round."""

    def wait(self, timeout=None):
        self.set()
        return True


def test_a_paused_node_gets_no_heartbeat_and_is_ready_again_when_the_pause_ends(tmp_path):
    api = FakeApi()
    nodes = NodeRegistry(api, tmp_path, kubelet_port=1)  # type: ignore[arg-type]
    assert nodes.take_over(node("a")) and nodes.take_over(node("b"))
    assert api.calls == [("ready", "a"), ("lease", "a"), ("ready", "b"), ("lease", "b")]
    api.calls.clear()
    assert nodes.take_over(node("b", paused=True)) is False and nodes.paused("b") and nodes.manages("b")
    assert api.calls == []
    nodes.heartbeat(OneBeat())
    assert api.calls == [("lease", "a"), ("ready", "a")]  # the first round posts status too; nothing for b
    api.calls.clear()
    nodes.take_over(node("b", paused=True))  # a later event of the paused node: still nothing
    assert api.calls == []
    assert nodes.take_over(node("b")) is False and not nodes.paused("b")
    assert api.calls == [("ready", "b"), ("lease", "b")]  # resumed: Ready at once, not at the next round
    api.calls.clear()
    nodes.take_over(node("b"))
    assert api.calls == []
