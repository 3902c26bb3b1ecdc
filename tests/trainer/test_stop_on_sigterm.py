"""SIGTERM (preemption, eviction, drain) stops training after the current step with a final checkpoint; the pod exits
with ExitCode.PREEMPTED and a resumed run continues as if never stopped."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import torch

from omnitrain.contract import ExitCode
from omnitrain.spec import TrainerConfig
from omnitrain.trainer.checkpoint.callback import CheckpointCallback
from omnitrain.trainer.train import train
from omnitrain.training_hooks import TrainerHooks

sys.path.insert(0, str(Path(__file__).parent))
from train_helpers import config_dict, write_config  # noqa: E402

REPO = Path(__file__).resolve().parents[2]
DEADLINE = 240


def _quiet(*_, **__):
    pass


class SigtermAt(TrainerHooks):
    """Sends this process SIGTERM at the end of one step: the loop sees it at the next step's end."""

    def __init__(self, step: int) -> None:
        self.step = step

    def on_step_end(self, *, state, stats):
        if stats.step == self.step:
            os.kill(os.getpid(), signal.SIGTERM)


class StartRecorder(TrainerHooks):
    started: int | None = None

    def on_train_start(self, *, state, step, restore_seconds):
        self.started = step


def _params(result) -> dict:
    return {k: v.detach().clone() for k, v in result.state.model.state_dict().items()}


def test_sigterm_stops_after_the_next_step_with_a_final_checkpoint_and_the_resume_is_exact(tmp_path):
    torch.set_num_threads(1)
    data = config_dict(tmp_path, steps=6)
    data["spec"]["checkpoint"].update({"intervalSteps": 100, "async": False})  # no interval save: only the stop's
    config = TrainerConfig.model_validate(data)
    reference = _params(train(config, callbacks=[], log=_quiet))
    previous = signal.getsignal(signal.SIGTERM)

    stopped = train(config, callbacks=[CheckpointCallback.from_trainer_config(config), SigtermAt(2)], log=_quiet)
    assert stopped.stopped and stopped.step == 3 and stopped.checkpoint_step == 3, stopped
    assert signal.getsignal(signal.SIGTERM) is previous  # the loop's handler is gone with the loop
    assert (tmp_path / "local" / "looptest" / "step-3" / "manifest.json").is_file()

    start = StartRecorder()
    resumed = train(config, callbacks=[CheckpointCallback.from_trainer_config(config), start], log=_quiet)
    assert start.started == 3 and not resumed.stopped and resumed.step == 6
    got = _params(resumed)
    assert [k for k in reference if not torch.equal(reference[k], got[k])] == []


def _wait(condition, what: str):
    end = time.monotonic() + DEADLINE
    while time.monotonic() < end:
        value = condition()
        if value:
            return value
        time.sleep(0.1)  # polling with a deadline
    raise AssertionError(f"timed out waiting for {what}")


def _torchrun_job(tmp_path: Path, tag: str, steps: int = 400) -> tuple[list[str], dict, Path]:
    data = config_dict(tmp_path, steps=steps)
    data["spec"]["parallelism"] = {"nodes": 1, "gpusPerNode": 2}
    data["spec"]["checkpoint"]["intervalSteps"] = 2
    cfg = write_config(tmp_path / "config.yaml", data)
    env = {
        **os.environ,
        "OMP_NUM_THREADS": "1",
        "OMNITRAIN_TERMINATION_LOG": str(tmp_path / "termination"),
        "CUDA_VISIBLE_DEVICES": "",
        "OMNITRAIN_TEST_TAG": tag,
    }
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]
    return [*torchrun, "-m", "omnitrain", "train", "--config", cfg], env, tmp_path / "local" / "looptest"


def _rank_pid(tag: str, rank: int) -> int | None:
    """The rank's training process: its checkpoint writer (a spawned child) has the same environment."""
    for proc in Path("/proc").glob("[0-9]*"):
        try:
            entries = set((proc / "environ").read_bytes().split(b"\0"))
            cmdline = (proc / "cmdline").read_bytes()
        except OSError:
            continue
        want = {f"OMNITRAIN_TEST_TAG={tag}".encode(), f"RANK={rank}".encode()}
        if want <= entries and b"--config" in cmdline and b"torch.distributed.run" not in cmdline:
            return int(proc.name)
    return None


def _first_checkpoint(root: Path) -> bool:
    return (root / "step-2" / "manifest.json").is_file()


def _stopped_checkpoint(tmp_path: Path, root: Path, steps: int) -> int:
    message = json.loads((tmp_path / "termination").read_text())
    assert message["reason"] == "Preempted", message
    step = message["step"]
    assert 2 <= step < steps and message["checkpoint_step"] == step, message
    manifest = json.loads((root / f"step-{step}" / "manifest.json").read_text())
    assert manifest["step"] == step and sorted(f["rank"] for f in manifest["files"]) == [0, 1], manifest
    return step


def test_a_sigterm_to_one_rank_stops_both_after_the_same_step_and_both_save(tmp_path):
    """Only rank 1 is signalled; the step-time all-reduce carries its request to rank 0, so both leave the loop after
    the same step and write the one final checkpoint (manifest of both ranks' shards)."""
    command, env, root = _torchrun_job(tmp_path, "one-rank")
    proc = subprocess.Popen(command, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        _wait(lambda: _first_checkpoint(root), "the first checkpoint")
        os.kill(_wait(lambda: _rank_pid("one-rank", 1), "rank 1's process"), signal.SIGTERM)
        out, _ = proc.communicate(timeout=DEADLINE)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode != 0, out[-3000:]  # each worker's 44 is torchrun's failure; the supervisor maps it back
    step = _stopped_checkpoint(tmp_path, root, 400)
    assert f"asked to stop (SIGTERM) at step {step}/400" in out, out[-3000:]


def test_the_supervisor_passes_sigterm_to_the_ranks_and_exits_preempted(tmp_path):
    """SIGTERM to `omnitrain watchdog` (the container's main process): the ranks (not torchrun, not the checkpoint
    writers) get it, save, and the pod's exit code is ExitCode.PREEMPTED though torchrun reports 1."""
    command, env, root = _torchrun_job(tmp_path, "supervised")
    watchdog = [sys.executable, "-m", "omnitrain", "watchdog", "--timeout", "120", "--heartbeat-dir"]
    proc = subprocess.Popen(
        [*watchdog, str(tmp_path / "hb"), "--rdma-root", str(tmp_path / "rdma"), "--", *command],
        cwd=REPO,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        _wait(lambda: _first_checkpoint(root), "the first checkpoint")
        proc.send_signal(signal.SIGTERM)
        out, _ = proc.communicate(timeout=DEADLINE)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == ExitCode.PREEMPTED, out[-3000:]
    _stopped_checkpoint(tmp_path, root, 400)
