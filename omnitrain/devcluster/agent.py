"""The local node agent: a kubelet stand-in that really runs pods as process groups on this machine.

`python -m omnitrain.devcluster.agent --root CLUSTER --kubeconfig FILE` (started detached by `omnitrain dev up`).
It manages every Node labelled omnitrain.dev/local=true (keeps its Ready condition and Lease fresh), watches all
pods and runs those bound to its nodes: one shim (omnitrain.devcluster.shim) per container run, state in
<root>/pods/<ns>/<name>/. Status is patched only when it changed. A restarted agent re-adopts running pods from
those folders. Deleting a managed Node kills its pods' processes (a lost machine). It also runs the provisioner of
the default StorageClass (omnitrain.devcluster.provisioner): the process that owns the folders owns the volumes.
"""

from __future__ import annotations

import argparse
import datetime
import json
import logging
import os
import queue
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from omnitrain.contract import TERMINATION_LOG_ENV
from omnitrain.devcluster import podspec, provisioner, runtime
from omnitrain.devcluster.nodes import KWOK_ANNOTATION, LOCAL_LABEL, ready_condition
from omnitrain.timestamps import now_rfc3339

log = logging.getLogger("omnitrain.devcluster.agent")

LEASE_SECONDS = 40
LEASE_RENEW_S = 10
NODE_STATUS_S = 30
DNS_WAIT_S = 300
TICK_S = 0.2
BACKOFF_MAX_S = 30.0
DEFAULT_TERMINATION_PATH = "/dev/termination-log"


@dataclass
class PodRun:
    namespace: str
    name: str
    uid: str
    node: str
    ip: str
    dir: Path
    pod: dict
    containers: dict[str, runtime.ContainerRun] = field(default_factory=dict)
    starting: bool = False
    config_error: str = ""
    delete_deadline: float | None = None
    deleted: bool = False
    ready: dict[str, bool] = field(default_factory=dict)          # readiness probe results per container
    probe_due: dict[str, float] = field(default_factory=dict)
    transitions: dict[str, str] = field(default_factory=dict)     # condition type -> lastTransitionTime
    last_status: dict | None = None
    start_time: str = ""
    lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def key(self) -> tuple[str, str]:
        return self.namespace, self.name


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


def rfc(t: float | None = None) -> str:
    return now_rfc3339(t)


