"""The checkpoint callback inside the project's real training loop (MM-DiT, packed synthetic data, AdamW, LR
schedule, data loader position) on 2 gloo ranks: SIGKILL after a checkpoint, resume, same losses and parameters
bitwise; then a data-degree change (dp2 -> dp1) resumes from the same checkpoint."""

from __future__ import annotations

import os
import signal
import time

import torch
from ckpt_workers import launch_ranks
from real_loop_workers import loop_config, real_train

from omnitrain.checkpoint_paths import MANIFEST_NAME, step_dir
from omnitrain.trainer.parallel.testing import run_on_ranks


def _poll(condition, what: str, timeout_s: float = 180.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            raise TimeoutError(f"gave up waiting for {what}")
        time.sleep(0.05)


def test_real_loop_sigkill_resume_is_exact_and_survives_a_data_degree_change(tmp_path):
    steps = 6
    straight = run_on_ranks(
        real_train, 2, loop_config(str(tmp_path), steps, 100, 2, str(tmp_path / "straight")), None, None, (4,)
    )

    cfg = loop_config(str(tmp_path), steps, 2, 2)
    progress = tmp_path / "progress"
    progress.mkdir()
    ctx = launch_ranks(real_train, 2, cfg, 5, str(progress))
    try:
        _poll(lambda: all((progress / f"rank{r}-at-5").exists() for r in range(2)), "both ranks parked at step 5")
        assert (step_dir(tmp_path / "pv", "real-loop", 4) / MANIFEST_NAME).exists()
    finally:
        for p in ctx.processes:
            if p.is_alive():
                os.kill(p.pid, signal.SIGKILL)
        for p in ctx.processes:
            p.join(timeout=30)

    resumed = run_on_ranks(real_train, 2, cfg)
    for r in range(2):
        assert resumed[r]["start"] == 4
        assert resumed[r]["losses"] == straight[r]["losses"][4:]  # bitwise on CPU
        for k, v in straight[r]["final"].items():
            assert torch.equal(resumed[r]["final"][k], v), k
        assert resumed[r]["last_complete_step"] == steps

    # dp2 -> dp1 from the step-4 checkpoint (step 6 removed): the model comes back exactly as dp2 had it
    import shutil

    for tier in ("nvme", "pv"):
        shutil.rmtree(step_dir(tmp_path / tier, "real-loop", 6))
    single = run_on_ranks(real_train, 1, loop_config(str(tmp_path), steps, 2, 1))[0]
    assert single["start"] == 4 and len(single["losses"]) == 2
    for k, v in straight[0]["by_step"][4].items():
        assert torch.equal(single["at_start"][k], v), k


def test_real_loop_fsdp_checkpoint_resumes_in_one_replicated_process(tmp_path):
    """FSDP dp2 -> one process: a resharding restore through `omnitrain train`'s own callback and TrainState."""
    from omnitrain.checkpoint_format import read_model_state

    steps = 4
    sharded = run_on_ranks(real_train, 2, loop_config(str(tmp_path), steps, 2, 2, sharding="fsdp"))
    assert [r["last_complete_step"] for r in sharded] == [steps, steps]
    import shutil

    for tier in ("nvme", "pv"):
        shutil.rmtree(step_dir(tmp_path / tier, "real-loop", steps))
    saved = read_model_state(step_dir(tmp_path / "pv", "real-loop", 2))
    single = run_on_ranks(real_train, 1, loop_config(str(tmp_path), steps, 2, 1))[0]
    assert single["start"] == 2 and len(single["losses"]) == 2
    assert sorted(single["at_start"]) == sorted(saved)
    for k, v in saved.items():
        assert torch.equal(single["at_start"][k], v), k
