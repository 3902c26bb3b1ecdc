"""Find and load the newest complete checkpoint every rank can read.

- Candidates: step folders with a manifest on either tier (a folder without one is a torn write: reported, never
  loaded). A manifest of another job or model config is an error, not a candidate.
- Each rank reads the shard it needs: the node-local copy when its crc32 matches the manifest, else the persistent
  copy. If any rank cannot (corrupt/truncated everywhere, or the step is not visible to it), all ranks fall back
  together to the next older step.
- Layout changes: ranks that differ only in data-parallel or Ulysses position hold identical model/optimizer state
  (unless FSDP-sharded), so any such replica serves a new rank. Pipeline/tensor degree changes, or FSDP with a new
  data degree, are refused with both layouts named.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from omnitrain import fsio
from omnitrain.checkpoint_paths import list_step_dirs
from omnitrain.trainer.checkpoint.exchange import Exchange
from omnitrain.trainer.checkpoint.manifest import (
    CheckpointError,
    InvalidManifestError,
    Manifest,
    WorldLayout,
    read_manifest,
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
    tier: str  # where the shard came from: "local" or "persistent"
    seconds: float


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
    if fsdp and (saved.dp != current.dp or saved.data_sharding != current.data_sharding):
        raise LayoutChangeError(
            f"checkpoint layout {saved.describe()} cannot be loaded into {current.describe()}: FSDP shards follow "
            f"the data degree and sharding mode; keep parallelism.data and dataSharding as they were"
        )
    c = rank_coords(rank, ParallelLayout(dp=current.dp, pp=current.pp, ulysses=current.ulysses, tp=current.tp))
    old = ParallelLayout(dp=saved.dp, pp=saved.pp, ulysses=saved.ulysses, tp=saved.tp)
    dp, uly = c.dp % saved.dp, c.ulysses % saved.ulysses
    return ((dp * old.pp + c.pp) * old.ulysses + uly) * old.tp + c.tp


def read_shard(candidate: Candidate, rank: int) -> tuple[Any, str]:
    """Load one saved rank's shard, preferring the node-local copy; verifies size and crc32 against the manifest."""
    entry = candidate.manifest.file_for_rank(rank)
    problems = []
    for tier in TIERS:
        folder = candidate.folders.get(tier)
        if folder is None:
            # The other tier's copy may exist without that tier's manifest (e.g. replication finished but the
            # manifest did not): the checksum decides whether it is usable.
            continue
        path = folder / entry.name
        if not path.exists():
            problems.append(f"{tier}: {path} missing")
            continue
        size, crc = fsio.file_crc32(path)
        if (size, crc) != (entry.size, entry.crc32):
            problems.append(f"{tier}: {path} checksum mismatch (size {size}/{entry.size})")
            log.warning(
                "step-%d shard %s on %s tier is corrupt or truncated; trying the next copy",
                candidate.step,
                entry.name,
                tier,
            )
            continue
        return torch.load(path, map_location="cpu", weights_only=False), tier
    raise CheckpointError(f"no usable copy of {entry.name} of step {candidate.step}: {'; '.join(problems)}")


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


def restore_newest(
    roots: dict[str, str | None], job: str, fingerprint: str, current: WorldLayout, rank: int, exchange: Exchange
) -> RestoredCheckpoint | None:
    """Collective over `exchange`: every rank returns the same step, or None when no checkpoint is usable."""
    t0 = time.perf_counter()
    found = discover(roots, job, fingerprint)
    steps = sorted({s for seen in exchange.gather(sorted(found)) for s in seen}, reverse=True)
    for step in steps:
        result, error = None, ""
        if step not in found:
            error = f"step {step} has no manifest visible to rank {rank}"
        else:
            candidate = with_sibling_folders(found[step], roots, job)
            try:
                src = source_rank(candidate.manifest.layout, current, rank)
                state, tier = read_shard(candidate, src)
                result = RestoredCheckpoint(step, state, candidate.manifest, src, tier, 0.0)
            except LayoutChangeError:
                raise
            except (CheckpointError, OSError, RuntimeError, EOFError) as e:
                error = str(e)
        errors = [e for e in exchange.gather(error) if e]
        if not errors:
            result.seconds = time.perf_counter() - t0
            log.info(
                "restored step %d (rank %d from saved rank %d, %s tier) in %.2f s",
                step,
                rank,
                result.source_rank,
                result.tier,
                result.seconds,
            )
            return result
        log.warning("cannot restore step-%d (%s); falling back to the previous complete checkpoint", step, errors[0])
    return None
