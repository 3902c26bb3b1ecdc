"""The pods bound to the agent's nodes: admitting (or re-adopting) them, starting their containers, restarts with
back-off, deletion with a grace period, and patching their status when it changed.

State lives in <root>/pods/<ns>/<name>/ (pod.json: uid, IP, node, start time; one folder per container that its
shim writes), so a restarted agent re-adopts running pods instead of starting them twice. Called from the agent's
event loop only; container starts run on a pool (DNS names may wait for other pods' IPs) under the pod's lock.
"""

from __future__ import annotations

import logging
import os
import signal
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from omnitrain.devcluster import podspec, procs, runtime
from omnitrain.devcluster.agentapi import AgentApi
from omnitrain.devcluster.launch import Launcher, StartCancelled, hosts_file
from omnitrain.devcluster.podstatus import pod_status, will_restart
from omnitrain.devcluster.probes import Prober
from omnitrain.devcluster.runtime import PodRun, read_json, write_json
from omnitrain.devcluster.watch import Change
from omnitrain.timestamps import now_rfc3339

log = logging.getLogger(__name__)

BACKOFF_MAX_S = 30.0
# Emulate a real kubelet's late refresh of mounted ConfigMaps (its sync period, up to ~1 min plus its cache): a
# change reaches the pods' configMap volumes this many seconds after the agent sees it. 0 (the default): at once.
# The file <root>/agent/configmap-sync-seconds, when present, overrides the env (a test sets it without a restart).
ENV_CONFIGMAP_SYNC = "OMNITRAIN_DEV_CONFIGMAP_SYNC_SECONDS"
CONFIGMAP_SYNC_FILE = "configmap-sync-seconds"
FINISHED = ("Succeeded", "Failed")


def deletion_step(running: bool, starting: bool, past_grace: bool) -> str:
    """What a pod being deleted needs next: "kill" (SIGKILL what still runs), "term" (SIGTERM what runs and wait
    for it or for a start-up in flight) or "delete" (remove the Pod object and its processes).

    Past the grace period a start-up in flight is not waited for either: it may wait for a peer's DNS name for
    minutes (launch.DNS_WAIT_S), and the start thread checks the deletion under the pod's lock before launching."""
    if running:
        return "kill" if past_grace else "term"
    if starting and not past_grace:
        return "term"
    return "delete"


def restart_delay(restart_count: int) -> float:
    """Back-off before restart number restart_count + 1: 1 s doubling to BACKOFF_MAX_S (the kubelet: 10 s..5 min)."""
    return min(BACKOFF_MAX_S, 1.0 * 2**restart_count)


