"""Checkpoints any layout can read: save under one parallel layout, resume under another.

After the resume, the restored parameters and the AdamW state equal what was saved (read back by DCP's own loader,
without omnitrain), the next step's loss equals a single process restored from the same checkpoint, and so do the
parameters after that step (the optimizer state was placed where each rank needs it)."""

from __future__ import annotations

import shutil

import pytest
import reshard_workers as workers
import torch

from omnitrain.checkpoint_format import load_consolidated
from omnitrain.checkpoint_paths import list_step_dirs
from omnitrain.trainer.parallel import ParallelLayout
from omnitrain.trainer.parallel.testing import run_on_ranks

pytestmark = pytest.mark.slow

STEPS = 3  # checkpoints at 2 and 3 (the final save)

CASES = {
    # saved layout, ranks per node when saving, resumed layout, ranks per node when resuming
    "fsdp-dp2-to-dp4": (ParallelLayout(dp=2, data_sharding="fsdp"), 1, ParallelLayout(dp=4, data_sharding="fsdp"), 2),
    "pp2-to-pp1": (ParallelLayout(pp=2, micro_batches=2), 1, ParallelLayout(dp=2), 2),
    "tp2-to-tp1": (ParallelLayout(tp=2), 2, ParallelLayout(), 1),
    "dp2xpp2-to-dp4": (ParallelLayout(dp=2, pp=2, micro_batches=2), 2, ParallelLayout(dp=4), 2),
    "fsdp-ulysses2-to-fsdp-dp2": (
        ParallelLayout(dp=2, ulysses=2, data_sharding="fsdp"),
        2,
        ParallelLayout(dp=2, data_sharding="fsdp"),
        1,
    ),
    "dp2-to-fsdp-tp2": (ParallelLayout(dp=2), 1, ParallelLayout(dp=2, tp=2, data_sharding="fsdp"), 4),
}


def _close(got, want, what: str) -> None:
    torch.testing.assert_close(got, want, rtol=2e-5, atol=2e-6, msg=lambda m: f"{what}: {m}")


@pytest.mark.timeout(400)
@pytest.mark.parametrize("name", list(CASES))
def test_a_checkpoint_resumes_in_another_layout_like_one_process(name, tmp_path):
    saved, per_node, resumed, resumed_per_node = CASES[name]
    root = str(tmp_path / "saved")
    run_on_ranks(workers.train_and_save, saved.world_size, saved, root, STEPS, per_node)
    final = list_step_dirs(tmp_path / "saved" / "pv", workers.JOB)[STEPS]
    on_disk = load_consolidated(final)  # DCP's own reader: the whole state as it was saved

    # The single-process reference restores a copy of the same checkpoint (its own resume saves nothing).
    shutil.copytree(root, tmp_path / "reference")
    (one,) = run_on_ranks(
        workers.resume_and_step,
        1,
        ParallelLayout(micro_batches=resumed.dp * resumed.micro_batches),
        str(tmp_path / "reference"),
        1,
    )
    ranks = run_on_ranks(workers.resume_and_step, resumed.world_size, resumed, root, resumed_per_node)

    saved_optimizer = on_disk["train"]["optimizer"]["state"]
    for rank, got in enumerate(ranks):
        assert got["step"] == STEPS and got["position"] == STEPS, f"rank {rank} restored {got['step']}"
        assert got["lr"] == one["lr"]
        for param, value in on_disk["train"]["model"].items():
            assert torch.equal(got["params"][param], value), f"rank {rank}: {param} not as saved"
        assert sorted(got["optimizer"]) == sorted(saved_optimizer)
        for param, per_param in saved_optimizer.items():
            for k, value in per_param.items():
                assert torch.equal(got["optimizer"][param][k], value), f"rank {rank}: {param}.{k} not as saved"
        _close(got["loss"], one["loss"], f"rank {rank} loss of the next step")
        for param, value in one["params_after"].items():
            _close(got["params_after"][param], value, f"rank {rank} {param} after the next step")


@pytest.mark.timeout(300)
def test_a_resharding_restore_skips_a_step_with_a_corrupt_file(tmp_path, caplog):
    saved, per_node, _, _ = CASES["fsdp-dp2-to-dp4"]
    root = str(tmp_path / "saved")
    run_on_ranks(workers.train_and_save, saved.world_size, saved, root, STEPS, per_node)
    # Rank 1's file of the newest step: corrupt on the persistent tier, gone from its node's disk.
    steps = list_step_dirs(tmp_path / "saved" / "pv", workers.JOB)
    shard = steps[STEPS] / "rank-00001.distcp"
    data = bytearray(shard.read_bytes())
    data[100] ^= 0xFF
    shard.write_bytes(bytes(data))
    (list_step_dirs(tmp_path / "saved" / "nvme-node1", workers.JOB)[STEPS] / "rank-00001.distcp").unlink()

    (one,) = run_on_ranks(workers.resume_and_step, 1, ParallelLayout(micro_batches=2), root, 1)
    assert one["step"] == 2  # the older complete checkpoint, never the corrupt one
    previous = load_consolidated(steps[2])
    for param, value in previous["train"]["model"].items():
        assert torch.equal(one["params"][param], value)
