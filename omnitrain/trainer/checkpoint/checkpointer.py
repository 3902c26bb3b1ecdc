"""The trainer's checkpoint front end: save every interval (asynchronously by default), restore on start.

    ckpt = Checkpointer(CheckpointConfig.from_spec(spec.checkpoint, job), layout, model_config)
    restored = ckpt.restore()                # RestoredCheckpoint or None; collective
    ...
    if ckpt.should_save(step): ckpt.save(step, state)   # state: nested dict of tensors and Python values
    ckpt.close()                             # waits for the save in flight

Construction is collective (rank 0 picks the writers' rendezvous port). Async: the step blocks only for the copy
into the reusable shared-memory staging buffer; a writer process (one per rank) writes the node-local shard,
replicates it and writes the manifests. At most one save is in flight; a new request while one is in flight
waits (counted in saves_waited_busy) or is skipped (saves_skipped_busy) per `when_busy`. A failed save (e.g. disk
full) raises CheckpointSaveError at the next save/wait/close.

Figures for metrics (plain attributes): last_complete_step (METRIC_LAST_CHECKPOINT_STEP), last_blocking_seconds,
host_bytes_held, saves_completed/failed/skipped_busy/waited_busy. Listeners (CheckpointListener, keywords) get
on_checkpoint_start(step=), on_checkpoint_blocked(step=, seconds=), on_checkpoint_complete(step=) and
on_restore(step=, seconds=, source=, sources=): the observability MetricsCallback and the resilience
HeartbeatCallback; a listener subclasses omnitrain.training_hooks.CheckpointHooks (no-ops) and overrides what it
needs.
"""

from __future__ import annotations

import logging
import os
import queue
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

from omnitrain.trainer.checkpoint.exchange import default_exchange
from omnitrain.trainer.checkpoint.manifest import CheckpointError, WorldLayout, model_fingerprint
from omnitrain.trainer.checkpoint.peers import PEER_REPLICAS, failure_domain
from omnitrain.trainer.checkpoint.restore import RestoredCheckpoint, restore_newest
from omnitrain.trainer.checkpoint.save import SaveOutcome, SaveTarget, save_rank

log = logging.getLogger(__name__)

WHEN_BUSY = ("wait", "skip")


class CheckpointListener(Protocol):
    def on_checkpoint_start(self, *, step: int) -> None: ...

    def on_checkpoint_blocked(self, *, step: int, seconds: float) -> None: ...

    def on_checkpoint_complete(self, *, step: int) -> None: ...

    def on_restore(
        self, *, step: int, seconds: float, source: str = "local", sources: list[str] | None = None
    ) -> None: ...


class CheckpointSaveError(CheckpointError):
    """A save did not complete (e.g. ENOSPC). The previous complete checkpoint is untouched. When the storage
    refused the write (contract.STORAGE_ERRNOS), it is raised from an OSError with that errno and the root written
    under, so the trainer's exit maps it to a StorageError (contract.storage_oserror)."""


@dataclass(frozen=True)
class CheckpointConfig:
    job: str
    local_root: str
    persistent_root: str | None = None  # None: no persistent claim, node-local only
    interval_steps: int = 50
    async_save: bool = True
    keep: int = 3
    when_busy: str = "wait"
    peer_replicas: int = 0  # 1: each node's shards are also copied to another node's disk (peers.py)

    def __post_init__(self):
        if self.when_busy not in WHEN_BUSY:
            raise ValueError(f"checkpoint.whenBusy must be one of {WHEN_BUSY}, got {self.when_busy!r}")
        if self.peer_replicas not in PEER_REPLICAS:
            raise ValueError(f"checkpoint.peerReplicas must be one of {PEER_REPLICAS}, got {self.peer_replicas!r}")
        if self.peer_replicas and not self.async_save:
            raise ValueError(
                "checkpoint.peerReplicas 1 copies shards in the background writer: set checkpoint.async: true"
            )
        if not self.job:
            raise ValueError("checkpoint needs the job name (run.jobName) to separate jobs under the same root")

    @classmethod
    def from_spec(cls, spec, job: str) -> CheckpointConfig:
        """From omnitrain.spec.CheckpointSpec; the persistent tier exists only with a persistent claim."""
        return cls(
            job=job,
            local_root=spec.local_path,
            persistent_root=spec.persistent_root,
            interval_steps=spec.interval_steps,
            async_save=spec.async_save,
            keep=spec.keep,
            when_busy=spec.when_busy,
            peer_replicas=spec.peer_replicas,
        )


def _dist_info() -> tuple[int, int]:
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


