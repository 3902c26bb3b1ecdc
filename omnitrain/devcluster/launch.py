"""What one container run is started with: the spec.json its shim reads (argv, env, workingDir, mounts).

The translation rules are podspec's (pure); this layer feeds them what they look up (ConfigMaps, Secrets, the IPs
behind cluster DNS names, waiting for a pod that has none yet), prepares the volume folders on disk, and adds
what the local machine needs: the repo's venv first on PATH, the termination-log file, and, where no private
mount namespace is allowed, mountPaths rewritten to the host folders.
"""

from __future__ import annotations

import functools
import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

from omnitrain.contract import ENV_BIND_HOST, TERMINATION_LOG_ENV
from omnitrain.devcluster import podspec
from omnitrain.devcluster.agentapi import AgentApi
from omnitrain.devcluster.runtime import PodRun

DNS_WAIT_S = 300
DNS_POLL_S = 0.5
DEFAULT_TERMINATION_PATH = "/dev/termination-log"
PASSTHROUGH_ENV = ("OMNITRAIN_CACHE", "TMPDIR")


class StartCancelled(Exception):
    """The pod was deleted while its start-up waited: nothing is launched, nothing to report."""


def mount_namespaces_work() -> bool:
    """Private mount namespaces need root (or CAP_SYS_ADMIN); OMNITRAIN_DEV_MOUNT_NS=0 forces the fallback."""
    if os.environ.get("OMNITRAIN_DEV_MOUNT_NS") == "0":
        return False
    try:
        return (
            subprocess.run(
                ["unshare", "--mount", "--propagation", "private", "true"], capture_output=True, timeout=10
            ).returncode
            == 0
        )
    except (OSError, subprocess.TimeoutExpired):
        return False


class Launcher:
    """Builds container specs for pods under `root` (the cluster folder)."""

    def __init__(self, root: Path, api: AgentApi, mount_ns: bool) -> None:
        self.root = root
        self.api = api
        self.mount_ns = mount_ns
        self.venv_bin = str(Path(sys.executable).parent)

    def container_spec(self, run: PodRun, container: dict) -> dict:
        """The shim's spec.json for `container` of `run`; raises PodConfigError when the pod cannot start as
        written. May wait (DNS_WAIT_S at most) for the pods its cluster DNS names point at to get an IP; raises
        StartCancelled as soon as `run.stopping` is set (the pod's deletion must not wait for a peer)."""
        pod = run.pod
        env = podspec.container_env(pod, container, run.ip, self.api.get_configmap, self.api.get_secret)
        argv = podspec.container_argv(container, env)
        resolve = functools.partial(self.resolve_pod_ip, stop=run.stopping)
        env = {k: podspec.rewrite_dns_names(v, resolve) for k, v in env.items()}
        argv = [podspec.rewrite_dns_names(a, resolve) for a in argv]
        mounts = podspec.container_mounts(container, self.prepare_volumes(run))
        cdir = run.containers[container["name"]].dir
        cdir.mkdir(parents=True, exist_ok=True)
        termination_file = cdir / "termination-log"
        termination_file.touch()
        term_path = container.get("terminationMessagePath") or DEFAULT_TERMINATION_PATH
        base = {
            "PATH": f"{self.venv_bin}:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
            "HOME": os.environ.get("HOME", "/root"),
            "LANG": os.environ.get("LANG", "C.UTF-8"),
            "HOSTNAME": pod["spec"].get("hostname") or run.name,
            "PYTHONUNBUFFERED": "1",
            TERMINATION_LOG_ENV: str(termination_file),
            # the pod shares this machine's network: servers that default to 0.0.0.0 listen on the pod's own IP
            ENV_BIND_HOST: run.ip,
        }
        base.update({k: os.environ[k] for k in PASSTHROUGH_ENV if k in os.environ})
        full_env = {**base, **env}
        working_dir = container.get("workingDir") or ""
        if self.mount_ns:
            mount_list = [m.as_dict() for m in mounts]
            mount_list.append({"source": str(termination_file), "target": term_path, "readOnly": False})
        else:
            # No private mount namespace: point the process at the host folders instead (see docs).
            mount_list = []
            full_env = {k: podspec.rewrite_paths(v, mounts) for k, v in full_env.items()}
            argv = [podspec.rewrite_paths(a, mounts) for a in argv]
            working_dir = podspec.rewrite_paths(working_dir, mounts)
            full_env["OMNITRAIN_PATH_MAP"] = json.dumps({m.target: m.source for m in mounts})
        for mount in mounts:
            source = Path(mount.source)
            source.parent.mkdir(parents=True, exist_ok=True)
            if not source.exists() and "." not in source.name:
                source.mkdir(parents=True, exist_ok=True)
        return {"argv": argv, "env": full_env, "workingDir": working_dir, "mounts": mount_list}

    def prepare_volumes(self, run: PodRun) -> dict[str, Path | None]:
        """Volume name -> host folder (created; configMap/secret files written), None for kinds with nothing local."""
        layout = podspec.VolumeLayout(self.root, run.dir, run.node)
        paths: dict[str, Path | None] = {}
        for volume in run.pod["spec"].get("volumes") or []:
            path = layout.host_path(volume)
            paths[volume["name"]] = path
            if path is None:
                continue
            path.mkdir(parents=True, exist_ok=True)
            if "configMap" in volume or "secret" in volume:
                obj = (
                    self.api.get_configmap(run.namespace, volume["configMap"]["name"])
                    if "configMap" in volume
                    else self.api.get_secret(run.namespace, volume["secret"]["secretName"])
                )
                for rel, data in podspec.file_volume_contents(volume, obj).items():
                    target = path / rel
                    target.parent.mkdir(parents=True, exist_ok=True)
                    target.write_bytes(data)
        return paths

    def resolve_pod_ip(self, hostname: str, subdomain: str, namespace: str, stop: threading.Event | None = None) -> str:
        """The IP of the pod a headless-Service DNS name means; waits (with a deadline) until it has one, or
        raises StartCancelled once `stop` is set."""
        stop = stop or threading.Event()
        deadline = time.monotonic() + DNS_WAIT_S
        while time.monotonic() < deadline:
            ip = podspec.dns_target_ip(self.api.namespace_pods(namespace), hostname, subdomain)
            if ip:
                return ip
            if stop.wait(DNS_POLL_S):  # polling for the other pod's IP; a deletion ends the wait at once
                raise StartCancelled(f"{hostname}.{subdomain}.{namespace}.svc: pod deleted while waiting")
        raise podspec.PodConfigError(
            f"{hostname}.{subdomain}.{namespace}.svc: no pod with that hostname/subdomain"
            f" got an IP within {DNS_WAIT_S} s"
        )
