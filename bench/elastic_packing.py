"""What the loader's elastic packing does to a mixed-length dataset: all-to-all volume and rank balance per step.

    .venv/bin/python bench/elastic_packing.py --steps 20

Planning only (no processes, no model run): a synthetic dataset where a fraction of clips are long and the rest
short, read by the real PackedLoader as `omnitrain train` does (one data-parallel rank, microBatches per step), once
at the fixed Ulysses degree and once with elasticUlysses. Per step it counts the Ulysses all-to-all elements of the
group (all_to_all_elements: q/k/v out and the output back, forward and backward, for the BENCH_MODEL dims) and the
estimated compute of the busiest rank over the mean (the loader's cost model). Fixed degree: every micro-batch on
all ranks (balanced by construction). Results: docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

from train_layouts import BENCH_MODEL  # noqa: E402  (this folder)

from omnitrain.trainer.data.balance import CostModel, imbalance, rank_loads  # noqa: E402
from omnitrain.trainer.data.loader import PackedLoader  # noqa: E402
from omnitrain.trainer.data.reader import ShardReader  # noqa: E402
from omnitrain.trainer.data.synthetic import SynthSpec, write_synthetic  # noqa: E402
from omnitrain.trainer.parallel.elastic import all_to_all_elements  # noqa: E402


def measure(folder: str, ulysses: int, budget: int, micro_batches: int, steps: int) -> dict:
    cost = CostModel.of(BENCH_MODEL)

    def loader(elastic: int) -> PackedLoader:
        return PackedLoader(
            ShardReader(folder),
            BENCH_MODEL.patch_size,
            budget,
            cost,
            micro_batches=micro_batches,
            text_dim=BENCH_MODEL.text_dim,
            latent_channels=BENCH_MODEL.latent_channels,
            elastic_ulysses=elastic,
        )

    fixed, elastic = loader(0), loader(ulysses)
    out = {"fixed": 0, "elastic": 0, "imbalance": [], "degree1": 0, "bins": 0, "fixed_bins": 0}
    dims = dict(hidden=BENCH_MODEL.hidden_size, depth=BENCH_MODEL.depth)
    for _ in range(steps):
        batches, step = fixed.next_step(), elastic.next_step()
        out["fixed"] += all_to_all_elements([b.num_tokens for b in batches], [ulysses] * len(batches), **dims)
        tokens = [step.bin_tokens(k) for k in range(len(step.bins))]
        out["elastic"] += all_to_all_elements(tokens, [b.degree for b in step.bins], **dims)
        out["imbalance"].append(imbalance(rank_loads(step.bins, step.costs, ulysses)))
        out["degree1"] += sum(b.degree == 1 for b in step.bins)
        out["bins"] += len(step.bins)
        out["fixed_bins"] += len(batches)
    return out


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--budget", type=int, default=8192, help="data.tokenBudget")
    parser.add_argument("--micro-batches", type=int, default=4)
    parser.add_argument("--long-fraction", type=float, default=0.1, help="share of maximal-size clips")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as folder:
        write_synthetic(
            folder,
            SynthSpec(
                samples=max(64, args.steps * args.micro_batches * 16),
                shards=2,
                seed=1,
                max_frames=16,
                max_side=28,
                long_fraction=args.long_fraction,
                latent_channels=BENCH_MODEL.latent_channels,
                text_dim=BENCH_MODEL.text_dim,
                patch_size=BENCH_MODEL.patch_size,
            ),
            log=lambda *_: None,
        )
        print(
            f"{args.steps} steps, tokenBudget {args.budget}, {args.micro_batches} micro-batches, "
            f"{args.long_fraction:.0%} long clips; all-to-all in M elements per step (group total)"
        )
        print(
            "ulysses | fixed a2a | elastic a2a | ratio | micro-batches fixed -> elastic | at degree 1 "
            "| busiest rank / mean (max)"
        )
        for ulysses in (2, 4, 8):
            r = measure(folder, ulysses, args.budget, args.micro_batches, args.steps)
            print(
                f"{ulysses:7d} | {r['fixed'] / args.steps / 1e6:9.2f} | {r['elastic'] / args.steps / 1e6:11.2f} "
                f"| {r['elastic'] / r['fixed']:5.2f} | {r['fixed_bins'] / args.steps:5.1f} -> "
                f"{r['bins'] / args.steps:5.1f} | {r['degree1'] / r['bins']:10.0%} "
                f"| {max(r['imbalance']):.3f}"
            )


if __name__ == "__main__":
    main()
