"""Prometheus metrics of a training pod, served on POD_IP:metricsPort by each pod's local rank 0.

Global rank 0 serves the job-level figures (step, loss, MFU, goodput, checkpoints, ...); every local rank 0 serves
its node's figures (GPU telemetry, process memory). Labels stay few: `omnitrain_job` on everything (the plain `job`
label belongs to Prometheus' scrape config), `node` and `gpu` on per-node series only. The namespace and pod labels
come from the PodMonitor. A dedicated CollectorRegistry keeps library defaults and tests apart.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.process_collector import ProcessCollector

from omnitrain import contract
from omnitrain.observability.gpu_telemetry import GpuTelemetry

JOB_LABEL = "omnitrain_job"

# Names beyond those the operator reads (contract.py holds METRIC_STEP, METRIC_TOTAL_STEPS, METRIC_LOSS,
# METRIC_LAST_CHECKPOINT_STEP).
METRIC_STEP_SECONDS = "omnitrain_train_step_seconds"
METRIC_TOKENS_PER_SECOND = "omnitrain_train_tokens_per_second"
METRIC_MFU = "omnitrain_train_mfu_ratio"
METRIC_MODEL_FLOPS = "omnitrain_train_model_flops_per_device_per_second"
METRIC_PEAK_FLOPS = "omnitrain_train_peak_flops_per_device"
METRIC_WORLD_SIZE = "omnitrain_train_world_size"
METRIC_ATTEMPT = "omnitrain_train_attempt"
METRIC_ENCODE_SECONDS = "omnitrain_train_encode_seconds"
METRIC_CHECKPOINT_BLOCKING = "omnitrain_checkpoint_blocking_seconds"
METRIC_CHECKPOINT_INTERVAL = "omnitrain_checkpoint_interval_steps"
METRIC_RESTORE_SECONDS = "omnitrain_checkpoint_restore_seconds"
METRIC_HANGS = "omnitrain_hang_detections"  # exposed as omnitrain_hang_detections_total
METRIC_GOODPUT = contract.METRIC_GOODPUT
METRIC_BADPUT = contract.METRIC_BADPUT
METRIC_GPU_UTILIZATION = "omnitrain_gpu_utilization_ratio"
METRIC_GPU_MEMORY_USED = "omnitrain_gpu_memory_used_bytes"
METRIC_GPU_MEMORY_TOTAL = "omnitrain_gpu_memory_total_bytes"
METRIC_GPU_POWER = "omnitrain_gpu_power_watts"
METRIC_GPU_TEMPERATURE = "omnitrain_gpu_temperature_celsius"
METRIC_GPU_ECC = "omnitrain_gpu_ecc_uncorrected_errors"

# Step times from a tiny CPU test (tens of ms) to a 14B model step with many micro-batches (minutes).
STEP_SECONDS_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2, 4, 8, 15, 30, 60, 120, 300, 600)
CHECKPOINT_BLOCKING_BUCKETS = (0.001, 0.005, 0.01, 0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 30, 60, 300)


@dataclass(frozen=True)
class MetricsRole:
    """What this process serves: job-level figures (global rank 0), node-level figures (local rank 0), or nothing."""

    job_level: bool
    node_level: bool

    @classmethod
    def for_rank(cls, rank: int, local_rank: int) -> MetricsRole:
        return cls(job_level=rank == 0, node_level=local_rank == 0)

    @property
    def serves(self) -> bool:
        return self.job_level or self.node_level


class _GpuCollector:
    """Reads NVML at scrape time: no background thread, and a scrape always sees fresh numbers."""

    _FIELDS = (
        (METRIC_GPU_UTILIZATION, "Fraction of time a kernel ran on the GPU.", "utilization"),
        (METRIC_GPU_MEMORY_USED, "GPU memory in use.", "memory_used_bytes"),
        (METRIC_GPU_MEMORY_TOTAL, "GPU memory in total.", "memory_total_bytes"),
        (METRIC_GPU_POWER, "GPU power draw.", "power_watts"),
        (METRIC_GPU_TEMPERATURE, "GPU temperature.", "temperature_celsius"),
        (METRIC_GPU_ECC, "Uncorrected ECC errors since the driver loaded.", "ecc_uncorrected_errors"),
    )

    def __init__(self, telemetry: GpuTelemetry, job: str, node: str) -> None:
        self.telemetry, self.job, self.node = telemetry, job, node

    def collect(self):
        readings = self.telemetry.read()
        for name, doc, attr in self._FIELDS:
            family = GaugeMetricFamily(name, doc, labels=[JOB_LABEL, "node", "gpu"])
            for r in readings:
                value = getattr(r, attr)
                if value is not None:
                    family.add_metric([self.job, self.node, str(r.index)], float(value))
            yield family

    def describe(self):
        return []  # unchecked collector: families depend on what NVML can read


class _LazyGauge:
    """A gauge child created on its first set: a figure not known yet (goodput, MFU without a peak) is absent from
    the scrape instead of a 0 that alerts would read as real."""

    def __init__(self, parent: Gauge, *labels: str) -> None:
        self._parent, self._labels = parent, labels

    def set(self, value: float) -> None:
        self._parent.labels(*self._labels).set(value)


class TrainerMetrics:
    """The metric objects of one training process, in a registry of its own.

    Methods update figures; the HTTP endpoint is started separately (`serve`), so tests can read the registry
    directly or scrape it over HTTP."""

    def __init__(
        self,
        job: str,
        node: str = "",
        role: MetricsRole = MetricsRole(True, True),
        telemetry: GpuTelemetry | None = None,
    ) -> None:
        self.job, self.node, self.role = job, node, role
        self.registry = CollectorRegistry(auto_describe=True)
        self._server = None
        self._lock = threading.Lock()
        self.telemetry = None
        if role.node_level:
            ProcessCollector(registry=self.registry)
            self.telemetry = telemetry if telemetry is not None else GpuTelemetry()
            self.registry.register(_GpuCollector(self.telemetry, job, node))
        if role.job_level:
            self._make_job_metrics()

    def _gauge(self, name: str, doc: str) -> _LazyGauge:
        return _LazyGauge(Gauge(name, doc, [JOB_LABEL], registry=self.registry), self.job)

    def _make_job_metrics(self) -> None:
        r, j = self.registry, self.job
        self.step = self._gauge(contract.METRIC_STEP, "Last completed optimizer step.")
        self.total_steps = self._gauge(contract.METRIC_TOTAL_STEPS, "Optimizer steps the job trains for.")
        self.loss = self._gauge(contract.METRIC_LOSS, "Training loss of the last step (mean over data ranks).")
        self.step_seconds = Histogram(
            METRIC_STEP_SECONDS,
            "Wall time of one optimizer step.",
            [JOB_LABEL],
            buckets=STEP_SECONDS_BUCKETS,
            registry=r,
        ).labels(j)
        self.encode_seconds = Histogram(
            METRIC_ENCODE_SECONDS,
            "Seconds of a step rank 0 spent in the frozen VAE and text encoder (online encoding; part of the step).",
            [JOB_LABEL],
            buckets=STEP_SECONDS_BUCKETS,
            registry=r,
        ).labels(j)
        self.tokens_per_second = self._gauge(METRIC_TOKENS_PER_SECOND, "Tokens the whole job processed per second.")
        self.mfu = self._gauge(METRIC_MFU, "Model FLOPs utilisation of the last step (0..1).")
        self.model_flops = self._gauge(METRIC_MODEL_FLOPS, "Model FLOP/s each device delivered in the last step.")
        self.peak_flops = self._gauge(METRIC_PEAK_FLOPS, "Peak dense FLOP/s of one device that MFU is relative to.")
        self.world_size = self._gauge(METRIC_WORLD_SIZE, "Training processes (devices) of the job.")
        self.attempt = self._gauge(METRIC_ATTEMPT, "Attempt number: gang restarts before this one.")
        self.generation = self._gauge(
            contract.METRIC_GENERATION, "Restart generation rank 0 trains in (in-place restarts; = the attempt)."
        )
        self.checkpoint_blocking = Histogram(
            METRIC_CHECKPOINT_BLOCKING,
            "Seconds a checkpoint save blocked the training loop.",
            [JOB_LABEL],
            buckets=CHECKPOINT_BLOCKING_BUCKETS,
            registry=r,
        ).labels(j)
        self.checkpoint_interval = self._gauge(METRIC_CHECKPOINT_INTERVAL, "Steps between checkpoints.")
        self.last_checkpoint_step = self._gauge(
            contract.METRIC_LAST_CHECKPOINT_STEP, "Step of the newest complete checkpoint (0: none yet)."
        )
        self.restore_seconds = self._gauge(METRIC_RESTORE_SECONDS, "Seconds the last restore from a checkpoint took.")
        self.hangs = Counter(
            METRIC_HANGS,
            "Hangs the watchdog detected in the job's earlier attempts (its hang "
            "records in the metrics log, counted when this attempt starts).",
            [JOB_LABEL],
            registry=r,
        ).labels(j)
        self.goodput = self._gauge(METRIC_GOODPUT, "Productive training time / job wall time (0..1).")
        self._badput = Gauge(METRIC_BADPUT, "Job wall time lost, by cause.", [JOB_LABEL, "cause"], registry=r)

    # --- updates (job level) -------------------------------------------------------------------------------
    def set_badput(self, seconds_by_cause: dict[str, float]) -> None:
        for cause, seconds in seconds_by_cause.items():
            self._badput.labels(self.job, cause).set(seconds)

    # --- endpoint -------------------------------------------------------------------------------------------
    def serve(self, addr: str, port: int) -> int:
        """Start the HTTP endpoint (daemon thread); returns the bound port (useful with port 0)."""
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
        if self.telemetry is not None:
            self.telemetry.close()


__all__ = ["JOB_LABEL", "MetricsRole", "TrainerMetrics"] + [n for n in dir() if n.startswith("METRIC_")]
