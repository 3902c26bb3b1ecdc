"""Step time and tokens/s of the parallel layouts, measured side by side in one run (ratios against one process).

    .venv/bin/python bench/train_layouts.py --steps 4 --plot bench/out/train_layouts.png

Each layout runs as its own group of local processes (gloo on CPU; one thread each) on the same packed
micro-batches; the first step is warm-up and not timed. On a 2-core machine only layouts of <= 2 processes are
meaningful for speed; larger ones are listed to show they run. Results: docs/benchmarks.md.
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

from omnitrain.model.config import ModelConfig  # noqa: E402
from omnitrain.model.flops import TokenCounts, training_flops  # noqa: E402
from omnitrain.model.mmdit import MMDiT, randomize_  # noqa: E402
from omnitrain.model.packing import SampleRecord, pack  # noqa: E402
from omnitrain.observability.mfu import tokens_per_second  # noqa: E402
from omnitrain.trainer.parallel import ParallelLayout, setup_parallel  # noqa: E402
from omnitrain.trainer.parallel.testing import run_on_ranks  # noqa: E402

BENCH_MODEL = ModelConfig(
    hidden_size=128,
    depth=4,
    num_heads=4,
    mlp_ratio=4.0,
    latent_channels=4,
    patch_size=(1, 2, 2),
    text_dim=32,
    frequency_embedding_size=64,
)
# (text tokens, latent frames, latent side, reference image?, video context?) per sample, per micro-batch:
# 4 packed micro-batches of about 500 tokens each, samples of different lengths.
MICRO_BATCHES = [
    [(24, 4, 16, False, False), (16, 2, 16, True, False), (20, 1, 12, False, True)],
    [(32, 3, 20, False, False), (12, 2, 12, False, False)],
    [(16, 2, 12, False, True), (24, 2, 16, True, False), (8, 2, 12, False, False), (30, 1, 12, False, False)],
    [(20, 4, 12, True, True), (28, 2, 16, False, False)],
]

LAYOUTS = {
    "single": ParallelLayout(micro_batches=4),
    "dp2": ParallelLayout(dp=2, micro_batches=2),
    "fsdp2": ParallelLayout(dp=2, data_sharding="fsdp", micro_batches=2),
    "tp2": ParallelLayout(tp=2, micro_batches=4),
    "ulysses2": ParallelLayout(ulysses=2, micro_batches=4),
    "pp2-1F1B": ParallelLayout(pp=2, micro_batches=4),
    "pp2-interleaved": ParallelLayout(pp=2, virtual_stages=2, schedule="interleaved1F1B", micro_batches=4),
    "dp2-pp2-tp2": ParallelLayout(dp=2, pp=2, tp=2, micro_batches=2),
}


def step_microbatches(step: int, micro_batches: list = MICRO_BATCHES) -> list[tuple]:
    """The step's packed micro-batches (the same on every layout), with a regression target on video tokens."""
    g = torch.Generator().manual_seed(1000 + step)
    c = BENCH_MODEL.latent_channels
    out = []
    for specs in micro_batches:
        records = [
            SampleRecord(
                text=torch.randn(text, BENCH_MODEL.text_dim, generator=g),
                video=torch.randn(c, frames, side, side, generator=g),
                reference=torch.randn(c, 1, side, side, generator=g) if ref else None,
                context=torch.randn(c, frames, side, side, generator=g) if ctx else None,
            )
            for text, frames, side, ref, ctx in specs
        ]
        batch = pack(records, BENCH_MODEL.patch_size)
        batch.target = torch.randn(batch.video.shape, generator=g)
        out.append((batch, torch.rand(len(specs), generator=g)))
    return out


def video_mse(prediction, args):
    batch = args[0]
    return ((prediction[batch.target_mask] - batch.target) ** 2).mean()


def bench_worker(rank: int, world_size: int, layout: ParallelLayout, steps: int) -> dict:
    torch.manual_seed(0)
    model = randomize_(MMDiT(BENCH_MODEL), torch.Generator().manual_seed(0))
    plan = setup_parallel(model, layout=layout)
    optimizer = torch.optim.AdamW(plan.parameters_for_optimizer(), lr=1e-4, foreach=True)
    m = layout.micro_batches
    times, tokens, flops = [], 0, 0
    for step in range(steps + 1):
        everything = step_microbatches(step)
        index, _ = plan.data_shard
        if torch.distributed.is_initialized():
            torch.distributed.barrier()
        start = time.perf_counter()
        plan.run_step(everything[index * m : (index + 1) * m], video_mse)
        plan.clip_grad_norm_(1.0)
        optimizer.step()
        optimizer.zero_grad()
        if torch.distributed.is_initialized():
            torch.distributed.barrier()
        if step > 0:  # step 0 is warm-up
            times.append(time.perf_counter() - start)
            tokens += sum(b.num_tokens for b, _ in everything)
            flops += sum(training_flops(BENCH_MODEL, TokenCounts.of_batch(b)) for b, _ in everything)
    return {
        "step_s": statistics.median(times),
        "tokens_per_s": tokens_per_second(tokens, sum(times)),
        "gflops_per_s": flops / sum(times) / 1e9,
    }


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=4, help="timed steps per layout (after one warm-up step)")
    parser.add_argument("--layouts", default=",".join(LAYOUTS), help="comma-separated names")
    parser.add_argument("--plot", help="write a bar chart of tokens/s per layout here (PNG)")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    names = args.layouts.split(",")
    results = {}
    for name in names:
        layout = LAYOUTS[name]
        print(f"[bench] {name}: {layout.world_size} process(es), {args.steps} timed steps ...", flush=True)
        if layout.world_size == 1:
            results[name] = bench_worker(0, 1, layout, args.steps)
        else:
            results[name] = run_on_ranks(bench_worker, layout.world_size, layout, args.steps)[0]
        print(
            f"[bench] {name}: step {results[name]['step_s']:.3f} s, {results[name]['tokens_per_s']:.0f} tokens/s",
            flush=True,
        )
    base = results.get("single", next(iter(results.values())))
    tokens = sum(b.num_tokens for b, _ in step_microbatches(0))
    print(
        f"\nMMDiT hidden={BENCH_MODEL.hidden_size} depth={BENCH_MODEL.depth} heads={BENCH_MODEL.num_heads}; "
        f"{tokens} tokens per step in {len(MICRO_BATCHES)} packed micro-batches; {args.steps} timed steps"
    )
    print(f"{'layout':<18}{'procs':>6}{'step s':>10}{'tokens/s':>12}{'GFLOP/s':>10}{'vs single':>11}")
    for name, r in results.items():
        print(
            f"{name:<18}{LAYOUTS[name].world_size:>6}{r['step_s']:>10.3f}{r['tokens_per_s']:>12.0f}"
            f"{r['gflops_per_s']:>10.2f}{r['tokens_per_s'] / base['tokens_per_s']:>10.2f}x"
        )
    if args.plot:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        os.makedirs(os.path.dirname(os.path.abspath(args.plot)), exist_ok=True)
        fig, ax = plt.subplots(figsize=(8, 3.5))
        ax.bar(list(results), [r["tokens_per_s"] for r in results.values()], color="tab:blue")
        ax.set_ylabel("tokens/s")
        ax.set_title("Training throughput per parallel layout (CPU, gloo)")
        ax.tick_params(axis="x", rotation=30)
        fig.tight_layout()
        fig.savefig(args.plot, dpi=110)
        print(f"plot: {args.plot}")


if __name__ == "__main__":
    main()
