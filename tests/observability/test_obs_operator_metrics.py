"""Operator metrics over HTTP, and the boundary: importing them loads no torch."""

import subprocess
import sys
import urllib.request

import pytest
from prometheus_client.parser import text_string_to_metric_families

from omnitrain.observability import operator_metrics as om


def scrape(port):
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as r:
        return {f.name: f.samples for f in text_string_to_metric_families(r.read().decode())}


@pytest.fixture
def metrics():
    m = om.start_operator_metrics_server(port=0, addr="127.0.0.1")
    yield m
    m.close()


def test_phases_restarts_recovery_goodput_and_reconcile(metrics):
    metrics.set_job_phase("team-a", "video-1", "Running")
    metrics.set_job_phase("team-a", "video-2", "Running")
    metrics.set_job_phase("team-b", "video-1", "Failed")
    metrics.record_restart("team-a", "video-1", "HangDetected")
    metrics.record_restart("team-a", "video-1", "HangDetected")
    metrics.record_restart("team-a", "video-1", "NodeLost")
    metrics.record_requeue("team-a", "video-2", "GangUnschedulable")
    metrics.record_preemption("team-a", "video-2", "WorkloadEvicted")
    metrics.observe_recovery("team-a", "video-1", 42.0)
    metrics.set_job_goodput("team-a", "video-1", 0.95, {"recovery": 42.0, "startup": 8.0})
    with metrics.time_reconcile("create"):
        pass
    with pytest.raises(RuntimeError):
        with metrics.time_reconcile("update"):
            raise RuntimeError("API server said no")
    f = scrape(metrics.serve(0))
    by_phase = {s.labels["phase"]: s.value for s in f[om.METRIC_JOBS]}
    assert by_phase["Running"] == 2 and by_phase["Failed"] == 1 and by_phase["Pending"] == 0
    per_job = {(s.labels["namespace"], s.labels["omnitrain_job"]): s.labels["phase"] for s in f[om.METRIC_JOB_PHASE]}
    assert per_job == {
        ("team-a", "video-1"): "Running",
        ("team-a", "video-2"): "Running",
        ("team-b", "video-1"): "Failed",
    }
    restarts = {s.labels["reason"]: s.value for s in f[om.METRIC_RESTARTS] if s.name.endswith("_total")}
    assert restarts == {"HangDetected": 2, "NodeLost": 1}
    requeues = [
        (s.labels["omnitrain_job"], s.labels["reason"], s.value)
        for s in f[om.METRIC_REQUEUES]
        if s.name.endswith("_total")
    ]
    assert requeues == [("video-2", "GangUnschedulable", 1)]
    preemptions = [(s.labels["reason"], s.value) for s in f[om.METRIC_PREEMPTIONS] if s.name.endswith("_total")]
    assert preemptions == [("WorkloadEvicted", 1)]
    recovery_sum = [s.value for s in f[om.METRIC_RECOVERY] if s.name.endswith("_sum")]
    assert recovery_sum == [42.0]
    assert [s.value for s in f[om.METRIC_JOB_GOODPUT]] == [0.95]
    assert {s.labels["cause"]: s.value for s in f[om.METRIC_JOB_BADPUT]} == {"recovery": 42.0, "startup": 8.0}
    counts = {s.labels["handler"]: s.value for s in f[om.METRIC_RECONCILE] if s.name.endswith("_count")}
    assert counts == {"create": 1, "update": 1}
    errors = {s.labels["handler"]: s.value for s in f[om.METRIC_RECONCILE_ERRORS] if s.name.endswith("_total")}
    assert errors == {"update": 1}


def test_forget_job_drops_its_series(metrics):
    metrics.set_job_phase("ns", "gone", "Succeeded")
    metrics.record_restart("ns", "gone", "PodFailed")
    metrics.record_requeue("ns", "gone", "GangUnschedulable")
    metrics.record_preemption("ns", "gone", "WorkloadEvicted")
    metrics.observe_recovery("ns", "gone", 3)
    metrics.set_job_goodput("ns", "gone", 0.9, {"recovery": 1.0})
    metrics.set_job_phase("ns", "kept", "Running")
    metrics.forget_job("ns", "gone")
    f = scrape(metrics.serve(0))
    for family in (
        om.METRIC_JOB_PHASE,
        om.METRIC_RESTARTS,
        om.METRIC_REQUEUES,
        om.METRIC_PREEMPTIONS,
        om.METRIC_RECOVERY,
        om.METRIC_JOB_GOODPUT,
        om.METRIC_JOB_BADPUT,
    ):
        assert all(s.labels.get("omnitrain_job") != "gone" for s in f.get(family, [])), family
    assert {s.labels["omnitrain_job"] for s in f[om.METRIC_JOB_PHASE]} == {"kept"}


def test_operator_side_imports_load_no_torch():
    code = (
        "import sys; import omnitrain.observability.operator_metrics, omnitrain.observability.status_view; "
        "assert 'torch' not in sys.modules, 'torch imported'"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_time_queued_is_a_histogram_whose_count_is_the_admissions(metrics):
    metrics.observe_admission("team-a", "video-3", 95.0)
    metrics.observe_admission("team-a", "video-3", 4.0)
    f = scrape(metrics.serve(0))
    samples = {s.name: s.value for s in f[om.METRIC_QUEUED] if s.labels.get("omnitrain_job") == "video-3"}
    assert samples[om.METRIC_QUEUED + "_count"] == 2 and samples[om.METRIC_QUEUED + "_sum"] == 99.0
    metrics.forget_job("team-a", "video-3")
    assert not [s for s in scrape(metrics.serve(0))[om.METRIC_QUEUED] if s.labels.get("omnitrain_job") == "video-3"]
