"""Activation offload and recompute: peak saved-activation bytes per pipeline stage and step time per mode.

    OMP_NUM_THREADS=1 .venv/bin/python bench/memory.py --rounds 6

Two local gloo processes (pipeline 2, 1F1B, 4 packed micro-batches of the bench/train_layouts.py model), one plan
per (offload, recompute) mode built from the same initial model. The modes run side by side in one run: each round
runs one step of every mode, in an order rotated every round, so machine noise falls on all of them alike; the
first round is warm-up. Step time = the slower rank's time of a step (after a barrier); the median over rounds is
compared with mode none/none. Bytes come from the mechanism's own accounting (omnitrain/trainer/memory/offload.py):
device-resident saved activations at their peak, host-resident peak, bytes copied out. On CPU "device" and "host"
are the same memory: the copies cost real memcpys but save nothing; the numbers say what a GPU would hold.
Results: docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

import torch
import torch.distributed as dist

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

from train_layouts import BENCH_MODEL, step_microbatches, video_mse  # noqa: E402

from omnitrain.model.mmdit import MMDiT, randomize_  # noqa: E402
from omnitrain.trainer.memory import configure_memory  # noqa: E402
from omnitrain.trainer.parallel import ParallelLayout, setup_parallel  # noqa: E402
from omnitrain.trainer.parallel.testing import run_on_ranks  # noqa: E402

MODES = [
    ("none", "none"),
    ("pipelineAware", "none"),
    ("all", "none"),
    ("none", "selective"),
    ("none", "full"),
    ("pipelineAware", "selective"),
    ("pipelineAware", "full"),
]
LAYOUT = ParallelLayout(pp=2, micro_batches=4)


def bench_worker(rank: int, world_size: int, rounds: int) -> dict:
    plans = {}
    for offload, recompute in MODES:
        torch.manual_seed(0)
        model = randomize_(MMDiT(BENCH_MODEL), torch.Generator().manual_seed(0))
        plans[offload, recompute] = configure_memory(
            setup_parallel(model, layout=LAYOUT), offload, recompute, account=True
        )
    microbatches = step_microbatches(0)
    times: dict[tuple, list[float]] = {mode: [] for mode in MODES}
    accounts = {}
    for r in range(rounds + 1):
        for k in range(len(MODES)):
            mode = MODES[(k + r) % len(MODES)]
            plan = plans[mode]
            dist.barrier()
            began = time.perf_counter()
            plan.run_step(microbatches, video_mse)
            seconds = torch.tensor([time.perf_counter() - began], dtype=torch.float64)
            dist.all_reduce(seconds, op=dist.ReduceOp.MAX)
            plan.model.zero_grad(set_to_none=True)
            if r:
                times[mode].append(float(seconds))
            accounts[mode] = plan.memory.account.as_dict()
    return {"stage": plans[MODES[0]].pp_rank, "times": times, "accounts": accounts}


def kib(n: int) -> str:
    return f"{n / 1024:,.0f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=6, help="timed rounds (one step of every mode each)")
    args = parser.parse_args()
    results = sorted(run_on_ranks(bench_worker, 2, args.rounds, timeout_s=1200), key=lambda r: r["stage"])
    times = results[0]["times"]
    base = statistics.median(times["none", "none"])
    print(f"pipeline 2, 1F1B, {LAYOUT.micro_batches} micro-batches, {args.rounds} rounds; KiB of saved activations")
    print(
        "| offload | recompute | stage 0 peak device | stage 1 peak device | stage 0 / 1 peak host "
        "| stage 0 / 1 copied out | step ms (median) | vs none |"
    )
    print("|---|---|--:|--:|--:|--:|--:|--:|")
    for mode in MODES:
        a0, a1 = (r["accounts"][mode] for r in results)
        step = statistics.median(times[mode])
        print(
            f"| {mode[0]} | {mode[1]} | {kib(a0['peak_device'])} | {kib(a1['peak_device'])} "
            f"| {kib(a0['peak_host'])} / {kib(a1['peak_host'])} | {kib(a0['offloaded'])} / {kib(a1['offloaded'])} "
            f"| {step * 1000:.0f} | {step / base:.2f}x |"
        )
        assert a0["late_reloads"] == a1["late_reloads"] == 0, mode


if __name__ == "__main__":
    main()
