"""Fixtures for the operator's e2e tests: a control plane with the CRD installed, the operator as a subprocess
(`omnitrain operator`), and helpers that play the kubelet's part (pod status) through the API."""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from pathlib import Path

import pytest
import yaml
from control_plane import control_plane, find_binaries, wait_until

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, os.path.dirname(__file__))

# What pods would run on a real node agent until `omnitrain train` is wired end to end (read config, exit 0).
STAND_IN_COMMAND = (
    "python -c \"import yaml,sys; c=yaml.safe_load(open('/etc/omnitrain/config.yaml')); "
    "print('job', c['run']['jobName'], 'attempt', c['run']['attempt'])\""
)


def _needs_binaries():
    if find_binaries() is None:
        pytest.skip("no control-plane binaries ($OMNITRAIN_CACHE/bin/k8s-*); run `make cluster-bins`")


@pytest.fixture(scope="session")
def e2e_kubeconfig(tmp_path_factory):
    _needs_binaries()
    with control_plane(tmp_path_factory.mktemp("operator-cp")) as kubeconfig:
        _install_crd(kubeconfig)
        yield kubeconfig


def _install_crd(kubeconfig: Path) -> None:
    from kubernetes import client, config

    api = config.new_client_from_config(str(kubeconfig))
    body = yaml.safe_load((REPO / "manifests" / "crd" / "omnitrainingjobs.yaml").read_text())
    ext = client.ApiextensionsV1Api(api)
    ext.create_custom_resource_definition(body)

    def established():
        crd = ext.read_custom_resource_definition(body["metadata"]["name"])
        return any(c.type == "Established" and c.status == "True" for c in crd.status.conditions or [])

    wait_until(established, 30, "CRD Established")


@pytest.fixture(scope="session")
def api(e2e_kubeconfig):
    from kubernetes import config

    return config.new_client_from_config(str(e2e_kubeconfig))


class OperatorProcess:
    def __init__(
        self, kubeconfig: Path, log: Path, extra_env: dict[str, str] | None = None, command: list[str] | None = None
    ) -> None:
        self.command = command or [sys.executable, "-m", "omnitrain", "operator"]
        self.env = {
            **os.environ,
            "KUBECONFIG": str(kubeconfig),
            "OMNITRAIN_RESYNC_SECONDS": "1",
            "OMNITRAIN_TRAIN_COMMAND": STAND_IN_COMMAND,
            "OMP_NUM_THREADS": "1",
            **(extra_env or {}),
        }
        self.log = log
        self.start()

    def start(self) -> None:
        self.proc = subprocess.Popen(self.command, env=self.env, stdout=open(self.log, "a"), stderr=subprocess.STDOUT)

    def stop(self) -> None:
        from omnitrain.devcluster.procs import end_child

        end_child(self.proc)

    def tail(self) -> str:
        return self.log.read_text()[-4000:]


@pytest.fixture(scope="session")
def operator(e2e_kubeconfig, tmp_path_factory):
    op = OperatorProcess(e2e_kubeconfig, tmp_path_factory.mktemp("operator") / "operator.log")
    yield op
    op.stop()


@pytest.fixture
def start_operator(e2e_kubeconfig, tmp_path):
    """Start extra operator processes (for the restart test), optionally through another launcher (`command`);
    all are stopped afterwards."""
    started = []

    def start(extra_env=None, command=None):
        op = OperatorProcess(e2e_kubeconfig, tmp_path / f"operator-{len(started)}.log", extra_env, command)
        started.append(op)
        return op

    yield start
    for op in started:
        op.stop()


@pytest.fixture
def namespace(api):
    from kubernetes import client

    name = f"e2e-{uuid.uuid4().hex[:8]}"
    client.CoreV1Api(api).create_namespace({"metadata": {"name": name}})
    return name
