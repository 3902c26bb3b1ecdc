"""Supervisor of one container run: `python -m omnitrain.devcluster.shim CONTAINER_DIR`.

The agent starts it detached (own session), so it outlives an agent restart. It reads CONTAINER_DIR/spec.json,
starts the command as its own process group (through a private mount namespace when the spec has mounts), records
the child's pid in child.pid, waits, and writes exit.json (exit code, finish time) atomically. The agent only reads
these files, which is what lets a restarted agent re-adopt running containers instead of starting them twice.

`--exec CONTAINER_DIR` is the second stage inside the new mount namespace: bind the volumes, then exec the command.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from omnitrain.devcluster import procs
from omnitrain.devcluster.runtime import write_json


def exec_in_namespace(container_dir: Path) -> int:
    """Binds the volumes, then becomes the container's command; returns (127) only when that cannot start."""
    spec = json.loads((container_dir / "spec.json").read_text())
    for mount in spec["mounts"]:
        source, target = mount["source"], mount["target"]
        if os.path.isdir(source):
            os.makedirs(target, exist_ok=True)
        else:
            os.makedirs(os.path.dirname(target), exist_ok=True)
            if not os.path.exists(target):
                open(target, "a").close()
        subprocess.run(["mount", "--bind", source, target], check=True)
        if mount.get("readOnly"):
            subprocess.run(["mount", "-o", "remount,bind,ro", target], check=True)
    return _exec(spec)


def _exec(spec: dict) -> int:
    if spec.get("workingDir"):
        os.makedirs(spec["workingDir"], exist_ok=True)
        os.chdir(spec["workingDir"])
    try:
        os.execvpe(spec["argv"][0], spec["argv"], spec["env"])
    except OSError as exc:
        print(f"[shim] cannot start {spec['argv'][0]!r}: {exc}", file=sys.stderr, flush=True)
        return 127  # what a shell reports for a command it cannot run


def supervise(container_dir: Path) -> int:
    spec = json.loads((container_dir / "spec.json").read_text())
    # The agent signals the child's process group, never this process; a stray SIGTERM must not lose the exit code.
    signal.signal(signal.SIGTERM, lambda *_: None)
    signal.signal(signal.SIGINT, lambda *_: None)
    if spec["mounts"]:
        argv = [
            "unshare",
            "--mount",
            "--propagation",
            "private",
            "--",
            sys.executable,
            "-m",
            "omnitrain.devcluster.shim",
            "--exec",
            str(container_dir),
        ]
        env = dict(os.environ)
    else:
        argv, env = spec["argv"], spec["env"]
    cwd = None
    if not spec["mounts"] and spec.get("workingDir"):
        cwd = spec["workingDir"]
        os.makedirs(cwd, exist_ok=True)
    started_at = time.time()
    try:
        child = subprocess.Popen(argv, env=env, process_group=0, cwd=cwd)
    except OSError as exc:
        print(f"[shim] cannot start {argv[0]!r}: {exc}", file=sys.stderr, flush=True)
        write_json(
            container_dir / "exit.json",
            {
                "exitCode": 128,
                "reason": "StartError",
                "message": str(exc),
                "startedAt": started_at,
                "finishedAt": time.time(),
            },
        )
        return 0
    procs.write_pid_file(container_dir / "child.pid", child.pid)
    write_json(container_dir / "started.json", {"startedAt": started_at, "pid": child.pid})
    while True:
        try:
            code = child.wait()
            break
        except InterruptedError:
            continue
    exit_code = code if code >= 0 else 128 - code
    # A container ends with everything in it: reap what the main process left behind in its group.
    try:
        os.killpg(child.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
    write_json(
        container_dir / "exit.json",
        {
            "exitCode": exit_code,
            "signal": -code if code < 0 else None,
            "startedAt": started_at,
            "finishedAt": time.time(),
        },
    )
    return 0


def main(argv: list[str]) -> int:
    if argv and argv[0] == "--exec":
        return exec_in_namespace(Path(argv[1]))
    return supervise(Path(argv[0]))


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
