"""The watchdog as a real process supervising a fake trainer process (heartbeats + a fake RDMA counter tree)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from omnitrain.contract import ExitCode, TerminationMessage
from omnitrain.resilience.heartbeat import read_heartbeats

FAKE = str(Path(__file__).with_name("fake_trainer.py"))
TIMEOUT = 2.0


def run_watchdog(
    tmp_path: Path,
    mode: str,
    *,
    rdma: bool = True,
    extra: list[str] = (),
    timeout: float = TIMEOUT,
    deadline: float = 90.0,
    watchdog_args: list[str] = (),
) -> tuple[subprocess.CompletedProcess, Path]:
    hb = tmp_path / "hb"
    rdma_root = tmp_path / "rdma"
    cmd = [
        sys.executable,
        "-m",
        "omnitrain",
        "watchdog",
        "--timeout",
        str(timeout),
        "--workers",
        "1",
        "--heartbeat-dir",
        str(hb),
        "--rdma-root",
        str(rdma_root),
        "--poll",
        "0.1",
        "--status-every",
        "1",
        "--no-gpu-health",
        "--termination-log",
        str(tmp_path / "termination-log"),
        *watchdog_args,
        "--",
        sys.executable,
        FAKE,
        mode,
        "--marker",
        str(tmp_path / "fault-began"),
        *extra,
    ]
    if rdma:
        cmd += ["--rdma-root", str(rdma_root)]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=deadline, env=env)
    return result, hb


def termination(tmp_path: Path) -> TerminationMessage | None:
    path = tmp_path / "termination-log"
    return TerminationMessage.from_json(path.read_text()) if path.exists() else None


def pid_alive(pid: int) -> bool:
    """Running or stopped; a zombie (killed, waiting for init to reap it) is dead."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state not in ("Z", "X")


def all_dead(pids: list[int], deadline: float = 10.0) -> bool:
    end = time.monotonic() + deadline
    while time.monotonic() < end:
        if not any(pid_alive(p) for p in pids):
            return True
        time.sleep(0.05)
    return not any(pid_alive(p) for p in pids)


@pytest.mark.parametrize("mode", ["sigstop", "blocked"])
def test_stopped_or_blocked_trainer_with_stalled_counters_is_a_hang(tmp_path, mode):
    result, hb = run_watchdog(
        tmp_path, mode, watchdog_args=["--metrics-log-dir", str(tmp_path / "metrics"), "--attempt", "2"]
    )
    ended = time.time()
    assert result.returncode == ExitCode.HANG, result.stderr[-3000:]
    msg = termination(tmp_path)
    assert msg is not None and msg.reason == "HangDetected"
    assert msg.step == 10
    assert msg.evidence["stalled_ranks"] == [0]
    assert msg.evidence["last_step_by_rank"] == {"0": 10}
    assert msg.evidence["rdma"] != "no_evidence"
    assert (hb / "hang-evidence.json").exists()
    # The whole worker group is gone, stopped or not.
    worker_pid = read_heartbeats(hb)[0].pid
    assert all_dead([worker_pid])
    # the job's metrics log gets a `hang` record (omnitrain report dates the detection from it)
    [record] = [json.loads(line) for line in (tmp_path / "metrics" / "attempt-0002.jsonl").read_text().splitlines()]
    assert (record["kind"], record["attempt"], record["step"], record["stalled_ranks"]) == ("hang", 2, 10, [0])
    began = float((tmp_path / "fault-began").read_text())
    print(f"{mode}: detected and ended {ended - began:.2f}s after the fault (timeout {TIMEOUT}s)")


@pytest.mark.parametrize("mode", ["blocked", "spin"])
def test_hung_trainer_dumps_its_stack_before_the_kill(tmp_path, mode):
    """faulthandler answers from its C signal handler: also while one C call holds the GIL (spin)."""
    result, hb = run_watchdog(tmp_path, mode)
    assert result.returncode == ExitCode.HANG
    dumps = termination(tmp_path).evidence["stack_dumps"]
    assert len(dumps) == 1
    text = Path(dumps[0]).read_text()
    assert "fake_trainer.py" in text and "main" in text  # faulthandler's traceback of the blocked thread


def test_no_rdma_devices_means_heartbeats_alone_decide(tmp_path):
    result, _ = run_watchdog(tmp_path, "sigstop", rdma=False)
    assert result.returncode == ExitCode.HANG
    assert termination(tmp_path).evidence["rdma"] == "no_evidence"


def test_slow_step_with_moving_counters_is_not_a_hang(tmp_path):
    result, _ = run_watchdog(tmp_path, "slow", extra=["--slow", str(3 * TIMEOUT)])
    assert result.returncode == 0, result.stderr[-3000:]
    assert "slow step" in result.stderr
    assert "watchdog: step" in result.stderr  # periodic status lines
    assert termination(tmp_path) is None


def test_workers_exit_code_passes_through(tmp_path):
    crashed, _ = run_watchdog(tmp_path / "crash", "crash")
    assert crashed.returncode == 1
    assert termination(tmp_path / "crash") is None
    ok, hb = run_watchdog(tmp_path / "ok", "ok")
    assert ok.returncode == 0
    assert read_heartbeats(hb)[0].section == "done"


def test_missing_worker_command_is_a_clear_error(tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "omnitrain", "watchdog", "--timeout", "5"], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == ExitCode.CONFIG
    assert "needs the worker command after `--`" in result.stderr
    assert "Traceback" not in result.stderr


