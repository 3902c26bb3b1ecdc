import copy
import json
import math
import sys
from pathlib import Path

import pytest
import torch

from omnitrain.cli import main
from omnitrain.contract import ExitCode
from omnitrain.trainer.data.reader import list_shards
from omnitrain.trainer.train import train
from omnitrain.training_hooks import Restored, StepStats, TrainerHooks, TrainOutcome

sys.path.insert(0, str(Path(__file__).parent))
from train_helpers import config_dict, make_config, torchrun_train, write_config  # noqa: E402


@pytest.fixture(autouse=True)
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _quiet(*_, **__):
    pass


def test_loss_falls_on_synthetic_data(tmp_path):
    lines = []
    result = train(make_config(tmp_path, steps=40), callbacks=[], log=lambda line, **_: lines.append(line))
    assert len(list_shards(tmp_path / "data")) == 2  # the synthetic dataset was written on demand
    first, last = sum(result.losses[:5]) / 5, sum(result.losses[-5:]) / 5
    assert last < 0.7 * first, result.losses
    progress = [line for line in lines if line.startswith("step ")]
    assert len(progress) == 20 and "tokens/s" in progress[-1] and "loss" in progress[-1]


def _params(result):
    return {k: v.detach().clone() for k, v in result.state.model.state_dict().items()}


def test_same_config_gives_bitwise_same_parameters(tmp_path):
    a = _params(train(make_config(tmp_path, steps=5), callbacks=[], log=_quiet))
    b = _params(train(make_config(tmp_path, steps=5), callbacks=[], log=_quiet))
    assert all(torch.equal(a[k], b[k]) for k in a)
    c = _params(train(make_config(tmp_path, steps=5, seed=1), callbacks=[], log=_quiet))
    assert not all(torch.equal(a[k], c[k]) for k in a)


class Snapshot(TrainerHooks):
    def __init__(self, at):
        self.at, self.saved = at, None

    def on_step_end(self, *, state, stats):
        if stats.step == self.at:
            self.saved = copy.deepcopy(state.state_dict())


class Restore(TrainerHooks):
    def __init__(self, saved):
        self.saved = saved
        self.started = None

    def restore(self, *, state):
        state.load_state_dict(copy.deepcopy(self.saved))
        return Restored(step=self.saved["step"], seconds=0.0)

    def on_train_start(self, *, state, step, restore_seconds):
        self.started = step


def test_resume_from_train_state_is_exact(tmp_path):
    snap = Snapshot(at=3)
    full = train(make_config(tmp_path, steps=6), callbacks=[snap], log=_quiet)
    assert snap.saved["loader"]["carry"] is not None
    restore = Restore(snap.saved)
    resumed = train(make_config(tmp_path, steps=6), callbacks=[restore], log=_quiet)
    assert restore.started == 3 and len(resumed.losses) == 3
    assert resumed.losses == full.losses[3:]
    a, b = _params(full), _params(resumed)
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_dpo_starts_at_log2_and_trains(tmp_path):
    pre = train(make_config(tmp_path, steps=3), callbacks=[], log=_quiet)
    weights = tmp_path / "init.pt"
    torch.save({"model": pre.state.model.state_dict()}, weights)
    dpo = train(
        make_config(tmp_path, steps=4, stage="dpo", initFrom=str(weights), dpoBeta=50.0, learningRate=1e-3),
        callbacks=[],
        log=_quiet,
    )
    assert dpo.losses[0] == pytest.approx(math.log(2.0), abs=1e-6)  # policy == reference at the start
    assert all(math.isfinite(x) for x in dpo.losses) and dpo.losses[-1] != dpo.losses[0]


