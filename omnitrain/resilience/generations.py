"""The supervisor's side of the in-place gang restart (docs/resilience.md, "In-place gang restart"): pure decisions
over the announcement (omnitrain.gang) and the little state a supervisor keeps across its container's restarts.

`omnitrain watchdog` follows generations when the pod has OMNITRAIN_GANG_FILE: each poll it reads the announcement
and asks `next_action` what to do; the processes (start, kill) stay in watchdog.py.

State files in the state dir (an emptyDir, so they survive the kubelet restarting the container in place):
  failed-generation   the generation this pod's workers failed in; a supervisor started again waits for a newer one
                      (starting the failed generation again would join a rendezvous the other pods have left)
  acked-generation    the generation this pod's supervisor started last (for the operator and for people reading the
                      pod); a supervisor started again does not rejoin it either: the container that ran it ended
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum
from pathlib import Path

from omnitrain import contract
from omnitrain.gang import GangAnnouncement

FAILED_GENERATION = "failed-generation"
ACKED_GENERATION = "acked-generation"


class Do(str, Enum):
    WAIT = "wait"  # no workers, none to start yet
    START = "start"  # start the workers for `generation` as `node_rank`
    KEEP = "keep"  # the running generation is still the current one
    STOP = "stop"  # a newer generation is announced: kill the running workers (then ask again)


@dataclass(frozen=True)
class Action:
    do: Do
    generation: int | None = None
    node_rank: int | None = None
    why: str = ""  # for the waiting status line


def next_action(
    announcement: GangAnnouncement | None, pod: str, failed_generation: int | None, running_generation: int | None
) -> Action:
    """What the supervisor of pod `pod` does now.

    A missing announcement while workers run is the ConfigMap volume being swapped, not a reason to stop them. An
    announcement no newer than the running generation is a stale read. A newer one always stops the workers first,
    whether or not the pod is a member of it: its old process group is gone everywhere else."""
    if running_generation is not None:
        if announcement is None or announcement.generation <= running_generation:
            return Action(Do.KEEP, running_generation)
        return Action(Do.STOP, announcement.generation, why=f"generation {announcement.generation} announced")
    if announcement is None:
        return Action(Do.WAIT, why="no gang announcement yet")
    generation = announcement.generation
    if failed_generation is not None and generation <= failed_generation:
        return Action(
            Do.WAIT, generation, why=f"workers failed in generation {failed_generation}; waiting for a newer one"
        )
    rank = announcement.rank_of(pod)
    if rank is None:
        spare = " (a spare)" if pod in announcement.spares else ""
        return Action(Do.WAIT, generation, why=f"pod {pod} is not a member of generation {generation}{spare}")
    return Action(Do.START, generation, node_rank=rank)


def failure_superseded(code: int, announcement: GangAnnouncement | None, generation: int) -> bool:
    """Workers that ended with `code` in `generation` when `announcement` was read right after: True when a newer
    generation is already announced, so the supervisor starts it in place rather than ending the pod. Their failure
    is then history to the operator (it has moved on), and a healthy pod whose workers failed because a peer died
    keeps its process. Hardware evidence still ends the pod: the node must be replaced."""
    if code == 0 or code == contract.ExitCode.HARDWARE:
        return False
    return announcement is not None and announcement.generation > generation


def generation_env(announcement: GangAnnouncement, node_rank: int) -> dict[str, str]:
    """The environment torchrun (PET_*) and the trainer (MASTER_*, OMNITRAIN_ATTEMPT) get for one generation."""
    return {
        "PET_NNODES": str(announcement.nnodes),
        "PET_NODE_RANK": str(node_rank),
        "PET_MASTER_ADDR": announcement.master_addr,
        "PET_MASTER_PORT": str(announcement.master_port),
        "MASTER_ADDR": announcement.master_addr,
        "MASTER_PORT": str(announcement.master_port),
        contract.ENV_ATTEMPT: str(announcement.generation),
    }


def read_generation(state_dir: str | Path, name: str) -> int | None:
    """A generation number kept in the state dir; None when absent or unreadable (a fresh pod)."""
    try:
        return int((Path(state_dir) / name).read_text().strip())
    except (OSError, ValueError):
        return None


def write_generation(state_dir: str | Path, name: str, generation: int) -> None:
    """Write temp + rename: a container killed mid-write leaves the old number, never a torn one."""
    folder = Path(state_dir)
    folder.mkdir(parents=True, exist_ok=True)
    tmp = folder / f".{name}.tmp"
    tmp.write_text(f"{generation}\n")
    tmp.replace(folder / name)


__all__ = [
    "ACKED_GENERATION",
    "FAILED_GENERATION",
    "Action",
    "Do",
    "failure_superseded",
    "generation_env",
    "next_action",
    "read_generation",
    "write_generation",
]
