"""`omnitrain status` and `omnitrain report` against a real kube-apiserver holding a job, its pods and events."""

import os
import subprocess
import sys
import time

import pytest

from omnitrain.contract import GROUP, PLURAL, VERSION
from omnitrain.devcluster.testing import wait_for
from omnitrain.devcluster.throwaway import control_plane, find_binaries
from omnitrain.observability.callback import MetricsCallback
from omnitrain.operator.crd import build_crd
from omnitrain.training_hooks import StepStats

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.skipif(
        find_binaries() is None and not os.environ.get("CI"),
        reason="control-plane binaries not built (make cluster-bins)",
    ),
]


def omnitrain(kubeconfig, *args):
    return subprocess.run(
        [sys.executable, "-m", "omnitrain", *args],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "KUBECONFIG": str(kubeconfig)},
    )


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    from kubernetes import client, config

    workdir = tmp_path_factory.mktemp("apiserver")
    with control_plane(workdir) as kubeconfig:
        config.load_kube_config(str(kubeconfig))
        ext = client.ApiextensionsV1Api()
        ext.create_custom_resource_definition(build_crd())  # the operator's real, structural schema
        wait_for(
            lambda: any(
                c.type == "Established" and c.status == "True"
                for c in (ext.read_custom_resource_definition(f"{PLURAL}.{GROUP}").status.conditions or [])
            ),
            60,
            "CRD Established",
        )
        client.CoreV1Api().create_namespace({"metadata": {"name": "ml"}})
        yield kubeconfig


def make_job(metrics_port: int):
    from kubernetes import client

    custom, core = client.CustomObjectsApi(), client.CoreV1Api()
    job = custom.create_namespaced_custom_object(
        GROUP,
        VERSION,
        "ml",
        PLURAL,
        {
            "apiVersion": f"{GROUP}/{VERSION}",
            "kind": "OmniTrainingJob",
            "metadata": {"name": "demo"},
            "spec": {"training": {"steps": 100}, "resilience": {"maxRestarts": 3}, "metricsPort": metrics_port},
        },
    )
    now = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    custom.patch_namespaced_custom_object_status(
        GROUP,
        VERSION,
        "ml",
        PLURAL,
        "demo",
        {
            "status": {
                "phase": "Running",
                "attempt": 1,
                "restarts": 1,
                "currentStep": 40,
                "totalSteps": 100,
                "startTime": now,
                "lastCheckpoint": {"step": 30, "path": "/mnt/checkpoints/step-30", "time": now},
                "excludedNodes": ["node-9"],
                "goodput": {
                    "ratio": 0.93,
                    "wallSeconds": 600.0,
                    "productiveSeconds": 558.0,
                    "badputSeconds": {"recovery": 30.0, "startup": 12.0},
                },
                "conditions": [
                    {
                        "type": "Running",
                        "status": "True",
                        "reason": "AllPodsRunning",
                        "lastTransitionTime": now,
                        "message": "2/2 pods running",
                    }
                ],
            }
        },
    )
    owner = [
        {
            "apiVersion": f"{GROUP}/{VERSION}",
            "kind": "OmniTrainingJob",
            "name": "demo",
            "uid": job["metadata"]["uid"],
            "controller": True,
        }
    ]
    for name, node, owned in (
        ("demo-node-0", "node-1", True),
        ("demo-node-1", "node-2", True),
        ("someone-else", "node-1", False),
    ):
        core.create_namespaced_pod(
            "ml",
            {
                "metadata": {"name": name, "ownerReferences": owner if owned else []},
                "spec": {"nodeName": node, "containers": [{"name": "trainer", "image": "omnitrain:latest"}]},
            },
        )
        pod = core.read_namespaced_pod(name, "ml")
        pod.status.phase = "Running"
        pod.status.pod_ip = "127.0.0.1" if name == "demo-node-0" else "127.0.0.3"
        running = client.V1ContainerStateRunning(started_at=pod.metadata.creation_timestamp)
        pod.status.container_statuses = [
            client.V1ContainerStatus(
                name="trainer",
                image="omnitrain:latest",
                image_id="",
                ready=True,
                restart_count=0,
                state=client.V1ContainerState(running=running),
            )
        ]
        core.replace_namespaced_pod_status(name, "ml", pod)
    for reason, obj in (
        (
            "Restarted",
            {
                "kind": "OmniTrainingJob",
                "name": "demo",
                "uid": job["metadata"]["uid"],
                "apiVersion": f"{GROUP}/{VERSION}",
                "namespace": "ml",
            },
        ),
        (
            "Unrelated",
            {
                "kind": "Pod",
                "name": "someone-else",
                "namespace": "ml",
                "uid": core.read_namespaced_pod("someone-else", "ml").metadata.uid,
            },
        ),
    ):
        core.create_namespaced_event(
            "ml",
            {
                "metadata": {"generateName": "demo-"},
                "involvedObject": obj,
                "reason": reason,
                "type": "Normal",
                "message": f"{reason} event",
                "firstTimestamp": now,
                "lastTimestamp": now,
                "count": 1,
                "source": {"component": "omnitrain-operator"},
            },
        )


def test_status_and_report_read_the_api_server(cluster, tmp_path):
    rank0 = MetricsCallback(
        job="demo",
        attempt=1,
        total_steps=100,
        world_size=2,
        rank=0,
        local_rank=0,
        metrics_addr="127.0.0.1",
        metrics_port=0,
        log_dir=tmp_path / "metrics",
        peak_flops_per_device=1e9,
    )
    try:
        rank0.on_train_start(step=30)
        for step in range(31, 41):
            rank0.on_step_end(stats=StepStats(step=step, loss=1.0 / step, tokens=500, flops=2e8, step_seconds=0.25))
        make_job(metrics_port=rank0.bound_port)

        result = omnitrain(cluster, "status", "demo", "-n", "ml")
        assert result.returncode == 0, result.stderr
        text = result.stdout
        assert text.startswith("OmniTrainingJob ml/demo")
        assert "Running" in text and "restarts 1/3" in text and "step 40/100" in text
        assert "step 30  /mnt/checkpoints/step-30" in text
        assert "Goodput:      93.0%  (badput: recovery 30s, startup 12s)" in text
        assert "Excluded:     node-9" in text and "AllPodsRunning" in text
        assert "demo-node-0" in text and "demo-node-1" in text and "someone-else" not in text
        assert "Restarted event" in text and "Unrelated event" not in text
        assert "Live:         2,000 tokens/s   MFU 40.0%   step 0.25s (mean)" in text

        missing = omnitrain(cluster, "status", "nope", "-n", "ml")
        assert missing.returncode == 1 and "OmniTrainingJob ml/nope not found" in missing.stderr

        rank0.on_train_end(step=40)
        report = omnitrain(
            cluster,
            "report",
            "demo",
            "-n",
            "ml",
            "--out",
            str(tmp_path / "report"),
            "--metrics-dir",
            str(tmp_path / "metrics"),
        )
        assert report.returncode == 0, report.stderr
        page = (tmp_path / "report" / "report.html").read_text()
        assert "<td>Running</td>" in page and "40 / 100" in page
    finally:
        rank0.close()
