"""Kopf handlers: thin. Every trigger (job created/changed/resumed, a pod event, the resync timer) runs the same
level-triggered `Controller.reconcile(namespace, name)`; the decisions are in reconcile.py. A Node that is deleted
or stops being Ready wakes the resync pass at once (its pods' kubelet will send no pod event)."""

from __future__ import annotations

import logging
import threading

import kopf

from omnitrain.operator import crd, plan, progress
from omnitrain.operator.kube import Kube, now_iso, pod_views
from omnitrain.operator.reconcile import RUNNING, reconcile
from omnitrain.operator.settings import OperatorSettings
from omnitrain.spec import JobSpec
from omnitrain.timestamps import parse_rfc3339

log = logging.getLogger("omnitrain.operator")


class Controller:
    """Runs reconciles, one at a time per job; triggers that arrive meanwhile fold into one more pass."""

    def __init__(self, kube: Kube, settings: OperatorSettings, metrics=None) -> None:
        self.kube, self.settings, self.metrics = kube, settings, metrics
        self._guard = threading.Lock()
        self._running: dict[tuple[str, str], bool] = {}   # key -> another pass wanted
        self.wake = threading.Event()                       # run the next resync pass now

    def reconcile(self, namespace: str, name: str) -> None:
        key = (namespace, name)
        with self._guard:
            if key in self._running:
                self._running[key] = True
                return
            self._running[key] = False
        try:
            while True:
                # A requeue (waiting for old pods to go) needs no loop here: their deletion events and the resync
                # timer trigger the next pass.
                self._reconcile_once(namespace, name)
                with self._guard:
                    again = self._running[key]
                    self._running[key] = False
                if not again:
                    break
        finally:
            with self._guard:
                self._running.pop(key, None)

    def _reconcile_once(self, namespace: str, name: str) -> bool:
        job = self.kube.get_job(namespace, name)
        if job is None or job["metadata"].get("deletionTimestamp"):
            if self.metrics is not None:
                self.metrics.forget_job(namespace, name)
            return False
        meta = job["metadata"]
        ref = plan.JobRef(name=name, namespace=namespace, uid=meta["uid"], created=meta.get("creationTimestamp") or "")
        pods = pod_views(self.kube.list_pods(namespace, name))
        nodes = self.kube.nodes({p.node for p in pods if p.node and p.phase in ("Pending", "Running", "Unknown")})
        decision = reconcile(ref, job.get("spec") or {}, job.get("status"), pods, now_iso(),
                             generation=meta.get("generation"), nodes=nodes)
        children = None
        if decision.create_attempt is not None:
            spec = JobSpec.model_validate(job.get("spec") or {})
            children = plan.plan_children(ref, spec, decision.create_attempt, decision.status.get("excludedNodes"),
                                          self.settings.plan_options())
        self.kube.apply(job, decision, children)
        if decision.status.get("phase") == "Succeeded":
            self.promote(namespace, name)
        if self.metrics is not None and decision.status.get("phase"):
            restart_reason = decision.events[-1].reason if decision.events else "Restart"
            self._record_metrics(namespace, name, job.get("status") or {}, decision.status, restart_reason)
        return decision.requeue

    def _record_metrics(self, namespace: str, name: str, old: dict, new: dict, restart_reason: str) -> None:
        self.metrics.set_job_phase(namespace, name, new["phase"])
        if (new.get("totalRestarts") or 0) > (old.get("totalRestarts") or 0):
            self.metrics.record_restart(namespace, name, reason=restart_reason)
        recovered = new["phase"] == RUNNING and old.get("phase") != RUNNING and (new.get("attempt") or 0) > 0
        failed_at = parse_rfc3339((new.get("lastFailure") or {}).get("time"))
        if recovered and failed_at is not None:
            # failure noticed -> the next attempt's pods all Running (the operator's part of a recovery)
            self.metrics.observe_recovery(namespace, name, max(0.0, parse_rfc3339(now_iso()) - failed_at))
        self._record_goodput(namespace, name, new.get("goodput"))

    def _record_goodput(self, namespace: str, name: str, goodput: dict | None) -> None:
        if self.metrics is not None and isinstance(goodput, dict) and goodput.get("ratio") is not None:
            self.metrics.set_job_goodput(namespace, name, float(goodput["ratio"]), goodput.get("badputSeconds"))

    def promote(self, namespace: str, name: str) -> None:
        """A succeeded job's promotion chain (omnitrain/operator/promotion.py): distillation, then serving."""
        from omnitrain.operator.promotion_kube import promote
        job = self.kube.get_job(namespace, name)
        if job is not None and not job["metadata"].get("deletionTimestamp"):
            promote(self.kube, job, now_iso())

    def update_progress(self, namespace: str, name: str) -> None:
        job = self.kube.get_job(namespace, name)
        if job is None or (job.get("status") or {}).get("phase") != RUNNING:
            return
        spec = JobSpec.model_validate(job.get("spec") or {})
        rank0 = next((p for p in pod_views(self.kube.list_pods(namespace, name))
                      if p.rank == 0 and p.attempt == job["status"].get("attempt") and p.pod_ip), None)
        if rank0 is None:
            return
        patch = progress.progress_patch(progress.scrape(rank0.pod_ip, spec.metrics_port), job["status"],
                                        plan.checkpoint_root(spec, name), now_iso())
        if patch:
            self.kube.patch_status(namespace, name, patch)
            self._record_goodput(namespace, name, patch.get("goodput"))


