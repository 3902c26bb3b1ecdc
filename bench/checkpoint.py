"""Checkpoint benchmark: foreground blocking of an async save vs a synchronous save of the same state, and restore
time from the node-local tier vs the persistent tier; beside them, on the same state, torch.distributed.checkpoint's
own async_save (thread and process modes) vs its own synchronous save. Prints the numbers and ratios side by side,
one run.

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
from omnitrain.trainer.parallel.testing import free_port


def make_state(mb: int, tensors: int, device: str) -> dict:
    per = (mb << 20) // 4 // tensors
    g = torch.Generator().manual_seed(0)
    return {
        "step": 0,
        "model": {f"layer{i}.weight": torch.randn(per, generator=g).to(device) for i in range(tensors)},
        "loader": {"position": 0},
    }


def measure_dcp(state: dict, root: Path, repeats: int) -> dict[str, list[float]]:
    """Foreground seconds of DCP's save and async_save (thread, process) over `repeats` saves each, after one
    warm-up save per mode (the process mode starts its daemon on the first), each save complete before the next."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict_saver import AsyncCheckpointerType

    out: dict[str, list[float]] = {"save": [], "thread": [], "process": []}
    for mode in out:
        for i in range(repeats + 1):
            folder = root / f"dcp-{mode}-{i}"
            t0 = time.perf_counter()
            if mode == "save":
                dcp.save(state, checkpoint_id=str(folder))
            else:
                future = dcp.async_save(
                    state, checkpoint_id=str(folder), async_checkpointer_type=AsyncCheckpointerType(mode)
                )
            blocked = time.perf_counter() - t0
            if mode != "save":
                future.result()
            shutil.rmtree(folder, ignore_errors=True)
            if i > 0:
                out[mode].append(blocked)
        status(f"DCP {mode}: blocked {statistics.median(out[mode]):.3f} s (median of {repeats})")
    return out


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
    import torch.distributed as dist

    # DCP's saves need a process group (one rank); ours sees a world of 1 either way.
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{free_port()}", rank=0, world_size=1)
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
        dcp_times = measure_dcp(state, root, args.repeats)
    finally:
        asyn.close()
        dist.destroy_process_group()
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
    print(f"{'DCP save, foreground blocking':<44}{med(dcp_times['save']):>10.3f}")
    print(f"{'DCP async_save (thread), foreground blocking':<44}{med(dcp_times['thread']):>10.3f}")
    print(f"{'DCP async_save (process), foreground blocking':<44}{med(dcp_times['process']):>10.3f}")
    print(f"async blocking / sync blocking = {med(async_block) / med(sync_block):.3f}  (goal <= 0.05)")
    for mode in ("thread", "process"):
        ratio = med(dcp_times[mode]) / med(dcp_times["save"])
        print(f"DCP async_save ({mode}) / DCP save = {ratio:.3f}")
    print(f"restore local / persistent     = {med(local_restore) / med(persistent_restore):.3f}")
    print(f"host memory held by staging    = {host_mb:.1f} MiB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
