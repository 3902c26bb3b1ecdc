"""Find and load the newest complete checkpoint every rank can read.

- Candidates: step folders with a manifest on either tier or in a peer copy (a folder without one is a torn write:
  reported, never loaded). A manifest of another job or model config is an error, not a candidate.
- Each rank reads the shard it needs: the node-local copy when its crc32 matches the manifest, else a peer node's
  copy of it (spec.checkpoint.peerReplicas; sent by a rank on that node; peers.plan_sources decides), else the
  persistent copy. If any rank cannot (corrupt/truncated everywhere, or no copy anywhere), all ranks fall back
  together to the next older step.
- Layout changes: ranks that differ only in data-parallel or Ulysses position hold identical model/optimizer state
  (unless FSDP-sharded), so any such replica serves a new rank from its one file, on the fast path. Any other
  change (pipeline, tensor, virtual stages, FSDP's data x Ulysses degree) is a resharding read (format 2, DCP): each
  rank assembles its own slices from the saved chunks that overlap them (DCP's .metadata says where), and takes its
  data loader position, RNG and scheduler from the saved rank at its coordinates (base_rank). A format-1 checkpoint
  cannot be resharded: refused with both layouts named.
"""

from __future__ import annotations

import logging
import time
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from omnitrain.checkpoint_format import (
    ShardFormatError,
    TensorRef,
    Wanted,
    has_tensor,
    key_of,
    leaves,
    load_shard_bytes,
    parse_metadata,
    read_regions,
)
from omnitrain.checkpoint_paths import list_step_dirs
from omnitrain.trainer.checkpoint.exchange import Exchange
from omnitrain.trainer.checkpoint.manifest import (
    CheckpointError,
    InvalidManifestError,
    Manifest,
    ShardFile,
    WorldLayout,
    read_manifest,
)
from omnitrain.trainer.checkpoint.peers import (
    TIER_ORDER,
    TIER_PEER,
    Holding,
    ShardSource,
    peer_step_dirs,
    plan_sources,
    receive_bytes,
    send_file,
    slowest_source,
)
from omnitrain.trainer.parallel.layout import ParallelLayout, rank_coords

log = logging.getLogger(__name__)

TIERS = ("local", "persistent")


class LayoutChangeError(CheckpointError):
    """The checkpoint's layout cannot be mapped onto this run's."""


@dataclass
class Candidate:
    step: int
    manifest: Manifest
    folders: dict[str, Path] = field(default_factory=dict)  # tier -> step folder holding a manifest


@dataclass
class RestoredCheckpoint:
    step: int
    state: Any
    manifest: Manifest
    source_rank: int
    tier: str  # where this rank's shard came from: "local", "peer" or "persistent"
    seconds: float
    sources: list[str] = field(default_factory=list)  # every rank's tier, by rank

    @property
    def source(self) -> str:
        """The slowest source any rank used (it bounds the restore time): what the restore event reports."""
        return slowest_source(self.sources or [self.tier])


def discover(roots: dict[str, str | None], job: str, fingerprint: str | None) -> dict[int, Candidate]:
    """Complete checkpoints on the given tiers (tier -> root), by step. fingerprint None: any model config."""
    found: dict[int, Candidate] = {}
    for tier, root in roots.items():
        for step, folder in sorted(list_step_dirs(root, job).items()):
            try:
                manifest = read_manifest(folder)
            except InvalidManifestError as e:
                log.warning("skipping step-%d on %s tier: %s", step, tier, e)
                continue
            if manifest is None:
                log.warning("skipping step-%d on %s tier (%s): no manifest (torn write)", step, tier, folder)
                continue
            manifest.check_belongs_to(job, manifest.model_fingerprint if fingerprint is None else fingerprint, folder)
            found.setdefault(step, Candidate(step, manifest)).folders[tier] = folder
    return found