def test_bad_config_exits_with_config_code_naming_the_field(tmp_path, monkeypatch, capsys):
    term = tmp_path / "termination"
    monkeypatch.setenv("OMNITRAIN_TERMINATION_LOG", str(term))
    bad = config_dict(tmp_path)
    bad["spec"]["training"]["learningRate"] = -1
    assert main(["train", "--config", write_config(tmp_path / "bad.yaml", bad)]) == ExitCode.CONFIG
    assert "spec.training.learningRate" in capsys.readouterr().err
    msg = json.loads(term.read_text())
    assert msg["reason"] == "ConfigError" and "learningRate" in msg["message"]

    dpo = config_dict(tmp_path)
    dpo["spec"]["training"]["stage"] = "dpo"
    assert main(["train", "--config", write_config(tmp_path / "dpo.yaml", dpo)]) == ExitCode.CONFIG
    assert "initFrom" in json.loads(term.read_text())["message"]

    no_data = config_dict(tmp_path)
    del no_data["spec"]["data"]["synthetic"]
    no_data["spec"]["data"]["path"] = str(tmp_path / "empty")
    assert main(["train", "--config", write_config(tmp_path / "nodata.yaml", no_data)]) == ExitCode.CONFIG
    assert "spec.data.path" in json.loads(term.read_text())["message"]


def test_data_synth_command(tmp_path, capsys):
    assert main(["data", "synth", "--out", str(tmp_path / "d"), "--samples", "10", "--shards", "3"]) == 0
    assert len(list_shards(tmp_path / "d")) == 3
    assert "shard 3/3" in capsys.readouterr().out


def test_torchrun_two_processes_gloo(tmp_path):
    data = config_dict(tmp_path, steps=4)
    data["spec"]["parallelism"] = {"nodes": 1, "gpusPerNode": 2}
    data["spec"]["checkpoint"]["intervalSteps"] = 2
    cfg = write_config(tmp_path / "config.yaml", data)
    proc = torchrun_train(cfg, tmp_path / "termination", timeout=240)
    assert "step 4/4" in proc.stdout
    # one writer (local rank 0, here global rank 0): the job's goodput over its whole metrics log rides along
    message = json.loads((tmp_path / "termination").read_text())
    assert {k: message[k] for k in ("reason", "step", "checkpoint_step")} == {
        "reason": "Completed",
        "step": 4,
        "checkpoint_step": 4,
    }
    goodput = message["goodput"]
    assert 0 < goodput["ratio"] <= 1 and goodput["productiveSeconds"] <= goodput["wallSeconds"]
    for step in (2, 4):  # interval saves and the final one, by both ranks (no persistent claim: local tier)
        manifest = json.loads((tmp_path / "local" / "looptest" / f"step-{step}" / "manifest.json").read_text())
        assert manifest["step"] == step


class CrashAt(TrainerHooks):
    def __init__(self, step):
        self.step = step

    def on_step_end(self, *, state, stats):
        if stats.step == self.step:
            raise RuntimeError("injected crash")


def test_crash_and_resume_with_the_real_checkpoint_callback(tmp_path):
    from omnitrain.trainer.checkpoint.callback import CheckpointCallback

    reference = _params(train(make_config(tmp_path, steps=6), callbacks=[], log=_quiet))
    data = config_dict(tmp_path, steps=6)
    data["spec"]["checkpoint"].update({"intervalSteps": 3, "async": False})
    from omnitrain.spec import TrainerConfig

    config = TrainerConfig.model_validate(data)
    with pytest.raises(RuntimeError, match="injected"):
        train(config, callbacks=[CheckpointCallback.from_trainer_config(config), CrashAt(4)], log=_quiet)
    start = _StartRecorder()
    resumed = train(config, callbacks=[CheckpointCallback.from_trainer_config(config), start], log=_quiet)
    assert start.started == 3 and len(resumed.losses) == 3
    got = _params(resumed)
    assert all(torch.equal(reference[k], got[k]) for k in reference)


