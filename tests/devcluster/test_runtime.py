"""What the agent reads back from a pod's folder (the shims' files) as the snapshot its status is rendered from."""

from __future__ import annotations

import json

from omnitrain.devcluster.podstatus import pod_status
from omnitrain.devcluster.runtime import ContainerRun, IPAllocator, PodRun


def _run(tmp_path, policy: str = "FallbackToLogsOnError") -> PodRun:
    folder = tmp_path / "pods" / "ns" / "p"
    pod = {
        "metadata": {"name": "p", "namespace": "ns", "uid": "u"},
        "spec": {
            "restartPolicy": "Never",
            "containers": [
                {"name": "main", "image": "x", "terminationMessagePolicy": policy},
                {"name": "side", "image": "y", "readinessProbe": {"exec": {"command": ["true"]}}},
            ],
        },
    }
    run = PodRun("ns", "p", "u", "local-node-0", "127.1.0.2", folder, pod, start_time="2026-01-01T00:00:00Z")
    for name in ("main", "side"):
        cdir = folder / "containers" / name
        cdir.mkdir(parents=True)
        run.containers[name] = ContainerRun(name, cdir, folder / f"{name}.log")
    return run


def test_the_snapshot_reads_exit_and_start_files_termination_logs_and_probe_results(tmp_path):
    run = _run(tmp_path)
    main, side = run.containers["main"], run.containers["side"]
    (main.dir / "exit.json").write_text(json.dumps({"exitCode": 2, "startedAt": 100.0, "finishedAt": 160.0}))
    main.log.write_text("starting\nboom: disk full\n")
    (side.dir / "started.json").write_text(json.dumps({"startedAt": 120.0, "pid": 1}))
    run.ready["side"] = True
    state = run.state()
    assert state.ip == "127.1.0.2" and state.start_time == "2026-01-01T00:00:00Z" and state.config_error == ""
    ended = state.containers["main"]
    assert ended.terminated["exitCode"] == 2 and ended.terminated["reason"] == "Error"
    assert ended.terminated["message"].endswith("boom: disk full")  # FallbackToLogsOnError
    assert ended.container_id == "omnitrain://p/main/0" and not ended.probe_ready
    assert state.containers["side"].started_at == 120.0 and state.containers["side"].probe_ready
    status = pod_status(run.pod, state, 200.0)
    assert status["phase"] == "Running"  # side still runs
    assert [s["ready"] for s in status["containerStatuses"]] == [False, True]


def test_the_termination_log_wins_over_the_log_tail(tmp_path):
    run = _run(tmp_path, policy="File")
    main = run.containers["main"]
    (main.dir / "exit.json").write_text(json.dumps({"exitCode": 1, "startedAt": 1.0, "finishedAt": 2.0}))
    main.log.write_text("noise\n")
    assert "message" not in run.state().containers["main"].terminated
    main.termination_log.write_text("bad config: spec.parallelism\n")
    assert run.state().containers["main"].terminated["message"] == "bad config: spec.parallelism"


def test_pod_ips_are_never_reused_across_allocators_of_one_cluster(tmp_path):
    first = [IPAllocator(tmp_path / "next-ip").allocate() for _ in range(2)]
    again = IPAllocator(tmp_path / "next-ip").allocate()
    assert first == ["127.1.0.2", "127.1.0.3"] and again == "127.1.0.4"


def test_last_state_keeps_the_termination_message_across_an_agent_restart(tmp_path):
    """The operator classifies a restarted container by lastState.terminated.message (the generation it failed
    in): a re-adopted container must report it too, although the next run's start emptied the termination log."""
    run = _run(tmp_path, policy="File")
    main = run.containers["main"]
    (main.dir / "exit.json").write_text(json.dumps({"exitCode": 42, "startedAt": 1.0, "finishedAt": 2.0}))
    main.termination_log.write_text('{"generation": 3}\n')
    main.archive_exit()
    main.termination_log.write_text("")  # what the next run's launch does
    adopted = ContainerRun.load("main", main.dir, main.log)
    assert adopted.restart_count == 1
    assert adopted.last_terminated == main.last_terminated
    assert adopted.last_terminated["exitCode"] == 42 and adopted.last_terminated["message"] == '{"generation": 3}'