def source_rank(saved: WorldLayout, current: WorldLayout, rank: int) -> int:
    """Which saved rank's shard serves `rank` of the current layout (pure)."""
    if saved == current:
        return rank
    if (saved.pp, saved.tp) != (current.pp, current.tp):
        raise LayoutChangeError(
            f"checkpoint layout {saved.describe()} cannot be loaded into {current.describe()}: pipeline and tensor "
            f"degrees must stay the same for a sharded resume (change only the data or Ulysses degree)"
        )
    fsdp = "fsdp" in (saved.data_sharding, current.data_sharding)
    shards = (saved.dp, saved.ulysses, saved.data_sharding) != (current.dp, current.ulysses, current.data_sharding)
    if fsdp and shards:
        raise LayoutChangeError(
            f"checkpoint layout {saved.describe()} cannot be loaded into {current.describe()}: FSDP shards follow "
            f"the data x Ulysses degree and the sharding mode; keep parallelism.data, ulysses and dataSharding as "
            f"they were"
        )
    c = rank_coords(rank, ParallelLayout(dp=current.dp, pp=current.pp, ulysses=current.ulysses, tp=current.tp))
    old = ParallelLayout(dp=saved.dp, pp=saved.pp, ulysses=saved.ulysses, tp=saved.tp)
    dp, uly = c.dp % saved.dp, c.ulysses % saved.ulysses
    return ((dp * old.pp + c.pp) * old.ulysses + uly) * old.tp + c.tp


def base_rank(saved: WorldLayout, current: WorldLayout, rank: int) -> int:
    """The saved rank at `rank`'s coordinates, each taken modulo the saved degree (pure): in a resharding restore
    its file gives `rank` what is not a slice of a global tensor (data loader position, RNG, LR scheduler, step)."""
    c = rank_coords(rank, ParallelLayout(dp=current.dp, pp=current.pp, ulysses=current.ulysses, tp=current.tp))
    dp, pp, uly, tp = c.dp % saved.dp, c.pp % saved.pp, c.ulysses % saved.ulysses, c.tp % saved.tp
    return ((dp * saved.pp + pp) * saved.ulysses + uly) * saved.tp + tp


def _verified_bytes(candidate: Candidate, entry: ShardFile) -> tuple[bytes, str]:
    """A file of the step from the first tier whose copy has the manifest's size and crc32."""
    problems = []
    for tier in TIERS:
        folder = candidate.folders.get(tier)
        if folder is None:
            # The other tier's copy may exist without that tier's manifest (e.g. replication finished but the
            # manifest did not): the checksum decides whether it is usable.
            continue
        path = folder / entry.name
        try:
            data = path.read_bytes()
        except FileNotFoundError:
            problems.append(f"{tier}: {path} missing")
            continue
        if (len(data), zlib.crc32(data)) != (entry.size, entry.crc32):
            problems.append(f"{tier}: {path} checksum mismatch (size {len(data)}/{entry.size})")
            log.warning(
                "step-%d shard %s on %s tier is corrupt or truncated; trying the next copy",
                candidate.step,
                entry.name,
                tier,
            )
            continue
        return data, tier
    raise CheckpointError(f"no usable copy of {entry.name} of step {candidate.step}: {'; '.join(problems)}")


def read_shard(candidate: Candidate, rank: int) -> tuple[Any, str]:
    """Load one saved rank's shard, preferring the node-local copy; verifies size and crc32 against the manifest."""
    data, tier = _verified_bytes(candidate, candidate.manifest.file_for_rank(rank))
    return load_shard_bytes(data), tier


_MISSING = object()


def _at(state: Any, path: tuple) -> Any:
    for part in path:
        try:
            state = state[part]
        except (KeyError, IndexError, TypeError):
            return _MISSING
    return state


def _merged(node: Any, path: tuple, base: Any, regions: dict[str, torch.Tensor]) -> Any:
    """The template's structure; each tensor from the resharding read or the base rank, other values the base
    rank's (the template's own where the base rank has none). A tensor the checkpoint does not have is left out,
    and so is a dict left empty by that: a parameter that had no optimizer state when saved has none restored
    (what loading does with a missing model tensor is the model's business: it refuses)."""
    if isinstance(node, TensorRef):
        key = key_of(path)
        return regions[key] if key in regions else _at(base, path)
    if not has_tensor(node):
        found = _at(base, path)
        return node if found is _MISSING else found
    if isinstance(node, dict):
        out = {k: _merged(v, (*path, k), base, regions) for k, v in node.items()}
        kept = {k: v for k, v in out.items() if v is not _MISSING}
        return kept if kept or not node else _MISSING
    items = [_merged(v, (*path, i), base, regions) for i, v in enumerate(node)]
    if any(v is _MISSING for v in items):
        raise CheckpointError(f"{key_of(path)}: the checkpoint lacks items of this list")
    return type(node)(items)


