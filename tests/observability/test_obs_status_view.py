"""`omnitrain status` rendering from fixture dicts shaped as the API server returns them."""

from datetime import UTC, datetime, timedelta

from omnitrain.observability.status_view import estimate_eta, format_duration, progress_bar, render_status
from omnitrain.training_hooks import StepStats

NOW = datetime(2026, 11, 25, 12, 0, 0, tzinfo=UTC)


def iso(minutes_ago: float) -> str:
    return (NOW - timedelta(minutes=minutes_ago)).strftime("%Y-%m-%dT%H:%M:%SZ")


def running_job():
    return {
        "apiVersion": "omnitrain.io/v1alpha1",
        "kind": "OmniTrainingJob",
        "metadata": {"name": "video-1", "namespace": "team-a", "uid": "u-1"},
        "spec": {"training": {"steps": 1000}, "resilience": {"maxRestarts": 3}},
        "status": {
            "phase": "Running",
            "attempt": 2,
            "restarts": 2,
            "currentStep": 250,
            "totalSteps": 1000,
            "startTime": iso(60),
            "lastCheckpoint": {"step": 200, "path": "/mnt/checkpoints/step-200", "time": iso(5)},
            "excludedNodes": ["node-3"],
            "goodput": {"ratio": 0.912, "badputSeconds": {"recovery": 180, "startup": 40}},
            "conditions": [
                {
                    "type": "Running",
                    "status": "True",
                    "reason": "AllPodsRunning",
                    "lastTransitionTime": iso(10),
                    "message": "2/2 pods running",
                },
                {"type": "Restarting", "status": "False", "reason": "Recovered", "lastTransitionTime": iso(10)},
            ],
        },
    }


def pod(name, node, state, restarts=0):
    return {
        "metadata": {"name": name, "creationTimestamp": iso(10), "uid": name + "-uid"},
        "spec": {"nodeName": node},
        "status": {
            "phase": "Running" if "running" in state else "Failed",
            "containerStatuses": [{"state": state, "restartCount": restarts}],
        },
    }


def test_running_job_shows_progress_eta_checkpoint_goodput_pods_events():
    pods = [
        pod("video-1-node-1", "node-2", {"running": {}}),
        pod("video-1-node-0", "node-1", {"terminated": {"exitCode": 42, "reason": "HangDetected"}}),
    ]
    events = [
        {
            "type": "Warning",
            "reason": "HangDetected",
            "message": "no step for 60s",
            "lastTimestamp": iso(12),
            "involvedObject": {"kind": "Pod", "name": "video-1-node-0"},
            "count": 2,
        },
        {
            "type": "Normal",
            "reason": "Restarted",
            "message": "attempt 2 from step 200",
            "lastTimestamp": iso(10),
            "involvedObject": {"kind": "OmniTrainingJob", "name": "video-1"},
        },
    ]
    text = render_status(running_job(), pods, events, now=NOW)
    lines = text.splitlines()
    assert lines[0] == "OmniTrainingJob team-a/video-1"
    assert "Running" in lines[1] and "running for 1h00m" in lines[1]
    assert "restarts 2/3" in text
    # 250 steps in 60 min -> 750 left at the same rate = 3 h
    assert f"{progress_bar(250, 1000)}  step 250/1000   ETA 3h00m" in text
    assert "step 200  /mnt/checkpoints/step-200  (5m00s ago)" in text
    assert "Goodput:      91.2%  (badput: recovery 3m00s, startup 40s)" in text
    assert "Excluded:     node-3" in text
    assert "AllPodsRunning" in text and "2/2 pods running" in text
    # pods sorted by name, with node and container state
    pod_lines = [line for line in lines if line.strip().startswith("video-1-node-")]
    assert pod_lines[0].split()[:2] == ["video-1-node-0", "node-1"] and "exited 42 HangDetected" in pod_lines[0]
    assert pod_lines[1].split()[:2] == ["video-1-node-1", "node-2"] and "running" in pod_lines[1]
    # events oldest first, with the repeat count
    assert text.index("no step for 60s (x2)") < text.index("attempt 2 from step 200")
    assert "pod/video-1-node-0" in text and "omnitrainingjob/video-1" in text


def test_fresh_job_without_status_renders_placeholders():
    job = {"metadata": {"name": "new", "namespace": "default"}, "spec": {"training": {"steps": 10}}}
    text = render_status(job, [], [], now=NOW)
    assert "Phase:        Pending" in text
    assert "Progress:     - / 10" in text
    assert "Checkpoint:   none yet" in text and "Goodput:      -" in text
    assert "Pods: none" in text and "Events: none" in text