class Agent:
    def __init__(self, root: Path, kubeconfig: Path):
        from kubernetes import client, config
        self.root = root
        self.kubeconfig = kubeconfig
        self._api_client = config.new_client_from_config(str(kubeconfig))
        self.core = client.CoreV1Api(self._api_client)
        self.coord = client.CoordinationV1Api(self._api_client)
        (root / "agent").mkdir(parents=True, exist_ok=True)
        self.ips = IPAllocator(root / "agent" / "next-ip")
        self.events: queue.Queue = queue.Queue()
        self.nodes: dict[str, str] = {}                  # managed node -> uid
        self.node_lock = threading.Lock()
        self.pods: dict[tuple[str, str], PodRun] = {}
        self.stop_event = threading.Event()
        self.probe_pool = ThreadPoolExecutor(max_workers=4, thread_name_prefix="probe")
        self.start_pool = ThreadPoolExecutor(max_workers=16, thread_name_prefix="start")
        self.mount_ns = self._mount_namespaces_work()
        self.venv_bin = str(Path(sys.executable).parent)
        self.provisioner = provisioner.Provisioner(self._api_client, root, self.stop_event)

    # -- entry -------------------------------------------------------------------------------------------------
    def run(self) -> None:
        log.info("agent starting (root %s, mount namespaces %s)", self.root, "on" if self.mount_ns else "off")
        for target, name in ((self._watch_nodes, "nodes"), (self._watch_pods, "pods"), (self._heartbeat, "beat"),
                             (self.provisioner.watch_claims, "pvc-watch"),
                             (self.provisioner.watch_volumes, "pv-watch"),
                             (self.provisioner.reconcile_loop, "provisioner")):
            threading.Thread(target=self._guard(target), name=name, daemon=True).start()
        while not self.stop_event.is_set():
            deadline = time.monotonic() + TICK_S
            while True:
                try:
                    kind, *payload = self.events.get(timeout=max(0.0, deadline - time.monotonic()))
                except queue.Empty:
                    break
                try:
                    getattr(self, f"_on_{kind}")(*payload)
                except Exception:
                    log.exception("handling %s event", kind)
            try:
                self._tick()
            except Exception:
                log.exception("tick")

    def _guard(self, fn):
        def loop():
            while not self.stop_event.is_set():
                try:
                    fn()
                except Exception:
                    log.exception("%s failed; retrying", fn.__name__)
                    self.stop_event.wait(1.0)
        return loop

    @staticmethod
    def _mount_namespaces_work() -> bool:
        """Private mount namespaces need root (or CAP_SYS_ADMIN); OMNITRAIN_DEV_MOUNT_NS=0 forces the fallback."""
        if os.environ.get("OMNITRAIN_DEV_MOUNT_NS") == "0":
            return False
        try:
            return subprocess.run(["unshare", "--mount", "--propagation", "private", "true"],
                                  capture_output=True, timeout=10).returncode == 0
        except (OSError, subprocess.TimeoutExpired):
            return False

    # -- watches (threads) -----------------------------------------------------------------------------------
    def _list_raw(self, fn, **kwargs) -> dict:
        response = fn(_preload_content=False, **kwargs)
        return json.loads(response.data)

    def _watch_nodes(self) -> None:
        from kubernetes import watch
        listing = self._list_raw(self.core.list_node, label_selector=f"{LOCAL_LABEL}=true")
        self.events.put(("node_sync", [n for n in listing["items"] if self._is_ours(n)]))
        rv = listing["metadata"]["resourceVersion"]
        for event in watch.Watch().stream(self.core.list_node, label_selector=f"{LOCAL_LABEL}=true",
                                          resource_version=rv, timeout_seconds=300, allow_watch_bookmarks=True):
            if self.stop_event.is_set():
                return
            if event["type"] == "ERROR":
                return  # re-list
            obj = event["raw_object"]
            if event["type"] in ("ADDED", "MODIFIED") and self._is_ours(obj):
                self.events.put(("node_added", obj))
            elif event["type"] == "DELETED":
                self.events.put(("node_deleted", obj["metadata"]["name"], obj["metadata"].get("uid")))

    @staticmethod
    def _is_ours(node: dict) -> bool:
        return (node["metadata"].get("annotations") or {}).get(KWOK_ANNOTATION) != "fake"

    def _watch_pods(self) -> None:
        from kubernetes import watch
        listing = self._list_raw(self.core.list_pod_for_all_namespaces)
        rv = listing["metadata"]["resourceVersion"]
        self.events.put(("pod_sync", listing["items"], rv))
        for event in watch.Watch().stream(self.core.list_pod_for_all_namespaces, resource_version=rv,
                                          timeout_seconds=300, allow_watch_bookmarks=True):
            if self.stop_event.is_set():
                return
            if event["type"] == "ERROR":
                return
            if event["type"] in ("ADDED", "MODIFIED", "DELETED"):
                self.events.put(("pod", event["type"], event["raw_object"]))

    def _heartbeat(self) -> None:
        last_status = 0.0
        while not self.stop_event.is_set():
            with self.node_lock:
                nodes = dict(self.nodes)
            status_due = time.monotonic() - last_status > NODE_STATUS_S
            for name, uid in nodes.items():
                try:
                    self._renew_lease(name, uid)
                    if status_due:
                        self._post_node_ready(name)
                except Exception as exc:
                    log.warning("heartbeat of %s failed: %s", name, exc)
            if status_due:
                last_status = time.monotonic()
            self.stop_event.wait(LEASE_RENEW_S)

    def _renew_lease(self, node: str, uid: str) -> None:
        from kubernetes.client.exceptions import ApiException
        # MicroTime: the client turns date-like strings into datetimes and back, dropping a zero fraction that
        # the API server then refuses; a datetime with a nonzero microsecond survives the round trip.
        stamp = datetime.datetime.now(datetime.timezone.utc)
        now = stamp.replace(microsecond=stamp.microsecond or 1)
        body = {"metadata": {"name": node, "namespace": "kube-node-lease",
                             "ownerReferences": [{"apiVersion": "v1", "kind": "Node", "name": node, "uid": uid}]},
                "spec": {"holderIdentity": node, "leaseDurationSeconds": LEASE_SECONDS, "renewTime": now}}
        try:
            self.coord.patch_namespaced_lease(node, "kube-node-lease", {"spec": body["spec"]})
        except ApiException as exc:
            if exc.status != 404:
                raise
            self.coord.create_namespaced_lease("kube-node-lease", body)

    def _post_node_ready(self, node: str) -> None:
        self.core.patch_node_status(node, {"status": {"conditions": [ready_condition(rfc())]}})

    # -- node events -----------------------------------------------------------------------------------------
    def _on_node_sync(self, nodes: list[dict]) -> None:
        names = {n["metadata"]["name"] for n in nodes}
        with self.node_lock:
            for gone in set(self.nodes) - names:
                self._lose_node(gone)
        for node in nodes:
            self._on_node_added(node)

    def _on_node_added(self, node: dict) -> None:
        name = node["metadata"]["name"]
        with self.node_lock:
            known = name in self.nodes
            self.nodes[name] = node["metadata"]["uid"]
        if not known:
            log.info("managing node %s", name)
            (self.root / "nodes" / name).mkdir(parents=True, exist_ok=True)
            self._post_node_ready(name)
            self._renew_lease(name, node["metadata"]["uid"])
            # pods bound before we managed the node (e.g. an explicit nodeName)
            for pod in self._list_raw(self.core.list_pod_for_all_namespaces,
                                      field_selector=f"spec.nodeName={name}")["items"]:
                self._on_pod("ADDED", pod)

    def _on_node_deleted(self, name: str, uid: str | None) -> None:
        with self.node_lock:
            if name in self.nodes:
                self._lose_node(name)

    def _lose_node(self, name: str) -> None:
        """A managed Node object vanished: the machine is lost, and so are the processes of its pods."""
        log.warning("node %s deleted: killing its pods' processes", name)
        self.nodes.pop(name, None)
        for key, run in list(self.pods.items()):
            if run.node == name:
                runtime.kill_leftovers(run.dir)
                del self.pods[key]

    # -- pod events ------------------------------------------------------------------------------------------
    def _on_pod_sync(self, pods: list[dict], list_rv: str) -> None:
        seen = set()
        for pod in pods:
            seen.add((pod["metadata"]["namespace"], pod["metadata"]["name"]))
            self._on_pod("ADDED", pod)
        for key, run in list(self.pods.items()):
            # Only what the listing should have shown: a pod admitted from a newer event is not gone.
            if key not in seen and _rv(run.pod) <= _rv_value(list_rv):
                self._forget(run, kill=True)
        self._kill_orphans(seen | set(self.pods))

    def _kill_orphans(self, live: set) -> None:
        """Pod folders with processes but no pod object (deleted while the agent was down)."""
        for pod_json in (self.root / "pods").glob("*/*/pod.json"):
            folder = pod_json.parent
            if (folder.parent.name, folder.name) not in live:
                runtime.kill_leftovers(folder)

    def _on_pod(self, kind: str, pod: dict) -> None:
        meta = pod["metadata"]
        key = (meta["namespace"], meta["name"])
        run = self.pods.get(key)
        if run is not None and run.uid != meta["uid"]:
            self._forget(run, kill=True)   # same name, new pod
            run = None
        if kind == "DELETED":
            if run is not None:
                self._forget(run, kill=True)
            return
        node = pod["spec"].get("nodeName")
        with self.node_lock:
            ours = node in self.nodes
        if not ours:
            return
        if run is None:
            finished = (pod.get("status") or {}).get("phase") in ("Succeeded", "Failed")
            saved = _read_json(runtime.pod_dir(self.root, *key) / "pod.json") or {}
            if finished and saved.get("uid") != meta["uid"]:
                # ended before this agent's time (its folder is gone): never run a finished pod again
                if meta.get("deletionTimestamp"):
                    self._delete_pod_object(key, meta["uid"])
                return
            run = self._admit(pod)
        run.pod = pod
        if meta.get("deletionTimestamp") and run.delete_deadline is None:
            grace = meta.get("deletionGracePeriodSeconds")
            if grace is None:
                grace = pod["spec"].get("terminationGracePeriodSeconds", 30)
            run.delete_deadline = time.monotonic() + float(grace)
            log.info("pod %s/%s deleted: SIGTERM, grace %s s", *key, grace)
            for container in run.containers.values():
                container.signal(signal.SIGTERM)

    def _admit(self, pod: dict) -> PodRun:
        meta = pod["metadata"]
        folder = runtime.pod_dir(self.root, meta["namespace"], meta["name"])
        saved = _read_json(folder / "pod.json")
        adopted = saved is not None and saved.get("uid") == meta["uid"]
        if saved is not None and not adopted:
            runtime.kill_leftovers(folder)
            runtime.archive_pod_dir(folder, saved.get("uid", ""))
        if adopted:
            ip, start_time = saved["ip"], saved.get("startTime", rfc())
        else:
            ip, start_time = self.ips.allocate(), rfc()
            folder.mkdir(parents=True, exist_ok=True)
            _write_json(folder / "pod.json", {"uid": meta["uid"], "ip": ip, "node": pod["spec"]["nodeName"],
                                             "startTime": start_time})
        run = PodRun(meta["namespace"], meta["name"], meta["uid"], pod["spec"]["nodeName"], ip, folder, pod,
                     start_time=start_time)
        for container in pod["spec"]["containers"]:
            cname = container["name"]
            cdir, clog = folder / "containers" / cname, folder / f"{cname}.log"
            run.containers[cname] = (runtime.ContainerRun.load(cname, cdir, clog) if adopted
                                     else runtime.ContainerRun(cname, cdir, clog))
        self.pods[run.key] = run
        if adopted and all(c.spec_path.exists() for c in run.containers.values()):
            log.info("re-adopted pod %s/%s (ip %s)", *run.key, ip)
        else:
            log.info("admitted pod %s/%s on %s (ip %s)", *run.key, run.node, ip)
            self._patch_status(run)    # the IP is visible before containers start (DNS waits on it)
            run.starting = True
            self.start_pool.submit(self._start_containers, run, [c["name"] for c in pod["spec"]["containers"]
                                                                 if not run.containers[c["name"]].spec_path.exists()])
        return run

    def _forget(self, run: PodRun, kill: bool) -> None:
        with run.lock:
            run.deleted = True
            if kill:
                runtime.kill_leftovers(run.dir)
        self.pods.pop(run.key, None)

    # -- starting containers (pool threads: DNS names may need to wait for other pods' IPs) ---------------------
    def _start_containers(self, run: PodRun, names: list[str]) -> None:
        try:
            if run.pod["spec"].get("initContainers"):
                raise podspec.PodConfigError("initContainers are not supported by the local node agent; "
                                             "run that step at the start of the main container's command")
            for name in names:
                container = next(c for c in run.pod["spec"]["containers"] if c["name"] == name)
                spec = self._container_spec(run, container)
                with run.lock:
                    if run.deleted or run.delete_deadline is not None:
                        return
                    run.containers[name].launch(spec)
        except podspec.PodConfigError as exc:
            log.warning("pod %s/%s cannot start: %s", *run.key, exc)
            run.config_error = str(exc)
        except Exception as exc:
            log.exception("starting pod %s/%s", *run.key)
            run.config_error = f"{type(exc).__name__}: {exc}"
        finally:
            run.starting = False

    def _container_spec(self, run: PodRun, container: dict) -> dict:
        pod = run.pod
        env = podspec.container_env(pod, container, run.ip, self._get_configmap, self._get_secret)
        argv = podspec.container_argv(container, env)
        resolve = lambda host, sub, ns: self._resolve_pod_ip(host, sub, ns)  # noqa: E731
        env = {k: podspec.rewrite_dns_names(v, resolve) for k, v in env.items()}
        argv = [podspec.rewrite_dns_names(a, resolve) for a in argv]
        volume_paths = self._prepare_volumes(run)
        mounts = podspec.container_mounts(container, volume_paths)
        cdir = run.containers[container["name"]].dir
        cdir.mkdir(parents=True, exist_ok=True)
        termination_file = cdir / "termination-log"
        termination_file.touch()
        term_path = container.get("terminationMessagePath") or DEFAULT_TERMINATION_PATH
        base = {"PATH": f"{self.venv_bin}:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
                "HOME": os.environ.get("HOME", "/root"), "LANG": os.environ.get("LANG", "C.UTF-8"),
                "HOSTNAME": pod["spec"].get("hostname") or run.name, "PYTHONUNBUFFERED": "1",
                TERMINATION_LOG_ENV: str(termination_file)}
        for passthrough in ("OMNITRAIN_CACHE", "TMPDIR"):
            if passthrough in os.environ:
                base[passthrough] = os.environ[passthrough]
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
            Path(mount.source).parent.mkdir(parents=True, exist_ok=True)
            if not Path(mount.source).exists() and "." not in Path(mount.source).name:
                Path(mount.source).mkdir(parents=True, exist_ok=True)
        return {"argv": argv, "env": full_env, "workingDir": working_dir, "mounts": mount_list}

    def _prepare_volumes(self, run: PodRun) -> dict[str, Path | None]:
        layout = podspec.VolumeLayout(self.root, run.dir, run.node)
        paths: dict[str, Path | None] = {}
        for volume in run.pod["spec"].get("volumes") or []:
            path = layout.host_path(volume)
            paths[volume["name"]] = path
            if path is None:
                continue
            path.mkdir(parents=True, exist_ok=True)
            if "configMap" in volume or "secret" in volume:
                obj = (self._get_configmap(run.namespace, volume["configMap"]["name"]) if "configMap" in volume
                       else self._get_secret(run.namespace, volume["secret"]["secretName"]))
                for rel, data in podspec.file_volume_contents(volume, obj).items():
                    target = path / rel
                    target.parent.mkdir(parents=True, exist_ok=True)
                    target.write_bytes(data)
        return paths

    def _get_configmap(self, namespace: str, name: str) -> dict | None:
        return self._get_raw(self.core.read_namespaced_config_map, name, namespace)

    def _get_secret(self, namespace: str, name: str) -> dict | None:
        return self._get_raw(self.core.read_namespaced_secret, name, namespace)

    def _get_raw(self, fn, name: str, namespace: str) -> dict | None:
        from kubernetes.client.exceptions import ApiException
        try:
            return json.loads(fn(name, namespace, _preload_content=False).data)
        except ApiException as exc:
            if exc.status == 404:
                return None
            raise

    def _resolve_pod_ip(self, hostname: str, subdomain: str, namespace: str) -> str:
        """The IP of the pod a headless-Service DNS name means; waits (with a deadline) until it has one."""
        deadline = time.monotonic() + DNS_WAIT_S
        while time.monotonic() < deadline:
            for pod in self._list_raw(self.core.list_namespaced_pod, namespace=namespace)["items"]:
                spec = pod["spec"]
                if spec.get("hostname") == hostname and spec.get("subdomain") == subdomain \
                        and not pod["metadata"].get("deletionTimestamp"):
                    ip = (pod.get("status") or {}).get("podIP")
                    if ip:
                        return ip
            time.sleep(0.5)  # polling for the other pod's IP, with a deadline
        raise podspec.PodConfigError(f"{hostname}.{subdomain}.{namespace}.svc: no pod with that hostname/subdomain"
                                     f" got an IP within {DNS_WAIT_S} s")

    # -- periodic work ---------------------------------------------------------------------------------------
    def _tick(self) -> None:
        now = time.monotonic()
        for run in list(self.pods.values()):
            if run.deleted:
                continue
            if run.delete_deadline is None and run.last_status is not None \
                    and run.last_status["phase"] in ("Succeeded", "Failed"):
                continue   # finished for good: nothing on disk can change any more
            if run.delete_deadline is not None:
                self._progress_deletion(run, now)
                continue
            self._restart_if_due(run, now)
            self._schedule_probes(run, now)
            self._patch_status(run)

    def _progress_deletion(self, run: PodRun, now: float) -> None:
        running = [c for c in run.containers.values() if c.is_running() and c.child() is not None
                   and _child_alive(c)]
        if running and now > run.delete_deadline:
            for c in running:
                if signal.SIGKILL not in c.kill_sent:
                    log.info("pod %s/%s: grace period over, SIGKILL %s", *run.key, c.name)
                    c.signal(signal.SIGKILL)
            return
        if running or run.starting:
            for c in running:
                if signal.SIGTERM not in c.kill_sent:
                    c.signal(signal.SIGTERM)
            return
        self._patch_status(run)
        self._delete_pod_object(run.key, run.uid)
        self._forget(run, kill=True)

    def _delete_pod_object(self, key: tuple[str, str], uid: str) -> None:
        """What the kubelet does once the containers are gone: delete with grace 0, only this incarnation."""
        from kubernetes import client
        from kubernetes.client.exceptions import ApiException
        try:
            self.core.delete_namespaced_pod(key[1], key[0], body=client.V1DeleteOptions(
                grace_period_seconds=0, preconditions=client.V1Preconditions(uid=uid)))
        except ApiException as exc:
            if exc.status not in (404, 409):
                raise

    def _restart_if_due(self, run: PodRun, now: float) -> None:
        policy = run.pod["spec"].get("restartPolicy", "Always")
        for c in run.containers.values():
            info = c.exit()
            if info is None or policy == "Never" or (policy == "OnFailure" and info["exitCode"] == 0):
                continue
            if c.next_start_at is None:
                c.next_start_at = now + min(BACKOFF_MAX_S, 1.0 * 2 ** c.restart_count)
                continue
            if now >= c.next_start_at and not run.starting:
                c.archive_exit()
                c.next_start_at = None
                log.info("pod %s/%s: restarting %s (restart %d)", *run.key, c.name, c.restart_count)
                container = next(x for x in run.pod["spec"]["containers"] if x["name"] == c.name)
                try:
                    c.launch(self._container_spec(run, container))
                except podspec.PodConfigError as exc:
                    run.config_error = str(exc)

    # -- readiness probes --------------------------------------------------------------------------------------
    def _schedule_probes(self, run: PodRun, now: float) -> None:
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
                self.probe_pool.submit(self._probe, run, c.name, probe)

    def _probe(self, run: PodRun, name: str, probe: dict) -> None:
        timeout = probe.get("timeoutSeconds", 1)
        ok = False
        try:
            if "httpGet" in probe:
                get = probe["httpGet"]
                port = _port(get["port"], next(c for c in run.pod["spec"]["containers"] if c["name"] == name))
                host = get.get("host") or run.ip
                url = f"{get.get('scheme', 'HTTP').lower()}://{host}:{port}{get.get('path', '/')}"
                with urllib.request.urlopen(url, timeout=timeout) as response:
                    ok = 200 <= response.status < 400
            elif "exec" in probe:
                spec = _read_json(run.containers[name].spec_path) or {}
                ok = subprocess.run(probe["exec"]["command"], env=spec.get("env"), capture_output=True,
                                    timeout=timeout).returncode == 0
            elif "tcpSocket" in probe:
                import socket
                port = _port(probe["tcpSocket"]["port"],
                             next(c for c in run.pod["spec"]["containers"] if c["name"] == name))
                with socket.create_connection((run.ip, port), timeout=timeout):
                    ok = True
        except Exception:
            ok = False
        run.ready[name] = ok

    # -- status ----------------------------------------------------------------------------------------------
    def _patch_status(self, run: PodRun) -> None:
        status = self.pod_status(run)
        if status == run.last_status:
            return
        from kubernetes.client.exceptions import ApiException
        try:
            self.core.patch_namespaced_pod_status(run.name, run.namespace, {"status": status})
            run.last_status = status
        except ApiException as exc:
            if exc.status != 404:
                log.warning("status of %s/%s: %s %s", *run.key, exc.reason, (exc.body or "")[:600])

    def pod_status(self, run: PodRun) -> dict:
        pod = run.pod
        policy = pod["spec"].get("restartPolicy", "Always")
        statuses, phases = [], []
        for container in pod["spec"]["containers"]:
            c = run.containers[container["name"]]
            fallback = container.get("terminationMessagePolicy") == "FallbackToLogsOnError"
            terminated = c.terminated_state(fallback)
            running = terminated is None and c.started() is not None
            probe = container.get("readinessProbe")
            ready = running and (not probe or run.ready.get(c.name, False))
            if terminated is not None:
                will_restart = policy == "Always" or (policy == "OnFailure" and terminated["exitCode"] != 0)
                state = {"terminated": terminated}
                phases.append("restarting" if will_restart else
                              ("succeeded" if terminated["exitCode"] == 0 else "failed"))
            elif running:
                state = {"running": {"startedAt": rfc(c.started()["startedAt"])}}
                phases.append("running")
            else:
                reason = "CreateContainerConfigError" if run.config_error else (c.waiting_reason or
                                                                                "ContainerCreating")
                state = {"waiting": {"reason": reason, **({"message": run.config_error} if run.config_error
                                                            else {})}}
                phases.append("waiting")
            entry = {"name": c.name, "image": container.get("image", ""), "imageID": "", "ready": ready,
                     "restartCount": c.restart_count, "started": running, "state": state}
            if running or terminated:
                entry["containerID"] = c.container_id
            if c.last_terminated:
                entry["lastState"] = {"terminated": c.last_terminated}
            statuses.append(entry)
        if phases and all(p in ("succeeded", "failed") for p in phases):
            phase = "Failed" if "failed" in phases else "Succeeded"
        elif any(p in ("running", "restarting") for p in phases):
            phase = "Running"
        else:
            phase = "Pending"
        all_ready = phase == "Running" and all(s["ready"] for s in statuses)
        conditions = []
        for ctype, value in (("PodReadyToStartContainers", True), ("Initialized", True),
                             ("Ready", all_ready), ("ContainersReady", all_ready), ("PodScheduled", True)):
            text = "True" if value else "False"
            previous = run.transitions.get(ctype)
            if previous is None or previous[0] != text:
                run.transitions[ctype] = (text, rfc())
            conditions.append({"type": ctype, "status": text, "lastTransitionTime": run.transitions[ctype][1]})
        return {"phase": phase, "conditions": conditions, "hostIP": "127.0.0.1",
                "hostIPs": [{"ip": "127.0.0.1"}], "podIP": run.ip, "podIPs": [{"ip": run.ip}],
                "startTime": run.start_time, "containerStatuses": statuses}


