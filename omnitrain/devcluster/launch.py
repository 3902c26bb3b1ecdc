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

from omnitrain.contract import ENV_BIND_HOST, ENV_HOSTS_FILE, TERMINATION_LOG_ENV
from omnitrain.devcluster import podspec
from omnitrain.devcluster.agentapi import AgentApi
from omnitrain.devcluster.filevolumes import VolumeWriter, resource_version, write_atomically
from omnitrain.devcluster.runtime import PodRun

DNS_WAIT_S = 300
DNS_POLL_S = 0.5
DEFAULT_TERMINATION_PATH = "/dev/termination-log"
PASSTHROUGH_ENV = ("OMNITRAIN_CACHE", "TMPDIR")
TOKEN_REFRESH_FRACTION = 0.8  # the kubelet rotates a projected token once 80% of its lifetime has passed


def hosts_file(root: Path) -> Path:
    """The agent's /etc/hosts-style list of its pods' DNS names (contract.ENV_HOSTS_FILE)."""
    return root / "hosts"


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

    def __init__(self, root: Path, api: AgentApi, mount_ns: bool, api_server: tuple[str, str] | None = None) -> None:
        self.root = root
        self.api = api
        self.mount_ns = mount_ns
        self.venv_bin = str(Path(sys.executable).parent)
        self.volumes = VolumeWriter()
        # What every kubelet gives every container (KUBERNETES_SERVICE_HOST/PORT): here the API server's own
        # address, since there is no service proxy behind the `kubernetes` Service's cluster IP.
        self.api_server = api_server
        # Projected volumes with a token: (pod key, volume name) -> when to request a fresh token (monotonic).
        self.token_due: dict[tuple[tuple[str, str], str], float] = {}
        self._projected_lock = threading.Lock()

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
            # no DNS server here: pod names a process looks up at run time are in this file (PodSupervisor)
            ENV_HOSTS_FILE: str(hosts_file(self.root)),
        }
        base.update({k: os.environ[k] for k in PASSTHROUGH_ENV if k in os.environ})
        if self.api_server is not None:
            base["KUBERNETES_SERVICE_HOST"], base["KUBERNETES_SERVICE_PORT"] = self.api_server
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
            if "projected" in volume:
                self.write_projected(run, volume, path)
            elif "configMap" in volume or "secret" in volume:
                obj = (
                    self.api.get_configmap(run.namespace, volume["configMap"]["name"])
                    if "configMap" in volume
                    else self.api.get_secret(run.namespace, volume["secret"]["secretName"])
                )
                self.volumes.write(path, podspec.file_volume_contents(volume, obj), resource_version(obj))
        return paths

    def write_projected(self, run: PodRun, volume: dict, path: Path, now: float | None = None) -> None:
        """A projected volume's files, with fresh tokens of the pod's ServiceAccount bound to the pod (`now`: the
        monotonic time they are requested at)."""
        sources = podspec.token_sources(volume)
        account = run.pod["spec"].get("serviceAccountName") or "default"
        uid = run.pod["metadata"]["uid"]
        tokens = {
            t.path: self.api.request_token(
                run.namespace, account, run.name, uid, t.expiration_seconds, t.audience
            ).encode()
            for t in sources
        }
        ca = self.root / "pki" / "ca.crt"
        files = podspec.projected_contents(
            volume,
            lambda name: self.api.get_configmap(run.namespace, name),
            lambda name: self.api.get_secret(run.namespace, name),
            tokens,
            ca.read_bytes() if ca.exists() else None,
            lambda path: podspec.field_ref(run.pod, path, run.ip),
        )
        with self._projected_lock:
            write_atomically(path, files)
            if sources:
                lifetime = min(t.expiration_seconds for t in sources)
                start = time.monotonic() if now is None else now
                self.token_due[(run.key, volume["name"])] = start + TOKEN_REFRESH_FRACTION * lifetime

    def refresh_tokens(self, run: PodRun, now: float) -> None:
        """Rotate the pod's projected tokens that are due (called from the agent's tick); a failure is retried at
        the next tick, while the old token still has 20% of its life."""
        layout = podspec.VolumeLayout(self.root, run.dir, run.node)
        for volume in run.pod["spec"].get("volumes") or []:
            due = self.token_due.get((run.key, volume["name"]))
            if due is None or now < due:
                continue
            path = layout.host_path(volume)
            if path is not None:
                self.write_projected(run, volume, path, now)

    def forget_tokens(self, key: tuple[str, str]) -> None:
        with self._projected_lock:
            for entry in [e for e in self.token_due if e[0] == key]:
                del self.token_due[entry]

    def configmap_changed(self, run: PodRun, configmap: dict) -> list[str]:
        """A ConfigMap changed: rewrite the volumes of `run` that show it (as the kubelet does, atomically);
        returns the names of the volumes that changed on disk. A subPath mount keeps the file it was started
        with, as with the kubelet."""
        name = configmap["metadata"]["name"]
        if configmap["metadata"].get("namespace") != run.namespace:
            return []
        layout = podspec.VolumeLayout(self.root, run.dir, run.node)
        changed = []
        for volume in podspec.configmap_volumes(run.pod, name):
            path = layout.host_path(volume)
            try:
                files = podspec.file_volume_contents(volume, configmap)
            except podspec.PodConfigError:
                continue  # an `items` key the new version lacks: the kubelet keeps the last good files too
            if path is not None and self.volumes.write(path, files, resource_version(configmap)):
                changed.append(volume["name"])
        return changed

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
