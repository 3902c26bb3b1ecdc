"""A tiny data-parallel training loop with checkpointing, run on gloo ranks by the checkpoint tests.

Everything that decides the next loss is saved: model, AdamW state, LR scheduler, the data loader's position and
its own generator, and the process RNG (dropout). Straight runs and resumed runs must agree bitwise on CPU.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import torch
import torch.distributed as dist

from omnitrain.trainer.checkpoint import (
    CheckpointConfig,
    Checkpointer,
    WorldLayout,
    capture_rng_state,
    restore_rng_state,
)

FEATURES, GLOBAL_BATCH = 6, 8
MODEL_CONFIG = {"name": "tiny-mlp", "hidden": 16}


class TinyLoader:
    """Global batches as a function of the position; each data-parallel rank takes its rows. The generator adds
    label noise so its state matters too."""

    def __init__(self, dp_rank: int, dp_size: int, seed: int = 7):
        self.dp_rank, self.dp_size, self.position = dp_rank, dp_size, 0
        self.noise = torch.Generator().manual_seed(seed)

    def next_batch(self):
        g = torch.Generator().manual_seed(1000 + self.position)
        x = torch.randn(GLOBAL_BATCH, FEATURES, generator=g)
        y = x.sum(dim=1, keepdim=True).sin() + 0.01 * torch.randn(GLOBAL_BATCH, 1, generator=self.noise)
        self.position += 1
        rows = GLOBAL_BATCH // self.dp_size
        sl = slice(self.dp_rank * rows, (self.dp_rank + 1) * rows)
        return x[sl], y[sl]

    def state_dict(self):
        return {"position": self.position, "noise": self.noise.get_state()}

    def load_state_dict(self, state):
        self.position = state["position"]
        self.noise.set_state(state["noise"].clone())


def build(rank: int, world: int, dropout: float):
    torch.manual_seed(0)  # identical initial model on every rank
    model = torch.nn.Sequential(
        torch.nn.Linear(FEATURES, 16), torch.nn.Tanh(), torch.nn.Dropout(dropout), torch.nn.Linear(16, 1)
    )
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2, weight_decay=0.01)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0 / (1 + 0.1 * s))
    torch.manual_seed(100 + rank)  # per-rank dropout streams
    return model, opt, sched, TinyLoader(rank, world)


def train_state(step, model, opt, sched, loader) -> dict:
    return {
        "step": step,
        "model": model.state_dict(),
        "optimizer": opt.state_dict(),
        "scheduler": sched.state_dict(),
        "loader": loader.state_dict(),
        "rng": capture_rng_state(),
    }


def load_train_state(state, model, opt, sched, loader, rng: bool = True) -> int:
    model.load_state_dict(state["model"])
    opt.load_state_dict(state["optimizer"])
    sched.load_state_dict(state["scheduler"])
    loader.load_state_dict(state["loader"])
    if rng:
        restore_rng_state(state["rng"])
    return int(state["step"])


def snapshot(model, opt) -> dict:
    """Plain copies of everything a comparison needs."""
    return {
        "model": {k: v.clone() for k, v in model.state_dict().items()},
        "optimizer": {k: {n: t.clone() for n, t in s.items()} for k, s in opt.state_dict()["state"].items()},
    }


def _wait_forever_at(progress_dir: Path, rank: int, step: int) -> None:
    """Announce the step and park until the test SIGKILLs this process (polling, not a fixed sleep)."""
    (progress_dir / f"rank{rank}-at-{step}").write_text("")
    while not (progress_dir / "never").exists():
        time.sleep(0.05)


def tiny_train(rank: int, world: int, cfg: dict) -> dict:
    """cfg: total_steps, dropout, checkpoint (None: no checkpointing) with job/local_root ('{rank}' expands, one
    folder per simulated node)/persistent_root/interval/async/when_busy/peer_replicas, park_at (step to wait at
    until killed), progress_dir, gate_step + gate (path with '{rank}': that step's save is held mid-write)."""
    torch.set_num_threads(1)
    model, opt, sched, loader = build(rank, world, cfg.get("dropout", 0.0))
    ck = None
    start, restored_tier, restored_from, restored_sources = 0, None, None, None
    if cfg.get("checkpoint"):
        c = cfg["checkpoint"]
        ck = Checkpointer(
            CheckpointConfig(
                job=c["job"],
                local_root=c["local_root"].format(rank=rank),
                persistent_root=c.get("persistent_root"),
                interval_steps=c["interval"],
                async_save=c.get("async", True),
                keep=c.get("keep", 3),
                when_busy=c.get("when_busy", "wait"),
                peer_replicas=c.get("peer_replicas", 0),
            ),
            WorldLayout(dp=world),
            MODEL_CONFIG,
            node_id=f"node{rank}",
        )
        restored = ck.restore()
        if restored is not None:
            start = load_train_state(restored.state, model, opt, sched, loader)
            restored_tier, restored_from, restored_sources = restored.tier, restored.source_rank, restored.sources
    at_restore = snapshot(model, opt)
    losses, blocking = {}, []
    for step in range(start + 1, cfg["total_steps"] + 1):
        x, y = loader.next_batch()
        loss = torch.nn.functional.mse_loss(model(x), y)
        opt.zero_grad()
        loss.backward()
        if world > 1:
            for p in model.parameters():
                dist.all_reduce(p.grad)
                p.grad /= world
            dist.all_reduce(loss := loss.detach().clone())
            loss /= world
        opt.step()
        sched.step()
        losses[step] = loss.item()
        if ck is not None and (ck.should_save(step) or step == cfg["total_steps"]):
            state = train_state(step, model, opt, sched, loader)
            if step == cfg.get("gate_step"):
                state["gate"] = Gate(cfg["gate"].format(rank=rank))
            ck.save(step, state)
            blocking.append(ck.last_blocking_seconds)
        if step == cfg.get("park_at"):
            if ck is not None and cfg.get("gate_step") != step:
                ck.wait()
            _wait_forever_at(Path(cfg["progress_dir"]), rank, step)
    if ck is not None:
        ck.close()
    return {
        "losses": losses,
        "final": snapshot(model, opt),
        "at_restore": at_restore,
        "start": start,
        "restored_tier": restored_tier,
        "restored_from": restored_from,
        "restored_sources": restored_sources,
        "blocking": blocking,
        "last_complete_step": ck.last_complete_step if ck else None,
    }


def _entry(rank: int, world: int, port: int, fn, args) -> None:
    torch.set_num_threads(1)
    os.environ.update(
        MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world), LOCAL_RANK=str(rank)
    )
    dist.init_process_group("gloo", rank=rank, world_size=world)
    fn(rank, world, *args)