def _rv_value(rv: str | None) -> int:
    """resourceVersions are opaque to clients in general; from one etcd they are its revision numbers."""
    try:
        return int(rv or 0)
    except ValueError:
        return 0


def _rv(pod: dict) -> int:
    return _rv_value(pod["metadata"].get("resourceVersion"))


def _child_alive(c: runtime.ContainerRun) -> bool:
    from omnitrain.devcluster import procs
    child = c.child()
    return child is not None and procs.alive(*child)


def _port(port, container: dict) -> int:
    if isinstance(port, int) or str(port).isdigit():
        return int(port)
    for p in container.get("ports") or []:
        if p.get("name") == port:
            return int(p["containerPort"])
    raise ValueError(f"named port {port!r} not declared")


def _read_json(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def _write_json(path: Path, data: dict) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(data))
    os.replace(tmp, path)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="omnitrain-dev-agent")
    parser.add_argument("--root", type=Path, required=True)
    parser.add_argument("--kubeconfig", type=Path, required=True)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(threadName)s %(message)s")
    logging.getLogger("urllib3").setLevel(logging.ERROR)
    agent = Agent(args.root, args.kubeconfig)
    signal.signal(signal.SIGTERM, lambda *_: agent.stop_event.set())
    agent.run()
    log.info("agent stopped (pods keep running under their shims; a new agent re-adopts them)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
