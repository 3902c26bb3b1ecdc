"""Where `omnitrain serve` listens (issue 14, case 9): every interface by default, as a pod wants, said in --help;
the local cluster's pods, which share the machine's network, are told their own loopback IP instead."""

from __future__ import annotations

import pytest

from omnitrain import contract
from omnitrain.cli import build_parser
from omnitrain.serving.cli import listen_host


def test_default_is_every_interface_and_the_help_says_so(capsys):
    args = build_parser().parse_args(["serve", "--checkpoint", "m.pt"])
    assert listen_host(args.host, {}) == "0.0.0.0"
    assert listen_host(args.host, {contract.ENV_BIND_HOST: "127.1.0.7"}) == "127.1.0.7"
    told = build_parser().parse_args(["serve", "--checkpoint", "m.pt", "--host", "127.0.0.1"])
    assert listen_host(told.host, {contract.ENV_BIND_HOST: "127.1.0.7"}) == "127.0.0.1"
    with pytest.raises(SystemExit):
        build_parser().parse_args(["serve", "--help"])
    help_text = " ".join(capsys.readouterr().out.split())
    assert "default 0.0.0.0, every interface" in help_text and "pass 127.0.0.1" in help_text


class _Api:
    """The API as the launcher sees it for a pod that refers to nothing."""

    def namespace_pods(self, namespace: str) -> list[dict]:
        return []

    def get_configmap(self, namespace: str, name: str) -> dict:
        raise AssertionError("the pod refers to no ConfigMap")

    get_secret = get_configmap


def test_local_pods_are_told_to_listen_on_their_own_address(tmp_path):
    from omnitrain.devcluster.launch import Launcher
    from omnitrain.devcluster.runtime import ContainerRun, PodRun

    container = {"name": "serve", "image": "x", "command": ["omnitrain", "serve", "--checkpoint", "m.pt"]}
    pod = {
        "metadata": {"name": "s", "namespace": "default", "uid": "u"},
        "spec": {"nodeName": "local-node-0", "containers": [container]},
    }
    folder = tmp_path / "pods" / "default" / "s"
    run = PodRun("default", "s", "u", "local-node-0", "127.1.0.9", folder, pod)
    run.containers["serve"] = ContainerRun("serve", folder / "containers" / "serve", folder / "serve.log")
    spec = Launcher(tmp_path, _Api(), mount_ns=False).container_spec(run, container)  # type: ignore[arg-type]
    assert spec["env"][contract.ENV_BIND_HOST] == "127.1.0.9"
