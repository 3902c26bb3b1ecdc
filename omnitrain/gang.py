"""The restart generation the operator announces to the pods of a job (in-place gang restart, docs/resilience.md).

One object per job, written by the operator in one call per restart whatever the job's size: the ConfigMap
`<job>-gang`, key `gang.json`, mounted into every training pod at GANG_MOUNT. The supervisor in each pod
(`omnitrain watchdog`) reads the file, starts torchrun as the node rank the announcement gives its pod, and when a
newer generation appears stops its workers and starts them again for it. A pod the announcement does not list
waits (a replaced pod whose successor is already named, or a pod created ahead of its generation).

Why a ConfigMap rather than pod annotations: one write announces the generation to every pod (patching each pod is
O(job size) calls on the critical path). Why the rank is in the announcement rather than the pod's env: a pod keeps
its process across generations, and the rank a pod holds may change when a rank moves to another pod.

Plain JSON and dataclasses: the operator (no torch) and the supervisor (no kopf) both import this module.
"""

from __future__ import annotations

import json
import socket
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

GANG_FILE = "gang.json"
GANG_MOUNT = "/etc/omnitrain-gang"
GANG_VOLUME = "gang"
ENV_GANG_FILE = "OMNITRAIN_GANG_FILE"  # set on the pod: its supervisor follows generations (in-place restarts)
ENV_POD_NAME = "POD_NAME"  # the pod's own name (downward API): its entry in `members`
ENV_STATE_DIR = "OMNITRAIN_STATE_DIR"  # an emptyDir: what the supervisor keeps across its container's restarts
STATE_MOUNT = "/var/run/omnitrain"
STATE_VOLUME = "supervisor-state"
# Rendezvous ports cycle through this many values, one per generation: a worker of the last generation still
# winding down on another node cannot join the next generation's store.
PORT_CYCLE = 8


@dataclass(frozen=True)
class GangAnnouncement:
    """Generation `generation` of the gang: which pod is which node rank, and where its rendezvous is."""

    generation: int
    members: dict[str, int]  # pod name -> node rank, one entry per rank
    master_addr: str  # rank 0's pod DNS name (torchrun --master-addr)
    master_port: int
    nnodes: int
    announced: str = ""  # RFC 3339 time of the announcement (the recovery's clock starts at the failure before it)
    spares: list[str] = field(default_factory=list)  # pods started and waiting, not ranks of this generation
    promoted: list[str] = field(default_factory=list)  # spares that became ranks in this generation (goodput)

    def rank_of(self, pod: str) -> int | None:
        return self.members.get(pod)

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> GangAnnouncement:
        """Parse an announcement; ValueError names what is wrong (a file half-written by hand, not by the kubelet,
        whose ConfigMap volumes swap files atomically)."""
        data = json.loads(text)
        if not isinstance(data, dict):
            raise ValueError(f"{GANG_FILE}: expected an object, got {type(data).__name__}")
        try:
            members = {str(k): int(v) for k, v in dict(data["members"]).items()}
            return cls(
                generation=int(data["generation"]),
                members=members,
                master_addr=str(data["master_addr"]),
                master_port=int(data["master_port"]),
                nnodes=int(data["nnodes"]),
                announced=str(data.get("announced", "")),
                spares=[str(s) for s in data.get("spares", [])],
                promoted=[str(s) for s in data.get("promoted", [])],
            )
        except (KeyError, TypeError, ValueError) as err:
            raise ValueError(f"{GANG_FILE}: {err!r} (expected generation, members, master_addr, master_port)") from err


def rendezvous_port(base: int, generation: int, avoid: int | None = None) -> int:
    """The rendezvous port of a generation: base + generation mod PORT_CYCLE, skipping `avoid` (the metrics port)."""
    offsets = [o for o in range(PORT_CYCLE + 1) if base + o != avoid]
    return base + offsets[generation % PORT_CYCLE]


def resolve_address(
    name: str, hosts_file: str | None, wait_seconds: float = 60.0, poll_seconds: float = 0.2, clock=time.monotonic
) -> str:
    """`name` as torchrun should get it: unchanged where the system resolver knows it (a real cluster's DNS), else
    its IP from `hosts_file` (a cluster without pod DNS: the local node agent), waiting up to `wait_seconds` for the
    pod to get one; `name` itself when neither knows it (torchrun then says what failed)."""
    if not hosts_file:
        return name
    try:
        socket.getaddrinfo(name, None)
        return name
    except OSError:
        pass
    deadline = clock() + wait_seconds
    while True:
        ip = hosts_entry(hosts_file, name)
        if ip is not None or clock() >= deadline:
            return ip or name
        time.sleep(poll_seconds)  # the agent writes the entry when the pod gets its IP


def hosts_entry(hosts_file: str | Path, name: str) -> str | None:
    """The IP an /etc/hosts-style file gives `name`; None when absent."""
    try:
        lines = Path(hosts_file).read_text().splitlines()
    except OSError:
        return None
    for line in lines:
        fields = line.split("#", 1)[0].split()
        if len(fields) >= 2 and name in fields[1:]:
            return fields[0]
    return None


def read_announcement(path: str | Path) -> GangAnnouncement | None:
    """The announcement in the mounted file; None while the file is absent or unreadable (not announced yet, or
    the ConfigMap volume is being swapped)."""
    try:
        return GangAnnouncement.from_json(Path(path).read_text())
    except (OSError, ValueError):
        return None


__all__ = [
    "ENV_GANG_FILE",
    "ENV_POD_NAME",
    "ENV_STATE_DIR",
    "GANG_FILE",
    "GANG_MOUNT",
    "GANG_VOLUME",
    "GangAnnouncement",
    "PORT_CYCLE",
    "STATE_MOUNT",
    "STATE_VOLUME",
    "hosts_entry",
    "read_announcement",
    "resolve_address",
    "rendezvous_port",
]
