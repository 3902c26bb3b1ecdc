"""Checkpoint benchmark: foreground blocking of an async save vs a synchronous save of the same state, and restore
time from the node-local tier vs the persistent tier. Prints the numbers and ratios side by side, one run.

    .venv/bin/python bench/checkpoint.py --mb 400 --repeats 3 [--device cuda] [--root DIR]

State: `--tensors` float32 tensors totalling `--mb` MiB (a stand-in for model + optimizer shards of one rank).
Async numbers exclude the first save, which allocates the staging buffers (reported separately).
"""

from __future__ import annotations

import argparse
import logging
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

from omnitrain.checkpoint_paths import job_dir
from omnitrain.trainer.checkpoint import CheckpointConfig, Checkpointer


def make_state(mb: int, tensors: int, device: str) -> dict:
    per = (mb << 20) // 4 // tensors
    g = torch.Generator().manual_seed(0)
    return {
        "step": 0,
        "model": {f"layer{i}.weight": torch.randn(per, generator=g).to(device) for i in range(tensors)},
        "loader": {"position": 0},
    }


def status(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--mb", type=int, default=400)
    ap.add_argument("--tensors", type=int, default=32)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--device", default="cpu", help="where the state lives (cuda: staging buffers are pinned)")
    ap.add_argument("--root", default=None, help="folder for both tiers (default: a temporary folder)")
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    logging.basicConfig(level=logging.WARNING)
    root = Path(args.root or tempfile.mkdtemp(prefix="omnitrain-ckpt-bench-"))
    state = make_state(args.mb, args.tensors, args.device)
    status(f"state: {args.tensors} tensors, {args.mb} MiB on {args.device}; tiers under {root}")

    def config(name: str, async_save: bool) -> CheckpointConfig:
        return CheckpointConfig(
            job=name,
            local_root=str(root / "local"),
            persistent_root=str(root / "persistent"),
            interval_steps=1,
            async_save=async_save,
            keep=1,
        )

    sync_block, async_block, async_background, first_async = [], [], [], None
    sync = Checkpointer(config("sync", False))
    asyn = Checkpointer(config("async", True))
    try:
        for i in range(args.repeats + 1):
            step = i + 1
            state["step"] = step
            asyn.save(step, state)
            if i == 0:
                first_async = asyn.last_blocking_seconds
            else:
                async_block.append(asyn.last_blocking_seconds)
            asyn.wait()
            async_background.append(asyn.outcomes[-1].seconds)
            if i > 0:
                sync.save(step, state)
                sync_block.append(sync.last_blocking_seconds)
            status(
                f"round {i}: async blocked {asyn.last_blocking_seconds:.3f} s "
                f"(background write+replicate {async_background[-1]:.2f} s)"
                + (f", sync blocked {sync_block[-1]:.3f} s" if i > 0 else " (buffer allocation round)")
            )
        host_mb = asyn.host_bytes_held / 2**20

        local_restore, persistent_restore = [], []
        for _ in range(args.repeats):
            restored = asyn.restore()
            assert restored.tier == "local"
            local_restore.append(restored.seconds)
        shutil.rmtree(job_dir(root / "local", "async"))  # a replaced node: nothing local
        for _ in range(args.repeats):
            restored = asyn.restore()
            assert restored.tier == "persistent"
            persistent_restore.append(restored.seconds)
    finally:
        asyn.close()
        if args.root is None:
            shutil.rmtree(root, ignore_errors=True)

    med = statistics.median
    print()
    print(f"{f'measure (median of {args.repeats})':<44}{'seconds':>10}")
    print(f"{'sync save, foreground blocking':<44}{med(sync_block):>10.3f}")
    print(f"{'async save, foreground blocking':<44}{med(async_block):>10.3f}")
    print(f"{'async save, first (allocates staging)':<44}{first_async:>10.3f}")
    print(f"{'async save, background write + replicate':<44}{med(async_background):>10.3f}")
    print(f"{'restore from node-local tier':<44}{med(local_restore):>10.3f}")
    print(f"{'restore from persistent tier':<44}{med(persistent_restore):>10.3f}")
    print(f"async blocking / sync blocking = {med(async_block) / med(sync_block):.3f}  (goal < 0.10)")
    print(f"restore local / persistent     = {med(local_restore) / med(persistent_restore):.3f}")
    print(f"host memory held by staging    = {host_mb:.1f} MiB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
