"""Heartbeat records, RDMA counter evidence and the hang judgement (pure parts, real files)."""

from __future__ import annotations

from pathlib import Path

import pytest

from omnitrain.resilience.hang import HangPolicy, StepTimeLearner, Verdict, assess
from omnitrain.resilience.heartbeat import Heartbeat, HeartbeatCallback, HeartbeatWriter, read_heartbeats
from omnitrain.resilience.rdma import RdmaMonitor, Traffic, counters_moved, read_counters
from omnitrain.training_hooks import CheckpointHooks, StepStats


class FakeClock:
    def __init__(self, t: float = 1000.0) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t


def write_port(root: Path, device: str, port: str, xmit: int, rcv: int) -> None:
    d = root / device / "ports" / port / "counters"
    d.mkdir(parents=True, exist_ok=True)
    (d / "port_xmit_data").write_text(f"{xmit}\n")
    (d / "port_rcv_data").write_text(f"{rcv}\n")
    (d / "symbol_error").write_text("7\n")  # other counters are ignored


# --- heartbeats -------------------------------------------------------------------------------------------


def test_writer_round_trip_and_reader_skips_garbage(tmp_path):
    clock = FakeClock()
    HeartbeatWriter(tmp_path, rank=3, clock=clock).beat(12, "checkpoint", step_seconds=0.5)
    HeartbeatWriter(tmp_path, rank=0, clock=clock).beat(12, "step")
    (tmp_path / "rank-00009.json").write_text("{not json")
    records = read_heartbeats(tmp_path)
    assert sorted(records) == [0, 3]
    assert records[3] == Heartbeat(
        rank=3, step=12, section="checkpoint", time=1000.0, pid=records[3].pid, step_seconds=0.5
    )
    assert read_heartbeats(tmp_path / "absent") == {}


def test_writer_rejects_unknown_section(tmp_path):
    with pytest.raises(ValueError, match="section 'saving'"):
        HeartbeatWriter(tmp_path, 0).beat(1, "saving")


def test_callback_sections_and_step_durations(tmp_path):
    clock, mono = FakeClock(), FakeClock(0.0)
    cb = HeartbeatCallback(tmp_path, rank=1, clock=clock, monotonic=mono)
    try:
        assert read_heartbeats(tmp_path)[1].section == "setup"
        cb.on_train_start(step=40)  # resumed from a checkpoint at step 40
        assert read_heartbeats(tmp_path)[1].step == 40
        mono.t = 2.5
        cb.on_step_end(stats=StepStats(step=41))
        hb = read_heartbeats(tmp_path)[1]
        assert (hb.step, hb.section, hb.step_seconds) == (41, "step", 2.5)
        cb.on_checkpoint_start(step=41)  # as the Checkpointer notifies its listeners
        assert read_heartbeats(tmp_path)[1].section == "checkpoint"
        mono.t = 100.0  # a long save
        cb.on_checkpoint_blocked(step=41, seconds=97.5)
        assert read_heartbeats(tmp_path)[1].section == "step"
        mono.t = 101.0
        cb.on_step_end(stats=StepStats(step=42))
        hb = read_heartbeats(tmp_path)[1]
        assert hb.step_seconds == 1.0  # the save is not counted as step time
        cb.on_step_end(stats=StepStats(step=43, step_seconds=0.75))  # the loop's figure (slowest rank) wins
        assert read_heartbeats(tmp_path)[1].step_seconds == 0.75
        cb.on_train_end(step=43, reason="Completed")
        assert read_heartbeats(tmp_path)[1].section == "finish"
        cb.on_checkpoint_start(step=43)  # the final save, after the loop
        cb.on_checkpoint_blocked(step=43, seconds=0.5)
        assert read_heartbeats(tmp_path)[1].section == "finish"  # not back to a "step" that never comes
        cb.on_exit(step=43)  # the loop, once every on_train_end returned
        assert (read_heartbeats(tmp_path)[1].step, read_heartbeats(tmp_path)[1].section) == (43, "done")
    finally:
        cb.close()


