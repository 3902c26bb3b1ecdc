"""The in-pod watchdog: a separate process that supervises the training workers and ends the pod on a hang.

Launch (docs/resilience.md): the pod's command is
    omnitrain watchdog --config /etc/omnitrain/config.yaml -- torchrun ... -m omnitrain train --config ...
The watchdog starts the command in its own process group with OMNITRAIN_HEARTBEAT_DIR set (each rank's
HeartbeatCallback writes there), then polls heartbeats, RDMA counters and (where there is NVML) GPU health. It is
not a thread of the trainer, so a held GIL, a SIGSTOP or a rank stuck in a collective does not stop it.

On a hang: dump evidence (JSON beside the heartbeats and in the log), ask each worker for a stack dump
(faulthandler on SIGUSR1; a stopped process cannot answer, so we wait only briefly), SIGKILL the whole worker
group, write the termination message (reason HangDetected) and exit with ExitCode.HANG. Hardware evidence ends the
pod the same way with reason HardwareFault / ExitCode.HARDWARE. Otherwise the pod exits with the workers' code.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from omnitrain import contract
from omnitrain.contract import ExitCode, TerminationMessage, write_termination_message
from omnitrain.metrics_log import StepLogWriter
from omnitrain.resilience.hang import Assessment, HangPolicy, StepTimeLearner, Verdict, assess
from omnitrain.resilience.heartbeat import ENV_HEARTBEAT_DIR, STACK_DUMP_SIGNAL, read_heartbeats, stack_dump_path
from omnitrain.resilience.rdma import DEFAULT_RDMA_ROOT, ENV_RDMA_ROOT, RdmaMonitor, read_counters

log = logging.getLogger("omnitrain.watchdog")

EVIDENCE_FILE = "hang-evidence.json"


@dataclass
class WatchdogOptions:
    policy: HangPolicy
    expected_workers: int = 1
    heartbeat_dir: str | None = None  # default: a fresh temporary folder
    rdma_root: str = DEFAULT_RDMA_ROOT
    poll_seconds: float = 0.5
    status_every_seconds: float = 30.0
    stack_dump_wait_seconds: float = 2.0
    gpu_health: bool = True
    termination_log: str | None = None  # default: contract's env/termination-log path
    metrics_log_dir: str | None = None  # append a `hang` record to the job's metrics log (omnitrain report)
    attempt: int = 0


class HeartbeatWatch:
    """Reads the evidence of one moment and judges it; no processes, no signals (unit-testable with fake files)."""

    def __init__(self, options: WatchdogOptions, heartbeat_dir: str, started_at: float) -> None:
        self.options = options
        self.heartbeat_dir = heartbeat_dir
        self.started_at = started_at
        self.learner = StepTimeLearner(options.policy)
        self.rdma = RdmaMonitor(options.rdma_root)

    def poll(self, now: float) -> Assessment:
        records = read_heartbeats(self.heartbeat_dir)
        self.learner.add(records)
        self.rdma.observe(now)
        step_timeout, learned = self.learner.timeout()
        return assess(
            now,
            records,
            self.options.expected_workers,
            self.started_at,
            self.options.policy,
            step_timeout,
            self.rdma.seconds_since_change(now),
            learned=learned,
        )


def _exit_code_of(returncode: int) -> int:
    """A shell-style exit code: killed by signal N -> 128 + N (what Kubernetes shows for the container)."""
    return 128 - returncode if returncode < 0 else returncode


def _descendants(root: int) -> set[int]:
    """All live descendants of `root` (Linux /proc), whatever session or process group they moved to."""
    parent_of: dict[int, int] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
            parent_of[int(stat.parent.name)] = int(fields[1])
        except (OSError, IndexError, ValueError):
            continue
    children: dict[int, list[int]] = {}
    for pid, ppid in parent_of.items():
        children.setdefault(ppid, []).append(pid)
    found, todo = set(), [root]
    while todo:
        for child in children.get(todo.pop(), []):
            if child not in found:
                found.add(child)
                todo.append(child)
    return found


def _die_with_parent() -> None:
    """In the worker child before exec: SIGKILL it when the watchdog dies (Linux prctl PR_SET_PDEATHSIG)."""
    try:
        import ctypes

        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL, 0, 0, 0)
    except (OSError, AttributeError):
        pass


def _environ_has(pid: int, name: str, value: str) -> bool:
    try:
        entries = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    except OSError:
        return False
    return f"{name}={value}".encode() in entries


def _is_stopped(pid: int) -> bool:
    """True for a SIGSTOP'd/traced process (Linux /proc state T or t): it cannot answer a signal until resumed."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state in ("T", "t")


