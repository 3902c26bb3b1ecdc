"""Step time and all-to-all volume: fixed vs elastic Ulysses, coalesced vs overlapped gradient all-reduce.

    .venv/bin/python bench/elastic_ulysses.py --rounds 5 --steps 2

One group of local processes (gloo, one thread each) builds all four modes up front, then alternates them step by
step (the order rotating every round), so that machine noise hits every mode alike. Every step is the same 6
packed micro-batches (tokenBudget 512 at ulysses=2): 2 long ones (332 and 512 tokens) and 4 short ones (168-208),
the mix elastic Ulysses is for. All-to-all volume is measured (bytes each rank sends to other ranks through the
Ulysses exchange), not estimated. Results: docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

import torch

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

from train_layouts import BENCH_MODEL, step_microbatches, video_mse  # noqa: E402  (this folder)

from omnitrain.model.mmdit import MMDiT, randomize_  # noqa: E402
from omnitrain.trainer.parallel import ParallelLayout, setup_parallel  # noqa: E402
from omnitrain.trainer.parallel import ulysses as ulysses_module  # noqa: E402
from omnitrain.trainer.parallel.elastic import plan_elastic  # noqa: E402
from omnitrain.trainer.parallel.testing import run_on_ranks  # noqa: E402

TOKEN_BUDGET = 512
# (text tokens, latent frames, latent side, reference image?, video context?) per sample, per micro-batch.
MICRO_BATCHES = [
    [(24, 3, 20, True, False), (16, 2, 12, False, False)],  # 512 tokens
    [(32, 4, 16, False, False), (8, 1, 12, False, False)],  # 332
    [(20, 1, 16, True, False), (8, 1, 12, False, False)],  # 192
    [(12, 3, 12, False, False), (16, 2, 12, False, False)],  # 208
    [(24, 2, 12, False, True)],  # 168
    [(12, 3, 12, False, False), (8, 1, 12, False, False), (8, 1, 12, False, False)],  # 208
]
MODES = {  # name -> (elastic, gradient reduce)
    "fixed, coalesced": (False, "coalesced"),
    "fixed, overlapped": (False, "overlapped"),
    "elastic, coalesced": (True, "coalesced"),
    "elastic, overlapped": (True, "overlapped"),
}


class _Counter:
    """Bytes this rank sends to other ranks in Ulysses all-to-alls (chunk i of n stays on rank i)."""

    def __init__(self):
        self.bytes = 0
        self.inner = ulysses_module._exchange

    def __call__(self, x, group):
        n = torch.distributed.get_world_size(group)
        self.bytes += x.numel() * x.element_size() * (n - 1) // n
        return self.inner(x, group)


def bench_worker(rank: int, world_size: int, rounds: int, steps: int, bucket_mb: float) -> dict:
    import torch.distributed as dist

    counter = _Counter()
    ulysses_module._exchange = counter
    runs = {}
    for name, (elastic, reduce) in MODES.items():
        torch.manual_seed(0)
        model = randomize_(MMDiT(BENCH_MODEL), torch.Generator().manual_seed(0))
        layout = ParallelLayout(
            ulysses=world_size,
            micro_batches=len(MICRO_BATCHES),
            elastic_ulysses=elastic,
            grad_reduce=reduce,
            grad_bucket_mb=bucket_mb,
        )
        plan = setup_parallel(model, layout=layout)
        runs[name] = (plan, torch.optim.AdamW(plan.parameters_for_optimizer(), lr=1e-4, foreach=True))
    batches = step_microbatches(0, MICRO_BATCHES)
    tokens = [b.num_tokens for b, _ in batches]
    schedule = plan_elastic(tokens, world_size, TOKEN_BUDGET)
    times = {name: [] for name in MODES}
    volume = {name: 0 for name in MODES}
    losses = {name: [] for name in MODES}
    names = list(MODES)
    for r in range(rounds + 1):  # round 0 is warm-up
        order = names[r % len(names) :] + names[: r % len(names)]
        for name in order:
            plan, optimizer = runs[name]
            elastic = MODES[name][0]
            for _ in range(steps):
                mine = [
                    mb if not elastic or plan.ulysses_rank in schedule.ranks_of(j) else None
                    for j, mb in enumerate(batches)
                ]
                dist.barrier()
                sent = counter.bytes
                start = time.perf_counter()
                loss = plan.run_step(mine, video_mse, schedule=schedule if elastic else None)
                optimizer.step()
                optimizer.zero_grad()
                dist.barrier()
                if r > 0:
                    times[name].append(time.perf_counter() - start)
                    volume[name] = counter.bytes - sent
                    losses[name].append(float(loss))
    reducer = runs["fixed, overlapped"][0].grad_reducer
    return {
        "times": times,
        "volume": volume,
        "losses": losses,
        "tokens": tokens,
        "degrees": schedule.degrees,
        "items": schedule.items_of(rank),
        "buckets": len(reducer.buckets),
    }


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5, help="timed rounds (each runs every mode)")
    parser.add_argument("--steps", type=int, default=2, help="steps per mode per round")
    parser.add_argument("--procs", type=int, default=2, help="processes = the Ulysses degree (2 or 4)")
    parser.add_argument("--bucket-mb", type=float, default=0.5, help="bucket size of the overlapped all-reduce")
    args = parser.parse_args(argv)
    results = run_on_ranks(bench_worker, args.procs, args.rounds, args.steps, args.bucket_mb, timeout_s=1800)
    first = results[0]
    print(
        f"\nMMDiT hidden={BENCH_MODEL.hidden_size} depth={BENCH_MODEL.depth} heads={BENCH_MODEL.num_heads}; "
        f"ulysses={args.procs} on {args.procs} gloo processes; micro-batch tokens {first['tokens']} "
        f"(budget {TOKEN_BUDGET}) -> elastic degrees {list(first['degrees'])}; micro-batches per rank "
        f"{[r['items'] for r in results]}; overlapped all-reduce in {first['buckets']} buckets of "
        f"<= {args.bucket_mb} MB; {args.rounds} rounds x {args.steps} steps per mode"
    )
    # A step lasts as long as its slowest rank.
    step = {name: statistics.median(max(ts) for ts in zip(*(r["times"][name] for r in results))) for name in MODES}
    print(f"{'mode':<22}{'median step s':>14}{'vs fixed':>10}{'all-to-all MB/step/rank':>25}  loss (last)")
    for name in MODES:
        mb = max(r["volume"][name] for r in results) / 1e6
        print(
            f"{name:<22}{step[name]:>14.3f}{step[name] / step['fixed, coalesced']:>9.2f}x{mb:>25.2f}  "
            f"{first['losses'][name][-1]:.6f}"
        )


if __name__ == "__main__":
    main()
