"""A real Prometheus (Debian's `prometheus`, installed with promtool) scrapes a training endpoint and evaluates the
PrometheusRule's rules on that live data: names, labels and expressions meet in one place."""

import json
import shutil
import subprocess
import time
import urllib.parse
import urllib.request
from pathlib import Path

import pytest
import yaml

from omnitrain.devcluster.procs import end_child
from omnitrain.observability.callback import MetricsCallback
from omnitrain.trainer.parallel.testing import free_port
from omnitrain.training_hooks import StepStats

RULE_MANIFEST = Path(__file__).resolve().parents[2] / "manifests" / "monitoring" / "prometheusrule.yaml"

pytestmark = pytest.mark.skipif(
    shutil.which("prometheus") is None, reason="prometheus not installed (make promtool installs Debian's prometheus)"
)


def query(base: str, expr: str) -> list[dict]:
    url = f"{base}/api/v1/query?" + urllib.parse.urlencode({"query": expr})
    with urllib.request.urlopen(url, timeout=5) as response:
        return json.loads(response.read())["data"]["result"]


def wait_for(predicate, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while True:
        try:
            value = predicate()
        except OSError:
            value = None
        if value:
            return value
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what} not seen within {timeout} s")
        time.sleep(0.25)  # polling a condition with a deadline


@pytest.fixture
def trainer_endpoint(tmp_path):
    cb = MetricsCallback(
        job="live",
        attempt=0,
        total_steps=100,
        world_size=2,
        rank=0,
        local_rank=0,
        node="node-a",
        metrics_addr="127.0.0.1",
        metrics_port=0,
        log_dir=tmp_path / "log",
        peak_flops_per_device=1e9,
        checkpoint_interval=2,
    )
    cb.on_train_start(step=0)
    yield cb
    cb.close()


def test_prometheus_evaluates_our_rules_on_a_live_endpoint(tmp_path, trainer_endpoint):
    cb = trainer_endpoint
    for step in range(1, 11):  # far past 3 checkpoint intervals, no checkpoint complete
        cb.on_step_end(stats=StepStats(step=step, loss=1.0 / step, tokens=1000, flops=1e9, step_seconds=0.5))
    groups = yaml.safe_load(RULE_MANIFEST.read_text())["spec"]["groups"]
    for group in groups:
        group["interval"] = "1s"
    (tmp_path / "rules.yaml").write_text(yaml.safe_dump({"groups": groups}))
    (tmp_path / "prometheus.yml").write_text(
        yaml.safe_dump(
            {
                "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
                "rule_files": ["rules.yaml"],
                "scrape_configs": [
                    {
                        "job_name": "training-pods",
                        "static_configs": [
                            {
                                "targets": [f"127.0.0.1:{cb.bound_port}"],
                                # what the PodMonitor's target labels add in a cluster
                                "labels": {"namespace": "ml", "pod": "live-a0-n0"},
                            }
                        ],
                    }
                ],
            }
        )
    )
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    proc = subprocess.Popen(
        [
            "prometheus",
            "--config.file=prometheus.yml",
            f"--storage.tsdb.path={tmp_path / 'db'}",
            f"--web.listen-address=127.0.0.1:{port}",
        ],
        cwd=tmp_path,
        stdout=open(tmp_path / "prometheus.log", "w"),
        stderr=subprocess.STDOUT,
    )
    try:
        lag = wait_for(lambda: query(base, "omnitrain_job:checkpoint_lag_steps"), 60, "checkpoint lag rule")
        assert lag[0]["metric"] == {
            "__name__": "omnitrain_job:checkpoint_lag_steps",
            "namespace": "ml",
            "omnitrain_job": "live",
        }
        assert float(lag[0]["value"][1]) == 10
        mfu = wait_for(lambda: query(base, "omnitrain_job:mfu:avg5m"), 30, "MFU recording rule")
        assert float(mfu[0]["value"][1]) == pytest.approx(1e9 / (0.5 * 2 * 1e9))
        # a hang detection raises OmniTrainHangDetected (no `for`) once Prometheus has seen the counter move (in a
        # pod the counter is set when an attempt starts, from the watchdog's hang records of the attempts before)
        cb.metrics.hangs.inc()

        def hang_alert():
            with urllib.request.urlopen(f"{base}/api/v1/alerts", timeout=5) as response:
                alerts = json.loads(response.read())["data"]["alerts"]
            return [a for a in alerts if a["labels"]["alertname"] == "OmniTrainHangDetected" and a["state"] == "firing"]

        [alert] = wait_for(hang_alert, 60, "OmniTrainHangDetected firing")
        assert (alert["labels"]["namespace"], alert["labels"]["omnitrain_job"]) == ("ml", "live")
        # the stale-checkpoint condition holds; its 5m `for` keeps it pending, not firing, in a test this short
        stale = wait_for(lambda: query(base, 'ALERTS{alertname="OmniTrainCheckpointStale"}'), 30, "stale pending")
        assert stale[0]["metric"]["alertstate"] == "pending"
    finally:
        end_child(proc, grace_s=10)