def read_resharded(candidate: Candidate, template: tuple[Any, list[torch.Tensor]], base: int) -> tuple[Any, str]:
    """This rank's state under its own layout from a checkpoint of another (format 2). `template`: the live state
    flattened (flatten.flatten_state: DTensor slices with their global offsets). Whole tensors the base rank holds
    whole (replicated model and optimizer state, its RNG) come from its file; every other tensor is assembled from
    the saved chunks overlapping this rank's slice, read from the step's files on the first tier holding each
    intact (the node-local disk when the file is there, else the persistent claim)."""
    manifest = candidate.manifest
    if manifest.metadata is None:
        raise CheckpointError(f"step {candidate.step} has no DCP index (format {manifest.format}): cannot reshard")
    base_state, tier = read_shard(candidate, base)
    index, _ = _verified_bytes(candidate, manifest.metadata)
    metadata = parse_metadata(index)
    skeleton, tensors = template
    wanted: dict[str, Wanted] = {}
    for path, leaf in leaves(skeleton):
        if not isinstance(leaf, TensorRef):
            continue
        live = tensors[leaf.index]
        held = _at(base_state, path)
        if leaf.global_shape is None and isinstance(held, torch.Tensor) and tuple(held.shape) == tuple(live.shape):
            continue
        global_shape = leaf.global_shape if leaf.global_shape is not None else tuple(live.shape)
        offsets = leaf.offsets if leaf.offsets is not None else (0,) * live.dim()
        key = key_of(path)
        if key in metadata.state_dict_metadata:  # else the checkpoint has none (see _merged)
            wanted[key] = Wanted(live.dtype, tuple(global_shape), tuple(offsets), tuple(live.shape))
    by_name = {f.name: f for f in manifest.files}
    opened: dict[str, tuple[bytes, str]] = {}
    tiers = {tier}

    def read(name: str, offset: int, length: int) -> bytes:
        if name not in opened:
            if name not in by_name:
                raise CheckpointError(f"step {candidate.step}: the index names {name}, which the manifest lacks")
            opened.clear()  # one file held at a time: chunks are read file by file
            opened[name] = _verified_bytes(candidate, by_name[name])
            tiers.add(opened[name][1])
        return opened[name][0][offset : offset + length]

    regions = read_regions(metadata, wanted, read)
    merged = _merged(skeleton, (), base_state, regions)
    if merged is _MISSING:
        raise CheckpointError(f"step {candidate.step} holds none of this run's state")
    return merged, "persistent" if "persistent" in tiers else "local"


def with_sibling_folders(candidate: Candidate, roots: dict[str, str | None], job: str) -> Candidate:
    """Add the other tier's folder of the same step (shards without that tier's manifest are still checked by
    checksum against the manifest we have)."""
    for tier, root in roots.items():
        if tier not in candidate.folders and root is not None:
            folder = list_step_dirs(root, job).get(candidate.step)
            if folder is not None:
                candidate.folders[tier] = folder
    # keep the preference order local first
    candidate.folders = {t: candidate.folders[t] for t in TIERS if t in candidate.folders}
    return candidate


def final_checkpoint(persistent_root: str, job: str) -> Candidate | None:
    """The newest complete checkpoint of a job on the persistent tier: what promotion (distillation teacher,
    serving) starts from. Read a rank's state with read_shard(candidate, rank) (checksums verified)."""
    found = discover({"persistent": persistent_root}, job, None)
    return found[max(found)] if found else None


def discover_peers(local_root: str | None, job: str, fingerprint: str) -> dict[int, list[tuple[Path, Manifest]]]:
    """Complete peer copies on this node's disk (other nodes' shards, peers.py), by step."""
    found: dict[int, list[tuple[Path, Manifest]]] = {}
    if local_root is None:
        return found
    for step, folders in sorted(peer_step_dirs(local_root, job).items()):
        for folder in folders:
            try:
                manifest = read_manifest(folder)
            except InvalidManifestError as e:
                log.warning("skipping peer copy %s: %s", folder, e)
                continue
            if manifest is None:
                continue  # a copy cut short: the sender's next save replaces it, retention removes it
            manifest.check_belongs_to(job, fingerprint, folder)
            found.setdefault(step, []).append((folder, manifest))
    return found