CONTROLLER: Controller | None = None


def install(settings: OperatorSettings, kube: Kube | None = None, metrics=None) -> Controller:
    """Create the controller the handlers use (called at start-up, before kopf runs)."""
    global CONTROLLER
    CONTROLLER = Controller(kube or Kube(create_workers=settings.create_workers), settings, metrics)
    return CONTROLLER


def _timed(handler: str):
    if CONTROLLER is not None and CONTROLLER.metrics is not None:
        return CONTROLLER.metrics.time_reconcile(handler)
    import contextlib
    return contextlib.nullcontext()


@kopf.on.startup()
def configure(settings: kopf.OperatorSettings, **_) -> None:
    # Kopf's bookkeeping goes to annotations: our status schema is structural and would prune status.kopf.
    settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix=crd.GROUP)
    settings.persistence.diffbase_storage = kopf.AnnotationsDiffBaseStorage(prefix=crd.GROUP)
    settings.posting.level = logging.WARNING          # our own events say what happened; no per-handler chatter
    settings.watching.server_timeout = 300
    settings.watching.client_timeout = 330
    settings.execution.max_workers = 8
    if CONTROLLER is not None:
        Resync(CONTROLLER, CONTROLLER.settings.resync_seconds).start()


@kopf.on.resume(crd.GROUP, crd.VERSION, crd.PLURAL)
@kopf.on.create(crd.GROUP, crd.VERSION, crd.PLURAL)
@kopf.on.update(crd.GROUP, crd.VERSION, crd.PLURAL, field="spec")
def job_changed(namespace: str, name: str, **_) -> None:
    with _timed("job"):
        assert CONTROLLER is not None
        CONTROLLER.reconcile(namespace, name)


@kopf.on.event("", "v1", "pods", labels={plan.LABEL_ROLE: "trainer", plan.LABEL_JOB: kopf.PRESENT})
def pod_event(body: kopf.Body, namespace: str, **_) -> None:
    owner = next((o for o in body.metadata.get("ownerReferences") or [] if o.get("kind") == crd.KIND), None)
    if owner is None or CONTROLLER is None:
        return
    with _timed("pod"):
        CONTROLLER.reconcile(namespace, owner["name"])


@kopf.on.event("", "v1", "nodes")
def node_event(type: str | None, body: kopf.Body, **_) -> None:
    if CONTROLLER is not None and CONTROLLER.kube.observe_node(type, dict(body)):
        log.warning("node %s %s: looking at every job now", body.metadata.get("name"),
                    "deleted" if type == "DELETED" else "is not Ready")
        CONTROLLER.wake.set()


class Resync(threading.Thread):
    """Every few seconds: one list of all jobs, then reconcile and read progress of each unfinished one. Catches
    what events missed and drives the progress scrape. A plain thread, not a kopf timer: kopf would put a finalizer
    on every job for its timers, and deletion would wait on the operator."""

    def __init__(self, controller: Controller, interval: float) -> None:
        super().__init__(name="omnitrain-resync", daemon=True)
        self.controller, self.interval = controller, interval
        self.stopped = threading.Event()

    def run(self) -> None:
        while not self.stopped.is_set():
            self.controller.wake.wait(self.interval)
            self.controller.wake.clear()
            if self.stopped.is_set():
                break
            try:
                for job in self.controller.kube.list_jobs(self.controller.settings.namespaces):
                    meta = job["metadata"]
                    phase = (job.get("status") or {}).get("phase")
                    if phase == "Failed" or (phase == "Succeeded" and _promotion_settled(job)):
                        continue
                    with _timed("resync"):
                        self.controller.reconcile(meta["namespace"], meta["name"])
                        self.controller.update_progress(meta["namespace"], meta["name"])
            except Exception:  # the next pass tries again; a resync must never kill the operator
                log.exception("resync pass failed")


def _promotion_settled(job: dict) -> bool:
    """A succeeded job stays on the resync list until its promotion chain has nothing left to watch."""
    from omnitrain.operator.promotion import promotion_settled
    try:
        return promotion_settled(JobSpec.model_validate(job.get("spec") or {}), job.get("status") or {})
    except ValueError:
        return True