def _wait_for(condition: Callable[[], bool], deadline_seconds: float, interval: float = 0.05) -> bool:
    end = time.monotonic() + deadline_seconds
    while time.monotonic() < end:
        if condition():
            return True
        time.sleep(interval)
    return condition()


class Supervisor:
    """Runs the worker command and the watch loop. `run()` returns the pod's exit code."""

    def __init__(
        self, command: Sequence[str], options: WatchdogOptions, clock: Callable[[], float] = time.time
    ) -> None:
        if not command:
            raise ValueError(
                "omnitrain watchdog needs the worker command after `--` "
                "(e.g. -- torchrun ... -m omnitrain train --config FILE)"
            )
        self.command = list(command)
        self.options = options
        self.clock = clock
        self.heartbeat_dir = options.heartbeat_dir or tempfile.mkdtemp(prefix="omnitrain-heartbeat-")
        Path(self.heartbeat_dir).mkdir(parents=True, exist_ok=True)
        # Records of an earlier run in a reused folder would be judged (and their pids signalled): start clean.
        for stale in list(Path(self.heartbeat_dir).glob("rank-*.json")) + list(
            Path(self.heartbeat_dir).glob("stacks-rank-*.txt")
        ):
            stale.unlink(missing_ok=True)
        self.proc: subprocess.Popen | None = None
        self.hang_detected_at: float | None = None
        self._forwarded: int | None = None

    # --- process handling ---------------------------------------------------------------------------------
    def _start(self) -> subprocess.Popen:
        env = dict(os.environ)
        env[ENV_HEARTBEAT_DIR] = self.heartbeat_dir
        # Same process group as the watchdog: whoever kills the pod's group (a local node agent) kills the workers
        # too; and if the watchdog itself is SIGKILLed, the kernel kills its direct child (PDEATHSIG).
        proc = self.proc = subprocess.Popen(self.command, env=env, preexec_fn=_die_with_parent)
        log.info(
            "watchdog: started workers (pid %d): %s; heartbeats in %s",
            proc.pid,
            " ".join(self.command),
            self.heartbeat_dir,
        )
        return proc

    def _worker_pids(self) -> list[int]:
        """The direct child, all its descendants (torchrun starts each rank in a session of its own, outside any
        process group we could signal) and the ranks named by heartbeats that carry our heartbeat folder."""
        assert self.proc is not None
        pids = {self.proc.pid} | _descendants(self.proc.pid)
        pids |= {
            hb.pid
            for hb in read_heartbeats(self.heartbeat_dir).values()
            if _environ_has(hb.pid, ENV_HEARTBEAT_DIR, self.heartbeat_dir)
        }
        return sorted(pids)

    def _signal_workers(self, signum: int) -> None:
        for pid in self._worker_pids():
            try:
                os.kill(pid, signum)
            except (ProcessLookupError, PermissionError):
                pass

    def _forward(self, signum, _frame) -> None:
        # Pod deletion sends SIGTERM to us (the container's main process): pass it on so workers stop cleanly.
        self._forwarded = signum
        if self.proc is not None and self.proc.poll() is None:
            self._signal_workers(signum)

    def _kill_workers(self) -> None:
        """SIGKILL the whole worker tree, twice: a process forked during the first walk is caught by the second."""
        assert self.proc is not None
        for _ in range(2):
            self._signal_workers(signal.SIGKILL)
        self.proc.wait()

    def _request_stack_dumps(self) -> list[str]:
        records = read_heartbeats(self.heartbeat_dir)
        asked = []
        for hb in records.values():
            path = stack_dump_path(self.heartbeat_dir, hb.rank)
            if _is_stopped(hb.pid):
                continue
            try:
                os.kill(hb.pid, STACK_DUMP_SIGNAL)
                asked.append(str(path))
            except (ProcessLookupError, PermissionError):
                continue
        if asked:
            # A SIGSTOP'd rank cannot answer: wait briefly for the ones that can, never for all.
            _wait_for(
                lambda: all(Path(p).exists() and Path(p).stat().st_size > 0 for p in asked),
                self.options.stack_dump_wait_seconds,
            )
        return [p for p in asked if Path(p).exists() and Path(p).stat().st_size > 0]

    # --- endings ------------------------------------------------------------------------------------------
    def _end(self, code: ExitCode, reason: str, message: str, assessment: Assessment | None, evidence: dict) -> int:
        step = assessment.min_step if assessment is not None else None
        path = Path(self.heartbeat_dir) / EVIDENCE_FILE
        try:
            path.write_text(json.dumps(evidence, indent=1, sort_keys=True))
        except OSError:
            pass
        log.error("watchdog: %s: %s; evidence: %s", reason, message, json.dumps(evidence, sort_keys=True))
        write_termination_message(
            TerminationMessage(reason=reason, message=message, step=step, evidence=evidence),
            self.options.termination_log,
        )
        return int(code)

    def _on_hang(self, assessment: Assessment, now: float) -> int:
        self.hang_detected_at = now
        evidence = assessment.evidence()
        counters = read_counters(self.options.rdma_root)
        if counters:
            evidence["rdma_counters"] = dict(list(counters.items())[:8])
        evidence["stack_dumps"] = self._request_stack_dumps()
        self._kill_workers()
        self._log_hang(assessment, now)
        overdue = assessment.overdue
        message = (
            f"no step progress on rank(s) {[r.rank for r in overdue][:8]} for "
            f"{max(r.age for r in overdue):.0f}s (limit {min(r.limit for r in overdue):.0f}s, "
            f"section {overdue[0].section}) and no RDMA traffic"
        )
        return self._end(ExitCode.HANG, "HangDetected", message, assessment, evidence)

    def _log_hang(self, assessment: Assessment, now: float) -> None:
        """A `hang` record in the job's metrics log: the report dates the detection from it. Best effort."""
        if not self.options.metrics_log_dir:
            return
        try:
            writer = StepLogWriter(self.options.metrics_log_dir, self.options.attempt)
            try:
                writer.write(
                    "hang", now, step=assessment.min_step, stalled_ranks=[r.rank for r in assessment.overdue][:16]
                )
            finally:
                writer.close()
        except Exception as exc:  # a missing volume must not change the pod's exit code
            log.warning("watchdog: could not write the hang record to %s: %s", self.options.metrics_log_dir, exc)

    def _on_hardware(self, fault, assessment: Assessment | None) -> int:
        self._kill_workers()
        evidence = {"hardware": fault.evidence(), "node": os.environ.get("NODE_NAME", "")}
        return self._end(ExitCode.HARDWARE, "HardwareFault", f"GPU {fault.gpu}: {fault.detail}", assessment, evidence)

    # --- main loop ----------------------------------------------------------------------------------------
    def run(self) -> int:
        previous = {s: signal.signal(s, self._forward) for s in (signal.SIGTERM, signal.SIGINT)}
        health = None
        if self.options.gpu_health:
            from omnitrain.resilience.gpu_health import GpuHealth

            health = GpuHealth()
            if not health.available:
                health = None
        try:
            proc = self._start()
            watch = HeartbeatWatch(self.options, self.heartbeat_dir, self.clock())
            last_status = self.clock()
            slow_reported = False
            assessment: Assessment | None = None
            while True:
                returncode = proc.poll()
                if returncode is not None:
                    code = _exit_code_of(returncode)
                    log.info("watchdog: workers exited with %d", code)
                    return code
                now = self.clock()
                assessment = watch.poll(now)
                if assessment.verdict is Verdict.HANG and self._forwarded is None:
                    if proc.poll() is None:  # a worker that just exited on its own is not hung
                        return self._on_hang(assessment, now)
                elif assessment.verdict is Verdict.SLOW:
                    if not slow_reported:
                        log.warning(
                            "watchdog: slow step: rank(s) %s past %.1fs but RDMA counters move (%.1fs ago)",
                            [r.rank for r in assessment.overdue],
                            assessment.overdue[0].limit,
                            assessment.rdma_seconds_since_change,
                        )
                        slow_reported = True
                else:
                    slow_reported = False
                if health is not None:
                    fault = health.check()
                    if fault is not None:
                        return self._on_hardware(fault, assessment)
                if now - last_status >= self.options.status_every_seconds:
                    last_status = now
                    log.info(
                        "watchdog: step %s on %d rank(s), step timeout %.1fs%s, rdma %s",
                        assessment.min_step,
                        len([r for r in assessment.ranks if r.rank is not None]),
                        assessment.step_timeout,
                        " (learned)" if assessment.learned else "",
                        "no evidence"
                        if assessment.rdma_seconds_since_change is None
                        else f"changed {assessment.rdma_seconds_since_change:.0f}s ago",
                    )
                time.sleep(self.options.poll_seconds)  # the poll period, not synchronisation
        finally:
            for s, handler in previous.items():
                signal.signal(s, handler)
            if health is not None:
                health.close()
            if self.proc is not None and self.proc.poll() is None:
                self._kill_workers()


