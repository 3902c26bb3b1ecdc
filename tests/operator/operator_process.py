"""The operator under test as a subprocess (`omnitrain operator`), the CRD installed into a control plane, and the
stand-in pod command: shared by conftest's fixtures and the tests that bring their own control plane."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from control_plane import find_binaries, wait_until

REPO = Path(__file__).resolve().parents[2]

# What pods would run on a real node agent until `omnitrain train` is wired end to end (read config, exit 0).
STAND_IN_COMMAND = (
    "python -c \"import yaml,sys; c=yaml.safe_load(open('/etc/omnitrain/config.yaml')); "
    "print('job', c['run']['jobName'], 'attempt', c['run']['attempt'])\""
)


def needs_binaries():
    if find_binaries() is None:
        pytest.skip("no control-plane binaries ($OMNITRAIN_CACHE/bin/k8s-*); run `make cluster-bins`")


def install_crd(kubeconfig: Path) -> None:
    from kubernetes import client, config

    api = config.new_client_from_config(str(kubeconfig))
    body = yaml.safe_load((REPO / "manifests" / "crd" / "omnitrainingjobs.yaml").read_text())
    ext = client.ApiextensionsV1Api(api)
    ext.create_custom_resource_definition(body)

    def established():
        crd = ext.read_custom_resource_definition(body["metadata"]["name"])
        return any(c.type == "Established" and c.status == "True" for c in crd.status.conditions or [])

    wait_until(established, 30, "CRD Established")


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
