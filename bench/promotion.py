"""Promotion figures measured side by side in one run:

1. distillation: 150-step teacher vs 10-step student (and the undistilled model at 10 steps): sampling time and
   error against the 150-step teacher's samples from the same noise;
2. condition caching: sampling time with the condition tokens recomputed every step under the same mask vs
   encoded once (long reference/context), and that both give the same result; on the test model, a random MMDiT
   and an MMDiT trained with conditionAttention: causal by the real training loop (for which the recomputed
   sampling IS the trained model's own forward, so the cache's speedup is at no error);
3. FP8: output error of e4m3 linears (per-tensor and rowwise scales) against fp32; speed only where
   torch._scaled_mm runs (sm89+ GPU).

    .venv/bin/python bench/promotion.py --plot bench/out/promotion.png
    .venv/bin/python bench/promotion.py --cache-only   # section 2 on the trained causal MMDiT alone

Results and the exact command: docs/benchmarks.md ("Promotion").
"""

from __future__ import annotations

import argparse
import copy
import os
import statistics
import sys
import time

import torch

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

from omnitrain.model.conditions import Conditions  # noqa: E402
from omnitrain.model.config import ModelConfig  # noqa: E402
from omnitrain.model.denoiser import Denoiser  # noqa: E402
from omnitrain.model.fp8 import quantize_linears, scaled_mm_supported  # noqa: E402
from omnitrain.model.sampling import SamplerConfig  # noqa: E402
from omnitrain.serving.testing import build_tiny  # noqa: E402
from omnitrain.trainer.distill.loop import DistillConfig, distill  # noqa: E402
from omnitrain.trainer.distill.synthetic import SyntheticTask, train_teacher  # noqa: E402

DISTILL_MODEL = ModelConfig(
    hidden_size=32, depth=2, num_heads=4, latent_channels=4, text_dim=16, frequency_embedding_size=32
)
CACHE_MODEL = ModelConfig(
    hidden_size=128, depth=4, num_heads=4, latent_channels=4, text_dim=32, frequency_embedding_size=64
)


def timed(fn, repeats: int) -> tuple[float, object]:
    times, out = [], None
    for _ in range(repeats):
        start = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times), out


def timed_pair(first, second, repeats: int):
    """Both alternately, `repeats` times each: load that comes and goes on a shared machine hits both alike."""
    times: tuple[list, list] = ([], [])
    outs = [None, None]
    for _ in range(repeats):
        for i, fn in enumerate((first, second)):
            start = time.perf_counter()
            outs[i] = fn()
            times[i].append(time.perf_counter() - start)
    return (statistics.median(times[0]), outs[0]), (statistics.median(times[1]), outs[1])


def rmse(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).pow(2).mean().sqrt())


