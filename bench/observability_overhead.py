"""What the metrics callback costs a training step, measured side by side in one run.

    .venv/bin/python bench/observability_overhead.py --steps 300 --rounds 5

A small MLP trains on CPU (one thread). Rounds alternate "bare loop" and "loop + MetricsCallback" (Prometheus
updates + one JSONL line per step + a scrape of the endpoint every 10 steps, i.e. far more often than Prometheus
would), so machine noise hits both alike. Prints the median step time of each and their ratio, plus the callback's
own time per step and a scrape's time. Results: docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
import urllib.request

import torch

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

from omnitrain.observability.callback import MetricsCallback  # noqa: E402
from omnitrain.training_hooks import StepStats  # noqa: E402


def make_model():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(256, 1024), torch.nn.GELU(), torch.nn.Linear(1024, 256))
    return model, torch.optim.SGD(model.parameters(), lr=1e-3), torch.randn(64, 256), torch.randn(64, 256)


def run_round(
    steps: int, callback: MetricsCallback | None, scrape_every: int = 10
) -> tuple[list[float], list[float], list[float]]:
    model, opt, x, y = make_model()
    params = sum(p.numel() for p in model.parameters())
    step_times, hook_times, scrape_times = [], [], []
    if callback is not None:
        callback.on_train_start(step=0)
    for step in range(1, steps + 1):
        started = time.perf_counter()
        loss = torch.nn.functional.mse_loss(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        compute = time.perf_counter() - started
        if callback is not None:
            hook_started = time.perf_counter()
            callback.on_step_end(
                stats=StepStats(
                    step=step,
                    loss=loss.item(),
                    tokens=x.shape[0],
                    flops=6.0 * params * x.shape[0],
                    step_seconds=compute,
                )
            )
            hook_times.append(time.perf_counter() - hook_started)
            if step % scrape_every == 0:
                scrape_started = time.perf_counter()
                with urllib.request.urlopen(f"http://127.0.0.1:{callback.bound_port}/metrics", timeout=10) as r:
                    r.read()
                scrape_times.append(time.perf_counter() - scrape_started)
        step_times.append(time.perf_counter() - started)
    return step_times, hook_times, scrape_times


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    torch.set_num_threads(1)
    bare, instrumented, hooks, scrapes = [], [], [], []
    with tempfile.TemporaryDirectory() as log_dir:
        for round_index in range(args.rounds):
            bare += run_round(args.steps, None)[0]
            callback = MetricsCallback(
                job="bench",
                attempt=round_index,
                total_steps=args.steps,
                world_size=1,
                rank=0,
                local_rank=0,
                metrics_addr="127.0.0.1",
                metrics_port=0,
                log_dir=log_dir,
                peak_flops_per_device=1e11,
            )
            try:
                steps, hook, scrape = run_round(args.steps, callback)
            finally:
                callback.close()
            instrumented += steps
            hooks += hook
            scrapes += scrape
            print(
                f"round {round_index + 1}/{args.rounds}: bare {1e3 * statistics.median(bare):.3f} ms/step, "
                f"with metrics {1e3 * statistics.median(instrumented):.3f} ms/step",
                flush=True,
            )
    bare_ms, inst_ms = 1e3 * statistics.median(bare), 1e3 * statistics.median(instrumented)
    print(f"median step: bare {bare_ms:.3f} ms, with metrics {inst_ms:.3f} ms, ratio {inst_ms / bare_ms:.3f}")
    print(
        f"callback per step: median {1e6 * statistics.median(hooks):.1f} us, "
        f"p99 {1e6 * sorted(hooks)[int(0.99 * (len(hooks) - 1))]:.1f} us"
    )
    print(f"scrape of the endpoint: median {1e3 * statistics.median(scrapes):.2f} ms over {len(scrapes)} scrapes")
    return 0


if __name__ == "__main__":
    sys.exit(main())
