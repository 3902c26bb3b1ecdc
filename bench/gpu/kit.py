"""The GPU kit: one prepared run of the figures only a GPU can give, sized for 8 minutes on one H200.

    bench/gpu/run.sh            # on the device machine (OUT set by the device tool)
    python bench/gpu/kit.py --dry --out /tmp/kit   # CPU, tiny sizes, < 60 s: the same code path, so it cannot rot

Sections (each with its own time budget; one that fails prints its error and the others still run):
1. mfu: MFU of a training step (forward + backward + AdamW, bf16 autocast, packed video-length sequences) per
   attention backend, eager and with the trainer's per-block compile, for the `1b` preset and a 14b-width slice.
   MFU = omnitrain.model.flops.training_flops / step time / the device's bf16 dense peak (observability.peaks).
2. fp8: FP8Linear (torch._scaled_mm; emulated where the device lacks it) vs bf16 nn.Linear at 14b GEMM sizes.
3. checkpoint: step blocking with the project's pinned host staging (HostStaging.copy_in, then a background write)
   vs a synchronous torch.save of the same state.
4. offload: step time and peak device memory with activation offload none / pipelineAware / all, run by the
   project's ActivationMemory over the schedule of pipeline rank 0 of 1F1B (pp=2) on one device.

Imports only what runs without pydantic, pyarrow and kopf (the device's stock image has none of them): the model,
flops, peaks, fp8, trainer.compile and trainer.memory import without them; the checkpoint package's __init__ does
not, so its staging module is loaded from its file. Writes $OUT/gpu_kit.json and $OUT/gpu_kit.txt.
"""

from __future__ import annotations

import argparse
import functools
import importlib.util
import json
import os
import platform
import shutil
import statistics
import sys
import tempfile
import threading
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

import torch
from torch import nn

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

from omnitrain.model.attention import BACKENDS, flash_available, flex_available, force_backend  # noqa: E402
from omnitrain.model.config import PRESETS, ModelConfig  # noqa: E402
from omnitrain.model.flops import TokenCounts, training_flops  # noqa: E402
from omnitrain.model.fp8 import FP8Linear, scaled_mm_supported  # noqa: E402
from omnitrain.model.mmdit import MMDiT  # noqa: E402
from omnitrain.model.packing import PackedBatch, pack_parts, text_part, video_part  # noqa: E402
from omnitrain.observability.peaks import lookup_device  # noqa: E402
from omnitrain.trainer.compile import compile_blocks, compiler_problem  # noqa: E402
from omnitrain.trainer.memory import ActivationMemory  # noqa: E402

GIB = 2**30


@dataclass(frozen=True)
class Sizes:
    """Everything that differs between the GPU run and the CPU dry run."""

    models: tuple[tuple[str, ModelConfig], ...]
    samples: int
    text_tokens: int
    video_grid: tuple[int, int, int]  # patch grid of each sample's video (t, h, w)
    math_max_seqlen: int  # the math backend materialises L^2 scores per head: skipped above this
    compile: bool
    warmup: int
    steps: int
    gemm_tokens: int
    gemms: tuple[tuple[int, int], ...]  # (in, out)
    gemm_iters: int
    checkpoint_bytes: int
    offload_model: ModelConfig
    offload_micro_batches: int
    budgets_s: dict[str, float]


def gpu_sizes() -> Sizes:
    slice_14b = replace(PRESETS["14b"], depth=4)  # 14b width (5120, 40 heads, mlp 3.5), 4 of its 40 blocks
    return Sizes(
        models=(("1b", PRESETS["1b"]), ("14b-slice(depth 4)", slice_14b)),
        samples=2,
        text_tokens=256,
        video_grid=(8, 24, 40),  # 7,680 video tokens a sample: e.g. 29 frames at 384x640 after a 4x8x8 VAE, 1x2x2
        math_max_seqlen=2048,
        compile=True,
        warmup=2,
        steps=3,
        gemm_tokens=16384,
        gemms=((5120, 5120), (5120, 17920), (17920, 5120)),
        gemm_iters=20,
        checkpoint_bytes=4 * GIB,
        offload_model=replace(PRESETS["1b"], depth=4),  # "all" copies every activation out and back
        offload_micro_batches=4,
        budgets_s={"mfu": 270, "fp8": 45, "checkpoint": 60, "offload": 60},
    )