def launch_ranks(fn, world: int, *args):
    """Start ranks without waiting (the caller kills them); returns torch.multiprocessing's context."""
    import torch.multiprocessing as mp

    from omnitrain.trainer.parallel.testing import free_port

    return mp.start_processes(
        _entry, args=(world, free_port(), fn, args), nprocs=world, join=False, start_method="spawn"
    )


def _wait_for_file(path: str) -> str:
    deadline = time.monotonic() + 120
    Path(path + ".writer-waiting").write_text("")
    while not Path(path).exists():
        if time.monotonic() > deadline:
            raise TimeoutError(f"gate {path} never opened")
        time.sleep(0.02)
    return "gate"


class _HoldDuringSave:
    """Lives in the writer process; torch.save pickling it waits for the gate, i.e. the shard file is half
    written while the save is held."""

    def __init__(self, path: str):
        self.path = path

    def __reduce__(self):
        return (str, (_wait_for_file(self.path),))


class Gate:
    """A state value that holds a save in flight inside the writer process, in the middle of writing the shard,
    until a file exists: lets tests hold or kill a save mid-write without timing assumptions."""

    def __init__(self, path: str):
        self.path = path

    def __reduce__(self):
        return (_HoldDuringSave, (self.path,))


def sharded_save_restore(rank: int, world: int, root: str) -> dict:
    """TP-style shards (DTensor, Shard(0) over 2 ranks): save, restore into a freshly initialised copy, compare."""
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.tensor import Shard, distribute_tensor

    from omnitrain.trainer.checkpoint.flatten import rewrap_like

    mesh = init_device_mesh("cpu", (world,))
    torch.manual_seed(0)
    full = torch.randn(8, 4)
    live = {"w": distribute_tensor(full, mesh, [Shard(0)]), "step": 3}
    cfg = CheckpointConfig(
        job="sharded", local_root=f"{root}/node{rank}", persistent_root=f"{root}/pv", interval_steps=1
    )
    ck = Checkpointer(cfg, WorldLayout(tp=world), MODEL_CONFIG)
    ck.save(3, live)
    ck.wait()
    fresh = {"w": distribute_tensor(torch.zeros(8, 4), mesh, [Shard(0)]), "step": 0}
    restored = ck.restore()
    back = rewrap_like(fresh, restored.state)
    ck.close()
    return {
        "equal": torch.equal(back["w"].full_tensor(), full),
        "is_dtensor": hasattr(back["w"], "to_local"),
        "local_rows": tuple(restored.state["w"].shape),
    }
