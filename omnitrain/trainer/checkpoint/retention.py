"""Which step folders to delete on one tier: keep the newest `keep` complete checkpoints, drop incomplete folders
older than the newest complete one (torn writes of earlier attempts). Never the newest complete one."""

from __future__ import annotations

import logging
import shutil
from pathlib import Path

from omnitrain.checkpoint_paths import list_step_dirs
from omnitrain.trainer.checkpoint.manifest import InvalidManifestError, read_manifest

log = logging.getLogger(__name__)


def plan_retention(complete: list[int], incomplete: list[int], keep: int) -> list[int]:
    """Steps to delete. Incomplete folders newer than the newest complete step may be a save in progress."""
    keep = max(keep, 1)
    newest_first = sorted(set(complete), reverse=True)
    doomed = newest_first[keep:]
    if newest_first:
        doomed += [s for s in incomplete if s < newest_first[0]]
    return sorted(doomed)


def apply_retention(root: str | Path | None, job: str, keep: int) -> list[int]:
    folders = list_step_dirs(root, job)
    complete, incomplete = [], []
    for step, folder in folders.items():
        try:
            (complete if read_manifest(folder) is not None else incomplete).append(step)
        except InvalidManifestError:
            incomplete.append(step)
    doomed = plan_retention(complete, incomplete, keep)
    for step in doomed:
        shutil.rmtree(folders[step], ignore_errors=True)
    if doomed:
        log.info("checkpoint retention under %s: removed steps %s (keep %d)", root, doomed, keep)
    return doomed