def test_callback_from_env_is_off_without_a_heartbeat_dir(tmp_path):
    assert HeartbeatCallback.from_env({}) is None
    cb = HeartbeatCallback.from_env({"OMNITRAIN_HEARTBEAT_DIR": str(tmp_path), "RANK": "5"})
    try:
        assert list(read_heartbeats(tmp_path)) == [5]
    finally:
        cb.close()


# --- RDMA counters ----------------------------------------------------------------------------------------


def test_counters_read_from_a_fake_sysfs_tree(tmp_path):
    write_port(tmp_path, "mlx5_0", "1", 100, 200)
    write_port(tmp_path, "mlx5_1", "1", 5, 6)
    values = read_counters(tmp_path)
    assert values == {
        "mlx5_0/1/port_xmit_data": 100,
        "mlx5_0/1/port_rcv_data": 200,
        "mlx5_1/1/port_xmit_data": 5,
        "mlx5_1/1/port_rcv_data": 6,
    }
    assert read_counters(tmp_path / "none") == {}


def test_counters_moved():
    assert counters_moved({"a": 1, "b": 2}, {"a": 1, "b": 3}) is True
    assert counters_moved({"a": 1}, {"a": 1}) is False
    assert counters_moved({"a": 1}, {"b": 1}) is None
    assert counters_moved({}, {}) is None


def test_monitor_moving_then_stalled_and_no_devices(tmp_path):
    mon = RdmaMonitor(tmp_path)
    assert mon.traffic(0.0, 5) is Traffic.NO_EVIDENCE
    mon.observe(0.0)
    assert mon.traffic(0.0, 5) is Traffic.NO_EVIDENCE  # no devices: no evidence, no error
    write_port(tmp_path, "mlx5_0", "1", 0, 0)
    mon.observe(10.0)
    write_port(tmp_path, "mlx5_0", "1", 4096, 0)
    mon.observe(11.0)
    assert mon.traffic(12.0, 5) is Traffic.MOVING
    mon.observe(20.0)  # unchanged since 11
    assert mon.traffic(20.0, 5) is Traffic.STALLED
    assert mon.seconds_since_change(20.0) == 9.0


# --- hang judgement ---------------------------------------------------------------------------------------


def hb(rank: int, step: int, section: str, t: float, seconds: float | None = None) -> Heartbeat:
    return Heartbeat(rank=rank, step=step, section=section, time=t, pid=1, step_seconds=seconds)


POLICY = HangPolicy(timeout=60, learn=True, warmup_steps=2, min_samples=3, safety_factor=4, min_timeout=5)


def test_learned_timeout_excludes_warmup_and_never_exceeds_the_configured_one():
    learner = StepTimeLearner(POLICY)
    assert learner.timeout() == (60, False)
    # Attempt resumed at step 100: steps 101, 102 are warm-up (slow compilation), then 1-2 s steps.
    for step, seconds in [(101, 30.0), (102, 20.0), (103, 1.0), (104, 2.0)]:
        learner.add({0: hb(0, step, "step", 0, seconds), 1: hb(1, step, "step", 0, seconds / 2)})
    assert learner.timeout() == (60, False)  # 2 samples < min_samples
    learner.add({0: hb(0, 105, "step", 0, 1.5)})
    assert learner.timeout() == (8.0, True)  # 4 x slowest post-warm-up step (2 s)
    learner.add({0: hb(0, 106, "step", 0, 50.0)})
    assert learner.timeout() == (60, True)  # capped by the configured timeout
    fast = StepTimeLearner(POLICY)
    for step in range(1, 10):
        fast.add({0: hb(0, step, "step", 0, 0.01)})
    assert fast.timeout() == (5, True)  # floor
    assert StepTimeLearner(HangPolicy(timeout=60, learn=False)).timeout() == (60, False)


