"""Kopf handlers: thin. Every trigger (job created/changed/resumed, a pod event, the resync timer) runs the same
level-triggered `Controller.reconcile(namespace, name)`; the decisions are in reconcile.py. A Node that is deleted
or stops being Ready, or is Ready again, wakes the resync pass at once (its pods' kubelet will send no pod event)."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol

import kopf

from omnitrain.operator import crd, plan, progress
from omnitrain.operator.admission import ADMISSION_GATE, waiting_message
from omnitrain.operator.admission_review import review
from omnitrain.operator.kube import Kube, now_iso, pod_views
from omnitrain.operator.preencode import encode_job_name, encode_job_phase, render_encode_job
from omnitrain.operator.promotion import promotion_settled
from omnitrain.operator.promotion_kube import promote
from omnitrain.operator.reconcile import (
    ChildRefused,
    Decision,
    Event,
    SpecCheck,
    awaits_encoding,
    child_refused,
    parse_spec,
    reconcile,
    scaled_spec,
)
from omnitrain.operator.settings import OperatorSettings, WebhookSettings
from omnitrain.operator.spec_edits import ACTIVE_PHASES, effective_spec, held_edits
from omnitrain.spec import JobSpec
from omnitrain.status import FAILED, PENDING, RECONCILE_ERROR, RUNNING, SUCCEEDED, JobStatus
from omnitrain.timestamps import parse_rfc3339

log = logging.getLogger("omnitrain.operator")


class Timer(Protocol):
    def start(self) -> None: ...
    def cancel(self) -> None: ...


TimerFactory = Callable[[float, Callable[[], None]], Timer]


def daemon_timer(delay: float, fn: Callable[[], None]) -> Timer:
    timer = threading.Timer(delay, fn)
    timer.daemon = True  # a pending retry must not keep the operator from exiting
    return timer


def error_text(exc: BaseException) -> str:
    """One line for a condition and an event: the exception's class and message (an ApiException's reason and
    body's message rather than its multi-line dump)."""
    body = getattr(exc, "body", None)
    detail = getattr(exc, "reason", None) if body is None else body
    if isinstance(detail, (str, bytes)) and detail:
        text = detail.decode(errors="replace") if isinstance(detail, bytes) else detail
        return f"{type(exc).__name__} ({getattr(exc, 'status', '?')}): {text}"[:1000]
    return f"{type(exc).__name__}: {exc}"[:1000]


def errored_status(status: JobStatus, message: str, now: str) -> JobStatus:
    """The job's status after a pass that raised: everything else as it was, ReconcileError True with the message.
    A job that had no phase yet gets Pending and the error as its message: every job shows a phase."""
    new = status.model_copy(deep=True)
    new.set_condition(RECONCILE_ERROR, True, "ReconcileError", message, now)
    if new.phase is None:
        new.phase, new.message = PENDING, f"not launched: {message} (the operator retries every resync)"
    return new


def cleared_status(status: JobStatus, now: str) -> JobStatus:
    """A clean pass after one that raised: ReconcileError False (left alone when it was never set)."""
    cond = status.condition(RECONCILE_ERROR)
    if cond is not None and cond.status == "True":
        status.set_condition(RECONCILE_ERROR, False, "Reconciled", "the last pass completed", now)
    return status


def restart_cause(old: JobStatus, decision: Decision) -> str:
    """The label of a restart counted in this pass: the failure that caused it (status.lastFailure.reason:
    HangDetected, NodeLost, ...), which alerts and dashboards select on; without a new failure (a resume), the
    reason of the pass's first event (Resumed)."""
    new = decision.status
    if new.last_failure is not None and new.last_failure != old.last_failure and new.last_failure.reason:
        return new.last_failure.reason
    return decision.events[0].reason if decision.events else "Restart"


