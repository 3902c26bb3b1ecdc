"""Prometheus metrics of the operator: jobs by phase, reconcile durations, restarts, recovery time, goodput per job.

No torch here (the operator imports this). Per-job series carry `namespace` and `omnitrain_job` of the JOB, so the
ServiceMonitor scrapes with honorLabels: the operator pod's own namespace must not overwrite them. `forget_job`
drops a deleted job's series, so label sets stay bounded by the jobs that exist.

Wiring (operator side):
    metrics = start_operator_metrics_server(8080, "0.0.0.0")     # once, at start-up (OperatorSettings.metrics_*)
    with metrics.time_reconcile("create"): ...                   # around each handler
    metrics.set_job_phase(ns, name, "Running"); metrics.record_restart(ns, name, reason="HangDetected")
    metrics.observe_recovery(ns, name, seconds); metrics.set_job_goodput(ns, name, 0.97, {"recovery": 42.0, ...})
    metrics.forget_job(ns, name)
"""

from __future__ import annotations

import threading
import time
from contextlib import contextmanager
from typing import get_args

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server
from prometheus_client.core import GaugeMetricFamily

from omnitrain.status import Phase

JOB_LABEL = "omnitrain_job"
# The CRD's status.phase values (omnitrain.status.Phase); listed so every phase has a series, 0 included.
PHASES: tuple[str, ...] = get_args(Phase)

METRIC_JOBS = "omnitrain_operator_jobs"
METRIC_JOB_PHASE = "omnitrain_operator_job_phase"
METRIC_RECONCILE = "omnitrain_operator_reconcile_duration_seconds"
METRIC_RECONCILE_ERRORS = "omnitrain_operator_reconcile_errors"
METRIC_RESTARTS = "omnitrain_operator_restarts"
METRIC_REQUEUES = "omnitrain_operator_requeues"
METRIC_PREEMPTIONS = "omnitrain_operator_preemptions"
METRIC_RECOVERY = "omnitrain_operator_recovery_seconds"
METRIC_QUEUED = "omnitrain_operator_queued_seconds"
METRIC_JOB_GOODPUT = "omnitrain_operator_job_goodput_ratio"
METRIC_JOB_BADPUT = "omnitrain_operator_job_badput_seconds"

RECONCILE_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)
RECOVERY_BUCKETS = (1, 5, 10, 20, 30, 45, 60, 90, 120, 180, 300, 600, 1800)
# a gang waits for quota from seconds (a free queue) to hours (behind a long job)
QUEUED_BUCKETS = (1, 5, 15, 30, 60, 120, 300, 600, 1800, 3600, 7200, 14400, 43200)


class _PhaseCollector:
    """Jobs by phase, and one series per job saying its phase, computed at scrape time from one dict."""

    def __init__(self, owner: OperatorMetrics) -> None:
        self.owner = owner

    def collect(self):
        phases = self.owner.phases()
        counts = GaugeMetricFamily(METRIC_JOBS, "OmniTrainingJobs by phase.", labels=["phase"])
        for phase in sorted(set(PHASES) | set(phases.values())):
            counts.add_metric([phase], sum(1 for p in phases.values() if p == phase))
        yield counts
        per_job = GaugeMetricFamily(
            METRIC_JOB_PHASE, "1 for the phase each job is in.", labels=["namespace", JOB_LABEL, "phase"]
        )
        for (namespace, name), phase in sorted(phases.items()):
            per_job.add_metric([namespace, name, phase], 1)
        yield per_job

    def describe(self):
        return []