def test_finished_job_shows_duration_and_no_eta():
    job = running_job()
    job["status"].update(phase="Succeeded", currentStep=1000, completionTime=iso(0), goodput=0.97)
    text = render_status(job, [], [], now=NOW)
    assert "Succeeded   (took 1h00m)" in text
    assert "100.0%" in text and "ETA" not in text
    assert "Goodput:      97.0%" in text


def test_helpers():
    assert progress_bar(0, 0) == "[" + "-" * 30 + "]   0.0%"
    assert progress_bar(5, 10, width=10) == "[#####-----]  50.0%"
    assert format_duration(59) == "59s" and format_duration(3600 * 25) == "1d1h" and format_duration(None) == "-"
    start = NOW - timedelta(seconds=100)
    assert estimate_eta(10, 20, start, NOW) == 100
    assert estimate_eta(0, 20, start, NOW) is None
    assert estimate_eta(20, 20, start, NOW) == 0.0


def test_live_figures_from_rank0_endpoint_are_shown():
    live = {
        "omnitrain_train_tokens_per_second": 123456.0,
        "omnitrain_train_mfu_ratio": 0.4123,
        "omnitrain_train_step_seconds_count": 10.0,
        "omnitrain_train_step_seconds_sum": 12.5,
        "omnitrain_train_loss": 0.25,
    }
    text = render_status(running_job(), [], [], now=NOW, live=live)
    assert "Live:         123,456 tokens/s   MFU 41.2%   step 1.25s (mean)   loss 0.25" in text
    assert "Live:" not in render_status(running_job(), [], [], now=NOW)


def test_scrape_live_metrics_reads_the_pod_that_serves_job_figures():
    from omnitrain.observability.callback import MetricsCallback
    from omnitrain.observability.status_fetch import scrape_live_metrics

    node_only = MetricsCallback(
        job="j", attempt=0, total_steps=4, world_size=2, rank=1, local_rank=0, metrics_addr="127.0.0.2", metrics_port=0
    )
    rank0 = MetricsCallback(
        job="j",
        attempt=0,
        total_steps=4,
        world_size=2,
        rank=0,
        local_rank=0,
        metrics_addr="127.0.0.1",
        metrics_port=0,
        peak_flops_per_device=1e9,
    )
    try:
        for cb in (node_only, rank0):
            cb.on_train_start(step=0)
            cb.on_step_end(stats=StepStats(step=1, loss=0.5, tokens=1000, flops=4e8, step_seconds=0.5))
        pods = [
            {"status": {"phase": "Pending"}},
            {"status": {"phase": "Running", "podIP": "127.0.0.2"}},
            {"status": {"phase": "Running", "podIP": "127.0.0.1"}},
        ]
        # each endpoint on its own port here; in a cluster every pod uses spec.metricsPort
        assert scrape_live_metrics(pods[:2], node_only.bound_port) is None  # node figures only
        live = scrape_live_metrics(pods, rank0.bound_port)
        assert live["omnitrain_train_step"] == 1 and live["omnitrain_train_mfu_ratio"] == 0.4
        assert live["omnitrain_train_tokens_per_second"] == 2000
    finally:
        node_only.close()
        rank0.close()


def test_failure_message_promotion_and_total_restarts():
    job = running_job()
    job["status"].update(
        totalRestarts=3,
        preemptions=2,
        message="restarting after a hang",
        lastFailure={
            "pod": "video-1-a1-n0",
            "node": "node-1",
            "exitCode": 42,
            "reason": "HangDetected",
            "message": "no step for 60s",
            "time": iso(3),
        },
        promotion={"distill": {"phase": "Running", "name": "video-1-distill"}},
    )
    text = render_status(job, [], [], now=NOW)
    assert "restarts 2/3 (all gang restarts incl. resumes: 3)   preempted 2x (no restart spent)" in text
    assert "Message:      restarting after a hang" in text
    assert "Last failure: HangDetected: pod video-1-a1-n0 on node-1 exited 42 (3m00s ago) - no step for 60s" in text
    assert "Promotion:    distill Running (video-1-distill)" in text


def test_an_elastic_job_says_it_is_shrunk_and_a_job_that_never_resized_says_nothing():
    assert "Layout:" not in render_status(running_job(), [], [], now=NOW)
    job = running_job()
    job["spec"]["parallelism"] = {"nodes": 3}
    job["status"].update(
        {
            "activeNodes": 2,
            "layoutChanges": 1,
            "growAfterCheckpoint": 40,
            "conditions": [
                {"type": "Resized", "status": "True", "reason": "Shrunk", "message": "continues on 2 of 3 nodes"}
            ],
        }
    )
    line = next(x for x in render_status(job, [], [], now=NOW).splitlines() if "Layout:" in x)
    assert "2 of 3 nodes (shrunk), 1 layout change(s)" in line and "newer than step 40" in line
    assert "last: continues on 2 of 3 nodes" in line
