"""adaLN modulation per sample (the model now) vs per token (the model before), side by side in one run: the same
MMDiT parameters, the same packed batch, forward + backward of the whole model, alternating the two so machine noise
hits both alike. Prints median step time of each, their ratio, and the FLOPs each does (omnitrain.model.flops for
per sample; per token adds 12 h^2 per token and block and 4 h^2 per token in the head).

    OMP_NUM_THREADS=2 .venv/bin/python bench/modulation.py [--preset small] [--samples 4] [--frames 4] [--side 16]
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
import torch.nn.functional as F

from omnitrain.model.config import PRESETS
from omnitrain.model.flops import TokenCounts, training_flops
from omnitrain.model.mmdit import MMDiT, modulate, randomize_
from omnitrain.model.packing import SampleRecord, pack


def per_token_forward(model: MMDiT, batch, t):
    """The model as it was: every adaLN Linear applied to each token's copy of its sample's conditioning."""
    x, ctx = model.embed(batch, t)
    cond = ctx.sample_cond[ctx.cond_row]
    for block in model.blocks:
        s1, b1, g1, s2, b2, g2 = block.adaln(F.silu(cond)).chunk(6, dim=-1)
        x = x + g1 * block.attn(modulate(block.norm1(x), s1, b1), ctx)
        x = x + g2 * block.mlp(modulate(block.norm2(x), s2, b2))
    shift, scale = model.head.adaln(F.silu(cond)).chunk(2, dim=-1)
    return model.head.proj(modulate(model.head.norm(x), shift, scale))


def step(model: MMDiT, forward, batch, t) -> float:
    start = time.perf_counter()
    forward(model, batch, t).square().mean().backward()
    model.zero_grad(set_to_none=True)
    return time.perf_counter() - start


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--preset", default="small")
    ap.add_argument("--samples", type=int, default=4)
    ap.add_argument("--frames", type=int, default=4, help="latent frames per clip")
    ap.add_argument("--side", type=int, default=16, help="latent height = width")
    ap.add_argument("--text", type=int, default=32, help="text tokens per sample")
    ap.add_argument("--repeats", type=int, default=7)
    args = ap.parse_args()
    cfg = PRESETS[args.preset]
    gen = torch.Generator().manual_seed(0)
    model = randomize_(MMDiT(cfg), gen, std=0.02)
    records = [
        SampleRecord(
            text=torch.randn(args.text, cfg.text_dim, generator=gen),
            video=torch.randn(cfg.latent_channels, args.frames, args.side, args.side, generator=gen),
        )
        for _ in range(args.samples)
    ]
    batch = pack(records, cfg.patch_size)
    t = torch.rand(args.samples, generator=gen)
    counts = TokenCounts.of_batch(batch)
    h = cfg.hidden_size
    needed = training_flops(cfg, counts)
    extra = 3 * (
        cfg.depth * 2 * (counts.tokens - counts.samples) * h * 6 * h + 2 * (counts.tokens - counts.samples) * h * 2 * h
    )
    print(
        f"preset {args.preset}: {args.samples} samples, {counts.tokens} tokens "
        f"({counts.tokens // args.samples} per sample), {args.repeats} steps each, alternating"
    )
    forwards = {"per sample (now)": lambda m, b, tt: m(b, tt), "per token (before)": per_token_forward}
    for fwd in forwards.values():  # warm-up
        step(model, fwd, batch, t)
    times: dict[str, list[float]] = {name: [] for name in forwards}
    for i in range(args.repeats):
        for name, fwd in forwards.items():
            times[name].append(step(model, fwd, batch, t))
        print(f"  step {i + 1}/{args.repeats}", flush=True)
    now, before = (statistics.median(times[n]) for n in forwards)
    print(f"  per sample (now)    {now * 1e3:8.1f} ms/step   {needed / 1e9:8.2f} GFLOP")
    print(f"  per token (before)  {before * 1e3:8.1f} ms/step   {(needed + extra) / 1e9:8.2f} GFLOP")
    print(f"  step time now / before: {now / before:.3f}   FLOPs now / before: {needed / (needed + extra):.3f}")


if __name__ == "__main__":
    main()