class Controller:
    """Runs reconciles, one at a time per job; triggers that arrive meanwhile fold into one more pass. A Decision's
    requeue_after_seconds schedules one more pass at that time (a restart's back-off ends on time, not at the next
    resync); one timer per job, the earliest wins."""

    def __init__(
        self,
        kube: Kube,
        settings: OperatorSettings,
        metrics=None,
        timer: TimerFactory = daemon_timer,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.kube, self.settings, self.metrics = kube, settings, metrics
        self._guard = threading.Lock()
        self._running: dict[tuple[str, str], bool] = {}  # key -> another pass wanted
        self._timers: dict[tuple[str, str], tuple[float, Timer]] = {}  # key -> (due, timer)
        self._timer, self._clock = timer, clock
        self.wake = threading.Event()  # run the next resync pass now
        self.resync: Resync | None = None  # started by kopf's startup handler (configure)
        self._errors: dict[tuple[str, str, str], str] = {}  # (key, step) -> its last error (logged once)

    def reconcile(self, namespace: str, name: str) -> None:
        key = (namespace, name)
        with self._guard:
            if key in self._running:
                self._running[key] = True
                return
            self._running[key] = False
        requeue_after: float | None = None
        try:
            while True:
                requeue_after = self._isolated(namespace, name, "reconcile", self._reconcile_once)
                with self._guard:
                    again = self._running[key]
                    self._running[key] = False
                if not again:
                    break
        finally:
            with self._guard:
                self._running.pop(key, None)
        if requeue_after is not None:
            self.schedule(namespace, name, requeue_after)

    def _isolated(self, namespace: str, name: str, what: str, step: Callable[[str, str], float | None]) -> float | None:
        """Run one job's step so that its error stays its own: logged (with traceback) when it is new, written to
        the job as the ReconcileError condition and a Warning event, and never raised into the caller (a kopf
        handler, a timer, or the resync loop that goes on to the next job). The resync retries it."""
        key = (namespace, name, what)
        try:
            result = step(namespace, name)
        except Exception as exc:
            if getattr(exc, "status", None) == 404 and self._job_gone(namespace, name):
                # deleted while its pass ran (its status patch 404s): nothing is wrong, and nothing is left to report
                log.debug("%s/%s: %s ended: the job was deleted meanwhile (%s)", namespace, name, what, error_text(exc))
                with self._guard:
                    self._errors.pop(key, None)
                return None
            message = error_text(exc)
            with self._guard:
                new = self._errors.get(key) != message
                self._errors[key] = message
            if new:
                log.exception("%s/%s: %s failed", namespace, name, what)
            else:
                log.debug("%s/%s: %s failed again: %s", namespace, name, what, message)
            self._report_error(namespace, name, message, post_event=new)
            return None
        with self._guard:
            self._errors.pop(key, None)
        return result

    def _job_gone(self, namespace: str, name: str) -> bool:
        try:
            return self.kube.get_job(namespace, name) is None
        except Exception:  # the API server itself failing: not known to be gone, report the error as usual
            return False

    def _report_error(self, namespace: str, name: str, message: str, post_event: bool) -> None:
        """Best effort: the error may be the API server itself, and the next pass tries again anyway."""
        try:
            job = self.kube.get_job(namespace, name)
            if job is None:
                return
            self.kube.write_status(job, errored_status(JobStatus.from_wire(job.get("status")), message, now_iso()))
            if post_event:
                self.kube.post_event(job, Event("Warning", "ReconcileError", message))
        except Exception as exc:
            log.warning("%s/%s: could not record the reconcile error: %s", namespace, name, error_text(exc))

    def schedule(self, namespace: str, name: str, delay: float) -> None:
        """One more pass of this job `delay` seconds from now, unless one is due earlier already."""
        key, due = (namespace, name), self._clock() + max(0.0, delay)
        with self._guard:
            pending = self._timers.get(key)
            if pending is not None and pending[0] <= due:
                return
            if pending is not None:
                pending[1].cancel()
            timer = self._timer(max(0.0, delay), lambda: self._fire(key, timer))
            self._timers[key] = (due, timer)
        timer.start()

    def _fire(self, key: tuple[str, str], timer: Timer) -> None:
        with self._guard:
            if self._timers.get(key, (None, None))[1] is timer:
                del self._timers[key]
        try:
            self.reconcile(*key)
        except Exception:  # the resync pass tries again; a timer thread must not die loudly
            log.exception("scheduled reconcile of %s/%s failed", *key)

    def _reconcile_once(self, namespace: str, name: str) -> float | None:
        job = self.kube.get_job(namespace, name)
        if job is None or job["metadata"].get("deletionTimestamp"):
            if self.metrics is not None:
                self.metrics.forget_job(namespace, name)
            if job is None:
                self.kube.forget_pods(namespace, name)
            return None
        meta = job["metadata"]
        ref = plan.JobRef(name=name, namespace=namespace, uid=meta["uid"], created=meta.get("creationTimestamp") or "")
        old = JobStatus.from_wire(job.get("status"))
        checked, held = self.effective_spec(job, old)  # once per pass
        pods = pod_views(self.kube.list_pods(namespace, name))
        nodes = self.kube.nodes({p.node for p in pods if p.node and p.unfinished})
        now = now_iso()
        admission = None
        if any(ADMISSION_GATE in p.scheduling_gates for p in pods if p.attempt == old.attempt):
            group = plan.pod_group_name(name, old.attempt or 0)
            admission = waiting_message(self.kube.workload(namespace, group), group)
        encoding = self._encoding(namespace, name, checked, old)
        free = None
        if old.active_nodes is not None and checked.spec is not None:  # a shrunk elastic job: room to grow?
            busy = {p.node for p in pods if p.node and p.unfinished}
            free = self.kube.free_nodes(busy, set(old.excluded_nodes), checked.spec)
        decision = reconcile(
            ref,
            checked,
            old,
            pods,
            now,
            generation=meta.get("generation"),
            nodes=nodes,
            admission=admission,
            held=held,
            encoding=encoding,
            free_nodes=free,
        )
        cleared_status(decision.status, now)
        children = None
        if decision.create_encode_job and checked.spec is not None:
            children = [render_encode_job(ref, checked.spec, self.settings.encode_command)]
        if decision.create_attempt is not None and checked.spec is not None:
            members = decision.status.children.pods if decision.status.children else None
            spares = decision.status.children.spares if decision.status.children else None
            children = plan.plan_children(
                ref,
                scaled_spec(checked.spec, decision.status),  # an elastic job's layout at status.activeNodes
                decision.create_attempt,
                decision.status.excluded_nodes,
                self.settings.plan_options(),
                members=members,
                now=now,
                spares=spares,
                promoted=decision.promoted,
                only_pods=None if decision.create_pods is None else set(decision.create_pods),
                gang_readers=not (old.children and old.children.gang_readers),
            )
        try:
            self.kube.apply(job, decision, children)
        except ChildRefused as err:  # the job fails in this pass, and its launch is undone
            decision = child_refused(decision.status, err, children or [], now)
            self.kube.apply(job, decision, None)
        if decision.status.phase == SUCCEEDED and checked.spec is not None:
            self.promote({**job, "status": decision.status.to_wire()}, checked.spec, decision.status)
        if self.metrics is not None and decision.status.phase:
            self._record_metrics(namespace, name, old, decision.status, restart_cause(old, decision))
        return decision.requeue_after_seconds

    def _encoding(self, namespace: str, name: str, checked: SpecCheck, old: JobStatus) -> tuple[str, str] | None:
        """The pre-encoding Job's (phase, message) while it gates the first launch (spec.data.preEncode); None when
        it does not exist (or does not matter)."""
        if checked.spec is None or not awaits_encoding(checked.spec, old):
            return None
        observed = self.kube.batch_job(namespace, encode_job_name(name))
        return encode_job_phase(observed) if observed is not None else None

    def effective_spec(self, job: dict, old: JobStatus) -> tuple[SpecCheck, list[str]]:
        """The job's spec as checked, and the edits its active gang holds back (spec_edits): then the spec with
        those fields as launched, which is what this pass plans from."""
        name, roots = job["metadata"]["name"], self.settings.allowed_host_roots
        checked = parse_spec(job.get("spec"), name, roots)
        if checked.spec is None or old.launched_spec is None or old.phase not in ACTIVE_PHASES:
            return checked, []
        current = checked.spec.to_wire()
        held = held_edits(old.launched_spec, current)
        if not held:
            return checked, []
        return parse_spec(effective_spec(old.launched_spec, current), name, roots), held

    def _record_metrics(self, namespace: str, name: str, old: JobStatus, new: JobStatus, restart_reason: str) -> None:
        self.metrics.set_job_phase(namespace, name, new.phase)
        if (new.total_restarts or 0) > (old.total_restarts or 0):
            self.metrics.record_restart(namespace, name, reason=restart_reason)
        if (new.requeues or 0) > (old.requeues or 0):
            queued = new.condition("Queued")
            self.metrics.record_requeue(namespace, name, reason=queued.reason if queued and queued.reason else "Queued")
        if (new.preemptions or 0) > (old.preemptions or 0):
            preempted = new.condition("Preempted")
            self.metrics.record_preemption(
                namespace, name, reason=preempted.reason if preempted and preempted.reason else "Preempted"
            )
        waited = admission_wait_seconds(old, new)
        if waited is not None:
            self.metrics.observe_admission(namespace, name, waited)
        recovered = new.phase == RUNNING and old.phase != RUNNING and (new.attempt or 0) > 0
        failed_at = parse_rfc3339(new.last_failure.time if new.last_failure else None)
        now = parse_rfc3339(now_iso())
        if recovered and failed_at is not None and now is not None:
            # failure noticed -> the next attempt's pods all Running (the operator's part of a recovery)
            self.metrics.observe_recovery(namespace, name, max(0.0, now - failed_at))
        self._record_goodput(namespace, name, new.goodput)

    def _record_goodput(self, namespace: str, name: str, goodput: dict | None) -> None:
        if self.metrics is not None and isinstance(goodput, dict) and goodput.get("ratio") is not None:
            self.metrics.set_job_goodput(namespace, name, float(goodput["ratio"]), goodput.get("badputSeconds"))

    def promote(self, job: dict, spec: JobSpec, status: JobStatus) -> None:
        """A succeeded job's promotion chain (omnitrain/operator/promotion.py): distillation, then serving."""
        promote(self.kube, job, spec, status, now_iso())

    def update_progress(self, namespace: str, name: str) -> None:
        """Read rank 0's progress into the job's status; an error is the job's own (see `_isolated`)."""
        self._isolated(namespace, name, "progress read", self._update_progress)

    def _update_progress(self, namespace: str, name: str) -> None:
        job = self.kube.get_job(namespace, name)
        status = JobStatus.from_wire(job.get("status")) if job is not None else None
        if job is None or status is None or status.phase != RUNNING:
            return
        checked = parse_spec(job.get("spec"))
        if checked.spec is None:
            return
        spec = checked.spec
        rank0 = status.children.pods[0] if status.children and status.children.pods else None
        rank0_ip = next(
            (
                p.pod_ip
                for p in pod_views(self.kube.list_pods(namespace, name))
                if p.pod_ip and (p.name == rank0 if rank0 else p.rank == 0 and p.attempt == status.attempt)
            ),
            None,
        )
        if rank0_ip is None:
            return
        new = progress.progress_status(
            progress.scrape(rank0_ip, spec.metrics_port), status, spec, plan.checkpoint_root(spec, name), now_iso()
        )
        if self.kube.write_status(job, new):
            self._record_goodput(namespace, name, new.goodput)


def admission_wait_seconds(old: JobStatus, new: JobStatus) -> float | None:
    """How long the gang waited, when this pass saw the queue admit it (Queued True -> False, reason Admitted)."""
    before, after = old.condition("Queued"), new.condition("Queued")
    if not (before and after and before.status == "True" and after.status == "False" and after.reason == "Admitted"):
        return None
    since, until = parse_rfc3339(before.last_transition_time), parse_rfc3339(after.last_transition_time)
    return max(0.0, until - since) if since is not None and until is not None else None


CONTROLLER: Controller | None = None
# The validating webhook's handler id: its URL path (/validate-spec) and, with a managed configuration named N,
# its webhook's name (validate-spec.N); manifests/webhook/webhook.yaml uses the same.
WEBHOOK_ID = "validate-spec"


def install(settings: OperatorSettings, kube: Kube | None = None, metrics=None) -> Controller:
    """Create the controller the handlers use (called at start-up, before kopf runs)."""
    global CONTROLLER
    CONTROLLER = Controller(kube or Kube(create_workers=settings.create_workers), settings, metrics)
    if settings.webhook is not None:
        # registered only with a server to serve it: kopf refuses to run admission handlers without one
        kopf.on.validate(crd.GROUP, crd.VERSION, crd.PLURAL, id=WEBHOOK_ID, operations=["CREATE", "UPDATE"])(
            validate_job
        )
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
    settings.posting.level = logging.WARNING  # our own events say what happened; no per-handler chatter
    settings.watching.server_timeout = 300
    settings.watching.client_timeout = 330
    settings.execution.max_workers = 8
    if CONTROLLER is not None and CONTROLLER.settings.webhook is not None:
        serve_webhook(settings, CONTROLLER.settings.webhook)
    if CONTROLLER is not None:
        CONTROLLER.kube.watch_pods()  # pod_event feeds it from here on
        CONTROLLER.resync = Resync(CONTROLLER, CONTROLLER.settings.resync_seconds)
        CONTROLLER.resync.start()


def serve_webhook(settings: kopf.OperatorSettings, webhook: WebhookSettings) -> None:
    """kopf's admission server for `validate_job`, with the mounted certificate (WebhookSettings)."""
    folder = Path(webhook.cert_dir)
    settings.admission.server = kopf.WebhookServer(
        addr=webhook.address,
        port=webhook.port,
        host=webhook.host,
        certfile=str(folder / "tls.crt"),
        pkeyfile=str(folder / "tls.key"),
        cafile=str(folder / "ca.crt"),
    )
    if webhook.configuration:
        settings.admission.managed = webhook.configuration


def validate_job(body: kopf.Body, warnings: list[str], **kwargs: Any) -> None:
    """Refuse at `kubectl apply` what the reconcile would fail (omnitrain.operator.admission_review)."""
    roots = CONTROLLER.settings.allowed_host_roots if CONTROLLER is not None else None
    operation, old = kwargs.get("operation"), kwargs.get("old")  # kopf passes both to admission handlers
    name = body.metadata.get("name") or None
    answer = review(
        operation or "",
        dict(body.get("spec") or {}),
        name,
        old_spec=dict(old.get("spec") or {}) if old is not None else None,
        phase=(old.get("status") or {}).get("phase") if old is not None else None,
        allowed_host_roots=roots,
    )
    warnings.extend(answer.applied_later)
    if not answer.allowed:
        raise kopf.AdmissionError(answer.message(name), code=422)


@kopf.on.cleanup()
def stop_resync(**_) -> None:
    """kopf is stopping (signal or stop flag): so does the resync, before the API server it talks to may go (an
    embedding process such as bench/ tears the control plane down next)."""
    if CONTROLLER is not None and CONTROLLER.resync is not None:
        CONTROLLER.resync.stop()


@kopf.on.resume(crd.GROUP, crd.VERSION, crd.PLURAL)
@kopf.on.create(crd.GROUP, crd.VERSION, crd.PLURAL)
@kopf.on.update(crd.GROUP, crd.VERSION, crd.PLURAL, field="spec")
def job_changed(namespace: str | None, name: str, **_: Any) -> None:
    if CONTROLLER is None or namespace is None:  # the CRD is namespaced: kopf always passes one
        return
    with _timed("job"):
        CONTROLLER.reconcile(namespace, name)


@kopf.on.event("", "v1", "pods", labels={plan.LABEL_JOB: kopf.PRESENT})
def pod_event(type: str | None, body: kopf.Body, namespace: str | None, **_: Any) -> None:
    """A trainer or spare pod changed: into the pod cache (Kube.list_pods reads it), then the job's pass."""
    owner = next((o for o in body.metadata.get("ownerReferences") or [] if o.get("kind") == crd.KIND), None)
    if owner is None or CONTROLLER is None or namespace is None:
        return
    CONTROLLER.kube.observe_pod(type, dict(body))
    with _timed("pod"):
        CONTROLLER.reconcile(namespace, owner["name"])


@kopf.on.event("", "v1", "nodes")
def node_event(type: str | None, body: kopf.Body, **_) -> None:
    change = CONTROLLER.kube.observe_node(type, dict(body)) if CONTROLLER is not None else None
    if CONTROLLER is not None and change is not None:
        log.warning("node %s %s: looking at every job now", body.metadata.get("name"), change)
        CONTROLLER.wake.set()


class Resync(threading.Thread):
    """Every few seconds: one list of all jobs, then reconcile and read progress of each unfinished one. Catches
    what events missed and drives the progress scrape. A plain thread, not a kopf timer: kopf would put a finalizer
    on every job for its timers, and deletion would wait on the operator."""

    def __init__(self, controller: Controller, interval: float) -> None:
        super().__init__(name="omnitrain-resync", daemon=True)
        self.controller, self.interval = controller, interval
        self.stopped = threading.Event()

    def stop(self) -> None:
        self.stopped.set()
        self.controller.wake.set()

    def run(self) -> None:
        while not self.stopped.is_set():
            self.controller.wake.wait(self.interval)
            self.controller.wake.clear()
            if self.stopped.is_set():
                break
            self.run_once()

    def run_once(self) -> None:
        """One pass over every job. Each job's reconcile and progress read is isolated (Controller._isolated): a
        job that raises is that job's condition, and the jobs after it are still looked at in this pass."""
        try:
            jobs = self.controller.kube.list_jobs(self.controller.settings.namespaces)
        except Exception:  # the next pass tries again; a resync must never kill the operator
            log.exception("resync: listing the jobs failed")
            return
        for job in jobs:
            try:
                meta = job["metadata"]
                status = JobStatus.from_wire(job.get("status"))
                if status.phase == FAILED or (status.phase == SUCCEEDED and _promotion_settled(job, status)):
                    continue
            except Exception:  # a job whose stored object cannot be read: the others go on
                log.exception("resync: skipping an unreadable job %s", (job.get("metadata") or {}).get("name"))
                continue
            with _timed("resync"):
                self.controller.reconcile(meta["namespace"], meta["name"])
                self.controller.update_progress(meta["namespace"], meta["name"])


def _promotion_settled(job: dict, status: JobStatus) -> bool:
    """A succeeded job stays on the resync list until its promotion chain has nothing left to watch."""
    spec = parse_spec(job.get("spec")).spec
    return spec is None or promotion_settled(spec, status)