class OperatorMetrics:
    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry if registry is not None else CollectorRegistry(auto_describe=True)
        self._lock = threading.Lock()
        self._phases: dict[tuple[str, str], str] = {}
        self._restart_reasons: dict[tuple[str, str], set[str]] = {}
        self._requeue_reasons: dict[tuple[str, str], set[str]] = {}
        self._preemption_reasons: dict[tuple[str, str], set[str]] = {}
        self._badput_causes: dict[tuple[str, str], set[str]] = {}
        self._server = None
        r = self.registry
        r.register(_PhaseCollector(self))
        self.reconcile = Histogram(
            METRIC_RECONCILE,
            "Duration of one operator handler run.",
            ["handler"],
            buckets=RECONCILE_BUCKETS,
            registry=r,
        )
        self.reconcile_errors = Counter(METRIC_RECONCILE_ERRORS, "Handler runs that raised.", ["handler"], registry=r)
        self.restarts = Counter(
            METRIC_RESTARTS,
            "Gang restarts of a job, by the failure that caused them.",
            ["namespace", JOB_LABEL, "reason"],
            registry=r,
        )
        self.requeues = Counter(
            METRIC_REQUEUES,
            "Gangs of a job taken down unplaced and queued again (no restart spent), by reason.",
            ["namespace", JOB_LABEL, "reason"],
            registry=r,
        )
        self.preemptions = Counter(
            METRIC_PREEMPTIONS,
            "Attempts of a job stopped to make room (Kueue preemption, eviction, drain; no restart spent), by reason.",
            ["namespace", JOB_LABEL, "reason"],
            registry=r,
        )
        self.recovery = Histogram(
            METRIC_RECOVERY,
            "Seconds from a detected failure to the job Running again.",
            ["namespace", JOB_LABEL],
            buckets=RECOVERY_BUCKETS,
            registry=r,
        )
        self.queued = Histogram(
            METRIC_QUEUED,
            "Seconds an attempt's gang waited Queued before the queue (Kueue) admitted it; its _count is the "
            "admissions.",
            ["namespace", JOB_LABEL],
            buckets=QUEUED_BUCKETS,
            registry=r,
        )
        self.goodput = Gauge(
            METRIC_JOB_GOODPUT,
            "Productive training time / wall time of the job (0..1).",
            ["namespace", JOB_LABEL],
            registry=r,
        )
        self.badput = Gauge(
            METRIC_JOB_BADPUT,
            "Wall time of the job lost, by cause (resilience.goodput causes).",
            ["namespace", JOB_LABEL, "cause"],
            registry=r,
        )

    # --- job state ------------------------------------------------------------------------------------------
    def set_job_phase(self, namespace: str, name: str, phase: str) -> None:
        with self._lock:
            self._phases[(namespace, name)] = phase

    def phases(self) -> dict[tuple[str, str], str]:
        with self._lock:
            return dict(self._phases)

    def record_restart(self, namespace: str, name: str, reason: str) -> None:
        with self._lock:
            self._restart_reasons.setdefault((namespace, name), set()).add(reason)
        self.restarts.labels(namespace, name, reason).inc()

    def record_requeue(self, namespace: str, name: str, reason: str) -> None:
        with self._lock:
            self._requeue_reasons.setdefault((namespace, name), set()).add(reason)
        self.requeues.labels(namespace, name, reason).inc()

    def record_preemption(self, namespace: str, name: str, reason: str) -> None:
        with self._lock:
            self._preemption_reasons.setdefault((namespace, name), set()).add(reason)
        self.preemptions.labels(namespace, name, reason).inc()

    def observe_recovery(self, namespace: str, name: str, seconds: float) -> None:
        self.recovery.labels(namespace, name).observe(seconds)

    def observe_admission(self, namespace: str, name: str, queued_seconds: float) -> None:
        self.queued.labels(namespace, name).observe(queued_seconds)

    def set_job_goodput(
        self, namespace: str, name: str, goodput: float, badput_seconds: dict[str, float] | None = None
    ) -> None:
        """E.g. from omnitrain.resilience.goodput:
        `set_job_goodput(ns, name, report.goodput, report.badput_seconds)`."""
        self.goodput.labels(namespace, name).set(goodput)
        for cause, seconds in (badput_seconds or {}).items():
            with self._lock:
                self._badput_causes.setdefault((namespace, name), set()).add(cause)
            self.badput.labels(namespace, name, cause).set(seconds)

    def forget_job(self, namespace: str, name: str) -> None:
        """Drop every series of a deleted job."""
        with self._lock:
            self._phases.pop((namespace, name), None)
            reasons = self._restart_reasons.pop((namespace, name), set())
            requeues = self._requeue_reasons.pop((namespace, name), set())
            preemptions = self._preemption_reasons.pop((namespace, name), set())
            causes = self._badput_causes.pop((namespace, name), set())
        for reason in reasons:
            self.restarts.remove(namespace, name, reason)
        for reason in requeues:
            self.requeues.remove(namespace, name, reason)
        for reason in preemptions:
            self.preemptions.remove(namespace, name, reason)
        for cause in causes:
            self.badput.remove(namespace, name, cause)
        for metric in (self.recovery, self.queued, self.goodput):
            try:
                metric.remove(namespace, name)
            except KeyError:
                pass

    # --- handlers -------------------------------------------------------------------------------------------
    @contextmanager
    def time_reconcile(self, handler: str):
        started = time.perf_counter()
        try:
            yield
        except Exception:
            self.reconcile_errors.labels(handler).inc()
            raise
        finally:
            self.reconcile.labels(handler).observe(time.perf_counter() - started)

    # --- endpoint -------------------------------------------------------------------------------------------
    def serve(self, port: int, addr: str = "127.0.0.1") -> int:
        with self._lock:
            if self._server is None:
                self._server, _thread = start_http_server(port, addr=addr, registry=self.registry)
            return self._server.server_port

    def close(self) -> None:
        with self._lock:
            if self._server is not None:
                self._server.shutdown()
                self._server.server_close()
                self._server = None


def start_operator_metrics_server(port: int = 8080, addr: str = "127.0.0.1") -> OperatorMetrics:
    """Create the operator's metrics and serve them on addr:port (a daemon thread). Call once at start-up.
    Loopback unless told: the operator's Deployment asks for 0.0.0.0 (OMNITRAIN_OPERATOR_METRICS_ADDRESS)."""
    metrics = OperatorMetrics()
    metrics.serve(port, addr)
    return metrics


__all__ = ["JOB_LABEL", "OperatorMetrics", "PHASES", "start_operator_metrics_server"] + [
    n for n in dir() if n.startswith("METRIC_")
]