@dataclass(frozen=True)
class PodSettings:
    """What the watchdog takes from the trainer config and the pod's environment."""

    timeout: float
    workers: int
    metrics_log_dir: str | None = None  # the job's metrics log (written only by node rank 0's watchdog)
    attempt: int = 0


def settings_from_config(config_path: str | None, timeout: float | None, environ: dict[str, str]) -> PodSettings:
    """Hang timeout, workers in this pod, metrics log and attempt from the trainer config and the operator's /
    torchrun's env; an explicit --timeout wins."""
    workers = int(environ.get("PET_NPROC_PER_NODE", "0") or 0)
    configured, log_dir, attempt = None, None, int(environ.get(contract.ENV_ATTEMPT, "0") or 0)
    if config_path:
        import yaml

        from omnitrain.spec import TrainerConfig

        with open(config_path) as f:
            config = TrainerConfig.model_validate(yaml.safe_load(f))
        spec = config.spec
        configured = float(spec.resilience.hang_timeout_seconds)
        workers = workers or spec.parallelism.gpus_per_node
        attempt = int(environ.get(contract.ENV_ATTEMPT, config.run.attempt) or 0)
        if int(environ.get("PET_NODE_RANK", "0") or 0) == 0:
            # Same place as the observability callback's log (<root>/<job>/metrics), one writer per attempt file.
            log_dir = str(Path(spec.checkpoint.job_root(config.run.job_name)) / "metrics")
    value = timeout if timeout is not None else configured
    if value is None:
        raise ValueError(
            "omnitrain watchdog: give --config FILE (spec.resilience.hangTimeoutSeconds) or --timeout SECONDS"
        )
    return PodSettings(timeout=value, workers=workers or 1, metrics_log_dir=log_dir, attempt=attempt)