def dry_sizes() -> Sizes:
    tiny = PRESETS["tiny"]
    return Sizes(
        models=(("tiny", tiny), ("tiny-wide(depth 1)", replace(tiny, hidden_size=128, depth=1))),
        samples=2,
        text_tokens=8,
        video_grid=(2, 4, 4),
        math_max_seqlen=2048,
        compile=False,  # CPU inductor builds C++ for minutes on a small machine; tests/trainer cover compile
        warmup=1,
        steps=2,
        gemm_tokens=64,
        gemms=((128, 128), (128, 448), (448, 128)),  # the 14b shapes / 40
        gemm_iters=3,
        checkpoint_bytes=16 * 2**20,
        offload_model=tiny,
        offload_micro_batches=4,
        budgets_s={"mfu": 20, "fp8": 5, "checkpoint": 10, "offload": 10},
    )


class Budget:
    """A section's wall-clock allowance: rows past it are reported as skipped, never silently dropped."""

    def __init__(self, name: str, seconds: float):
        self.name, self.seconds, self.start = name, seconds, time.monotonic()

    @property
    def elapsed(self) -> float:
        return time.monotonic() - self.start

    def exhausted(self) -> bool:
        return self.elapsed > self.seconds

    def progress(self, what: str) -> None:
        print(f"[gpu-kit] {self.name} {self.elapsed:6.1f}s/{self.seconds:.0f}s: {what}", flush=True)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def sig(x: float, digits: int = 4) -> float:
    """Rounded to significant digits (dry-mode figures are tiny, GPU ones large)."""
    return float(f"{x:.{digits}g}")


def timed(fn: Callable[[], object], device: torch.device, warmup: int, iters: int) -> float:
    """Median seconds of `iters` calls after `warmup` calls, the device synchronised around each."""
    for _ in range(warmup):
        fn()
    sync(device)
    times = []
    for _ in range(iters):
        start = time.perf_counter()
        fn()
        sync(device)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


# ---- 1. MFU ---------------------------------------------------------------------------------------------------


def packed_batch(cfg: ModelConfig, sizes: Sizes, device: torch.device, seed: int = 0) -> PackedBatch:
    g = torch.Generator().manual_seed(seed)
    n_video = sizes.video_grid[0] * sizes.video_grid[1] * sizes.video_grid[2]
    samples = [
        [
            text_part(torch.randn(sizes.text_tokens, cfg.text_dim, generator=g)),
            video_part(torch.randn(n_video, cfg.patch_dim, generator=g), sizes.video_grid),
        ]
        for _ in range(sizes.samples)
    ]
    batch = pack_parts(samples, text_dim=cfg.text_dim, patch_dim=cfg.patch_dim, video_grids=[sizes.video_grid] * 2)
    batch.target = torch.randn(batch.video.shape, generator=g)
    return batch.to(device)


def make_step(model: nn.Module, batch: PackedBatch, device: torch.device) -> Callable[[], float]:
    """One training step: bf16 autocast forward, flow-matching-shaped MSE on the video tokens, backward, AdamW."""
    opt = torch.optim.AdamW(model.parameters(), lr=1e-5, fused=device.type == "cuda")
    t = torch.rand(batch.num_samples, device=device)
    assert batch.target is not None

    def step() -> float:
        with torch.autocast(device.type, dtype=torch.bfloat16):
            pred = model(batch, t)[batch.target_mask]
        loss = (pred.float() - batch.target).pow(2).mean()
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        return float(loss.detach())  # a host sync: the step is done when this returns

    return step


