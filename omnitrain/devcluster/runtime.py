"""Local state of pods the agent runs: the folder layout, pod IPs, shim start/stop, and reading what the shims
recorded. Everything the agent knows about a container lives in files, so a restarted agent can rebuild it;
`PodRun.state()` is the snapshot that `podstatus.pod_status` renders."""

from __future__ import annotations

import json
import os
import shutil
import signal
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from omnitrain.devcluster import procs
from omnitrain.devcluster.podstatus import ContainerState, PodState
from omnitrain.timestamps import now_rfc3339

TERMINATION_MESSAGE_LIMIT = 4096
FALLBACK_LOG_LINES = 80
LAST_TERMINATED = "last-terminated.json"  # lastState.terminated of the run before a restart in place


def pod_dir(root: Path, namespace: str, name: str) -> Path:
    return root / "pods" / namespace / name


def container_log(root: Path, namespace: str, name: str, container: str) -> Path:
    return pod_dir(root, namespace, name) / f"{container}.log"


def container_dir(root: Path, namespace: str, name: str, container: str) -> Path:
    """Where the shim of that container records its run (spec.json, started.json, exit.json, ...)."""
    return pod_dir(root, namespace, name) / "containers" / container


@dataclass
class ContainerRun:
    """One container of a pod; its files live in <pod>/containers/<name>/."""

    name: str
    dir: Path
    log: Path
    restart_count: int = 0
    last_terminated: dict | None = None  # lastState.terminated after a restart
    next_start_at: float | None = None  # back-off before a restart
    waiting_reason: str = "ContainerCreating"
    waiting_message: str = ""
    kill_sent: set = field(default_factory=set)

    @property
    def spec_path(self) -> Path:
        return self.dir / "spec.json"

    @property
    def termination_log(self) -> Path:
        return self.dir / "termination-log"

    def started(self) -> dict | None:
        return read_json(self.dir / "started.json")

    def exit(self) -> dict | None:
        return read_json(self.dir / "exit.json")

    def child(self) -> tuple[int, int | None] | None:
        return procs.read_pid_file(self.dir / "child.pid")

    def shim_alive(self) -> bool:
        return procs.running(self.dir / "shim.pid")

    def is_running(self) -> bool:
        """Started and not yet exited (the shim writes exit.json the moment the child ends)."""
        return self.exit() is None and (self.started() is not None or self.shim_alive())

    def launch(self, spec: dict) -> None:
        self.dir.mkdir(parents=True, exist_ok=True)
        for stale in ("exit.json", "started.json", "child.pid", "shim.pid"):
            (self.dir / stale).unlink(missing_ok=True)
        self.termination_log.write_text("")
        write_json(self.spec_path, spec)
        (self.dir / "restarts").write_text(str(self.restart_count))
        procs.spawn_detached(
            [sys.executable, "-m", "omnitrain.devcluster.shim", str(self.dir)],
            self.log,
            self.dir / "shim.pid",
            env=_shim_env(),
        )
        self.kill_sent = set()
        self.waiting_reason = ""

    def signal(self, sig: int) -> None:
        child = self.child()
        if child is None or not procs.alive(*child):
            return
        try:
            os.killpg(child[0], sig)
        except ProcessLookupError:
            pass
        self.kill_sent.add(sig)

    def archive_exit(self) -> None:
        """Before a restart in place: the finished run becomes lastState (kept on disk with its termination
        message, which the next run's start empties: a restarted agent reports it too)."""
        self.last_terminated = self.terminated_state()
        if self.last_terminated is not None:
            write_json(self.dir / LAST_TERMINATED, self.last_terminated)
        (self.dir / "exit.json").rename(self.dir / f"exit.{self.restart_count}.json")
        self.restart_count += 1
        (self.dir / "restarts").write_text(str(self.restart_count))

    def terminated_state(self, fallback_to_logs: bool = False) -> dict | None:
        exit_info = self.exit()
        if exit_info is None:
            return None
        code = int(exit_info["exitCode"])
        reason = exit_info.get("reason") or ("Completed" if code == 0 else "Error")
        message = _read_text(self.termination_log, TERMINATION_MESSAGE_LIMIT).strip()
        if not message and exit_info.get("message"):
            message = exit_info["message"]
        if not message and fallback_to_logs and code != 0:
            message = "\n".join(_read_text(self.log, 1 << 20).splitlines()[-FALLBACK_LOG_LINES:])[-2048:]
        state = {
            "exitCode": code,
            "reason": reason,
            "startedAt": _rfc(exit_info.get("startedAt")),
            "finishedAt": _rfc(exit_info.get("finishedAt")),
            "containerID": self.container_id,
        }
        if exit_info.get("signal"):
            state["signal"] = exit_info["signal"]
        if message:
            state["message"] = message
        return state

    @property
    def container_id(self) -> str:
        return f"omnitrain://{self.dir.parent.parent.name}/{self.name}/{self.restart_count}"

    def state(self, fallback_to_logs: bool, probe_ready: bool) -> ContainerState:
        terminated = self.terminated_state(fallback_to_logs)
        started = self.started()
        return ContainerState(
            name=self.name,
            terminated=terminated,
            started_at=started["startedAt"] if started is not None else None,
            waiting_reason=self.waiting_reason,
            restart_count=self.restart_count,
            container_id=self.container_id,
            last_terminated=self.last_terminated,
            probe_ready=probe_ready,
        )

    @classmethod
    def load(cls, name: str, dir: Path, log: Path) -> ContainerRun:
        run = cls(name, dir, log)
        try:
            run.restart_count = int((dir / "restarts").read_text())
        except (OSError, ValueError):
            pass
        if run.restart_count:
            prev = dir / f"exit.{run.restart_count - 1}.json"
            info = read_json(prev)
            run.last_terminated = read_json(dir / LAST_TERMINATED)
            if run.last_terminated is None and info:  # archived before lastState was kept on disk
                run.last_terminated = {
                    "exitCode": info["exitCode"],
                    "reason": "Completed" if info["exitCode"] == 0 else "Error",
                    "startedAt": _rfc(info.get("startedAt")),
                    "finishedAt": _rfc(info.get("finishedAt")),
                }
        run.waiting_reason = "" if (dir / "spec.json").exists() else "ContainerCreating"
        return run


