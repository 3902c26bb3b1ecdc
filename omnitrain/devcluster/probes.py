"""Readiness probes (httpGet, tcpSocket, exec) of running containers, on a small thread pool.

`Prober.schedule` is called on every agent tick: the first probe is due initialDelaySeconds after the container
started, the next ones every periodSeconds. A probe's answer lands in `run.ready[container]`, which the status
rendering reads; a probe that fails to run at all counts as not ready.
"""

from __future__ import annotations

import socket
import subprocess
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor

from omnitrain.devcluster.runtime import PodRun, read_json


class Prober:
    def __init__(self, workers: int = 4) -> None:
        self.pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="probe")

    def schedule(self, run: PodRun, now: float) -> None:
        """Submit the probes that are due at monotonic time `now`."""
        for container in run.pod["spec"]["containers"]:
            probe = container.get("readinessProbe")
            c = run.containers[container["name"]]
            if not probe or not c.is_running():
                continue
            due = run.probe_due.get(c.name)
            if due is None:
                started = (c.started() or {}).get("startedAt", time.time())
                due = now + max(0.0, started + probe.get("initialDelaySeconds", 0) - time.time())
                run.probe_due[c.name] = due
            if now >= due:
                run.probe_due[c.name] = now + probe.get("periodSeconds", 10)
                self.pool.submit(self._probe, run, c.name, probe)

    @staticmethod
    def _probe(run: PodRun, name: str, probe: dict) -> None:
        try:
            ok = probe_once(run, name, probe)
        except Exception:
            ok = False
        run.ready[name] = ok


def probe_once(run: PodRun, name: str, probe: dict) -> bool:
    """One readiness check of container `name`; raises when the check cannot even be made."""
    timeout = probe.get("timeoutSeconds", 1)
    if "httpGet" in probe:
        get = probe["httpGet"]
        port = container_port(get["port"], run.spec_of(name))
        host = get.get("host") or run.ip
        url = f"{get.get('scheme', 'HTTP').lower()}://{host}:{port}{get.get('path', '/')}"
        with urllib.request.urlopen(url, timeout=timeout) as response:
            return 200 <= response.status < 400
    if "exec" in probe:
        spec = read_json(run.containers[name].spec_path) or {}
        return (
            subprocess.run(
                probe["exec"]["command"], env=spec.get("env"), capture_output=True, timeout=timeout
            ).returncode
            == 0
        )
    if "tcpSocket" in probe:
        port = container_port(probe["tcpSocket"]["port"], run.spec_of(name))
        with socket.create_connection((run.ip, port), timeout=timeout):
            return True
    return False


def container_port(port: int | str, container: dict) -> int:
    """A probe's port: a number, or the name of one of the container's ports."""
    if isinstance(port, int) or str(port).isdigit():
        return int(port)
    for p in container.get("ports") or []:
        if p.get("name") == port:
            return int(p["containerPort"])
    raise ValueError(f"named port {port!r} not declared")
