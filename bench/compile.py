"""Compiled blocks (spec.training.compile) vs eager, side by side in one run: the same MMDiT parameters (two copies),
the same packed micro-batches of changing length, a training step's forward + backward through the trainer's path
(setup_parallel, run_step), the two alternating so machine noise hits both alike. Prints the compile time (the first
compiled step, cold inductor cache, and the first step at a second length), then median step times and their ratio.

    OMP_NUM_THREADS=2 .venv/bin/python bench/compile.py [--preset tiny] [--recompute none] [--repeats 5]
"""

from __future__ import annotations

import argparse
import copy
import statistics
import time

import torch
import torch._inductor.config
from torch._dynamo.utils import counters

from omnitrain.model.config import PRESETS
from omnitrain.model.mmdit import MMDiT, randomize_
from omnitrain.model.packing import SampleRecord, pack
from omnitrain.trainer.compile import compile_blocks, compiler_problem
from omnitrain.trainer.memory import configure_memory
from omnitrain.trainer.parallel import ParallelLayout, setup_parallel


def micro_batch(cfg, samples: int, frames: int, side: int, text: int, gen: torch.Generator):
    records = [
        SampleRecord(
            text=torch.randn(text, cfg.text_dim, generator=gen),
            video=torch.randn(cfg.latent_channels, frames, side, side, generator=gen),
        )
        for _ in range(samples)
    ]
    batch = pack(records, cfg.patch_size)
    batch.target = torch.randn(batch.video.shape, generator=gen)
    return batch, torch.rand(samples, generator=gen)


def loss_fn(prediction, args):
    batch = args[0]
    return ((prediction[batch.target_mask] - batch.target) ** 2).mean()


def step(plan, mb) -> float:
    start = time.perf_counter()
    plan.run_step([mb], loss_fn)
    plan.model.zero_grad(set_to_none=True)
    return time.perf_counter() - start


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--preset", default="tiny")
    ap.add_argument("--recompute", default="none", choices=("none", "full"))
    ap.add_argument("--samples", type=int, default=4)
    ap.add_argument("--frames", type=int, default=4, help="latent frames per clip (of the first length)")
    ap.add_argument("--side", type=int, default=16, help="latent height = width")
    ap.add_argument("--text", type=int, default=32, help="text tokens per sample")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--warm-cache", action="store_true", help="let inductor reuse kernels compiled by earlier runs")
    args = ap.parse_args()
    problem = compiler_problem("cpu")
    if problem:
        raise SystemExit(problem)
    torch._inductor.config.force_disable_caches = not args.warm_cache
    cfg = PRESETS[args.preset]
    gen = torch.Generator().manual_seed(0)
    eager_model = randomize_(MMDiT(cfg), gen, std=0.02)
    compiled_model = copy.deepcopy(eager_model)
    plans = {}
    for name, model in (("eager", eager_model), ("compiled", compiled_model)):
        plans[name] = configure_memory(setup_parallel(model, layout=ParallelLayout()), recompute=args.recompute)
    compile_blocks(list(compiled_model.blocks))
    # Three packed lengths (frames, frames - 1, frames + 1 per clip), cycled: each step a length the last did not have.
    lengths = [max(1, args.frames + d) for d in (0, -1, 1)]
    mbs = [micro_batch(cfg, args.samples, f, args.side, args.text, gen) for f in lengths]
    tokens = [mb[0].num_tokens for mb in mbs]
    print(
        f"preset {args.preset}, recompute {args.recompute}: {args.samples} samples a micro-batch, packed lengths "
        f"{tokens} tokens cycled, {args.repeats} rounds, alternating; inductor cache "
        f"{'warm' if args.warm_cache else 'cold'}, {torch.get_num_threads()} threads"
    )
    eager_first = step(plans["eager"], mbs[0])
    first = step(plans["compiled"], mbs[0])
    graphs = [counters["stats"]["unique_graphs"]]
    second = step(plans["compiled"], mbs[1])  # a second length: dynamic from the first trace
    graphs.append(counters["stats"]["unique_graphs"])
    times: dict[str, list[float]] = {"eager": [], "compiled": []}
    for i in range(args.repeats):
        for mb in mbs:
            for name in times:
                times[name].append(step(plans[name], mb))
        print(f"  round {i + 1}/{args.repeats}", flush=True)
    eager, compiled = (statistics.median(times[n]) for n in times)
    print(f"  first step: eager {eager_first:.2f} s, compiled {first:.2f} s (compile ~ {first - eager:.1f} s)")
    print(f"  first step at a second length, compiled: {second:.2f} s")
    print(
        f"  graphs traced: {graphs[0]} in the first step, {graphs[1]} after the second length, "
        f"{counters['stats']['unique_graphs']} after all"
    )
    print(f"  eager     {eager * 1e3:8.1f} ms/step (median)")
    print(f"  compiled  {compiled * 1e3:8.1f} ms/step (median)")
    print(f"  compiled / eager: {compiled / eager:.3f}")


if __name__ == "__main__":
    main()
