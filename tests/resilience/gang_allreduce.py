"""A two-node stand-in for the trainer under torchrun (gloo): all-reduces a counter every step and records its
progress in <out>/generation-<G>-rank-<RANK>.step (atomically). A chosen rank can die at a chosen step of a chosen
generation; its peers' next all-reduce then fails, as a healthy rank's does when its peer's node goes."""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import torch
import torch.distributed as dist


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--out", required=True)
    p.add_argument("--steps", type=int, default=40)
    p.add_argument("--die-generation", type=int)
    p.add_argument("--die-rank", type=int)
    p.add_argument("--die-at", type=int, default=10)
    args = p.parse_args()
    generation, rank = int(os.environ["OMNITRAIN_ATTEMPT"]), int(os.environ["RANK"])
    dist.init_process_group("gloo")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    progress = out / f"generation-{generation}-rank-{rank}.step"
    for step in range(1, args.steps + 1):
        if generation == args.die_generation and rank == args.die_rank and step == args.die_at:
            os._exit(1)
        value = torch.ones(1)
        dist.all_reduce(value)
        assert int(value.item()) == dist.get_world_size()
        tmp = progress.with_name(f".{progress.name}")
        tmp.write_text(str(step))
        os.replace(tmp, progress)
        time.sleep(0.05)  # a step's worth of work
    dist.destroy_process_group()
    return 0


if __name__ == "__main__":
    sys.exit(main())
