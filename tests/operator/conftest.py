"""Fixtures for the operator's e2e tests: a control plane with the CRD installed, the operator as a subprocess
(`omnitrain operator`), and helpers that play the kubelet's part (pod status) through the API."""

from __future__ import annotations

import os
import sys
import uuid

import pytest
from control_plane import control_plane

sys.path.insert(0, os.path.dirname(__file__))

from operator_process import OperatorProcess, install_crd, needs_binaries  # noqa: E402


@pytest.fixture(scope="session")
def e2e_kubeconfig(tmp_path_factory):
    needs_binaries()
    with control_plane(tmp_path_factory.mktemp("operator-cp")) as kubeconfig:
        install_crd(kubeconfig)
        yield kubeconfig


@pytest.fixture(scope="session")
def api(e2e_kubeconfig):
    from kubernetes import config

    return config.new_client_from_config(str(e2e_kubeconfig))


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
