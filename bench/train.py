"""Data-pipeline and single-process training numbers, measured side by side in one run:

1. packing efficiency: real tokens / token budget of NaViT-style packed micro-batches, vs padding every sample of
   the same micro-batches to the longest one;
2. balance across data-parallel ranks: max/mean estimated compute per rank with the balancer, greedy packing in
   stream order, and round-robin;
3. single-process training of the tiny model: median step time and tokens/s per attention backend;
4. attention alone, forward (no gradients), every backend incl. "flex", over one packed sequence of the tiny
   model's head shape; flex's block-mask build separately (torch has no CPU backward for FlexAttention, so a CPU
   training step under "flex" would time its dense fallback, not the kernel: it is not in table 3);
5. spec.model.conditionAttention full vs causal: training step CPU time of the tiny model on the same data, the
   two runs alternating round by round, and attention alone (forward + backward) over short and long samples.

    OMP_NUM_THREADS=1 .venv/bin/python bench/train.py [--attention-only | --condition-attention-only]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

from omnitrain.model import attention as attn
from omnitrain.model.attention import force_backend
from omnitrain.model.config import PRESETS
from omnitrain.model.packing import SampleRecord, sample_tokens
from omnitrain.spec import TrainerConfig
from omnitrain.trainer.data.balance import (
    CostModel,
    assign_balanced,
    assign_round_robin,
    assign_sequential,
    bin_costs,
    imbalance,
)
from omnitrain.trainer.data.loader import PackedLoader
from omnitrain.trainer.data.reader import ShardReader
from omnitrain.trainer.data.synthetic import SynthSpec, write_synthetic
from omnitrain.trainer.train import train
from omnitrain.training_hooks import StepStats, TrainerHooks


def _length(sample, patch) -> int:
    return sample_tokens(
        SampleRecord(text=sample.text, video=sample.video, reference=sample.reference, context=sample.context), patch
    )


def _length_video(sample, patch) -> int:
    return sample_tokens(SampleRecord(text=sample.text[:0], video=sample.video), patch)


def packing(folder: Path, budget: int, steps: int) -> None:
    cfg = PRESETS["tiny"]
    loader = PackedLoader(ShardReader(folder), cfg.patch_size, budget, CostModel.of(cfg), micro_batches=4)
    packed_real = packed_capacity = padded_real = padded_capacity = 0
    for _ in range(steps):
        for samples in loader.next_global_step():
            lengths = [_length(s, cfg.patch_size) for s in samples]
            packed_real += sum(lengths)
            packed_capacity += budget
            padded_real += sum(lengths)
            padded_capacity += len(lengths) * max(lengths)
    print(f"packing ({steps} steps x 4 micro-batches, budget {budget} tokens):")
    print(f"  packed (real / budget)            {packed_real / packed_capacity:.3f}")
    print(f"  padded to longest (real / padded) {padded_real / padded_capacity:.3f}")


def balance(folder: Path, ranks: int, samples_per_step: int, steps: int) -> dict[str, float]:
    cfg = PRESETS["tiny"]
    cost = CostModel.of(cfg)
    reader = ShardReader(folder)
    results = {"balancer (LPT by cost)": [], "greedy in stream order": [], "round-robin": []}
    for _ in range(steps):
        lengths = [_length(next(reader)[1], cfg.patch_size) for _ in range(samples_per_step)]
        costs = [cost(n) for n in lengths]
        cap = 10**9  # compare assignment policies alone, not the budget
        results["balancer (LPT by cost)"].append(
            imbalance(bin_costs(assign_balanced(costs, lengths, ranks, cap), costs, ranks))
        )
        per_rank = -(-sum(lengths) // ranks)
        results["greedy in stream order"].append(
            imbalance(bin_costs(assign_sequential(lengths, ranks, per_rank + max(lengths)), costs, ranks))
        )
        results["round-robin"].append(imbalance(bin_costs(assign_round_robin(len(lengths), ranks), costs, ranks)))
    print(
        f"balance: max/mean rank cost, {ranks} ranks, {samples_per_step} samples per step, mean of {steps} steps "
        f"(cost = {cost.linear:.3g} L + {cost.quadratic:.3g} L^2)"
    )
    for name, values in results.items():
        print(f"  {name:<24} {statistics.mean(values):.3f}")
    return {name: statistics.mean(values) for name, values in results.items()}


def throughput(root: Path, steps: int) -> list[float]:
    print(f"single-process training, tiny model, {steps} steps after 2 warm-up steps (median):")
    for backend in ("sdpa_mask", "sdpa_loop"):
        cfg = TrainerConfig.model_validate(
            {
                "spec": {
                    "data": {
                        "path": str(root / "data"),
                        "synthetic": {"samples": 256, "shards": 2},
                        "tokenBudget": 1024,
                    },
                    "training": {"steps": steps + 2, "warmupSteps": 2},
                },
                "run": {"jobName": "bench"},
            }
        )
        times, tokens, losses = [], [], []

        class Timer(TrainerHooks):
            def on_step_end(self, *, state, stats: StepStats):
                losses.append(stats.loss)
                if stats.step > 2:
                    times.append(stats.step_seconds)
                    tokens_per.append(stats.tokens)

        tokens_per = tokens
        with force_backend(backend):
            train(cfg, callbacks=[Timer()], log=lambda *a, **k: None)
        step = statistics.median(times)
        print(f"  {backend:<10} step {step * 1000:6.0f} ms   tokens/s {statistics.mean(tokens) / step:8.0f}")
    return losses


def condition_attention(root: Path, steps: int, rounds: int = 3) -> dict[str, float]:
    """spec.model.conditionAttention full vs causal: median training step of the tiny model on the same data (the
    runs alternating), and attention alone (forward + backward) over short and long samples. CPU time of this
    process (one thread), not wall time: the shared machine's load from other processes would swamp a 10% effect."""
    print(
        f"conditionAttention full vs causal, tiny model, {rounds} alternating rounds of {steps} steps (median CPU ms):"
    )
    times: dict[str, list[float]] = {"full": [], "causal": []}
    for _ in range(rounds):
        for mode in times:
            cfg = TrainerConfig.model_validate(
                {
                    "spec": {
                        "model": {"conditionAttention": mode},
                        "data": {
                            "path": str(root / "data"),
                            "synthetic": {"samples": 256, "shards": 2},
                            "tokenBudget": 1024,
                        },
                        "training": {"steps": steps + 2, "warmupSteps": 2},
                    },
                    "run": {"jobName": "bench"},
                }
            )

            class Timer(TrainerHooks):
                last = time.process_time()

                def on_step_end(self, *, state, stats: StepStats, mode=mode):
                    now = time.process_time()
                    if stats.step > 2:
                        times[mode].append(now - self.last)
                    self.last = now

            train(cfg, callbacks=[Timer()], log=lambda *a, **k: None)
    median = {mode: statistics.median(t) for mode, t in times.items()}
    patch = PRESETS["tiny"].patch_size
    loader = PackedLoader(ShardReader(root / "data"), patch, 1024, CostModel.of(PRESETS["tiny"]))
    shares = [
        1 - _length_video(smp, patch) / _length(smp, patch)
        for _ in range(steps)
        for mb in loader.next_global_step()
        for smp in mb
    ]
    print(
        f"  step: full {median['full'] * 1000:6.0f} ms   causal {median['causal'] * 1000:6.0f} ms   "
        f"causal/full x{median['causal'] / median['full']:.2f}   "
        f"(condition tokens {statistics.mean(shares):.0%} of a sample on average)"
    )
    print("  attention alone, forward + backward, 4 heads x 16, half of each sample conditions (median CPU ms):")
    for lengths in ([30] * 33, [300, 41, 260, 7, 190, 226], [1350, 1350]):
        ms = _attention_full_vs_causal(lengths)
        print(
            f"    {len(lengths):2d} samples of ~{sum(lengths) // len(lengths):4d} tokens: full {ms['full']:7.1f}   "
            f"causal {ms['causal']:7.1f}   causal/full x{ms['causal'] / ms['full']:.2f}"
        )
    return median