def bench_distillation(args) -> dict:
    torch.manual_seed(0)
    model, adapter = build_tiny(DISTILL_MODEL)
    teacher = Denoiser(model, adapter)
    task = SyntheticTask(DISTILL_MODEL, seed=0, text_tokens=4, video_tokens=8)
    print(f"[distill] training the teacher {args.teacher_train_steps} steps ...", flush=True)
    train_teacher(
        teacher,
        task,
        steps=args.teacher_train_steps,
        batch=16,
        lr=3e-3,
        log_every=max(1, args.teacher_train_steps // 3),
    )
    g = torch.Generator().manual_seed(123)
    reqs = [task.request(g) for _ in range(32)]
    conds = [r.conditions for r in reqs]
    noise = [torch.randn(r.video_tokens, DISTILL_MODEL.patch_dim, generator=g) for r in reqs]

    def gen(den, steps):
        return torch.cat(den.generate(conds, noise, SamplerConfig(steps=steps)))

    t_teacher, reference = timed(lambda: gen(teacher, 150), args.repeats)
    undistilled = {n: rmse(gen(teacher, n), reference) for n in (2, 5, 10, 20, 50)}
    out = {"teacher_s": t_teacher, "undistilled": undistilled}
    for name, weight in (("phase 1 only", 0.0), ("phase 1 + 2", 0.1)):
        student = Denoiser(copy.deepcopy(teacher.model), adapter)
        print(f"[distill] distilling ({name}) {args.distill_steps} steps ...", flush=True)
        distill(
            teacher,
            student,
            task.request,
            DistillConfig(
                steps=args.distill_steps,
                batch_size=8,
                learning_rate=1e-3,
                distribution_weight=weight,
                log_every=max(1, args.distill_steps // 4),
            ),
        )
        (t_teacher_here, _), (t_student, sample) = timed_pair(
            lambda: gen(teacher, 150), lambda: gen(student, 10), args.repeats
        )
        out[name] = {"student_s": t_student, "teacher_s": t_teacher_here, "rmse": rmse(sample, reference)}
    out["reference_rms"] = float(reference.pow(2).mean().sqrt())
    return out


def trained_causal_mmdit(steps: int):
    """An MMDiT of CACHE_MODEL's dimensions trained `steps` steps with spec.model.conditionAttention: causal by the
    real training loop (synthetic data), loaded from its checkpoint the way the server loads one."""
    import tempfile
    from pathlib import Path

    from omnitrain.model.artifact import load_teacher
    from omnitrain.spec import TrainerConfig
    from omnitrain.trainer.checkpoint.callback import CheckpointCallback
    from omnitrain.trainer.train import train

    c = CACHE_MODEL
    with tempfile.TemporaryDirectory() as tmp:
        config = TrainerConfig.model_validate(
            {
                "spec": {
                    "model": {
                        "preset": "tiny",  # its frequencyEmbeddingSize (64) is CACHE_MODEL's
                        "hiddenSize": c.hidden_size,
                        "depth": c.depth,
                        "numHeads": c.num_heads,
                        "latentChannels": c.latent_channels,
                        "textDim": c.text_dim,
                        "conditionAttention": "causal",
                    },
                    "data": {"path": f"{tmp}/data", "synthetic": {"samples": 64, "shards": 1}, "tokenBudget": 512},
                    "training": {"steps": steps, "warmupSteps": 1},
                    "checkpoint": {"localPath": f"{tmp}/local", "persistentPath": f"{tmp}/persistent"},
                },
                "run": {"jobName": "bench"},
            }
        )
        train(config, callbacks=[CheckpointCallback.from_trainer_config(config)], log=lambda *a, **k: None)
        art = load_teacher(Path(tmp) / "local" / "bench" / f"step-{steps}", config.spec.model.resolve())
    return art.model, art.adapter


def bench_condition_cache(args, model_name: str = "tiny") -> dict:
    torch.manual_seed(0)
    if model_name == "mmdit trained causal":
        model, adapter = trained_causal_mmdit(args.causal_train_steps)
    elif model_name == "mmdit":
        from omnitrain.model.mmdit import randomize_
        from omnitrain.model.mmdit_adapter import build_mmdit

        model, adapter = build_mmdit(CACHE_MODEL)
        randomize_(model, torch.Generator().manual_seed(0))
    else:
        model, adapter = build_tiny(CACHE_MODEL)
    den = Denoiser(model.eval(), adapter)
    g = torch.Generator().manual_seed(0)
    p = CACHE_MODEL.patch_dim
    # Grids (for MMDiT's 3D positions): reference one frame, context and video 4 frames of patches.
    conds = [
        Conditions(
            text=torch.randn(64, CACHE_MODEL.text_dim, generator=g),
            reference=torch.randn(args.reference_tokens, p, generator=g),
            context=torch.randn(args.context_tokens, p, generator=g),
            reference_grid=(1, 1, args.reference_tokens),
            context_grid=(4, 1, args.context_tokens // 4),
            video_grid=(4, 1, args.video_tokens // 4),
        )
        for _ in range(2)
    ]
    noise = [torch.randn(args.video_tokens, p, generator=g) for _ in conds]
    cfg = SamplerConfig(steps=args.cache_steps)
    (t_masked, a), (t_cached, b) = timed_pair(
        lambda: torch.cat(den.generate(conds, noise, cfg, mode="masked")),
        lambda: torch.cat(den.generate(conds, noise, cfg, mode="cached")),
        args.repeats,
    )
    return {
        "masked_s": t_masked,
        "cached_s": t_cached,
        "max_abs_diff": float((a - b).abs().max()),
        "cond_tokens": conds[0].num_tokens,
        "video_tokens": args.video_tokens,
        "steps": args.cache_steps,
    }


def bench_fp8(args) -> dict:
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(1)
    p = CACHE_MODEL.patch_dim
    conds = [
        Conditions(text=torch.randn(32, CACHE_MODEL.text_dim, generator=g), reference=torch.randn(64, p, generator=g))
    ]
    videos = [torch.randn(256, p, generator=g)]
    model, adapter = build_tiny(CACHE_MODEL)
    with torch.no_grad():
        ref = torch.cat(Denoiser(model.eval(), adapter).velocity_masked(conds, videos, 0.5))
    out = {}
    for gran in ("tensor", "rowwise"):
        q = copy.deepcopy(model)
        quantize_linears(q, gran, skip=("head.proj",))
        with torch.no_grad():
            got = torch.cat(Denoiser(q, adapter).velocity_masked(conds, videos, 0.5))
        out[gran] = float((got - ref).norm() / ref.norm())
    device = torch.device("cuda", 0) if torch.cuda.is_available() else torch.device("cpu")
    if scaled_mm_supported(device):
        from torch import nn

        from omnitrain.model.fp8 import FP8Linear

        lin = nn.Linear(4096, 4096, device=device, dtype=torch.bfloat16)
        x = torch.randn(8192, 4096, device=device, dtype=torch.bfloat16)
        fp8 = FP8Linear(lin.float(), "rowwise", use_scaled_mm=True)
        lin = lin.to(torch.bfloat16)

        def cuda_time(fn):
            for _ in range(3):
                fn()
            torch.cuda.synchronize()
            start = time.perf_counter()
            for _ in range(20):
                fn()
            torch.cuda.synchronize()
            return (time.perf_counter() - start) / 20

        out["gpu_bf16_s"], out["gpu_fp8_s"] = cuda_time(lambda: lin(x)), cuda_time(lambda: fp8(x))
    return out


def plot(path: str, dist: dict) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    steps = sorted(dist["undistilled"])
    fig, ax = plt.subplots(figsize=(6, 4))
    ax.plot(steps, [dist["undistilled"][n] for n in steps], "o-", label="undistilled model")
    ax.plot([10], [dist["phase 1 only"]["rmse"]], "s", label="student, phase 1 (10 steps)")
    ax.plot([10], [dist["phase 1 + 2"]["rmse"]], "*", markersize=12, label="student, phases 1+2 (10 steps)")
    ax.set_xscale("log")
    ax.set_xticks(steps, [str(n) for n in steps])
    ax.minorticks_off()
    ax.set_xlabel("sampling steps")
    ax.set_ylabel("RMSE vs 150-step teacher (same noise)")
    ax.set_title("Distillation 150 -> 10 steps (tiny model, CPU)")
    ax.legend()
    fig.tight_layout()
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    fig.savefig(path, dpi=120)
    print(f"plot: {path}")


def condition_caching(args, models) -> None:
    for model_name in models:
        cache = bench_condition_cache(args, model_name)
        print(
            f"\n== condition caching, {model_name} ({cache['cond_tokens']} condition tokens, "
            f"{cache['video_tokens']} video tokens, 2 requests, {cache['steps']} steps) =="
        )
        print(
            f"recomputed every step (same mask): {cache['masked_s']:.3f}s  cached: {cache['cached_s']:.3f}s  "
            f"speedup x{cache['masked_s'] / cache['cached_s']:.2f}  max |diff| {cache['max_abs_diff']:.2e}"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--teacher-train-steps", type=int, default=300)
    parser.add_argument("--distill-steps", type=int, default=200)
    parser.add_argument("--reference-tokens", type=int, default=512)
    parser.add_argument("--context-tokens", type=int, default=512)
    parser.add_argument("--video-tokens", type=int, default=256)
    parser.add_argument("--cache-steps", type=int, default=10)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--causal-train-steps", type=int, default=10)
    parser.add_argument(
        "--cache-only", action="store_true", help="only the condition-caching section (skip distillation and FP8)"
    )
    parser.add_argument("--plot", default=None)
    args = parser.parse_args()
    torch.set_num_threads(1)
    if args.cache_only:
        condition_caching(args, ("mmdit trained causal",))
        return

    dist = bench_distillation(args)
    print("\n== distillation (32 requests, tiny model, CPU, 1 thread) ==")
    print(f"teacher 150 steps: {dist['teacher_s']:.3f}s  (reference RMS {dist['reference_rms']:.3f})")
    print(
        "undistilled RMSE vs teacher by steps: "
        + ", ".join(f"{n}: {e:.4f}" for n, e in sorted(dist["undistilled"].items()))
    )
    for name in ("phase 1 only", "phase 1 + 2"):
        r = dist[name]
        print(
            f"student 10 steps ({name}): {r['student_s']:.3f}s vs teacher {r['teacher_s']:.3f}s side by side: "
            f"speedup x{r['teacher_s'] / r['student_s']:.1f}"
            f"  RMSE {r['rmse']:.4f}  ({r['rmse'] / dist['undistilled'][10]:.2f} of undistilled at 10 steps)"
        )

    condition_caching(args, ("tiny", "mmdit", "mmdit trained causal"))

    fp8 = bench_fp8(args)
    print("\n== FP8 e4m3 linears vs fp32 (relative L2 error of the model output) ==")
    print(f"per-tensor scales: {fp8['tensor']:.4f}  rowwise scales: {fp8['rowwise']:.4f}")
    if "gpu_fp8_s" in fp8:
        print(
            f"GPU 8192x4096x4096: bf16 {fp8['gpu_bf16_s'] * 1e3:.3f} ms  "
            f"fp8 scaled_mm {fp8['gpu_fp8_s'] * 1e3:.3f} ms"
            f"  speedup x{fp8['gpu_bf16_s'] / fp8['gpu_fp8_s']:.2f}"
        )
    else:
        print("speed: n/a (no sm89+ GPU; the CPU path is an exact emulation, not a fast kernel)")
    if args.plot:
        plot(args.plot, dist)


if __name__ == "__main__":
    main()