@pytest.mark.parametrize(
    "section, age, rdma_since, verdict",
    [
        ("step", 10, None, Verdict.OK),  # within the step timeout
        ("step", 31, None, Verdict.HANG),  # past it, no RDMA devices: heartbeats decide
        ("step", 31, 40.0, Verdict.HANG),  # past it, counters stalled as long
        ("step", 31, 2.0, Verdict.SLOW),  # past it, counters moving: slow, not hung
        ("checkpoint", 100, None, Verdict.OK),  # long save: longer leash (5 x 30)
        ("checkpoint", 151, None, Verdict.HANG),
        ("setup", 200, None, Verdict.OK),  # start-up leash (10 x 30)
        ("finish", 100, None, Verdict.OK),  # final save + waiting for background writes
        ("finish", 151, None, Verdict.HANG),
        ("done", 10_000, None, Verdict.OK),
    ],
)
def test_assess_by_section_and_traffic(section, age, rdma_since, verdict):
    policy = HangPolicy(timeout=30)
    now = 5000.0
    records = {0: hb(0, 7, "step", now - 1), 1: hb(1, 7, section, now - age)}
    result = assess(
        now,
        records,
        expected_workers=2,
        started_at=0,
        policy=policy,
        step_timeout=30,
        rdma_seconds_since_change=rdma_since,
    )
    assert result.verdict is verdict
    if verdict is not Verdict.OK:
        assert [r.rank for r in result.overdue] == [1]
        assert result.evidence()["stalled_ranks"] == [1]


def test_assess_learned_timeout_is_used_in_the_step_section_only():
    policy = HangPolicy(timeout=60)
    now = 100.0
    records = {0: hb(0, 7, "step", now - 9)}
    assert assess(now, records, 1, 0, policy, step_timeout=8, rdma_seconds_since_change=None).verdict is Verdict.HANG
    records = {0: hb(0, 7, "checkpoint", now - 59)}
    assert assess(now, records, 1, 0, policy, step_timeout=8, rdma_seconds_since_change=None).verdict is Verdict.OK


def test_workers_that_never_wrote_get_the_startup_leash():
    policy = HangPolicy(timeout=10, startup_timeout=50)
    records = {0: hb(0, 0, "step", 99)}
    ok = assess(
        100, records, expected_workers=2, started_at=60, policy=policy, step_timeout=10, rdma_seconds_since_change=None
    )
    assert ok.verdict is Verdict.OK and len(ok.ranks) == 2
    late = assess(120, {0: hb(0, 0, "step", 119)}, 2, 60, policy, 10, None)
    assert late.verdict is Verdict.HANG and late.overdue[0].rank is None
    assert late.min_step == 0


def test_evidence_is_small_with_many_ranks():
    now = 1000.0
    records = {r: hb(r, 3, "step", now - 100) for r in range(512)}
    result = assess(now, records, 512, 0, HangPolicy(timeout=30), 30, None)
    import json

    assert len(result.evidence()["stalled_ranks"]) == 16
    assert len(json.dumps(result.evidence(max_ranks=16))) < 12_000


def test_policy_rejects_a_non_positive_timeout():
    with pytest.raises(ValueError, match="hangTimeoutSeconds"):
        HangPolicy(timeout=0)


class SectionProbe(CheckpointHooks):
    """A listener after the heartbeat: reads the heartbeat's section as the Checkpointer notifies."""

    def __init__(self, directory):
        self.directory, self.seen = directory, []

    def on_checkpoint_start(self, *, step):
        self.seen.append(("start", step, read_heartbeats(self.directory)[0].section))

    def on_checkpoint_blocked(self, *, step, seconds):
        self.seen.append(("blocked", step, read_heartbeats(self.directory)[0].section))


def test_a_real_save_is_a_checkpoint_section(tmp_path):
    import torch

    from omnitrain.trainer.checkpoint.checkpointer import CheckpointConfig, Checkpointer

    beats = tmp_path / "beats"
    cb = HeartbeatCallback(beats, rank=0, clock=FakeClock(), monotonic=FakeClock(0.0))
    probe = SectionProbe(beats)
    ck = Checkpointer(
        CheckpointConfig(job="j", local_root=str(tmp_path / "nvme"), async_save=False), listeners=[cb, probe]
    )
    try:
        cb.on_train_start(step=0)
        cb.on_step_end(stats=StepStats(step=1))
        ck.save(1, {"w": torch.zeros(4)})
        assert probe.seen == [("start", 1, "checkpoint"), ("blocked", 1, "step")]
    finally:
        ck.close()
        cb.close()