def _attention_full_vs_causal(lengths: list[int], reps: int = 10) -> dict[str, float]:
    from omnitrain.model.mmdit import BlockContext

    cu = torch.zeros(len(lengths) + 1, dtype=torch.int32)
    cu[1:] = torch.cumsum(torch.tensor(lengths), 0)
    is_condition = torch.cat([torch.arange(n) < n // 2 for n in lengths])  # conditions first, as packed
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(sum(lengths), 4, 16, generator=g, requires_grad=True) for _ in range(3))
    times: dict[str, list[float]] = {"full": [], "causal": []}
    for _ in range(reps):
        for mode, cond in (("full", None), ("causal", is_condition)):
            ctx = BlockContext(None, None, None, None, cu, max(lengths), cond)
            start = time.process_time()
            attn.attention(q, k, v, ctx).sum().backward()
            times[mode].append((time.process_time() - start) * 1000)
    return {mode: statistics.median(t) for mode, t in times.items()}


# A 1024-token packed sequence like the tiny model's micro-batches: a few long samples and some short ones.
ATTENTION_LENGTHS = [300, 41, 260, 7, 190, 226]


def attention_forward(lengths: list[int], reps: int) -> dict[str, float]:
    """Median forward time (ms) of `attention` per backend on one packed sequence, side by side."""
    cfg = PRESETS["tiny"]
    gen = torch.Generator().manual_seed(0)
    tokens = sum(lengths)
    q, k, v = (torch.randn(tokens, cfg.num_heads, cfg.head_dim, generator=gen) for _ in range(3))
    cu = torch.zeros(len(lengths) + 1, dtype=torch.int32)
    cu[1:] = torch.cumsum(torch.tensor(lengths), 0)
    ctx = type("Ctx", (), {"cu_seqlens": cu, "max_seqlen": max(lengths)})()
    attn._BLOCK_MASKS.clear()
    builds = []
    for shift in (1, 0):  # the first build pays one-time set-up; the second is a new step's sequence
        other = cu.clone()
        other[1] -= shift
        t0 = time.perf_counter()
        attn.block_mask_for(other, tokens, "cpu")
        builds.append((time.perf_counter() - t0) * 1000)
    print(
        f"attention forward, {tokens} tokens in {len(lengths)} samples, {cfg.num_heads} heads x {cfg.head_dim}, "
        f"median of {reps} (ms); flex block mask built in {builds[0]:.0f} ms (first), {builds[1]:.0f} ms (next), "
        "then cached:"
    )
    results = {}
    with torch.no_grad():
        for backend in attn.BACKENDS:
            if backend == "flash":
                continue  # CUDA only
            times = []
            with force_backend(backend):
                for _ in range(reps + 1):
                    t0 = time.perf_counter()
                    attn.attention(q, k, v, ctx)
                    times.append(time.perf_counter() - t0)
            results[backend] = statistics.median(times[1:]) * 1000
            print(f"  {backend:<10} {results[backend]:8.1f}")
    return results


def plot(path: str, balance_results: dict[str, float], losses: list[float]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 3.8))
    names = list(balance_results)
    left.bar(range(len(names)), [balance_results[n] for n in names], color=["tab:green", "tab:orange", "tab:red"])
    left.axhline(1.0, color="black", linewidth=0.8)
    left.set_xticks(range(len(names)), [n.split(" (")[0] for n in names])
    left.set_ylabel("max / mean rank cost")
    left.set_title("balance over 8 data-parallel ranks")
    right.plot(range(1, len(losses) + 1), losses)
    right.set_xlabel("step")
    right.set_ylabel("flow-matching loss")
    right.set_title("tiny model, synthetic data, one process")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    print(f"plot -> {path}")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--plot", help="write a PNG of the balance and the loss curve here")
    parser.add_argument("--attention-only", action="store_true", help="only section 4 (attention forward)")
    parser.add_argument(
        "--condition-attention-only", action="store_true", help="only section 5 (full vs causal training step)"
    )
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    if args.attention_only:
        attention_forward(ATTENTION_LENGTHS, reps=20)
        return 0
    if args.condition_attention_only:
        with tempfile.TemporaryDirectory() as tmp:
            condition_attention(Path(tmp), args.steps)
        return 0
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        skewed = root / "skewed"
        write_synthetic(skewed, SynthSpec(samples=512, shards=2, max_frames=8, max_side=16), log=lambda *_: None)
        t0 = time.perf_counter()
        packing(skewed, budget=2048, steps=20)
        balance_results = balance(skewed, ranks=8, samples_per_step=64, steps=8)
        losses = throughput(root, args.steps)
        attention_forward(ATTENTION_LENGTHS, reps=20)
        condition_attention(root, args.steps)
        if args.plot:
            plot(args.plot, balance_results, losses)
        print(f"({time.perf_counter() - t0:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