@dataclass
class PodRun:
    """A pod the agent runs: identity, its folder and containers, and what the agent decided about it so far."""

    namespace: str
    name: str
    uid: str
    node: str
    ip: str
    dir: Path
    pod: dict
    containers: dict[str, ContainerRun] = field(default_factory=dict)
    starting: bool = False
    config_error: str = ""
    delete_deadline: float | None = None
    deleted: bool = False
    ready: dict[str, bool] = field(default_factory=dict)  # readiness probe results per container
    probe_due: dict[str, float] = field(default_factory=dict)
    rendered: dict | None = None  # the status rendered last (its conditions' transition times carry over)
    last_status: dict | None = None  # the status last accepted by the API server
    start_time: str = ""
    lock: threading.Lock = field(default_factory=threading.Lock)
    # set once the pod is being deleted or forgotten: a start-up wait (a peer's DNS name) ends at once
    stopping: threading.Event = field(default_factory=threading.Event)

    @property
    def key(self) -> tuple[str, str]:
        return self.namespace, self.name

    def spec_of(self, name: str) -> dict:
        """The pod spec's container of that name."""
        return next(c for c in self.pod["spec"]["containers"] if c["name"] == name)

    def state(self) -> PodState:
        containers = {}
        for container in self.pod["spec"]["containers"]:
            c = self.containers[container["name"]]
            fallback = container.get("terminationMessagePolicy") == "FallbackToLogsOnError"
            containers[c.name] = c.state(fallback, self.ready.get(c.name, False))
        return PodState(ip=self.ip, start_time=self.start_time, containers=containers, config_error=self.config_error)


class IPAllocator:
    """127.<a>.<b>.<c> addresses from a counter kept on disk (never reused in a cluster's life, so a stale
    address of a deleted pod never points at a new one). 127.0.x.x is left to the host."""

    def __init__(self, state: Path):
        self.state = state
        self.lock = threading.Lock()

    def allocate(self) -> str:
        with self.lock:
            try:
                index = int(self.state.read_text())
            except (OSError, ValueError):
                index = 0
            self.state.write_text(str(index + 1))
        a, rest = 1 + index // (250 * 250), index % (250 * 250)
        return f"127.{a}.{rest // 250}.{rest % 250 + 2}"


def kill_leftovers(pod_folder: Path) -> None:
    """SIGKILL every container process group recorded under a pod folder (an orphan or a lost node's pod)."""
    for pid_file in pod_folder.glob("containers/*/child.pid"):
        entry = procs.read_pid_file(pid_file)
        if entry and procs.alive(*entry):
            try:
                os.killpg(entry[0], signal.SIGKILL)
            except ProcessLookupError:
                pass


def archive_pod_dir(folder: Path, uid: str) -> None:
    """A new pod with the same name: keep the old one's logs under .gone/ instead of mixing them."""
    if folder.exists():
        gone = folder.parent / ".gone"
        gone.mkdir(parents=True, exist_ok=True)
        target = gone / f"{folder.name}-{uid or int(time.time())}"
        if target.exists():
            shutil.rmtree(target, ignore_errors=True)
        folder.rename(target)


def _shim_env() -> dict:
    env = {k: v for k, v in os.environ.items() if k in ("PATH", "HOME", "LANG", "PYTHONPATH")}
    env["PYTHONUNBUFFERED"] = "1"
    return env


def read_json(path: Path) -> dict | None:
    """A JSON file the agent or a shim wrote; None when absent or torn."""
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def write_json(path: Path, data: dict) -> None:
    """Atomically: a reader (a restarted agent) sees the old file or the new one, never half of one."""
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(data))
    os.replace(tmp, path)


def _read_text(path: Path, limit: int) -> str:
    try:
        with open(path, "rb") as f:
            f.seek(0, os.SEEK_END)
            size = f.tell()
            f.seek(max(0, size - limit))
            return f.read().decode(errors="replace")
    except OSError:
        return ""


def _rfc(t: float | None) -> str | None:
    return None if t is None else now_rfc3339(t)