def main(args) -> int:
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(asctime)s %(levelname)s %(message)s")
    command = list(args.command)
    if command and command[0] == "--":
        command = command[1:]
    try:
        pod = settings_from_config(args.config, args.timeout, dict(os.environ))
        if not command:
            raise ValueError(
                "omnitrain watchdog needs the worker command after `--` "
                "(e.g. -- torchrun ... -m omnitrain train --config FILE)"
            )
    except (ValueError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return int(ExitCode.CONFIG)
    policy = HangPolicy(
        timeout=pod.timeout,
        startup_timeout=args.startup_timeout,
        long_section_timeout=args.long_section_timeout,
        learn=not args.no_learn,
        warmup_steps=args.warmup_steps,
        safety_factor=args.safety_factor,
        min_timeout=args.min_timeout,
    )
    options = WatchdogOptions(
        policy=policy,
        expected_workers=args.workers or pod.workers,
        heartbeat_dir=args.heartbeat_dir,
        rdma_root=args.rdma_root or os.environ.get(ENV_RDMA_ROOT, DEFAULT_RDMA_ROOT),
        poll_seconds=args.poll,
        status_every_seconds=args.status_every,
        gpu_health=not args.no_gpu_health,
        termination_log=args.termination_log,
        metrics_log_dir=args.metrics_log_dir or pod.metrics_log_dir,
        attempt=args.attempt if args.attempt is not None else pod.attempt,
    )
    return Supervisor(command, options).run()