class HookOrder(TrainerHooks):
    """Records the hooks the loop calls, in order."""

    def __init__(self):
        self.calls = []

    def restore(self, *, state):
        self.calls.append("restore")
        return None

    def on_train_start(self, *, state, step, restore_seconds):
        self.calls.append(("start", step, restore_seconds))

    def on_step_end(self, *, state, stats):
        assert isinstance(stats, StepStats) and stats.tokens > 0 and stats.flops > 0 and stats.step_seconds > 0
        self.calls.append(("step", stats.step))

    def on_train_end(self, *, state, step, reason):
        self.calls.append(("end", step, reason))

    def on_exit(self, *, step):
        self.calls.append(("exit", step))

    def outcome(self):
        self.calls.append("outcome")
        return TrainOutcome(checkpoint_step=7)


def test_the_loop_calls_every_hook_in_order_and_takes_the_outcome(tmp_path):
    order = HookOrder()
    result = train(make_config(tmp_path, steps=2), callbacks=[order], log=_quiet)
    assert order.calls == [
        "restore",
        ("start", 0, 0.0),
        ("step", 1),
        ("step", 2),
        ("end", 2, "Completed"),
        ("exit", 2),
        "outcome",
    ]
    assert result.checkpoint_step == 7 and result.goodput is None


def test_a_failed_step_still_ends_training_with_reason_error(tmp_path):
    order = HookOrder()
    with pytest.raises(RuntimeError, match="injected"):
        train(make_config(tmp_path, steps=3), callbacks=[order, CrashAt(2)], log=_quiet)
    assert order.calls[-3:] == [("step", 2), ("end", 2, "Error"), ("exit", 2)]


def test_default_callbacks_leave_a_done_heartbeat_and_the_final_checkpoint(tmp_path, monkeypatch):
    """Under the watchdog: the final save ran in "finish", and a rank that is through says "done", so the watchdog
    does not take a rank waiting for slower peers' final saves for a stalled one."""
    from omnitrain.observability.callback import MetricsCallback
    from omnitrain.resilience.heartbeat import HeartbeatCallback, read_heartbeats
    from omnitrain.trainer.callbacks import default_callbacks

    monkeypatch.setenv("OMNITRAIN_HEARTBEAT_DIR", str(tmp_path / "beats"))
    monkeypatch.setenv("OMNITRAIN_METRICS_PORT", "0")
    monkeypatch.setenv("POD_IP", "127.0.0.1")
    config = make_config(tmp_path, steps=2)
    callbacks = default_callbacks(config)
    try:
        result = train(config, callbacks=callbacks, log=_quiet)
    finally:
        for cb in callbacks:
            if isinstance(cb, (MetricsCallback, HeartbeatCallback)):
                cb.close()  # the endpoint and the stack-dump file; a pod's process simply exits
    beat = read_heartbeats(tmp_path / "beats")[0]
    assert (beat.step, beat.section) == (2, "done")
    assert result.checkpoint_step == 2 and 0 < result.goodput["ratio"] <= 1


class _ClaimsRestore(TrainerHooks):
    def restore(self, *, state):
        return Restored(step=0, seconds=0.0)


def test_two_callbacks_that_restore_are_refused(tmp_path):
    with pytest.raises(ValueError, match="2 callbacks restored"):
        train(make_config(tmp_path, steps=1), callbacks=[_ClaimsRestore(), _ClaimsRestore()], log=_quiet)


class _StartRecorder(TrainerHooks):
    started = None

    def on_train_start(self, *, state, step, restore_seconds):
        self.started = step


def test_bf16_precision_on_cpu_runs_in_fp32(tmp_path):
    """bf16 autocast is a GPU path; on CPU the same config must give the fp32 result bit for bit."""
    a = _params(train(make_config(tmp_path, steps=2), callbacks=[], log=_quiet))
    b = _params(train(make_config(tmp_path, steps=2, precision="bf16"), callbacks=[], log=_quiet))
    assert all(torch.equal(a[k], b[k]) for k in a)
