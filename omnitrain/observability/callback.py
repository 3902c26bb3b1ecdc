"""The training-loop callback that feeds the pod's Prometheus endpoint and the job's metrics log.

A TrainerCallback (omnitrain.trainer.callbacks) and CheckpointListener (the checkpointer's), keywords only, called on
every rank; only global rank 0 records job figures, local rank 0 serves:
  on_train_start(step=<resumed from>, restore_seconds=)
  on_step_end(stats=StepStats)      (step_seconds None: measured here between calls)
  on_train_end(step=, reason=)
  on_checkpoint_blocked(step=, seconds=), on_checkpoint_complete(step=), on_restore(step=, seconds=, source=)
  outcome() -> the job's goodput (rank 0)
Hangs come from the watchdog's `hang` records in the metrics log (counted when an attempt starts); goodput is
recomputed from the log here (on_goodput).
"""

from __future__ import annotations

import logging
import math
import os
import time
from collections.abc import Callable
from pathlib import Path

from omnitrain import contract
from omnitrain.metrics_log import StepLogWriter, read_job_log
from omnitrain.observability import mfu as mfu_math
from omnitrain.observability.gpu_telemetry import GpuTelemetry
from omnitrain.observability.peaks import configured_peak_flops, resolve_peak_flops
from omnitrain.observability.trainer_metrics import MetricsRole, TrainerMetrics
from omnitrain.resilience.goodput import GENERATION_RECORD, GoodputReport, compute_goodput, events_from_metrics_log
from omnitrain.spec import CheckpointSpec
from omnitrain.timestamps import parse_rfc3339
from omnitrain.training_hooks import COMPLETED, CheckpointHooks, StepStats, TrainerHooks, TrainOutcome

log = logging.getLogger(__name__)

METRICS_LOG_SUBDIR = "metrics"
GOODPUT_EVERY_SECONDS = 30.0  # recomputing walks the whole job's log: often enough for a dashboard, cheap


def parse_timestamp(text: str | None) -> float | None:
    """run.jobCreated -> epoch seconds; None (goodput then counts from the first attempt's start) if absent."""
    when = parse_rfc3339(text)
    if text and when is None:
        log.warning("run.jobCreated %r is not an RFC 3339 time; goodput counts from the first attempt's start", text)
    return when


def _finite(value: float | None) -> float | None:
    """None for missing or non-finite values (a NaN loss must not poison the gauges and the log)."""
    if value is None:
        return None
    value = float(value)
    return value if math.isfinite(value) else None


def metrics_log_dir(checkpoint: CheckpointSpec, job: str) -> Path:
    """Where the metrics log of a job lives: `<root>/<job>/metrics`, beside the job's checkpoints
    (CheckpointSpec.job_root: the persistent tier, which survives the pods, else the node-local disk)."""
    return Path(checkpoint.job_root(job)) / METRICS_LOG_SUBDIR


def detect_device_name() -> str | None:
    """The accelerator's name as NVML or torch reports it; None on CPU."""
    telemetry = GpuTelemetry()
    try:
        names = telemetry.device_names()
    finally:
        telemetry.close()
    if names:
        return names[0]
    try:
        import torch  # only when NVML has no answer: importing observability must not pull in torch

        if torch.cuda.is_available():
            return torch.cuda.get_device_name(0)
    except Exception:
        pass
    return None


