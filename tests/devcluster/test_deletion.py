"""A deleted pod's grace period holds whatever the agent waits for (issue 14, case 7): the pure deletion step and
the DNS wait that a deletion cancels. End to end: tests/devcluster/test_lifecycle.py."""

from __future__ import annotations

import threading
import time

import pytest

from omnitrain.devcluster.launch import DNS_WAIT_S, Launcher, StartCancelled
from omnitrain.devcluster.pods import deletion_step
from omnitrain.devcluster.runtime import ContainerRun, PodRun


@pytest.mark.parametrize(
    ("running", "starting", "past_grace", "step"),
    [
        (True, False, False, "term"),
        (True, True, False, "term"),
        (True, False, True, "kill"),
        (True, True, True, "kill"),
        (False, True, False, "term"),  # a start-up in flight may still launch: wait for it inside the grace
        (False, True, True, "delete"),  # ... but never past it (it may wait minutes for a peer's DNS name)
        (False, False, False, "delete"),
        (False, False, True, "delete"),
    ],
)
def test_deletion_step(running, starting, past_grace, step):
    assert deletion_step(running, starting, past_grace) == step


class _NoPeers:
    """The API as the launcher sees it, in a namespace where the peer never appears."""

    def __init__(self) -> None:
        self.polled = threading.Event()

    def namespace_pods(self, namespace: str) -> list[dict]:
        self.polled.set()
        return []

    def get_configmap(self, namespace: str, name: str) -> dict:
        raise AssertionError("the pod refers to no ConfigMap")

    get_secret = get_configmap


def test_deletion_cancels_a_dns_wait_at_once(tmp_path):
    api = _NoPeers()
    launcher = Launcher(tmp_path, api, mount_ns=False)  # type: ignore[arg-type]
    stop = threading.Event()
    outcome: list[BaseException | str] = []

    def resolve() -> None:
        try:
            outcome.append(launcher.resolve_pod_ip("rank0", "job", "default", stop=stop))
        except BaseException as exc:
            outcome.append(exc)

    thread = threading.Thread(target=resolve, daemon=True)
    thread.start()
    assert api.polled.wait(5)  # waiting for the peer
    started = time.monotonic()
    stop.set()
    thread.join(5)
    assert not thread.is_alive() and time.monotonic() - started < 2 < DNS_WAIT_S
    assert isinstance(outcome[0], StartCancelled) and "rank0.job.default.svc" in str(outcome[0])


def test_container_spec_of_a_stopping_pod_does_not_wait_for_dns(tmp_path):
    container = {
        "name": "main",
        "image": "x",
        "command": ["sh", "-c", "true"],
        "env": [{"name": "MASTER_ADDR", "value": "rank0.job.default.svc.cluster.local"}],
    }
    pod = {
        "metadata": {"name": "w1", "namespace": "default", "uid": "u"},
        "spec": {"nodeName": "local-node-0", "containers": [container]},
    }
    folder = tmp_path / "pods" / "default" / "w1"
    run = PodRun("default", "w1", "u", "local-node-0", "127.200.0.3", folder, pod)
    run.containers["main"] = ContainerRun("main", folder / "containers" / "main", folder / "main.log")
    run.stopping.set()
    started = time.monotonic()
    with pytest.raises(StartCancelled):
        Launcher(tmp_path, _NoPeers(), mount_ns=False).container_spec(run, container)  # type: ignore[arg-type]
    assert time.monotonic() - started < 2
