"""Rank functions for the multi-process metrics test (imported by name in spawned processes)."""

import time
import urllib.request

import torch
import torch.distributed as dist
from prometheus_client.parser import text_string_to_metric_families

from omnitrain.observability.callback import MetricsCallback
from omnitrain.training_hooks import StepStats


def _scrape(port: int) -> dict[str, list[tuple[dict, float]]]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as r:
        text = r.read().decode()
    return {f.name: [(dict(s.labels), s.value) for s in f.samples] for f in text_string_to_metric_families(text)}


def data_parallel_run(rank: int, world_size: int, steps: int, log_dir: str) -> dict:
    """Data-parallel training of a small MLP, one process per 'node' (each is its pod's local rank 0)."""
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(16, 32), torch.nn.Tanh(), torch.nn.Linear(32, 16))
    params = sum(p.numel() for p in model.parameters())
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    gen = torch.Generator().manual_seed(100 + rank)
    tokens_local = 24 + 8 * rank  # uneven shards: the job's figure is the sum
    x, y = torch.randn(tokens_local, 16, generator=gen), torch.randn(tokens_local, 16, generator=gen)
    cb = MetricsCallback(
        job="ddp",
        attempt=0,
        total_steps=steps,
        world_size=world_size,
        rank=rank,
        local_rank=0,
        node=f"node-{rank}",
        metrics_addr="127.0.0.1",
        metrics_port=0,
        log_dir=log_dir,
        peak_flops_per_device=1e10,
    )
    losses = []
    try:
        cb.on_train_start(step=0)
        for step in range(1, steps + 1):
            started = time.perf_counter()
            loss = torch.nn.functional.mse_loss(model(x), y)
            opt.zero_grad()
            loss.backward()
            for p in model.parameters():
                dist.all_reduce(p.grad)
                p.grad /= world_size
            opt.step()
            figures = torch.tensor(
                [loss.item(), float(tokens_local), time.perf_counter() - started], dtype=torch.float64
            )
            dist.all_reduce(figures[:2])  # loss summed (then averaged), tokens summed
            dist.all_reduce(figures[2:], op=dist.ReduceOp.MAX)  # a step lasts as long as its slowest rank
            mean_loss, tokens, seconds = figures[0].item() / world_size, figures[1].item(), figures[2].item()
            losses.append((mean_loss, tokens, seconds))
            cb.on_step_end(
                stats=StepStats(
                    step=step, loss=mean_loss, tokens=tokens, flops=6.0 * params * tokens, step_seconds=seconds
                )
            )
        ports = [None] * world_size
        dist.all_gather_object(ports, cb.bound_port)
        scraped = [_scrape(p) for p in ports] if rank == 0 else None
        dist.barrier()  # keep every endpoint up until rank 0 has scraped
        cb.on_train_end(step=steps)
    finally:
        cb.close()
    return {"losses": losses, "scraped": scraped, "params": params}
