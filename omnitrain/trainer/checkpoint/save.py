"""One checkpoint save of one rank, the same code in the background writer process and in a synchronous save.

Order (each rank, collectives through an Exchange):
 1. write this rank's shard to `<local>/<job>/step-N/rank-R.distcp` (omnitrain.checkpoint_format; fsync + atomic
    rename), crc32 while writing;
 2. gather everyone's result (with the items each file holds); if any rank failed (e.g. ENOSPC), nobody writes a
    manifest: the folder stays incomplete, is never loaded, and the previous complete checkpoint stays the newest;
 3. the lowest rank of each node writes DCP's `.metadata` (built from every rank's items) and then the manifest
    into its node-local folder;
 4. each rank copies its shard to the persistent folder; after all report durable, rank 0 writes `.metadata` and
    then the persistent manifest (last);
 5. retention on both tiers.
"""

from __future__ import annotations

import errno
import logging
import time
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from omnitrain import fsio
from omnitrain.checkpoint_format import METADATA_NAME, build_metadata, metadata_bytes, write_shard
from omnitrain.checkpoint_paths import shard_file_name, step_dir
from omnitrain.contract import STORAGE_ERRNOS
from omnitrain.trainer.checkpoint.exchange import Exchange
from omnitrain.trainer.checkpoint.manifest import (
    InvalidManifestError,
    Manifest,
    ShardFile,
    WorldLayout,
    read_manifest,
    write_manifest,
)
from omnitrain.trainer.checkpoint.peers import (
    peer_copies,
    peer_retention_roots,
    peer_step_dir,
    receive_file,
    send_file,
)
from omnitrain.trainer.checkpoint.retention import apply_retention

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class SaveTarget:
    """Where and as whom one rank saves (picklable: it travels to the writer process)."""

    job: str
    local_root: str
    persistent_root: str | None
    keep: int
    rank: int
    world_size: int
    node_id: str
    layout: WorldLayout
    model_fingerprint: str
    peer_replicas: int = 0
    failure_domain: str = ""  # peers.FAILURE_DOMAIN_ENV: a peer copy goes to another domain when one exists


@dataclass
class SaveOutcome:
    step: int
    status: str  # "complete", "exists" (never overwritten), "failed"
    local_complete: bool = False
    persistent_complete: bool = False
    peer_complete: bool = False  # every node's shards have a complete copy on its peer node
    error: str = ""
    # the first failing rank's storage refusal (contract.STORAGE_ERRNOS): the root it wrote under and the errno;
    # the trainer ends the pod with a StorageError (restart will not help) instead of a crash
    storage_path: str = ""
    storage_errno: int | None = None
    bytes_written: int = 0
    seconds: float = 0.0
    timings: dict = field(default_factory=dict)


def _is_complete(folder: Path) -> bool:
    try:
        return read_manifest(folder) is not None
    except InvalidManifestError:
        return False


def _first_error(results: list[dict]) -> str:
    bad = [r for r in results if r.get("error")]
    return "; ".join(f"rank {r['rank']}: {r['error']}" for r in bad[:4])


def _storage_refusal(error: Exception, root: str) -> dict:
    """{"storage_errno", "storage_path"} when the storage refused the write (full, quota, read-only, denied)."""
    if isinstance(error, OSError) and error.errno in STORAGE_ERRNOS:
        return {"storage_errno": error.errno, "storage_path": root}
    return {}


def _note_storage(outcome: SaveOutcome, results: list[dict]) -> None:
    refused = next((r for r in sorted(results, key=lambda r: r["rank"]) if r.get("storage_errno")), None)
    if refused is not None and outcome.storage_errno is None:
        outcome.storage_errno, outcome.storage_path = refused["storage_errno"], refused["storage_path"]


def replicate_to_peers(
    target: SaveTarget, step: int, manifest: Manifest, results: list[dict], exchange: Exchange
) -> bool:
    """Copy each rank's local shard to its peer rank (peers.peer_copies) over the writers' gloo group, then the
    lowest receiving rank of each source node writes that node's manifest copy (last). True when every node's copy
    is complete (False for a single node: there is no peer); a failed copy is logged and leaves that peer folder
    without a manifest (never restored from)."""
    ordered = sorted(results, key=lambda r: r["rank"])
    copies = peer_copies([r["node"] for r in ordered], [r.get("domain", "") for r in ordered])
    local = step_dir(target.local_root, target.job, step)
    errors: dict[int, str] = {}  # source node -> what went wrong receiving its shards here
    for copy in copies:
        if copy.src_rank == target.rank:
            send_file(local / shard_file_name(copy.src_rank), copy.dst_rank)
        elif copy.dst_rank == target.rank:
            entry = manifest.file_for_rank(copy.src_rank)
            path = peer_step_dir(target.local_root, target.job, copy.src_node, step) / entry.name
            try:
                got = receive_file(path, copy.src_rank)
                if got != (entry.size, entry.crc32):
                    path.unlink(missing_ok=True)
                    errors[copy.src_node] = f"peer copy of {entry.name} differs from the manifest (got {got})"
            except OSError as e:
                errors[copy.src_node] = f"writing the peer copy {path}: {e}"
    failed: dict[int, str] = {}
    for report in exchange.gather(errors):
        failed.update(report)
    for src_node in sorted({c.src_node for c in copies} - set(failed)):
        if target.rank == min(c.dst_rank for c in copies if c.src_node == src_node):
            folder = peer_step_dir(target.local_root, target.job, src_node, step)
            try:
                write_manifest(folder, manifest)
            except OSError as e:  # a peer copy is an optimisation: its failure must not fail the save
                failed[src_node] = f"writing the peer manifest in {folder}: {e}"
    if failed:
        log.error("checkpoint step %d: peer copies of nodes %s incomplete: %s", step, sorted(failed), failed)
    return bool(copies) and not failed  # a single node has no peer: nothing was copied