def backend_skip(backend: str, device: torch.device, batch: PackedBatch, sizes: Sizes) -> str | None:
    if backend == "flash" and not (device.type == "cuda" and flash_available()):
        return "flash-attn is not importable here (or not on CUDA)"
    if backend == "flex" and not flex_available():
        return "torch has no FlexAttention"
    if backend == "math" and batch.max_seqlen > sizes.math_max_seqlen:
        return f"math materialises L^2 scores per head: max seqlen {batch.max_seqlen} > {sizes.math_max_seqlen}"
    return None


def mfu_rows(sizes: Sizes, device: torch.device, budget: Budget) -> list[dict]:
    peaks = lookup_device(torch.cuda.get_device_name(device)) if device.type == "cuda" else None
    peak = peaks.bf16 if peaks else None
    rows = []
    for label, cfg in sizes.models:
        torch.manual_seed(0)
        model = MMDiT(cfg).to(device)
        batch = packed_batch(cfg, sizes, device)
        flops = training_flops(cfg, TokenCounts.of_batch(batch))
        step = make_step(model, batch, device)
        modes = ["eager", "compiled"]
        for mode in modes:
            problem = (
                None if sizes.compile else "dry mode: compile skipped (CPU inductor build time; --compile runs it)"
            )
            problem = problem or (compiler_problem(device.type) if mode == "compiled" else None)
            first_compiled = mode == "compiled" and problem is None
            if first_compiled:
                compile_start = time.perf_counter()
                compile_blocks(list(model.blocks))  # the trainer's spec.training.compile path
            for backend in BACKENDS:
                row: dict = {"model": label, "tokens": batch.num_tokens, "backend": backend, "mode": mode}
                skip = (problem if mode == "compiled" else None) or backend_skip(backend, device, batch, sizes)
                if skip is None and budget.exhausted():
                    skip = "section budget reached"
                if skip is not None:
                    rows.append({**row, "skipped": skip})
                    continue
                try:
                    with force_backend(backend):
                        if first_compiled:  # the first compiled step pays the compile (later backends reuse it)
                            first_compiled = False
                            step()
                            row["first_step_s"] = round(time.perf_counter() - compile_start, 3)
                        seconds = timed(step, device, sizes.warmup, sizes.steps)
                    row |= {"step_s": round(seconds, 4), "tflops": sig(flops / seconds / 1e12)}
                    row["mfu"] = round(flops / seconds / peak, 4) if peak else None
                    if peak is None:
                        row["mfu_note"] = "no dense bf16 peak known for this device"
                    if device.type == "cuda":
                        row["peak_mem_gib"] = round(torch.cuda.max_memory_allocated(device) / GIB, 2)
                        torch.cuda.reset_peak_memory_stats(device)
                except Exception as e:  # one backend failing (e.g. out of memory) must not end the section
                    row["error"] = f"{type(e).__name__}: {e}"[:300]
                    if device.type == "cuda":
                        torch.cuda.empty_cache()
                rows.append(row)
                budget.progress(json.dumps(row))
        del model, step
        torch._dynamo.reset()  # drop the compiled graphs (and what they hold) before the next model
        if device.type == "cuda":
            torch.cuda.empty_cache()
    return rows


# ---- 2. FP8 -----------------------------------------------------------------------------------------------------


