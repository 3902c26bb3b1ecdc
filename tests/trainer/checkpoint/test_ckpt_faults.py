"""Bad input and failure paths in one process: torn and corrupt checkpoints, foreign manifests, never
overwriting, one save in flight (wait/skip counters), disk full, retention, refused layout changes."""

from __future__ import annotations

import errno
import logging
import shutil
import subprocess
import threading
import time
from pathlib import Path

import pytest
import torch
from ckpt_workers import Gate

from omnitrain.checkpoint_paths import MANIFEST_NAME, list_step_dirs, shard_file_name, step_dir
from omnitrain.contract import storage_oserror
from omnitrain.trainer.checkpoint import (
    CheckpointConfig,
    Checkpointer,
    CheckpointMismatchError,
    CheckpointSaveError,
    LayoutChangeError,
    WorldLayout,
)
from omnitrain.trainer.checkpoint.manifest import read_manifest
from omnitrain.trainer.checkpoint.restore import source_rank
from omnitrain.trainer.checkpoint.retention import plan_retention

JOB = "fault-job"


def _config(tmp_path: Path, **kw) -> CheckpointConfig:
    base = dict(
        job=JOB, local_root=str(tmp_path / "nvme"), persistent_root=str(tmp_path / "pv"), interval_steps=2, keep=10
    )
    base.update(kw)
    return CheckpointConfig(**base)


def _state(step: int, n: int = 64) -> dict:
    return {
        "step": step,
        "model": {"w": torch.full((n,), float(step)), "b": torch.arange(3, dtype=torch.int64)},
        "loader": {"position": step},
    }


def _save_steps(ck: Checkpointer, steps) -> None:
    for s in steps:
        assert ck.save(s, _state(s))
        ck.wait()