def save_rank(target: SaveTarget, step: int, skeleton: Any, tensors: list, exchange: Exchange) -> SaveOutcome:
    """`skeleton`, `tensors`: the rank's state as flatten.flatten_state splits it (the writer process gets the
    tensors as views of the staging buffers)."""
    t0 = time.perf_counter()
    local = step_dir(target.local_root, target.job, step)
    persistent = step_dir(target.persistent_root, target.job, step) if target.persistent_root else None
    name = shard_file_name(target.rank)
    outcome = SaveOutcome(step=step, status="failed")

    mine: dict = {
        "rank": target.rank,
        "node": target.node_id,
        "domain": target.failure_domain,
        "error": "",
        "exists": False,
    }
    if _is_complete(local) or (persistent is not None and _is_complete(persistent)):
        mine["exists"] = True
    else:
        try:
            items: list = []
            size, crc = fsio.write_atomic(local / name, lambda w: items.extend(write_shard(w.write, skeleton, tensors)))
            mine.update(size=size, crc32=crc, items=items)
        except Exception as e:  # noqa: BLE001 - reported to every rank; raising here would hang the others
            mine["error"] = f"writing {local / name}: {type(e).__name__}: {e}"
            if isinstance(e, OSError) and e.errno == errno.ENOSPC:
                mine["error"] += (
                    f" (free space under {target.local_root} or lower checkpoint.keep; the previous "
                    f"complete checkpoint is untouched)"
                )
            mine.update(_storage_refusal(e, target.local_root))
    results = exchange.gather(mine)
    outcome.timings["local_write_s"] = time.perf_counter() - t0

    if any(r["exists"] for r in results):
        log.warning("checkpoint step %d already exists complete; not overwriting it", step)
        outcome.status = "exists"
        return outcome
    if any(r["error"] for r in results):
        outcome.error = _first_error(results)
        _note_storage(outcome, results)
        log.error(
            "checkpoint step %d FAILED, no manifest written (previous checkpoint stays the newest): %s",
            step,
            outcome.error,
        )
        return outcome

    ordered = sorted(results, key=lambda r: r["rank"])
    index = metadata_bytes(build_metadata([(shard_file_name(r["rank"]), r["items"]) for r in ordered]))
    manifest = Manifest(
        job=target.job,
        step=step,
        layout=target.layout,
        model_fingerprint=target.model_fingerprint,
        files=[
            ShardFile(name=shard_file_name(r["rank"]), rank=r["rank"], size=r["size"], crc32=r["crc32"])
            for r in ordered
        ],
        metadata=ShardFile(name=METADATA_NAME, rank=-1, size=len(index), crc32=zlib.crc32(index)),
    )
    node_leader = min(r["rank"] for r in results if r["node"] == target.node_id) == target.rank
    if node_leader:
        fsio.write_bytes_atomic(local / METADATA_NAME, index)
        write_manifest(local, manifest)
    outcome.local_complete = True
    outcome.bytes_written = mine["size"]

    if target.peer_replicas and exchange.world_size > 1:
        # Before the persistent copy: the fast tier first, so a node lost during the (slower) persistent copy
        # already has its shards on a peer.
        t1 = time.perf_counter()
        outcome.peer_complete = replicate_to_peers(target, step, manifest, results, exchange)
        outcome.timings["peer_s"] = time.perf_counter() - t1

    if persistent is not None:
        t1 = time.perf_counter()
        replicated = {"rank": target.rank, "error": ""}
        try:
            size, crc = fsio.copy_atomic(local / name, persistent / name)
            if (size, crc) != (mine["size"], mine["crc32"]):
                replicated["error"] = f"replica of {name} differs from the local shard (size/crc32)"
        except OSError as e:
            replicated["error"] = f"replicating to {persistent / name}: {e}"
            replicated.update(_storage_refusal(e, str(target.persistent_root)))
        results = exchange.gather(replicated)
        if any(r["error"] for r in results):
            outcome.error = _first_error(results)
            _note_storage(outcome, results)
            log.error("checkpoint step %d not replicated (node-local copies are complete): %s", step, outcome.error)
        else:
            if target.rank == 0:
                fsio.write_bytes_atomic(persistent / METADATA_NAME, index)
                write_manifest(persistent, manifest)
            exchange.gather(None)  # everyone knows the persistent manifest exists before reporting
            outcome.persistent_complete = True
        outcome.timings["replicate_s"] = time.perf_counter() - t1

    if node_leader:
        apply_retention(target.local_root, target.job, target.keep)
        for root, node in peer_retention_roots(target.local_root, target.job):
            apply_retention(root, node, target.keep)
    if target.rank == 0 and outcome.persistent_complete:
        apply_retention(target.persistent_root, target.job, target.keep)
    outcome.status = "complete" if (outcome.persistent_complete or persistent is None) else "failed"
    outcome.seconds = time.perf_counter() - t0
    return outcome