def test_under_torchrun_one_stopped_rank_ends_the_pod_and_no_worker_survives(tmp_path):
    """The real launch path: watchdog -> torchrun (2 ranks, each in a session of its own) -> workers. Rank 1 is
    SIGSTOP'd, rank 0 blocks waiting for it; the watchdog must kill both ranks, not only torchrun's group."""
    hb = tmp_path / "hb"
    torchrun = str(Path(sys.executable).with_name("torchrun"))
    cmd = [
        sys.executable,
        "-m",
        "omnitrain",
        "watchdog",
        "--timeout",
        str(TIMEOUT),
        "--workers",
        "2",
        "--startup-timeout",
        "120",
        "--heartbeat-dir",
        str(hb),
        "--poll",
        "0.1",
        "--no-gpu-health",
        "--termination-log",
        str(tmp_path / "termination-log"),
        "--",
        torchrun,
        "--standalone",
        "--nnodes=1",
        "--nproc-per-node=2",
        FAKE,
        "sigstop",
        "--fault-rank",
        "1",
        "--rdma-root",
        str(tmp_path / "rdma"),
        "--marker",
        str(tmp_path / "fault-began"),
    ]
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=180, env=dict(os.environ, OMP_NUM_THREADS="1"))
    assert result.returncode == ExitCode.HANG, result.stderr[-3000:]
    msg = termination(tmp_path)
    # whichever rank passed its leash first triggers; both stopped after step 10
    assert msg.evidence["stalled_ranks"] and set(msg.evidence["stalled_ranks"]) <= {0, 1}
    assert msg.evidence["last_step_by_rank"] == {"0": 10, "1": 10}
    pids = [h.pid for h in read_heartbeats(hb).values()]
    assert len(pids) == 2
    assert all_dead(pids), "a rank outlived the watchdog"


def test_sigterm_to_the_watchdog_reaches_the_workers(tmp_path):
    """Pod deletion: the kubelet sends SIGTERM to the main process; the workers must get it too."""
    hb = tmp_path / "hb"
    cmd = [
        sys.executable,
        "-m",
        "omnitrain",
        "watchdog",
        "--timeout",
        "30",
        "--workers",
        "1",
        "--heartbeat-dir",
        str(hb),
        "--poll",
        "0.1",
        "--no-gpu-health",
        "--termination-log",
        str(tmp_path / "termination-log"),
        "--",
        sys.executable,
        FAKE,
        "ok",
        "--steps",
        "100000",
    ]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 60
        while not read_heartbeats(hb) or read_heartbeats(hb)[0].step < 3:
            assert time.monotonic() < deadline and proc.poll() is None, "the worker never started stepping"
            time.sleep(0.05)
        worker = read_heartbeats(hb)[0].pid
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 128 + signal.SIGTERM  # the worker died of the forwarded SIGTERM
    assert all_dead([worker])
    assert termination(tmp_path) is None  # not a hang


def test_gpu_health_is_a_clean_no_op_without_nvml():
    from omnitrain.resilience.gpu_health import GpuHealth, new_ecc_errors

    health = GpuHealth()
    try:
        if not health.available:
            assert health.check() is None
        else:  # a GPU machine: a healthy GPU shows no fault
            assert health.check() is None
    finally:
        health.close()
    assert new_ecc_errors({0: 2, 1: 0}, {0: 2, 1: 1, 2: 5}) == [1]


def test_settings_from_the_trainer_config_and_pod_env(tmp_path):
    import yaml

    from omnitrain.resilience.watchdog import settings_from_config
    from omnitrain.spec import TrainerConfig

    config = TrainerConfig.model_validate(
        {
            "spec": {
                "parallelism": {"nodes": 2, "gpusPerNode": 4},
                "resilience": {"hangTimeoutSeconds": 90},
                "checkpoint": {"persistentClaim": "ckpt", "persistentPath": "/mnt/ckpt"},
            },
            "run": {"jobName": "video", "attempt": 3},
        }
    )
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(config.to_wire()))
    node0 = settings_from_config(str(path), None, {"PET_NPROC_PER_NODE": "4", "PET_NODE_RANK": "0"})
    assert (node0.timeout, node0.workers, node0.attempt) == (90, 4, 3)
    assert node0.metrics_log_dir == "/mnt/ckpt/video/metrics"
    node1 = settings_from_config(str(path), 12, {"PET_NODE_RANK": "1", "OMNITRAIN_ATTEMPT": "4"})
    assert (node1.timeout, node1.workers, node1.attempt, node1.metrics_log_dir) == (12, 4, 4, None)
    with pytest.raises(ValueError, match="--timeout"):
        settings_from_config(None, None, {})


def test_a_killed_watchdog_takes_its_workers_along(tmp_path):
    """A node agent that SIGKILLs the pod's main process (or its process group) leaves no training process."""
    hb = tmp_path / "hb"
    cmd = [
        sys.executable,
        "-m",
        "omnitrain",
        "watchdog",
        "--timeout",
        "30",
        "--workers",
        "1",
        "--heartbeat-dir",
        str(hb),
        "--poll",
        "0.1",
        "--no-gpu-health",
        "--",
        sys.executable,
        FAKE,
        "ok",
        "--steps",
        "100000",
    ]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 60
        while not read_heartbeats(hb) or read_heartbeats(hb)[0].step < 3:
            assert time.monotonic() < deadline and proc.poll() is None, "the worker never started stepping"
            time.sleep(0.05)
        worker = read_heartbeats(hb)[0].pid
        assert os.getpgid(worker) == os.getpgid(proc.pid)  # one process group with the watchdog
        proc.kill()
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert all_dead([worker])