def _truncate(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def test_torn_and_corrupt_checkpoints_fall_back(tmp_path, caplog):
    cfg = _config(tmp_path)
    ck = Checkpointer(cfg, model_config={"m": 1})
    try:
        _save_steps(ck, [2, 4, 6])
        assert ck.last_complete_step == 6 and ck.saves_completed == 3
        for root in (cfg.local_root, cfg.persistent_root):  # killed before the manifest: torn
            (step_dir(root, JOB, 6) / MANIFEST_NAME).unlink()
        _truncate(step_dir(cfg.local_root, JOB, 4) / shard_file_name(0))  # local copy truncated
        with caplog.at_level(logging.INFO):
            restored = ck.restore()
        assert (restored.step, restored.tier) == (4, "persistent")
        assert torch.equal(restored.state["model"]["w"], torch.full((64,), 4.0))
        assert "skipping step-6" in caplog.text and "no manifest (torn write)" in caplog.text

        _truncate(step_dir(cfg.persistent_root, JOB, 4) / shard_file_name(0))  # and the replica
        caplog.clear()
        with caplog.at_level(logging.INFO):
            restored = ck.restore()
        assert (restored.step, restored.tier) == (2, "local")
        assert "falling back to the previous complete checkpoint" in caplog.text
        assert restored.state["loader"] == {"position": 2}
    finally:
        ck.close()


def test_foreign_job_or_model_is_a_clear_error(tmp_path):
    cfg = _config(tmp_path, async_save=False)
    ck = Checkpointer(cfg, model_config={"hidden": 64})
    ck.save(2, _state(2))
    with pytest.raises(CheckpointMismatchError, match="model config .* this run has"):
        Checkpointer(cfg, model_config={"hidden": 128}).restore()
    for root in (cfg.local_root, cfg.persistent_root):
        shutil.copytree(Path(root) / JOB, Path(root) / "other-job")
    other = CheckpointConfig(
        job="other-job", local_root=cfg.local_root, persistent_root=cfg.persistent_root, async_save=False
    )
    with pytest.raises(CheckpointMismatchError, match="written by job 'fault-job', not 'other-job'"):
        Checkpointer(other, model_config={"hidden": 64}).restore()


def test_complete_checkpoint_is_never_overwritten(tmp_path):
    cfg = _config(tmp_path, async_save=False)
    ck = Checkpointer(cfg)
    ck.save(2, _state(2))
    before = read_manifest(step_dir(cfg.persistent_root, JOB, 2))
    ck.save(2, _state(99))
    assert ck.outcomes[-1].status == "exists"
    assert read_manifest(step_dir(cfg.persistent_root, JOB, 2)).files == before.files
    assert torch.equal(ck.restore().state["model"]["w"], torch.full((64,), 2.0))


def _poll(condition, what: str, timeout_s: float = 60.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            raise TimeoutError(f"gave up waiting for {what}")
        time.sleep(0.02)


def test_one_save_in_flight_skip_mode(tmp_path):
    gate = tmp_path / "gate"
    ck = Checkpointer(_config(tmp_path, when_busy="skip"))
    try:
        assert ck.save(2, {**_state(2), "gate": Gate(str(gate))})
        _poll(lambda: Path(str(gate) + ".writer-waiting").exists(), "the writer to hold step 2")
        assert ck.save(4, _state(4)) is False  # step 2 still in flight: skipped
        assert ck.saves_skipped_busy == 1 and ck.in_flight_step == 2
        assert ck.host_bytes_held == 64 * 4 + 3 * 8  # one staging set, accounted
        gate.write_text("")
        ck.wait()
        assert ck.last_complete_step == 2
        assert ck.save(6, _state(6))
        ck.wait()
        assert ck.last_complete_step == 6 and ck.saves_completed == 2
        assert sorted(list_step_dirs(ck.config.persistent_root, JOB)) == [2, 6]
    finally:
        ck.close()


def test_one_save_in_flight_wait_mode(tmp_path):
    gate = tmp_path / "gate"
    ck = Checkpointer(_config(tmp_path, when_busy="wait"))
    try:
        ck.save(2, {**_state(2), "gate": Gate(str(gate))})
        _poll(lambda: Path(str(gate) + ".writer-waiting").exists(), "the writer to hold step 2")
        # open the gate only once the second save is waiting for the first
        opener = threading.Thread(
            target=lambda: (_poll(lambda: ck.saves_waited_busy == 1, "save 4 to wait"), gate.write_text(""))
        )
        opener.start()
        assert ck.save(4, _state(4))
        opener.join()
        ck.wait()
        assert ck.saves_waited_busy == 1 and ck.saves_completed == 2 and ck.last_complete_step == 4
    finally:
        ck.close()


@pytest.fixture
def tiny_disk(tmp_path):
    """A real 512 KiB filesystem (tmpfs) so a write hits ENOSPC; skipped where mounting is not allowed."""
    mnt = tmp_path / "tiny"
    mnt.mkdir()
    if (
        subprocess.run(["mount", "-t", "tmpfs", "-o", "size=512k", "tmpfs", str(mnt)], capture_output=True).returncode
        != 0
    ):
        pytest.skip("cannot mount a tmpfs here (needs root); the disk-full path is not exercised")
    yield mnt
    subprocess.run(["umount", str(mnt)], check=True)


def test_disk_full_fails_loudly_and_keeps_previous(tmp_path, tiny_disk):
    cfg = _config(tmp_path, local_root=str(tiny_disk))
    ck = Checkpointer(cfg)
    try:
        _save_steps(ck, [2])
        big = {"step": 4, "model": {"w": torch.ones(1 << 20)}}  # 4 MiB on a 512 KiB disk
        ck.save(4, big)
        with pytest.raises(CheckpointSaveError, match="No space left on device"):
            ck.wait()
        assert ck.saves_failed == 1 and ck.last_complete_step == 2
        assert read_manifest(step_dir(cfg.local_root, JOB, 4)) is None  # incomplete, never loaded
        restored = ck.restore()
        assert (restored.step, restored.tier) == (2, "local")
    finally:
        ck.close()


def test_retention_keeps_newest_and_collects_torn(tmp_path):
    assert plan_retention([2, 4, 6, 8], [3, 9], keep=2) == [2, 3, 4]  # 9 may be in progress
    assert plan_retention([8], [], keep=1) == []
    assert plan_retention([], [3], keep=1) == []  # nothing complete: keep everything
    cfg = _config(tmp_path, keep=2)
    torn = step_dir(cfg.local_root, JOB, 3)
    torn.mkdir(parents=True)
    (torn / shard_file_name(0)).write_bytes(b"half")
    ck = Checkpointer(cfg)
    try:
        _save_steps(ck, [2, 4, 6, 8])
    finally:
        ck.close()
    for root in (cfg.local_root, cfg.persistent_root):
        assert sorted(list_step_dirs(root, JOB)) == [6, 8]


def test_layout_mapping_and_refusals():
    assert [source_rank(WorldLayout(dp=4), WorldLayout(dp=2), r) for r in range(2)] == [0, 1]
    assert [source_rank(WorldLayout(dp=2), WorldLayout(dp=4), r) for r in range(4)] == [0, 1, 0, 1]
    # tp stays 2: rank (dp1, tp1) of the new layout reads saved (dp1, tp1)
    assert source_rank(WorldLayout(dp=4, tp=2), WorldLayout(dp=2, tp=2), 3) == 3
    with pytest.raises(LayoutChangeError, match=r"dp=1 pp=2 .* into dp=2 pp=1"):
        source_rank(WorldLayout(pp=2), WorldLayout(dp=2), 0)
    with pytest.raises(LayoutChangeError, match="FSDP"):
        source_rank(WorldLayout(dp=4, data_sharding="fsdp"), WorldLayout(dp=2, data_sharding="fsdp"), 0)


def test_final_checkpoint_is_the_newest_complete_persistent_step(tmp_path):
    from omnitrain.trainer.checkpoint.restore import final_checkpoint, read_shard

    cfg = _config(tmp_path, async_save=False)
    assert final_checkpoint(cfg.persistent_root, JOB) is None
    ck = Checkpointer(cfg, model_config={"hidden": 64})
    for s in (2, 4, 5):
        ck.save(s, _state(s))
    (step_dir(cfg.persistent_root, JOB, 6)).mkdir()  # a torn later folder does not count
    final = final_checkpoint(cfg.persistent_root, JOB)
    assert final.step == 5 and final.folders["persistent"] == step_dir(cfg.persistent_root, JOB, 5)
    state, tier = read_shard(final, 0)
    assert tier == "persistent" and torch.equal(state["model"]["w"], torch.full((64,), 5.0))


def test_a_full_disk_reaches_the_trainer_as_the_refusing_oserror_from_the_writer_process(tmp_path, tiny_disk):
    # issue 14, case 6: the errno and the root cross the writer process and the ranks' gather, so `omnitrain train`
    # can end the pod with a StorageError (restart will not help) instead of a crash
    cfg = _config(tmp_path, local_root=str(tiny_disk))
    assert cfg.async_save
    ck = Checkpointer(cfg)
    try:
        ck.save(4, {"step": 4, "model": {"w": torch.ones(1 << 20)}})  # 4 MiB on a 512 KiB disk
        with pytest.raises(CheckpointSaveError) as caught:
            ck.wait()
        refused = storage_oserror(caught.value)
        assert refused is not None and refused.errno == errno.ENOSPC and refused.filename == str(tiny_disk)
    finally:
        ck.close()