def fp8_rows(sizes: Sizes, device: torch.device, budget: Budget) -> list[dict]:
    hardware = scaled_mm_supported(device)
    rows = []
    for k, n in sizes.gemms:
        row: dict = {"gemm": f"{sizes.gemm_tokens}x{k}->{n}", "fp8_path": "scaled_mm" if hardware else "emulated"}
        if budget.exhausted():
            rows.append({**row, "skipped": "section budget reached"})
            continue
        torch.manual_seed(0)
        ref = nn.Linear(k, n).to(device)
        x = torch.randn(sizes.gemm_tokens, k, device=device)
        exact = ref(x).double()
        bf16 = nn.Linear(k, n).to(device, torch.bfloat16)
        bf16.load_state_dict(ref.state_dict())
        fp8 = FP8Linear(ref, "rowwise", use_scaled_mm=hardware).to(device)
        xb = x.to(torch.bfloat16)
        with torch.no_grad():
            t_bf16 = timed(lambda: bf16(xb), device, 2, sizes.gemm_iters)
            t_fp8 = timed(lambda: fp8(xb), device, 2, sizes.gemm_iters)
            err = {
                name: float((m(xb).double() - exact).norm() / exact.norm())
                for name, m in (("bf16", bf16), ("fp8", fp8))
            }
        flops = 2 * sizes.gemm_tokens * k * n
        row |= {
            "bf16_ms": round(t_bf16 * 1e3, 3),
            "fp8_ms": round(t_fp8 * 1e3, 3),  # includes the per-token dynamic quantization of x
            "speedup": round(t_bf16 / t_fp8, 3),
            "bf16_tflops": sig(flops / t_bf16 / 1e12),
            "fp8_tflops": sig(flops / t_fp8 / 1e12),
            "rel_err_bf16": round(err["bf16"], 6),
            "rel_err_fp8": round(err["fp8"], 6),
        }
        rows.append(row)
        budget.progress(json.dumps(row))
    return rows


# ---- 3. Checkpoint staging ---------------------------------------------------------------------------------------