class PodSupervisor:
    """Every pod this agent runs, by (namespace, name)."""

    def __init__(
        self,
        root: Path,
        api: AgentApi,
        launcher: Launcher,
        manages: Callable[[str | None], bool],
        start_workers: int = 16,
    ) -> None:
        self.root = root
        self.api = api
        self.launcher = launcher
        self.manages = manages  # is this node one of the agent's?
        self.pods: dict[tuple[str, str], PodRun] = {}
        self.ips = runtime.IPAllocator(root / "agent" / "next-ip")
        self.prober = Prober()
        self.start_pool = ThreadPoolExecutor(max_workers=start_workers, thread_name_prefix="start")
        self.configmaps_due: list[tuple[float, dict]] = []  # (when, ConfigMap): delayed volume updates, in order

    # -- what the API says ---------------------------------------------------------------------------------
    def listed(self, pods: list[dict], list_rv: str) -> None:
        """A full listing: run what is ours, forget what vanished, kill processes of pods that no longer exist."""
        seen = set()
        for pod in pods:
            seen.add((pod["metadata"]["namespace"], pod["metadata"]["name"]))
            self.changed(Change.ADDED, pod)
        for key, run in list(self.pods.items()):
            # Only what the listing should have shown: a pod admitted from a newer event is not gone.
            if key not in seen and _rv(run.pod) <= _rv_value(list_rv):
                self.forget(run, kill=True)
        self._kill_orphans(seen | set(self.pods))

    def changed(self, change: Change, pod: dict) -> None:
        meta = pod["metadata"]
        key = (meta["namespace"], meta["name"])
        run = self.pods.get(key)
        if run is not None and run.uid != meta["uid"]:
            self.forget(run, kill=True)  # same name, new pod
            run = None
        if change is Change.DELETED:
            if run is not None:
                self.forget(run, kill=True)
            return
        if not self.manages(pod["spec"].get("nodeName")):
            return
        if run is None:
            finished = (pod.get("status") or {}).get("phase") in FINISHED
            saved = read_json(runtime.pod_dir(self.root, *key) / "pod.json") or {}
            if finished and saved.get("uid") != meta["uid"]:
                # ended before this agent's time (its folder is gone): never run a finished pod again
                if meta.get("deletionTimestamp"):
                    self.api.delete_pod(key, meta["uid"])
                return
            run = self._admit(pod)
        run.pod = pod
        if meta.get("deletionTimestamp") and run.delete_deadline is None:
            grace = meta.get("deletionGracePeriodSeconds")
            if grace is None:
                grace = pod["spec"].get("terminationGracePeriodSeconds", 30)
            run.delete_deadline = time.monotonic() + float(grace)
            run.stopping.set()  # a start-up waiting for a peer's DNS name gives up now
            log.info("pod %s/%s deleted: SIGTERM, grace %s s", *key, grace)
            for container in run.containers.values():
                container.signal(signal.SIGTERM)

    def configmap_sync_seconds(self) -> float:
        """The emulated kubelet sync delay for mounted ConfigMaps (ENV_CONFIGMAP_SYNC, CONFIGMAP_SYNC_FILE)."""
        override = self.root / "agent" / CONFIGMAP_SYNC_FILE
        try:
            text = override.read_text().strip() if override.exists() else os.environ.get(ENV_CONFIGMAP_SYNC, "")
            return max(0.0, float(text or 0))
        except (OSError, ValueError):
            log.warning("%s or %s is not a number of seconds: no sync delay", ENV_CONFIGMAP_SYNC, override)
            return 0.0

    def configmaps_changed(self, configmaps: list[dict], now: float | None = None) -> None:
        """ConfigMaps created or updated: the volumes of running pods that show them follow (the kubelet's
        configMap volumes do; a supervisor reads the gang announcement this way), at once or, with a sync
        delay set, from the tick once it has passed."""
        delay = self.configmap_sync_seconds()
        if delay > 0:
            due = (time.monotonic() if now is None else now) + delay
            self.configmaps_due.extend((due, c) for c in configmaps)
            return
        self._update_configmap_volumes(configmaps)

    def _update_configmap_volumes(self, configmaps: list[dict]) -> None:
        """Finished or deleted pods are left as they are."""
        for run in list(self.pods.values()):
            if run.deleted or run.delete_deadline is not None or _finished(run):
                continue
            for configmap in configmaps:
                for volume in self.launcher.configmap_changed(run, configmap):
                    log.info(
                        "pod %s/%s: volume %s updated to ConfigMap %s version %s",
                        *run.key,
                        volume,
                        configmap["metadata"]["name"],
                        configmap["metadata"].get("resourceVersion"),
                    )

    def node_lost(self, node: str) -> None:
        """A managed Node object vanished: the machine is lost, and so are the processes of its pods."""
        for key, run in list(self.pods.items()):
            if run.node == node:
                runtime.kill_leftovers(run.dir)
                del self.pods[key]
        self.write_hosts()

    def forget(self, run: PodRun, kill: bool) -> None:
        run.stopping.set()
        with run.lock:
            run.deleted = True
            if kill:
                runtime.kill_leftovers(run.dir)
        self.launcher.volumes.forget(run.dir)
        self.launcher.forget_tokens(run.key)
        self.pods.pop(run.key, None)
        self.write_hosts()

    def write_hosts(self) -> None:
        """The DNS names of the pods this agent runs (hosts_file): rewritten, atomically, when a pod is admitted or
        forgotten, so a supervisor that looks up a new rank 0 finds it as soon as that pod has its IP."""
        lines = podspec.hosts_lines([(run.pod, run.ip) for run in list(self.pods.values()) if not run.deleted])
        path = hosts_file(self.root)
        tmp = path.with_name(f".{path.name}.{threading.get_ident()}.tmp")  # writers on several threads
        tmp.write_text("".join(f"{line}\n" for line in lines))
        os.replace(tmp, path)

    def _kill_orphans(self, live: set[tuple[str, str]]) -> None:
        """Pod folders with processes but no pod object (deleted while the agent was down)."""
        for pod_json in (self.root / "pods").glob("*/*/pod.json"):
            folder = pod_json.parent
            if (folder.parent.name, folder.name) not in live:
                runtime.kill_leftovers(folder)

    # -- admission -----------------------------------------------------------------------------------------
    def _admit(self, pod: dict) -> PodRun:
        meta = pod["metadata"]
        folder = runtime.pod_dir(self.root, meta["namespace"], meta["name"])
        saved = read_json(folder / "pod.json")
        adopted = saved is not None and saved.get("uid") == meta["uid"]
        if saved is not None and not adopted:
            runtime.kill_leftovers(folder)
            runtime.archive_pod_dir(folder, saved.get("uid", ""))
        if saved is not None and adopted:
            ip, start_time = saved["ip"], saved.get("startTime", now_rfc3339())
        else:
            ip, start_time = self.ips.allocate(), now_rfc3339()
            folder.mkdir(parents=True, exist_ok=True)
            write_json(
                folder / "pod.json",
                {"uid": meta["uid"], "ip": ip, "node": pod["spec"]["nodeName"], "startTime": start_time},
            )
        run = PodRun(
            meta["namespace"],
            meta["name"],
            meta["uid"],
            pod["spec"]["nodeName"],
            ip,
            folder,
            pod,
            start_time=start_time,
        )
        for container in pod["spec"]["containers"]:
            cname = container["name"]
            cdir = runtime.container_dir(self.root, run.namespace, run.name, cname)
            clog = runtime.container_log(self.root, run.namespace, run.name, cname)
            run.containers[cname] = (
                runtime.ContainerRun.load(cname, cdir, clog) if adopted else runtime.ContainerRun(cname, cdir, clog)
            )
        self.pods[run.key] = run
        self.write_hosts()
        if adopted and all(c.spec_path.exists() for c in run.containers.values()):
            log.info("re-adopted pod %s/%s (ip %s)", *run.key, ip)
        else:
            log.info("admitted pod %s/%s on %s (ip %s)", *run.key, run.node, ip)
            self.patch_status(run)  # the IP is visible before containers start (DNS waits on it)
            run.starting = True
            self.start_pool.submit(
                self._start_containers, run, [name for name, c in run.containers.items() if not c.spec_path.exists()]
            )
        return run

    def _start_containers(self, run: PodRun, names: list[str]) -> None:
        """On the start pool: build each container's spec (may wait for DNS) and launch its shim (a first start or
        a restart). A deletion in the meantime cancels the wait and nothing is launched."""
        try:
            if run.pod["spec"].get("initContainers"):
                raise podspec.PodConfigError(
                    "initContainers are not supported by the local node agent; "
                    "run that step at the start of the main container's command"
                )
            for name in names:
                spec = self.launcher.container_spec(run, run.spec_of(name))
                with run.lock:
                    if run.deleted or run.delete_deadline is not None:
                        return
                    run.containers[name].launch(spec)
        except StartCancelled as exc:
            log.info("pod %s/%s: start-up cancelled (%s)", *run.key, exc)
        except podspec.PodConfigError as exc:
            log.warning("pod %s/%s cannot start: %s", *run.key, exc)
            run.config_error = str(exc)
        except Exception as exc:
            log.exception("starting pod %s/%s", *run.key)
            run.config_error = f"{type(exc).__name__}: {exc}"
        finally:
            run.starting = False

    # -- periodic work -------------------------------------------------------------------------------------
    def tick(self, now: float) -> None:
        """At monotonic time `now`: delayed ConfigMap volume updates, deletions, restarts, probes, token
        rotation, status."""
        if self.configmaps_due and self.configmaps_due[0][0] <= now:
            ready = [c for due, c in self.configmaps_due if due <= now]
            self.configmaps_due = [(due, c) for due, c in self.configmaps_due if due > now]
            self._update_configmap_volumes(ready)
        for run in list(self.pods.values()):
            if run.deleted:
                continue
            if run.delete_deadline is None and _finished(run):
                continue  # finished for good: nothing on disk can change any more
            if run.delete_deadline is not None:
                self._progress_deletion(run, now, run.delete_deadline)
                continue
            self._restart_if_due(run, now)
            self._refresh_tokens(run, now)
            self.prober.schedule(run, now)
            self.patch_status(run)

    def _refresh_tokens(self, run: PodRun, now: float) -> None:
        try:
            self.launcher.refresh_tokens(run, now)
        except Exception as exc:  # the API server busy or down: the next tick tries again, the old token still works
            log.warning("pod %s/%s: rotating its projected token: %s", *run.key, exc)

    def _progress_deletion(self, run: PodRun, now: float, deadline: float) -> None:
        """SIGTERM what runs, SIGKILL it past the grace period's `deadline`; once nothing runs, delete the pod."""
        running = [c for c in run.containers.values() if c.is_running() and _child_alive(c)]
        step = deletion_step(bool(running), run.starting, past_grace=now > deadline)
        if step == "kill":
            for c in running:
                if signal.SIGKILL not in c.kill_sent:
                    log.info("pod %s/%s: grace period over, SIGKILL %s", *run.key, c.name)
                    c.signal(signal.SIGKILL)
            return
        if step == "term":
            for c in running:
                if signal.SIGTERM not in c.kill_sent:
                    c.signal(signal.SIGTERM)
            return
        self.patch_status(run)
        self.api.delete_pod(run.key, run.uid)
        self.forget(run, kill=True)

    def _restart_if_due(self, run: PodRun, now: float) -> None:
        policy = run.pod["spec"].get("restartPolicy", "Always")
        for c in run.containers.values():
            info = c.exit()
            if info is None or not will_restart(policy, info["exitCode"]):
                continue
            if c.next_start_at is None:
                c.next_start_at = now + restart_delay(c.restart_count)
                continue
            if now >= c.next_start_at and not run.starting:
                c.archive_exit()
                c.next_start_at = None
                log.info("pod %s/%s: restarting %s (restart %d)", *run.key, c.name, c.restart_count)
                # on the start pool like a first start: its spec may wait for a peer's DNS name, and this loop
                # must stay free to see the pod's deletion (which ends that wait)
                run.starting = True
                self.start_pool.submit(self._start_containers, run, [c.name])

    def patch_status(self, run: PodRun) -> None:
        """Render the status and patch it when it differs from what the API server last took."""
        run.rendered = pod_status(run.pod, run.state(), time.time(), run.rendered)
        if run.rendered != run.last_status and self.api.patch_pod_status(run.key, run.rendered):
            run.last_status = run.rendered


def _rv_value(rv: str | None) -> int:
    """resourceVersions are opaque to clients in general; from one etcd they are its revision numbers."""
    try:
        return int(rv or 0)
    except ValueError:
        return 0


def _rv(pod: dict) -> int:
    return _rv_value(pod["metadata"].get("resourceVersion"))


def _finished(run: PodRun) -> bool:
    return run.last_status is not None and run.last_status["phase"] in FINISHED


def _child_alive(c: runtime.ContainerRun) -> bool:
    child = c.child()
    return child is not None and procs.alive(*child)