class MetricsCallback(TrainerHooks, CheckpointHooks):
    def __init__(
        self,
        *,
        job: str,
        attempt: int,
        total_steps: int,
        world_size: int,
        rank: int,
        local_rank: int,
        node: str = "",
        metrics_addr: str = "0.0.0.0",
        metrics_port: int | None = 9400,
        log_dir: str | os.PathLike | None = None,
        peak_flops_per_device: float | None = None,
        checkpoint_interval: int | None = None,
        job_created: float | None = None,
        goodput_every_seconds: float = GOODPUT_EVERY_SECONDS,
        clock: Callable[[], float] = time.time,
        monotonic: Callable[[], float] = time.perf_counter,
    ) -> None:
        self.job, self.attempt, self.total_steps = job, attempt, total_steps
        self.world_size, self.rank, self.local_rank = world_size, rank, local_rank
        self.role = MetricsRole.for_rank(rank, local_rank)
        self.metrics_addr, self.metrics_port = metrics_addr, metrics_port
        self.peak_flops_per_device = peak_flops_per_device
        self.checkpoint_interval = checkpoint_interval
        self.log_dir = Path(log_dir) if log_dir is not None and self.role.job_level else None
        self._clock, self._monotonic = clock, monotonic
        self.metrics: TrainerMetrics | None = (
            TrainerMetrics(job, node=node, role=self.role) if self.role.serves else None
        )
        self.bound_port: int | None = None
        self._writer: StepLogWriter | None = None
        self._pending: list[tuple[str, float, dict]] = []  # records from before on_train_start (a restore)
        self._restore_recorded = False
        self._last_step_mark: float | None = None
        # Goodput (rank 0): the whole job's log (earlier attempts read once at start, this one as it is written),
        # recomputed every goodput_every_seconds and at the end; the final report goes to the termination message.
        self.job_created, self.goodput_every_seconds = job_created, goodput_every_seconds
        self._log_records: list[dict] = []
        self._goodput_mark: float | None = None
        self.goodput_report: GoodputReport | None = None

    @classmethod
    def from_config(cls, config, environ: dict[str, str] | None = None) -> MetricsCallback:
        """Built from a TrainerConfig and torchrun's/the operator's environment (contract.py)."""
        env = os.environ if environ is None else environ
        spec, run = config.spec, config.run
        port = int(env.get(contract.ENV_METRICS_PORT, spec.metrics_port))
        world_size = int(env.get("WORLD_SIZE", spec.parallelism.world_size))
        rank, local_rank = int(env.get("RANK", 0)), int(env.get("LOCAL_RANK", 0))
        peak = None
        if rank == 0:  # the environment (OMNITRAIN_PEAK_FLOPS) wins over the spec, the spec over the table
            peak = resolve_peak_flops(detect_device_name(), spec.training.precision, env)
            if spec.peak_flops_per_device is not None and configured_peak_flops(env) is None:
                peak = spec.peak_flops_per_device
        return cls(
            job=env.get(contract.ENV_JOB_NAME, run.job_name),
            attempt=int(env.get(contract.ENV_ATTEMPT, run.attempt)),
            total_steps=spec.training.steps,
            world_size=world_size,
            rank=rank,
            local_rank=local_rank,
            node=env.get(contract.ENV_NODE_NAME, ""),
            metrics_addr=env.get(contract.ENV_POD_IP, "0.0.0.0"),
            metrics_port=port,
            log_dir=metrics_log_dir(spec.checkpoint, run.job_name),
            peak_flops_per_device=peak,
            checkpoint_interval=spec.checkpoint.interval_steps,
            job_created=parse_timestamp(run.job_created),
        )

    # --- helpers ------------------------------------------------------------------------------------------
    def _record(self, kind: str, **fields) -> None:
        if self._writer is not None:
            when = self._clock()
            self._writer.write(kind, when, **fields)
            self._log_records.append({"kind": kind, "time": when, "attempt": self.attempt, **fields})
        elif self.log_dir is not None and not self._started:
            # The checkpointer restores (and tells us) before the loop calls on_train_start: keep it for the log.
            self._pending.append((kind, self._clock(), fields))

    @property
    def _started(self) -> bool:
        return self._last_step_mark is not None

    @property
    def _job(self):
        """The job-level metric objects, or None on ranks that do not serve them."""
        return self.metrics if self.role.job_level else None

    # --- training-loop hooks ------------------------------------------------------------------------------
    def on_train_start(self, *, step: int, restore_seconds: float = 0.0, state: object = None) -> None:
        if self.metrics is not None and self.metrics_port is not None:
            try:
                self.bound_port = self.metrics.serve(self.metrics_addr, self.metrics_port)
                log.info(
                    "metrics endpoint on %s:%d (job figures: %s, node figures: %s)",
                    self.metrics_addr,
                    self.bound_port,
                    self.role.job_level,
                    self.role.node_level,
                )
            except OSError as exc:
                # Training goes on without an endpoint (the OmniTrainMetricsMissing alert will say so): losing
                # the metrics must not cost the GPUs' work.
                log.error(
                    "metrics endpoint %s:%s not started (%s); set spec.metricsPort to a free port",
                    self.metrics_addr,
                    self.metrics_port,
                    exc,
                )
        self._last_step_mark = self._monotonic()
        m = self._job
        if m is None:
            return
        m.step.set(step)
        m.total_steps.set(self.total_steps)
        m.world_size.set(self.world_size)
        m.attempt.set(self.attempt)
        m.generation.set(self.attempt)  # the supervisor starts each generation with OMNITRAIN_ATTEMPT = generation
        m.last_checkpoint_step.set(step)
        if self.checkpoint_interval:
            m.checkpoint_interval.set(self.checkpoint_interval)
        if self.peak_flops_per_device is not None:
            m.peak_flops.set(self.peak_flops_per_device)
        if self.log_dir is not None:
            self._log_records = self._earlier_attempts(self.log_dir)
            for record in self._log_records:
                if record["kind"] == "hang":  # written by the watchdog that ended an earlier attempt
                    m.hangs.inc()
            self._writer = StepLogWriter(self.log_dir, self.attempt)
            for kind, when, fields in self._pending:
                self._writer.write(kind, when, **fields)
                self._log_records.append({"kind": kind, "time": when, "attempt": self.attempt, **fields})
            self._pending.clear()
            self._goodput_mark = self._monotonic()
        self._record(
            "start",
            step=step,
            total_steps=self.total_steps,
            world_size=self.world_size,
            peak_flops=self.peak_flops_per_device,
        )
        if restore_seconds and not self._restore_recorded:  # not already reported by the checkpointer
            self.on_restore(step=step, seconds=restore_seconds)

    def on_step_end(self, *, stats: StepStats, state: object = None) -> None:
        now = self._monotonic()
        measured = now - self._last_step_mark if self._last_step_mark is not None else None
        self._last_step_mark = now
        m = self._job
        if m is None:
            return
        step = stats.step
        step_seconds = _finite(stats.step_seconds) or measured
        loss, tokens, flops = _finite(stats.loss), _finite(stats.tokens), _finite(stats.flops)
        data_seconds = _finite(stats.data_seconds)
        encode_seconds = _finite(stats.encode_seconds)
        m.step.set(step)
        if encode_seconds is not None:
            m.encode_seconds.observe(encode_seconds)
        if loss is not None:
            m.loss.set(loss)
        tps = mfu_value = None
        if step_seconds and step_seconds > 0:
            m.step_seconds.observe(step_seconds)
            if tokens is not None:
                tps = mfu_math.tokens_per_second(tokens, step_seconds)
                m.tokens_per_second.set(tps)
            if flops is not None:
                m.model_flops.set(mfu_math.achieved_flops_per_device(flops, step_seconds, self.world_size))
                mfu_value = mfu_math.mfu(flops, step_seconds, self.world_size, self.peak_flops_per_device)
                if mfu_value is not None:
                    m.mfu.set(mfu_value)
        extra = {"data_seconds": data_seconds} if data_seconds is not None else {}
        if encode_seconds is not None:
            extra["encode_seconds"] = encode_seconds
        self._record(
            "step",
            step=step,
            loss=loss,
            step_seconds=step_seconds,
            tokens=tokens,
            tokens_per_second=tps,
            mfu=mfu_value,
            **extra,
        )
        if self._goodput_mark is not None and now - self._goodput_mark >= self.goodput_every_seconds:
            self._goodput_mark = now
            self._update_goodput()

    def on_train_end(self, *, step: int | None, reason: str = COMPLETED, state: object = None) -> None:
        if self._job is not None:
            self._record("end", step=step, reason=reason)
            if self._goodput_mark is not None:
                self._update_goodput()
        if self._writer is not None:
            self._writer.close()
            self._writer = None

    # --- events from checkpointing and resilience ---------------------------------------------------------
    def on_checkpoint_blocked(self, *, step: int, seconds: float) -> None:
        if self._job is not None:
            self._job.checkpoint_blocking.observe(seconds)
            self._record("checkpoint", step=step, blocking_seconds=seconds)

    def on_checkpoint_complete(self, *, step: int) -> None:
        if self._job is not None:
            self._job.last_checkpoint_step.set(step)
            self._record("checkpoint", step=step, complete=True)

    def on_restore(self, *, step: int, seconds: float, source: str = "local", sources: list[str] | None = None) -> None:
        if self._job is not None:
            self._restore_recorded = True
            self._job.restore_seconds.set(seconds)
            # source: the slowest tier any rank read (local, peer, persistent); sources: each rank's, by rank
            self._record("restore", step=step, seconds=seconds, source=source, sources=sources or [source])

    def on_goodput(self, *, goodput: float, badput_seconds: dict[str, float] | None = None) -> None:
        if self._job is not None:
            self._job.goodput.set(goodput)
            self._job.set_badput(badput_seconds or {})
            self._record("goodput", goodput=goodput, badput_seconds=badput_seconds or {})

    # --- goodput ------------------------------------------------------------------------------------------
    def _earlier_attempts(self, log_dir: Path) -> list[dict]:
        """Records of the attempts before this one (a torn last line of a killed attempt is skipped), and the
        `generation` record the supervisor wrote for this one before starting us (its restart barrier begins
        there)."""
        try:
            log_ = read_job_log(log_dir)
        except FileNotFoundError:
            return []
        return [
            r
            for r in log_.records
            if int(r.get("attempt", -1)) < self.attempt
            or (int(r.get("attempt", -1)) == self.attempt and r.get("kind") == GENERATION_RECORD)
        ]

    def _update_goodput(self) -> None:
        report = compute_goodput(events_from_metrics_log(self._log_records, job_started=self.job_created))
        if report.wall_seconds <= 0:
            return
        self.goodput_report = report
        self.on_goodput(goodput=report.goodput, badput_seconds=report.badput_seconds)

    def outcome(self) -> TrainOutcome:
        return TrainOutcome(goodput=self.goodput_report.to_status() if self.goodput_report is not None else None)

    def close(self) -> None:
        if self._writer is not None:
            self.on_train_end(step=None, reason="Closed")
        if self.metrics is not None:
            self.metrics.close()


__all__ = ["METRICS_LOG_SUBDIR", "MetricsCallback", "detect_device_name", "metrics_log_dir"]