@functools.cache
def load_staging():
    """omnitrain/trainer/checkpoint/staging.py without its package (whose __init__ imports pydantic)."""
    path = REPO / "omnitrain" / "trainer" / "checkpoint" / "staging.py"
    spec = importlib.util.spec_from_file_location("gpu_kit_staging", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up while being defined
    spec.loader.exec_module(module)
    return module


class PinnedStaging:
    """The project's staging copy (staging.copy_to_host: non-blocking copies, one synchronise) into pinned host
    tensors of the kit's own, for a machine whose /dev/shm cannot hold the project's shared-memory buffers."""

    def __init__(self) -> None:
        self.views: list[torch.Tensor] = []
        self.pinned = False
        self.copy = load_staging().copy_to_host  # the project's copy, into the kit's own buffers

    def allocate_for(self, tensors: list[torch.Tensor]) -> None:
        self.pinned = torch.cuda.is_available()
        self.views = [torch.empty(t.shape, dtype=t.dtype, pin_memory=self.pinned) for t in tensors]

    def copy_in(self, tensors: list[torch.Tensor]) -> None:
        self.copy(self.views, tensors, self.pinned)

    def release(self) -> None:
        self.views = []


def host_staging(nbytes: int) -> tuple[object, str]:
    """The project's HostStaging when /dev/shm has room for its shared buffers (a container's /dev/shm is often
    64 MiB: filling it past that is a SIGBUS, which would end the whole kit), else the mechanism measured directly."""
    try:
        free = shutil.disk_usage("/dev/shm").free
    except OSError:
        free = 0
    if free > 1.2 * nbytes:
        return load_staging().HostStaging(), "project HostStaging.copy_in"
    return PinnedStaging(), f"pinned host tensors (kit's own; /dev/shm has {free / GIB:.2f} GiB free)"


def checkpoint_rows(sizes: Sizes, device: torch.device, budget: Budget) -> list[dict]:
    chunk = 64 * 2**20 if sizes.checkpoint_bytes >= GIB else 2**20  # bytes per tensor, like a model's large leaves
    state = {
        f"t{i}": torch.randn(chunk // 2, device=device).to(torch.bfloat16)
        for i in range(sizes.checkpoint_bytes // chunk)
    }
    tensors = list(state.values())
    rows = []
    with tempfile.TemporaryDirectory(prefix="gpu-kit-ckpt-") as tmp:
        sync(device)
        start = time.perf_counter()
        torch.save(state, os.path.join(tmp, "sync.pt"))
        sync_s = time.perf_counter() - start
        os.remove(os.path.join(tmp, "sync.pt"))  # a few GiB each: the device's disk is 64 GiB
        rows.append({"method": "synchronous torch.save", "blocking_s": round(sync_s, 3), "total_s": round(sync_s, 3)})
        budget.progress(json.dumps(rows[-1]))
        staging, how = host_staging(sizes.checkpoint_bytes)
        start = time.perf_counter()
        staging.allocate_for(tensors)  # once per job (shapes do not change between saves): not per-save blocking
        allocate_s = time.perf_counter() - start
        for attempt in range(2):  # the first copy also faults the host pages in
            start = time.perf_counter()
            staging.copy_in(tensors)
            blocking_s = time.perf_counter() - start
            views = dict(zip(state, staging.views))
            writer = threading.Thread(target=torch.save, args=(views, os.path.join(tmp, f"staged{attempt}.pt")))
            writer.start()
            writer.join()
            total_s = time.perf_counter() - start
            os.remove(os.path.join(tmp, f"staged{attempt}.pt"))
        rows.append(
            {
                "method": f"{how} + background write (a thread here; the trainer writes from a process)",
                "pinned": staging.pinned,
                "allocate_once_s": round(allocate_s, 3),
                "blocking_s": round(blocking_s, 3),
                "total_s": round(total_s, 3),
                "blocking_vs_sync": round(blocking_s / sync_s, 4),
            }
        )
        staging.release()
    for row in rows:
        row["state_gib"] = round(sizes.checkpoint_bytes / GIB, 3)
    budget.progress(json.dumps(rows[-1]))
    return rows


# ---- 4. Activation offload ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Action:
    kind: str  # "F" or "B"
    chunk: int
    micro_batch: int


def one_f_one_b(rank: int, pp: int, micro_batches: int) -> list[Action]:
    """The order of one pipeline rank's actions in 1F1B: warm-up forwards, steady F/B pairs, cool-down backwards."""
    warmup = min(pp - rank - 1, micro_batches)
    actions = [Action("F", 0, m) for m in range(warmup)]
    for m in range(micro_batches - warmup):
        actions += [Action("F", 0, warmup + m), Action("B", 0, m)]
    return actions + [Action("B", 0, m) for m in range(micro_batches - warmup, micro_batches)]


def offload_rows(sizes: Sizes, device: torch.device, budget: Budget) -> list[dict]:
    cfg = sizes.offload_model
    actions = one_f_one_b(0, 2, sizes.offload_micro_batches)
    torch.manual_seed(0)
    model = MMDiT(cfg).to(device)
    batches = [packed_batch(cfg, sizes, device, seed=m) for m in range(sizes.offload_micro_batches)]
    t = torch.rand(sizes.samples, device=device)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-5)
    rows = []
    for mode in ("none", "pipelineAware", "all"):
        memory = ActivationMemory(mode, device)

        def step() -> None:
            memory.start_step(actions)
            losses: dict[int, torch.Tensor] = {}
            for a in actions:
                if a.kind == "F":
                    batch = batches[a.micro_batch]
                    with memory.forward(a.chunk, a.micro_batch), torch.autocast(device.type, dtype=torch.bfloat16):
                        pred = model(batch, t)[batch.target_mask]
                        losses[a.micro_batch] = (pred.float() - batch.target).pow(2).mean()
                else:
                    memory.before_backward(a.chunk, a.micro_batch)
                    losses.pop(a.micro_batch).backward()
                    memory.after_backward(a.chunk, a.micro_batch)
            opt.step()
            opt.zero_grad(set_to_none=True)

        row: dict = {"offload": mode, "schedule": "1F1B rank 0 of pp=2", "micro_batches": sizes.offload_micro_batches}
        if budget.exhausted():
            rows.append({**row, "skipped": "section budget reached"})
            continue
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        row["step_s"] = round(timed(step, device, sizes.warmup, sizes.steps), 4)
        if device.type == "cuda":
            row["peak_mem_gib"] = round(torch.cuda.max_memory_allocated(device) / GIB, 2)
        account = memory.account.as_dict()
        row["offloaded_gib"] = sig(account.get("offloaded", 0) / GIB)
        row["late_reloads"] = account.get("late_reloads", 0)
        rows.append(row)
        budget.progress(json.dumps(row))
    base = next((r["step_s"] for r in rows if r["offload"] == "none" and "step_s" in r), None)
    for row in rows:
        if base and "step_s" in row:
            row["vs_none"] = round(row["step_s"] / base, 3)
    return rows


# ---- driver -----------------------------------------------------------------------------------------------------

SECTIONS: dict[str, Callable[[Sizes, torch.device, Budget], list[dict]]] = {
    "mfu": mfu_rows,
    "fp8": fp8_rows,
    "offload": offload_rows,
    "checkpoint": checkpoint_rows,  # last: it fills host memory with gigabytes of staging buffers
}


def run_section(name: str, sizes: Sizes, device: torch.device) -> dict:
    """A section's rows, or its error: a failure is printed and recorded, and the next section runs."""
    budget = Budget(name, sizes.budgets_s[name])
    budget.progress("start")
    try:
        rows = SECTIONS[name](sizes, device, budget)
        result: dict = {"status": "ok", "rows": rows}
    except Exception as e:
        traceback.print_exc()
        result = {"status": "failed", "error": f"{type(e).__name__}: {e}"[:500], "rows": []}
    finally:
        if device.type == "cuda":
            torch.cuda.empty_cache()
    result["seconds"] = round(budget.elapsed, 2)
    budget.progress(f"done ({result['status']})")
    return result


def table(report: dict) -> str:
    """One plain-text table: a line per row, section first; skipped rows and failures say why."""
    lines = [
        f"GPU kit  device={report['meta']['device']}  torch={report['meta']['torch']}  dry={report['meta']['dry']}"
    ]
    for name, section in report["sections"].items():
        lines.append(f"== {name} ({section['status']}, {section['seconds']} s)")
        if section["status"] == "failed":
            lines.append(f"   FAILED: {section['error']}")
        for row in section["rows"]:
            lines.append("   " + "  ".join(f"{k}={v}" for k, v in row.items()))
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--dry", action="store_true", help="CPU, tiny sizes: checks the code path in < 60 s")
    parser.add_argument("--out", default=os.environ.get("OUT", str(REPO / "bench" / "out")))
    parser.add_argument(
        "--sections", default=",".join(SECTIONS), help="comma-separated subset of " + ",".join(SECTIONS)
    )
    parser.add_argument("--compile", action="store_true", help="with --dry: compile too (about a minute on 2 cores)")
    args = parser.parse_args(argv)
    if args.dry:
        device, sizes = torch.device("cpu"), replace(dry_sizes(), compile=args.compile)
    elif torch.cuda.is_available():
        device, sizes = torch.device("cuda"), gpu_sizes()
    else:
        parser.error("no CUDA device here: run with --dry for the CPU check")
    start = time.monotonic()
    report: dict = {
        "meta": {
            "dry": args.dry,
            "device": torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "cpu",
            "torch": torch.__version__,
            "python": platform.python_version(),
            "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        },
        "sections": {},
    }
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    for name in args.sections.split(","):
        report["sections"][name] = run_section(name, sizes, device)
        report["meta"]["seconds"] = round(time.monotonic() - start, 1)
        # written after every section: a run stopped by the device's time limit still leaves what it measured
        text = table(report)
        (out / "gpu_kit.json").write_text(json.dumps(report, indent=1))
        (out / "gpu_kit.txt").write_text(text)
    print(text, flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