def _sized(folder: Path | None, entry: ShardFile) -> bool:
    """The file is there with the manifest's size (its crc32 is checked when it is read)."""
    if folder is None:
        return False
    try:
        return (folder / entry.name).stat().st_size == entry.size
    except OSError:
        return False


def _load_verified(data: bytes, entry: ShardFile, where: str) -> Any:
    if (len(data), zlib.crc32(data)) != (entry.size, entry.crc32):
        raise CheckpointError(f"{where}: checksum mismatch (size {len(data)}/{entry.size})")
    return load_shard_bytes(data)


def gloo_group():
    """The group peer copies travel in: a gloo group of all ranks, made only when a restore sends a peer copy (NCCL
    moves only device tensors; always a new group, so CPU tests run the same path as GPU jobs). Collective: every
    rank calls it, or none."""
    import torch.distributed as dist

    return dist.new_group(backend="gloo")


@dataclass
class _StepView:
    """What this rank has of one step: the manifest, its tiers' folders, and the peer copies on its disk."""

    manifest: Manifest
    candidate: Candidate  # local/persistent folders of the step (with or without that tier's manifest)
    peer_files: dict[int, Path]  # saved rank -> its peer copy on this disk (size as in the manifest)


def _view(step: int, manifest: Manifest, roots: dict[str, str | None], job: str, peers: list) -> _StepView:
    candidate = with_sibling_folders(Candidate(step, manifest), roots, job)
    peer_files = {}
    for folder, _ in peers:
        for entry in manifest.files:
            if entry.rank not in peer_files and _sized(folder, entry):
                peer_files[entry.rank] = folder / entry.name
    return _StepView(manifest, candidate, peer_files)


def _read_planned(
    view: _StepView, need: int, rank: int, plan: list[ShardSource], needs: list[int], group_for
) -> tuple[Any, str]:
    """Run this rank's part of one step's plan: send the peer copies others need (every rank in the same order),
    then load its own shard from the planned source; a bad peer copy falls back to the persistent tier."""
    entry = view.manifest.file_for_rank(need)
    received: bytes | None = None
    sent = [(receiver, source.holder) for receiver, source in enumerate(plan) if source.sent_by_peer(receiver)]
    group = group_for() if sent else None  # every rank, also those not sending: making a group is collective
    for receiver, holder in sent:
        if rank == holder:
            send_file(view.peer_files.get(needs[receiver]), receiver, group)
        elif rank == receiver:
            received = receive_bytes(holder, group)
    mine = plan[rank]
    if mine.tier != TIER_PEER:
        return read_shard(view.candidate, need)
    try:
        if mine.holder == rank:
            path = view.peer_files[need]
            return _load_verified(path.read_bytes(), entry, str(path)), TIER_PEER
        if received is None:
            raise CheckpointError(f"rank {mine.holder} had no peer copy of {entry.name} to send")
        return _load_verified(received, entry, f"peer copy of {entry.name} from rank {mine.holder}"), TIER_PEER
    except (CheckpointError, OSError) as e:
        persistent = view.candidate.folders.get("persistent")
        if persistent is None:
            raise
        log.warning("step-%d: %s; reading the persistent copy", view.manifest.step, e)
        return read_shard(Candidate(view.manifest.step, view.manifest, {"persistent": persistent}), need)


