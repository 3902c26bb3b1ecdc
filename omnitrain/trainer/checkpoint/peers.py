"""Peer replicas of node-local checkpoints (spec.checkpoint.peerReplicas: 1).

After a node-local save is complete, each node's shards (and its manifest copy) are copied by the background
writers to another node of the job, into `<localPath>/<job>/peers/node-<src>/step-<N>/`. A rank that restarts on a
node without its own copy (a hot spare, a replaced node) then reads its shard from the peer's disk, sent over a gloo
group, instead of from the persistent tier.

The decisions are pure functions over what the ranks report: `peer_nodes` (which node receives which node's
shards), `peer_copies` (which rank sends which shard to which rank) and `plan_sources` (which tier, and for a peer
copy which rank, serves each rank's restore). The byte transport (`send_file` / `receive_file`) is point-to-point
over a gloo group: the writers' own group when saving, a gloo group of the trainers when restoring. Every operation
of a transfer list is run by both of its ranks in the list's order, so blocking sends and receives cannot deadlock.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from omnitrain import fsio
from omnitrain.checkpoint_paths import STEP_PREFIX, job_dir, list_step_dirs

log = logging.getLogger(__name__)

PEERS_FOLDER = "peers"
NODE_PREFIX = "node-"
# The node's failure domain (e.g. its rack or zone label). Nodes pick a peer in another domain when one exists.
# Nothing sets it yet: the operator would have to copy the node's topology label into the pod (the downward API
# cannot read Node labels); without it every node is in the same domain and the peer is the next node.
FAILURE_DOMAIN_ENV = "OMNITRAIN_FAILURE_DOMAIN"
PEER_REPLICAS = (0, 1)

TIER_LOCAL, TIER_PEER, TIER_PERSISTENT = "local", "peer", "persistent"
# slowest last: the restore event names the slowest source any rank used (it bounds the restore time)
TIER_ORDER = (TIER_LOCAL, TIER_PEER, TIER_PERSISTENT)


# ---- layout ------------------------------------------------------------------------------------------------------
def peers_root(local_root: str | Path, job: str) -> Path:
    """`<localPath>/<job>/peers`: peer copies live beside the node's own step folders, never mistaken for them
    (`peers` is not a `step-<N>` name)."""
    return job_dir(local_root, job) / PEERS_FOLDER


def peer_node_name(node: int) -> str:
    return f"{NODE_PREFIX}{node}"


def peer_step_dir(local_root: str | Path, job: str, src_node: int, step: int) -> Path:
    """Where node `src_node`'s shards of `step` are kept on the receiving node's disk."""
    return peers_root(local_root, job) / peer_node_name(src_node) / f"{STEP_PREFIX}{step}"


def peer_step_dirs(local_root: str | Path, job: str) -> dict[int, list[Path]]:
    """Every peer copy on this disk by step (one folder per source node); empty when there are none."""
    base = peers_root(local_root, job)
    found: dict[int, list[Path]] = {}
    if not base.is_dir():
        return found
    for node in sorted(base.iterdir()):
        if node.name.startswith(NODE_PREFIX) and node.is_dir():
            for step, folder in list_step_dirs(base, node.name).items():
                found.setdefault(step, []).append(folder)
    return found


def peer_retention_roots(local_root: str | Path, job: str) -> list[tuple[Path, str]]:
    """(root, job) pairs for retention.apply_retention, one per source node (`peers/node-<src>/step-<N>`)."""
    base = peers_root(local_root, job)
    if not base.is_dir():
        return []
    return [(base, d.name) for d in sorted(base.iterdir()) if d.name.startswith(NODE_PREFIX) and d.is_dir()]


# ---- which node keeps which node's copy (pure) -----------------------------------------------------------------
def node_indices(nodes_by_rank: Sequence[str]) -> list[int]:
    """Each rank's node index: nodes numbered in the order of their lowest rank (torchrun's node rank, since
    torchrun gives each node a contiguous block of ranks)."""
    order: dict[str, int] = {}
    for node in nodes_by_rank:
        order.setdefault(node, len(order))
    return [order[n] for n in nodes_by_rank]


def peer_nodes(domains: Sequence[str]) -> list[int | None]:
    """For each node (by index, its failure domain given), the node that keeps its peer copy: the next node after
    it (`node + 1 mod nnodes`) that is in another failure domain, else simply the next node. None for a single
    node: there is no peer."""
    n = len(domains)
    if n < 2:
        return [None] * n
    peers: list[int | None] = []
    for node in range(n):
        others = [(node + k) % n for k in range(1, n)]
        peers.append(next((o for o in others if domains[o] != domains[node]), others[0]))
    return peers


@dataclass(frozen=True)
class PeerCopy:
    src_rank: int  # sends its shard
    dst_rank: int  # writes it under peers/node-<src_node>/ on its disk
    src_node: int


def peer_copies(nodes_by_rank: Sequence[str], domains_by_rank: Sequence[str]) -> list[PeerCopy]:
    """Who sends which shard to whom: every rank sends its shard to the rank with the same local position on the
    peer node (wrapping when that node has fewer ranks), so with equal nodes every rank sends one and receives one.
    Ordered by source rank; both ranks of a copy run it in this order."""
    index = node_indices(nodes_by_rank)
    nnodes = max(index) + 1 if index else 0
    ranks_on: list[list[int]] = [[] for _ in range(nnodes)]
    for rank, node in enumerate(index):
        ranks_on[node].append(rank)
    domains = [domains_by_rank[ranks[0]] for ranks in ranks_on]
    targets = peer_nodes(domains)
    copies = []
    for rank, node in enumerate(index):
        peer = targets[node]
        if peer is None:
            continue
        position = ranks_on[node].index(rank)
        copies.append(PeerCopy(rank, ranks_on[peer][position % len(ranks_on[peer])], node))
    return copies


# ---- where each rank's restore reads from (pure) ------------------------------------------------------------------
@dataclass(frozen=True)
class Holding:
    """What one rank of the current run reports for one step."""

    local: bool  # the shard it needs is in its own node-local step folder (size as in the manifest)
    persistent: bool  # the shard it needs is on the persistent tier
    peer: frozenset[int] = frozenset()  # saved ranks whose peer copy is on this rank's disk (size as in the manifest)


@dataclass(frozen=True)
class ShardSource:
    tier: str  # TIER_LOCAL | TIER_PEER | TIER_PERSISTENT
    holder: int  # the rank that reads the file: the rank itself, or for a peer copy the rank whose disk has it

    def sent_by_peer(self, rank: int) -> bool:
        return self.tier == TIER_PEER and self.holder != rank


def plan_sources(needs: Sequence[int], holdings: Sequence[Holding]) -> list[ShardSource] | None:
    """Each rank's source for one step: its own node-local copy, else a peer copy (on its own disk when its rank
    moved onto the node that kept it, else the holder that has sent least so far, then the lowest rank), else the
    persistent tier. `needs[r]`: the saved rank whose shard rank r loads. None when some rank has no source at all:
    the step is not readable by every rank and the restore falls back to an older one."""
    sends = [0] * len(holdings)
    plan: list[ShardSource] = []
    for rank, (need, mine) in enumerate(zip(needs, holdings, strict=True)):
        if mine.local:
            plan.append(ShardSource(TIER_LOCAL, rank))
            continue
        if need in mine.peer:
            plan.append(ShardSource(TIER_PEER, rank))
            continue
        holders = [r for r, h in enumerate(holdings) if need in h.peer]
        if holders:
            holder = min(holders, key=lambda r: (sends[r], r))
            sends[holder] += 1
            plan.append(ShardSource(TIER_PEER, holder))
        elif mine.persistent:
            plan.append(ShardSource(TIER_PERSISTENT, rank))
        else:
            return None
    return plan


def slowest_source(tiers: Sequence[str]) -> str:
    """The slowest tier any rank restored from (persistent > peer > local): what the restore event reports."""
    return max(tiers, key=TIER_ORDER.index) if tiers else TIER_LOCAL


# ---- the bytes on the wire --------------------------------------------------------------------------------------
CHUNK = fsio.CHUNK


def _chunks(path: Path, size: int) -> Iterator[bytes]:
    """The file's bytes in chunks of exactly `size` bytes in all. A read that fails midway sends zeros for the rest:
    the receiver then finds the checksum wrong and discards the copy, instead of waiting for bytes forever."""
    sent = 0
    try:
        with open(path, "rb") as f:
            while sent < size:
                chunk = f.read(min(CHUNK, size - sent))
                if not chunk:
                    break
                sent += len(chunk)
                yield chunk
    except OSError as e:
        log.warning("reading %s for a peer failed after %d bytes: %s", path, sent, e)
    while sent < size:
        n = min(CHUNK, size - sent)
        sent += n
        yield bytes(n)


def send_file(path: Path | None, dst: int, group=None) -> None:
    """Send a file to rank `dst` of `group`: its size (-1: no file, the receiver gives up on this copy), then its
    bytes in chunks."""
    import torch
    import torch.distributed as dist

    size = -1
    if path is not None:
        try:
            size = path.stat().st_size
        except OSError as e:
            log.warning("no peer copy to send from %s: %s", path, e)
    dist.send(torch.tensor([size], dtype=torch.int64), dst, group=group)
    if size > 0:
        for chunk in _chunks(path, size):
            dist.send(torch.frombuffer(bytearray(chunk), dtype=torch.uint8), dst, group=group)


def receive_chunks(src: int, group=None) -> Iterator[bytes] | None:
    """The bytes `send_file` sends from rank `src`, as an iterator of chunks (consume it completely before the next
    transfer); None when the sender had no file."""
    import torch
    import torch.distributed as dist

    head = torch.zeros(1, dtype=torch.int64)
    dist.recv(head, src, group=group)
    size = int(head.item())
    if size < 0:
        return None

    def chunks() -> Iterator[bytes]:
        left = size
        while left > 0:
            buf = torch.empty(min(CHUNK, left), dtype=torch.uint8)
            dist.recv(buf, src, group=group)
            left -= buf.numel()
            yield buf.numpy().tobytes()

    return chunks()


def receive_file(final: Path, src: int, group=None) -> tuple[int, int] | None:
    """Receive `send_file`'s bytes from rank `src` into `final` (temporary name, fsync, rename): (size, crc32), or
    None when the sender had no file. A failing write still drains the sender's bytes, then raises."""
    chunks = receive_chunks(src, group)
    if chunks is None:
        return None
    try:
        return fsio.write_atomic(final, lambda w: [w.write(c) for c in chunks])
    finally:
        for _ in chunks:  # the sender sends everything regardless; never leave its chunks unreceived
            pass


def receive_bytes(src: int, group=None) -> bytes | None:
    chunks = receive_chunks(src, group)
    return None if chunks is None else b"".join(chunks)


def failure_domain() -> str:
    return os.environ.get(FAILURE_DOMAIN_ENV, "")
