"""The background writer: a separate process per rank (not a thread: serialising and checksumming under the GIL
would slow the training step). It maps the rank's shared-memory staging buffer once, then for each request runs
save_rank over the request's skeleton and those buffers. Its save-time collectives go through its own gloo group
made of the writer processes only."""

from __future__ import annotations

import ctypes
import os
import signal
import socket
import traceback
from datetime import timedelta

from omnitrain.trainer.checkpoint.exchange import GroupExchange, SingleExchange
from omnitrain.trainer.checkpoint.save import SaveTarget, save_rank
from omnitrain.trainer.checkpoint.staging import leaf_views


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("", 0))
        return s.getsockname()[1]


def _die_with_parent() -> None:
    """A writer must not outlive its trainer (SIGKILL of the trainer, OOM): it would hold shared memory and a
    half-open process group. Linux: ask the kernel to SIGKILL us when the parent goes."""
    try:
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except OSError:
        pass


def writer_main(target: SaveTarget, rendezvous: str | None, parent_pid: int, requests, results) -> None:
    _die_with_parent()
    # A SIGTERM to the pod is the trainer's to handle (stop, final save, close): the writer ends when the trainer
    # closes it, or with it (PDEATHSIG), never half-way through that final save.
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    if os.getppid() != parent_pid:  # the parent died before prctl took effect
        # An orphan that owns nothing yet ends at once: multiprocessing's exit handling (finalizers, flushing
        # queues) would only talk to a parent that is gone.
        os._exit(1)
    import torch

    torch.set_num_threads(1)
    try:
        if target.world_size > 1:
            import torch.distributed as dist

            # Under torchrun this env var (inherited from the trainer) makes every rank a *client* of the agent's
            # store; the writers' own rendezvous needs rank 0 to host its store, or they all wait forever.
            os.environ.pop("TORCHELASTIC_USE_AGENT_STORE", None)
            # A peer writer that crashed mid-save must not hold the others forever: its collective times out
            # and the failure reaches the trainer as a crashed writer.
            dist.init_process_group(
                "gloo",
                init_method=rendezvous,
                rank=target.rank,
                world_size=target.world_size,
                timeout=timedelta(minutes=10),
            )
            exchange = GroupExchange()
        else:
            exchange = SingleExchange()
        views: list = []
        while True:
            msg = requests.get()
            kind = msg[0]
            if kind == "stop":
                break
            if kind == "buffers":
                _, buffers, specs = msg
                views = leaf_views(buffers, specs)
            elif kind == "save":
                _, step, skeleton = msg
                outcome = save_rank(target, step, skeleton, views, exchange)
                results.put(("done", outcome))
    except BaseException:
        results.put(("crashed", traceback.format_exc()))
        raise
    finally:
        if target.world_size > 1:
            import torch.distributed as dist

            if dist.is_initialized():
                dist.destroy_process_group()