def restore_newest(
    roots: dict[str, str | None],
    job: str,
    fingerprint: str,
    current: WorldLayout,
    rank: int,
    exchange: Exchange,
    peer_group=gloo_group,
    template: Callable[[], tuple[Any, list[torch.Tensor]]] | None = None,
) -> RestoredCheckpoint | None:
    """Collective over `exchange`: every rank returns the same step, or None when no checkpoint is usable. Each
    rank reads its shard from its own node-local copy, else a peer's copy (peers.plan_sources), else the persistent
    tier. `peer_group`: makes the gloo group peer copies are sent in (called by every rank, once, when needed).
    `template`: gives the live state, flattened; called (on every rank) only to reshard a checkpoint of another
    layout (read_resharded)."""
    t0 = time.perf_counter()
    found = discover(roots, job, fingerprint)
    peers = discover_peers(roots.get("local"), job, fingerprint)
    visible = sorted(set(found) | set(peers))
    seen_by = exchange.gather(visible)
    steps = sorted({s for seen in seen_by for s in seen}, reverse=True)
    groups: list = []

    def group_for():
        if not groups:
            groups.append(peer_group())
        return groups[0]

    for step in steps:
        # Every rank needs the manifest; a rank on a new node may have none: the lowest rank that has one shares it.
        owner = next(r for r, seen in enumerate(seen_by) if step in seen)
        manifest = found[step].manifest if step in found else (peers[step][0][1] if step in peers else None)
        shared = exchange.gather(manifest.to_json() if rank == owner and manifest is not None else None)[owner]
        if manifest is None:
            manifest = Manifest.from_json(shared)
            manifest.check_belongs_to(job, fingerprint, Path(f"<manifest of step {step} from rank {owner}>"))
        try:
            need = source_rank(manifest.layout, current, rank)  # LayoutChangeError: the same on every rank
        except LayoutChangeError as e:
            if not manifest.reshardable:
                raise LayoutChangeError(
                    f"{e} (step {step} is in format {manifest.format}, which cannot be resharded)"
                ) from None
            if template is None:
                raise
            result = _resharded(step, manifest, roots, job, rank, current, template(), exchange, t0)
            if result is not None:
                return result
            continue
        view = _view(step, manifest, roots, job, peers.get(step, []))
        try:
            entry = manifest.file_for_rank(need)
            holding = Holding(
                local=_sized(view.candidate.folders.get("local"), entry),
                persistent=_sized(view.candidate.folders.get("persistent"), entry),
                peer=frozenset(view.peer_files),
            )
        except CheckpointError:
            holding = Holding(local=False, persistent=False, peer=frozenset(view.peer_files))
        reports = exchange.gather((need, holding))
        needs = [n for n, _ in reports]
        plan = plan_sources(needs, [h for _, h in reports])
        if plan is None:
            missing = [r for r, (_, h) in enumerate(reports) if not (h.local or h.persistent)]
            log.warning(
                "cannot restore step-%d: ranks %s have no copy of their shard on any tier; falling back to the "
                "previous complete checkpoint",
                step,
                missing[:8],
            )
            continue
        result, error, tier = None, "", ""
        try:
            state, tier = _read_planned(view, need, rank, plan, needs, group_for)
            result = RestoredCheckpoint(step, state, manifest, need, tier, 0.0)
        except (CheckpointError, OSError, RuntimeError, EOFError) as e:
            error = str(e)
        outcomes = exchange.gather((error, tier))
        errors = [e for e, _ in outcomes if e]
        if not errors:
            result.seconds = time.perf_counter() - t0
            result.sources = [t for _, t in outcomes]
            log.info(
                "restored step %d (rank %d from saved rank %d, %s tier) in %.2f s",
                step,
                rank,
                result.source_rank,
                result.tier,
                result.seconds,
            )
            if rank == 0:
                counts = {t: result.sources.count(t) for t in TIER_ORDER if t in result.sources}
                log.info("restore of step %d: ranks per source %s", step, counts)
            return result
        log.warning("cannot restore step-%d (%s); falling back to the previous complete checkpoint", step, errors[0])
    return None


def _resharded(
    step: int,
    manifest: Manifest,
    roots: dict[str, str | None],
    job: str,
    rank: int,
    current: WorldLayout,
    template: tuple[Any, list[torch.Tensor]],
    exchange: Exchange,
    t0: float,
) -> RestoredCheckpoint | None:
    """One step's resharding restore on every rank (collective); None when some rank could not read its part."""
    base = base_rank(manifest.layout, current, rank)
    candidate = with_sibling_folders(Candidate(step, manifest), roots, job)
    state, error, tier = None, "", ""
    try:
        state, tier = read_resharded(candidate, template, base)
    except (CheckpointError, ShardFormatError, OSError, RuntimeError, EOFError) as e:
        error = f"rank {rank}: {e}"
    outcomes = exchange.gather((error, tier))
    errors = [e for e, _ in outcomes if e]
    if errors:
        log.warning("cannot reshard step-%d (%s); falling back to the previous complete checkpoint", step, errors[0])
        return None
    result = RestoredCheckpoint(step, state, manifest, base, tier, time.perf_counter() - t0, [t for _, t in outcomes])
    if rank == 0:
        log.info(
            "restored step %d saved at %s into %s by resharding (%.2f s; ranks per source %s)",
            step,
            manifest.layout.describe(),
            current.describe(),
            result.seconds,
            {t: result.sources.count(t) for t in TIER_ORDER if t in result.sources},
        )
    return result