class Checkpointer:
    def __init__(
        self,
        config: CheckpointConfig,
        layout: WorldLayout | None = None,
        model_config=None,
        node_id: str | None = None,
        listeners: list[CheckpointListener] | None = None,
    ):
        self.config = config
        self.rank, self.world_size = _dist_info()
        self.layout = layout or WorldLayout(dp=self.world_size)
        if self.layout.world_size != self.world_size:
            raise ValueError(
                f"checkpoint layout {self.layout.describe()} does not match the world of {self.world_size} ranks"
            )
        self.fingerprint = model_fingerprint(model_config)
        node = node_id or os.environ.get("NODE_NAME") or socket.gethostname()
        self.target = SaveTarget(
            job=config.job,
            local_root=str(config.local_root),
            persistent_root=str(config.persistent_root) if config.persistent_root else None,
            keep=config.keep,
            rank=self.rank,
            world_size=self.world_size,
            node_id=f"{node}:{os.path.abspath(config.local_root)}",
            layout=self.layout,
            model_fingerprint=self.fingerprint,
            peer_replicas=config.peer_replicas,
            failure_domain=failure_domain(),
        )
        self.listeners = list(listeners or [])
        self.last_complete_step: int | None = None
        self.last_blocking_seconds = 0.0
        self.last_copy_seconds = 0.0
        self.saves_completed = self.saves_failed = self.saves_skipped_busy = self.saves_waited_busy = 0
        self.in_flight_step: int | None = None
        self.outcomes: list[SaveOutcome] = []
        self._pending_error: str | None = None
        self._pending_storage: tuple[int, str] | None = None  # (errno, root) of a save the storage refused
        self._staging = None
        self._sent_generation = 0
        self._process = None
        if config.async_save:
            self._start_writer()

    # ---- metrics ---------------------------------------------------------------------------------------------
    @property
    def host_bytes_held(self) -> int:
        return self._staging.bytes_held if self._staging is not None else 0

    def _blocked(self, step: int) -> None:
        for listener in self.listeners:
            listener.on_checkpoint_blocked(step=step, seconds=self.last_blocking_seconds)

    # ---- writer process --------------------------------------------------------------------------------------
    def _start_writer(self) -> None:
        import torch.multiprocessing as mp

        from omnitrain.trainer.checkpoint.staging import HostStaging
        from omnitrain.trainer.checkpoint.writer import free_port, writer_main

        rendezvous = None
        if self.world_size > 1:
            import torch.distributed as dist

            box = [f"tcp://{os.environ.get('MASTER_ADDR', '127.0.0.1')}:{free_port()}" if self.rank == 0 else None]
            dist.broadcast_object_list(box, src=0)
            rendezvous = box[0]
        ctx = mp.get_context("spawn")
        self._requests, self._results = ctx.Queue(), ctx.Queue()
        self._process = ctx.Process(
            target=writer_main,
            name=f"ckpt-writer-{self.rank}",
            daemon=True,
            args=(self.target, rendezvous, os.getpid(), self._requests, self._results),
        )
        self._process.start()
        self._staging = HostStaging()

    def _handle(self, msg) -> None:
        kind, payload = msg
        if kind == "crashed":
            self.in_flight_step = None
            self.saves_failed += 1
            self._pending_error = f"checkpoint writer process crashed:\n{payload}"
            return
        self._finish(payload)

    def _finish(self, outcome: SaveOutcome) -> None:
        self.in_flight_step = None
        self.outcomes.append(outcome)
        if outcome.local_complete:
            self.last_complete_step = max(outcome.step, self.last_complete_step or outcome.step)
            for listener in self.listeners:
                listener.on_checkpoint_complete(step=outcome.step)
        if outcome.status == "complete":
            self.saves_completed += 1
            log.info(
                "checkpoint step %d complete (%.1f MiB in %.2f s in the background)",
                outcome.step,
                outcome.bytes_written / 2**20,
                outcome.seconds,
            )
        elif outcome.status == "failed":
            self.saves_failed += 1
            self._pending_error = f"checkpoint step {outcome.step} failed: {outcome.error}"
            if outcome.storage_errno is not None:
                self._pending_storage = (outcome.storage_errno, outcome.storage_path)

    def poll(self) -> None:
        """Take in finished saves without blocking; raises CheckpointSaveError for a failed one."""
        if self._process is not None:
            while True:
                try:
                    self._handle(self._results.get_nowait())
                except queue.Empty:
                    break
        self._raise_pending()

    def _raise_pending(self) -> None:
        if self._pending_error:
            error, self._pending_error = self._pending_error, None
            storage, self._pending_storage = self._pending_storage, None
            if storage is not None:
                err_no, path = storage
                raise CheckpointSaveError(error) from OSError(err_no, os.strerror(err_no), path)
            raise CheckpointSaveError(error)

    def wait(self, timeout_s: float | None = None) -> None:
        """Block until no save is in flight (the writer's progress decides, not a timer)."""
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        while self.in_flight_step is not None:
            try:
                self._handle(self._results.get(timeout=1.0))
            except queue.Empty:
                if not self._process.is_alive():
                    self.in_flight_step = None
                    raise CheckpointSaveError(
                        f"checkpoint writer of rank {self.rank} died (exit code {self._process.exitcode})"
                    ) from None
                if deadline is not None and time.monotonic() > deadline:
                    raise TimeoutError(
                        f"checkpoint step {self.in_flight_step} still writing after {timeout_s} s"
                    ) from None
                log.info("waiting for checkpoint step %d to finish writing", self.in_flight_step)
        self._raise_pending()

    # ---- saving ----------------------------------------------------------------------------------------------
    def should_save(self, step: int) -> bool:
        return step > 0 and step % self.config.interval_steps == 0

    def _any_rank_busy(self) -> bool:
        busy = self.in_flight_step is not None
        if self.world_size == 1 or self.config.when_busy == "wait":
            return busy  # waiting is consistent by itself: each writer finishes the same save
        # A skip must be decided by all ranks together, or the writers' collectives would pair different steps.
        return any(default_exchange().gather(busy))

    def save(self, step: int, state: Any) -> bool:
        """Checkpoint `state` as step `step`; returns False when skipped because a save was still in flight."""
        for listener in self.listeners:  # the watchdog's heartbeat: a long save is not a hang
            listener.on_checkpoint_start(step=step)
        if not self.config.async_save:
            return self._save_sync(step, state)
        self.poll()
        t0 = time.perf_counter()
        if self._any_rank_busy():
            if self.config.when_busy == "skip":
                self.saves_skipped_busy += 1
                log.warning(
                    "checkpoint step %d skipped: step %s is still being written (whenBusy=skip; %d skipped so far)",
                    step,
                    self.in_flight_step,
                    self.saves_skipped_busy,
                )
                return False
            self.saves_waited_busy += 1
            log.warning(
                "checkpoint step %d waits for step %s still being written (whenBusy=wait)", step, self.in_flight_step
            )
            self.wait()
        from omnitrain.trainer.checkpoint.flatten import flatten_state

        skeleton, tensors = flatten_state(state)
        if not self._staging.fits(tensors):
            self._staging.allocate_for(tensors)
        t_copy = time.perf_counter()
        self._staging.copy_in(tensors)
        self.last_copy_seconds = time.perf_counter() - t_copy
        if self._staging.generation != self._sent_generation:
            self._requests.put(("buffers", self._staging.buffers, self._staging.specs))
            self._sent_generation = self._staging.generation
        self._requests.put(("save", step, skeleton))
        self.in_flight_step = step
        self.last_blocking_seconds = time.perf_counter() - t0
        self._blocked(step)
        return True

    def _save_sync(self, step: int, state: Any) -> bool:
        from omnitrain.trainer.checkpoint.flatten import flatten_state

        t0 = time.perf_counter()
        outcome = save_rank(self.target, step, *flatten_state(state), default_exchange())
        self.last_blocking_seconds = time.perf_counter() - t0
        self._blocked(step)
        self._finish(outcome)
        self._raise_pending()
        return True

    # ---- restoring -------------------------------------------------------------------------------------------
    def restore(self, template: Callable[[], Any] | None = None) -> RestoredCheckpoint | None:
        """The newest complete checkpoint every rank can read (collective), or None for a fresh start.
        `template`: gives the live state (what save takes; DTensors as they are), asked for only when the
        checkpoint's layout differs and it must be resharded into this one."""
        from omnitrain.trainer.checkpoint.flatten import flatten_state

        roots = {"local": self.target.local_root, "persistent": self.target.persistent_root}
        restored = restore_newest(
            roots,
            self.config.job,
            self.fingerprint,
            self.layout,
            self.rank,
            default_exchange(),
            template=(lambda: flatten_state(template())) if template is not None else None,
        )
        if restored is not None:
            self.last_complete_step = restored.step
            for listener in self.listeners:
                listener.on_restore(
                    step=restored.step, seconds=restored.seconds, source=restored.source, sources=restored.sources
                )
        else:
            log.info("no complete checkpoint under %s: starting from step 0", roots)
        return restored

    def close(self) -> None:
        """Finish the save in flight and stop the writer; raises if that save failed."""
        if self._process is None:
            return
        try:
            if self._process.is_alive():
                self.wait()
        finally:
            if self._process.is_alive():
                self._requests.put(("stop",))
                self._process.join(timeout=60)
            if self._staging is not None:
                self._staging.release()
            self._process = None
