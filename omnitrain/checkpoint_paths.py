"""Where checkpoints live: `<root>/<job>/step-<N>/` holding `rank-<R>.distcp` shard files, DCP's
`.metadata` and `manifest.json`.

The same relative layout on both tiers (node-local NVMe and the persistent claim), so replication is a copy of the
same names. The final checkpoint of a run is simply the newest complete step folder on the persistent tier.
"""

from __future__ import annotations

import re
from pathlib import Path

STEP_PREFIX = "step-"
MANIFEST_NAME = "manifest.json"
_STEP_RE = re.compile(r"^step-(\d+)$")


def job_dir(root: str | Path, job: str) -> Path:
    return Path(root) / job


def step_dir(root: str | Path, job: str, step: int) -> Path:
    return job_dir(root, job) / f"{STEP_PREFIX}{step}"


def shard_file_name(rank: int) -> str:
    """A rank's shard file (omnitrain.checkpoint_format); format-1 checkpoints named theirs rank-<R>.pt, and a
    manifest lists its files by name, so both still load."""
    return f"rank-{rank:05d}.distcp"


def legacy_shard_file_name(rank: int) -> str:
    return f"rank-{rank:05d}.pt"


def parse_step(name: str) -> int | None:
    """The step of a `step-<N>` folder name; None for anything else (temporary files, other folders)."""
    m = _STEP_RE.match(name)
    return int(m.group(1)) if m else None


def list_step_dirs(root: str | Path | None, job: str) -> dict[int, Path]:
    """Step folders of a job under one tier root, by step (empty when the root or job folder is missing)."""
    if root is None:
        return {}
    base = job_dir(root, job)
    if not base.is_dir():
        return {}
    found = {}
    for child in base.iterdir():
        step = parse_step(child.name)
        if step is not None and child.is_dir():
            found[step] = child
    return found
