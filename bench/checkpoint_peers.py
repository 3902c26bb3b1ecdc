"""Peer replicas (spec.checkpoint.peerReplicas): the training step's blocking time with and without them, the
background time the peer copy adds, and the restore of a rank that moved to a fresh node (its disk empty): from its
peer's copy vs from the persistent tier. Two gloo ranks, each its own simulated node (own local folder), one run.

    OMP_NUM_THREADS=1 .venv/bin/python bench/checkpoint_peers.py --mb 100 --repeats 3 --rounds 2 [--root DIR]

State per rank: `--tensors` float32 tensors totalling `--mb` MiB. The first save of each configuration allocates the
staging buffers and is left out of the medians.
"""

from __future__ import annotations

import argparse
import logging
import shutil
import statistics
import sys
import tempfile
from pathlib import Path

import torch


def make_state(mb: int, tensors: int, rank: int) -> dict:
    per = (mb << 20) // 4 // tensors
    g = torch.Generator().manual_seed(rank)
    return {"step": 0, "model": {f"layer{i}.weight": torch.randn(per, generator=g) for i in range(tensors)}}


def bench_rank(rank: int, world: int, cfg: dict) -> dict:
    import torch.distributed as dist

    from omnitrain.checkpoint_paths import job_dir
    from omnitrain.trainer.checkpoint import CheckpointConfig, Checkpointer, WorldLayout

    torch.set_num_threads(1)
    logging.basicConfig(level=logging.WARNING)
    root = Path(cfg["root"])
    state = make_state(cfg["mb"], cfg["tensors"], rank)
    runs: dict = {0: [], 1: []}
    # alternate the configurations (0, 1, 1, 0, ...) so neither always runs first (page cache, a busy machine)
    order = [p for i in range(cfg["rounds"]) for p in ((0, 1) if i % 2 == 0 else (1, 0))]
    for run, peers in enumerate(order):
        job = f"peers{peers}-run{run}"
        local = root / f"node{rank}"
        ck = Checkpointer(
            CheckpointConfig(
                job=job,
                local_root=str(local),
                persistent_root=str(root / "persistent"),
                interval_steps=1,
                keep=1,
                peer_replicas=peers,
            ),
            WorldLayout(dp=world),
            node_id=f"node{rank}",
        )
        blocking: list[float] = []
        background: list[float] = []
        peer_s: list[float] = []
        try:
            for i in range(cfg["repeats"] + 1):
                state["step"] = i + 1
                ck.save(i + 1, state)
                seconds = ck.last_blocking_seconds
                ck.wait()
                if i > 0:
                    blocking.append(seconds)
                    background.append(ck.outcomes[-1].seconds)
                    peer_s.append(ck.outcomes[-1].timings.get("peer_s", 0.0))
            dist.barrier()
            if rank == 1:  # the rank moves to a fresh node: nothing on its disk
                shutil.rmtree(job_dir(local, job))
            dist.barrier()
            restored = ck.restore()
        finally:
            ck.close()
        runs[peers].append((blocking, background, peer_s, restored.tier, restored.seconds))
    med = statistics.median
    return {
        peers: {
            "blocking": med(b for r in done for b in r[0]),
            "background": med(b for r in done for b in r[1]),
            "peer": med(b for r in done for b in r[2]),
            "restore_tier": "/".join(sorted({r[3] for r in done})),
            "restore_s": med(r[4] for r in done),
        }
        for peers, done in runs.items()
    }


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--mb", type=int, default=200)
    ap.add_argument("--tensors", type=int, default=16)
    ap.add_argument("--repeats", type=int, default=3, help="saves per configuration and round")
    ap.add_argument("--rounds", type=int, default=2, help="rounds of both configurations, alternating the order")
    ap.add_argument("--root", default=None, help="folder for the nodes' disks and the persistent tier")
    args = ap.parse_args(argv)

    from omnitrain.trainer.parallel.testing import run_on_ranks

    root = Path(args.root or tempfile.mkdtemp(prefix="omnitrain-peer-bench-"))
    cfg = {"root": str(root), "mb": args.mb, "tensors": args.tensors, "repeats": args.repeats, "rounds": args.rounds}
    try:
        results = run_on_ranks(bench_rank, 2, cfg, timeout_s=1800)
    finally:
        if args.root is None:
            shutil.rmtree(root, ignore_errors=True)
    saves = args.repeats * args.rounds
    print(f"\n2 ranks on 2 simulated nodes, {args.mb} MiB per rank, medians of {saves} saves, {args.rounds} rounds")
    print(f"{'measure (rank 0 / rank 1)':<48}{'peerReplicas 0':>18}{'peerReplicas 1':>18}")
    for key, label in (
        ("blocking", "save: step blocked (s)"),
        ("background", "save: background write+peer+replicate (s)"),
        ("peer", "save: of which the peer copy (s)"),
    ):
        cells = [f"{results[0][p][key]:.3f} / {results[1][p][key]:.3f}" for p in (0, 1)]
        print(f"{label:<48}{cells[0]:>18}{cells[1]:>18}")
    cells = [f"{results[1][p]['restore_tier']} {results[1][p]['restore_s']:.3f}" for p in (0, 1)]
    print(f"{'restore of the moved rank 1: source, s':<48}{cells[0]:>18}{cells[1]:>18}")
    b0, b1 = (statistics.mean(results[r][p]["blocking"] for r in (0, 1)) for p in (0, 1))
    print(f"blocking with / without peer replicas = {b1 / b0:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
