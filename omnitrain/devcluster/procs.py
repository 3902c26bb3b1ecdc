"""Detached processes with pid files: start, liveness (guarded against pid reuse), stop with a grace period."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path


def proc_start_time(pid: int) -> int | None:
    """Kernel start time of a process (clock ticks since boot); None when it does not exist or is a zombie."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat[stat.rindex(")") + 2 :].split()
    if fields[0] == "Z":
        return None
    return int(fields[19])


def alive(pid: int, start_time: int | None = None) -> bool:
    """True while the process runs; with start_time, only if it is still the same process (pids get reused)."""
    now = proc_start_time(pid)
    return now is not None and (start_time is None or now == start_time)


def spawn_detached(
    argv: list[str], log_path: Path, pid_path: Path, env: dict | None = None, cwd: Path | None = None
) -> int:
    """Starts argv in its own session, output to log_path, pid + start time to pid_path.

    Double fork through sh: the process is reparented at once, so whoever reaps orphans reaps it and a long-lived
    caller (the agent, a pytest session) does not collect zombies that would look alive to pid checks."""
    log_path.parent.mkdir(parents=True, exist_ok=True)
    launcher = 'setsid "$@" >>"$OMNITRAIN_SPAWN_LOG" 2>&1 </dev/null & echo $!'
    run_env = dict(env if env is not None else os.environ)
    run_env["OMNITRAIN_SPAWN_LOG"] = str(log_path)
    out = subprocess.run(
        ["sh", "-c", launcher, "sh", *argv], capture_output=True, text=True, env=run_env, cwd=cwd, check=True
    )
    pid = int(out.stdout.strip())
    write_pid_file(pid_path, pid)
    return pid


def write_pid_file(pid_path: Path, pid: int) -> None:
    tmp = pid_path.with_suffix(".tmp")
    tmp.write_text(json.dumps({"pid": pid, "start_time": proc_start_time(pid)}))
    os.replace(tmp, pid_path)


def read_pid_file(pid_path: Path) -> tuple[int, int | None] | None:
    try:
        data = json.loads(pid_path.read_text())
    except (OSError, ValueError):
        return None
    return int(data["pid"]), data.get("start_time")


def running(pid_path: Path) -> bool:
    entry = read_pid_file(pid_path)
    return entry is not None and alive(*entry)


def stop(pid_path: Path, grace_s: float = 15.0, group: bool = True) -> bool:
    """SIGTERM (the process group by default), poll until gone, SIGKILL after grace_s. True if something ran."""
    entry = read_pid_file(pid_path)
    if entry is None or not alive(*entry):
        pid_path.unlink(missing_ok=True)
        return False
    pid, start = entry
    _signal(pid, signal.SIGTERM, group)
    deadline = time.monotonic() + grace_s
    while alive(pid, start) and time.monotonic() < deadline:
        time.sleep(0.05)  # polling for exit with a deadline
    if alive(pid, start):
        _signal(pid, signal.SIGKILL, group)
        deadline = time.monotonic() + 10
        while alive(pid, start) and time.monotonic() < deadline:
            time.sleep(0.05)
    pid_path.unlink(missing_ok=True)
    return True


def _signal(pid: int, sig: int, group: bool) -> None:
    try:
        if group:
            os.killpg(pid, sig)
        else:
            os.kill(pid, sig)
    except ProcessLookupError:
        pass


def find_pid_by_env(values: dict[str, str], names: tuple[str, ...] = ()) -> int | None:
    """A local process whose environment has all `values` and defines all `names`: how fault injection finds one
    rank of one attempt among the pods the node agent runs (None when there is none, yet)."""
    want = {f"{k}={v}".encode() for k, v in values.items()}
    for environ in Path("/proc").glob("[0-9]*/environ"):
        try:
            entries = set(environ.read_bytes().split(b"\0"))
        except OSError:
            continue
        if want <= entries and all(any(e.startswith(n.encode() + b"=") for e in entries) for n in names):
            return int(environ.parent.name)
    return None


def end_child(proc: subprocess.Popen, grace_s: float = 20.0) -> int:
    """SIGTERM a child we started, SIGKILL it after `grace_s`; its exit code (reaped either way)."""
    if proc.poll() is None:
        proc.terminate()
        try:
            return proc.wait(timeout=grace_s)
        except subprocess.TimeoutExpired:
            proc.kill()
    return proc.wait()
