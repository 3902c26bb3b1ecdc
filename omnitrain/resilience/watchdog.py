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

With OMNITRAIN_GANG_FILE (in-place gang restarts, spec.resilience.restartMode InPlace) the watchdog follows the
operator's restart generations (omnitrain.gang): it starts the command as the node rank the announcement gives its
pod, with PET_NNODES/PET_NODE_RANK/PET_MASTER_ADDR/PET_MASTER_PORT from it; when a newer generation is announced it
kills the workers and starts them again for that one, in the same process; when the workers fail it records the
generation (state dir, termination message) and exits, and once the kubelet has restarted it, waits for a newer
generation. The decisions are omnitrain.resilience.generations; this file does the processes.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING

from omnitrain import contract
from omnitrain.contract import ExitCode, TerminationMessage, write_termination_message
from omnitrain.gang import (
    ENV_GANG_FILE,
    ENV_POD_NAME,
    ENV_STATE_DIR,
    GangAnnouncement,
    resolve_address,
)
from omnitrain.gang_watch import GangSource, gang_source
from omnitrain.metrics_log import StepLogWriter
from omnitrain.resilience.generations import (
    ACKED_GENERATION,
    FAILED_GENERATION,
    Do,
    failure_superseded,
    generation_env,
    next_action,
    read_generation,
    write_generation,
)
from omnitrain.resilience.goodput import GENERATION_RECORD
from omnitrain.resilience.hang import Assessment, HangPolicy, StepTimeLearner, Verdict, assess
from omnitrain.resilience.heartbeat import ENV_HEARTBEAT_DIR, STACK_DUMP_SIGNAL, read_heartbeats, stack_dump_path
from omnitrain.resilience.rdma import DEFAULT_RDMA_ROOT, ENV_RDMA_ROOT, RdmaMonitor, read_counters
from omnitrain.timestamps import parse_rfc3339

if TYPE_CHECKING:
    from omnitrain.resilience.gpu_health import GpuHealth

log = logging.getLogger("omnitrain.watchdog")

EVIDENCE_FILE = "hang-evidence.json"
GANG_POLL_SECONDS = 0.2  # how often a generation-following watchdog reads the announcement (one small file)


@dataclass(frozen=True)
class GangOptions:
    """Follow the operator's restart generations (in-place gang restarts)."""

    gang_file: str  # the mounted announcement (omnitrain.gang.GANG_FILE)
    pod_name: str  # this pod's name: its key in the announcement's members
    state_dir: str  # survives the container's restarts: failed-generation, acked-generation
    metrics_log_dir: str | None = None  # the job's metrics log; written by the node rank 0 of a generation
    # where the announcement is read (the API watch with the mount as fallback); None: the mounted file alone
    source: GangSource | None = None


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
    gang: GangOptions | None = None  # None: run the command once (Recreate restarts)


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
        self.base_options = self.options = options
        self.clock = clock
        self.base_heartbeat_dir = options.heartbeat_dir or tempfile.mkdtemp(prefix="omnitrain-heartbeat-")
        self.heartbeat_dir = self.base_heartbeat_dir
        _fresh_heartbeat_dir(self.heartbeat_dir)
        self.proc: subprocess.Popen | None = None
        self.hang_detected_at: float | None = None
        self.generation: int | None = None  # the generation the workers run in (generation-following mode)
        self.gang_note: Callable[[], str] = str  # where the announcement comes from, for the status line
        self.health: GpuHealth | None = None
        self._forwarded: int | None = None

    # --- process handling ---------------------------------------------------------------------------------
    def _start(self, extra_env: dict[str, str] | None = None) -> subprocess.Popen:
        env = dict(os.environ, **(extra_env or {}))
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
        if self._forwarded is not None:  # a SIGTERM that came between two generations: these workers end too
            self._signal_workers(self._forwarded)
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
            self._signal_ranks(signum)

    def _signal_ranks(self, signum: int) -> None:
        """The training ranks (their heartbeats name them) and nothing else once they are known: torchrun would
        give them only its own 30 s before SIGKILL, and a checkpoint writer must finish the final save, not die in
        it. Before any rank has beaten, the whole worker tree (torchrun passes the signal on)."""
        assert self.proc is not None
        ranks = [
            hb.pid
            for hb in read_heartbeats(self.heartbeat_dir).values()
            if _environ_has(hb.pid, ENV_HEARTBEAT_DIR, self.heartbeat_dir)
        ]
        for pid in ranks or self._worker_pids():
            try:
                os.kill(pid, signum)
            except (ProcessLookupError, PermissionError):
                pass

    def termination_log(self) -> Path:
        return Path(
            self.options.termination_log
            or os.environ.get(contract.TERMINATION_LOG_ENV, contract.DEFAULT_TERMINATION_LOG)
        )

    def _stopped_code(self, code: int) -> int:
        """After a forwarded SIGTERM, workers that stopped with a final checkpoint said so in the termination log
        (reason Preempted); under torchrun their 44 arrives here as 1, so the pod gets ExitCode.PREEMPTED back."""
        if self._forwarded is None or code == 0:
            return code
        try:
            message = TerminationMessage.from_json(self.termination_log().read_text())
        except OSError:
            message = None
        return int(ExitCode.PREEMPTED) if message and message.reason == contract.PREEMPTED_REASON else code

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
            TerminationMessage(
                reason=reason, message=message, step=step, evidence=evidence, generation=self.generation
            ),
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
        if self.options.gpu_health:
            from omnitrain.resilience.gpu_health import GpuHealth

            self.health = GpuHealth()
            if not self.health.available:
                self.health = None
        try:
            if self.options.gang is not None:
                return GenerationFollower(self, self.options.gang).run()
            code = self._supervise(self._start())
            assert code is not None  # nothing supersedes a run without generations
            return code
        finally:
            for s, handler in previous.items():
                signal.signal(s, handler)
            if self.health is not None:
                self.health.close()
            if self.proc is not None and self.proc.poll() is None:
                self._kill_workers()

    def _supervise(self, proc: subprocess.Popen, superseded: Callable[[], bool] | None = None) -> int | None:
        """Watch the running workers until they end (their exit code), hang or fault (the pod's exit code), or
        `superseded()` says a newer generation needs them gone (None, after killing them)."""
        watch = HeartbeatWatch(self.options, self.heartbeat_dir, self.clock())
        last_status = self.clock()
        slow_reported = False
        assessment: Assessment | None = None
        poll = self.options.poll_seconds if superseded is None else min(self.options.poll_seconds, GANG_POLL_SECONDS)
        while True:
            returncode = proc.poll()
            if returncode is not None:
                code = self._stopped_code(_exit_code_of(returncode))
                log.info("watchdog: workers exited with %d", code)
                return code
            if superseded is not None and self._forwarded is None and superseded():
                self._kill_workers()
                return None
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
            if self.health is not None:
                fault = self.health.check()
                if fault is not None:
                    return self._on_hardware(fault, assessment)
            if now - last_status >= self.options.status_every_seconds:
                last_status = now
                log.info(
                    "watchdog: step %s on %d rank(s), step timeout %.1fs%s, rdma %s%s",
                    assessment.min_step,
                    len([r for r in assessment.ranks if r.rank is not None]),
                    assessment.step_timeout,
                    " (learned)" if assessment.learned else "",
                    "no evidence"
                    if assessment.rdma_seconds_since_change is None
                    else f"changed {assessment.rdma_seconds_since_change:.0f}s ago",
                    "" if self.generation is None else f", generation {self.generation} ({self.gang_note()})",
                )
            time.sleep(poll)  # the poll period, not synchronisation


def _fresh_heartbeat_dir(path: str) -> None:
    """Create the folder; records of an earlier run in a reused folder would be judged (and their pids
    signalled): remove them."""
    folder = Path(path)
    folder.mkdir(parents=True, exist_ok=True)
    for stale in list(folder.glob("rank-*.json")) + list(folder.glob("stacks-rank-*.txt")):
        stale.unlink(missing_ok=True)


class GenerationFollower:
    """The generation loop of one pod (docs/resilience.md, "In-place gang restart"): wait for a generation this pod
    is a member of, run the workers for it under the Supervisor's watch, and start again when a newer one comes.
    The decisions are `generations.next_action`; this class reads files, sleeps and logs."""

    def __init__(self, supervisor: Supervisor, gang: GangOptions) -> None:
        self.sup, self.gang = supervisor, gang
        self.source = gang.source or GangSource(gang.gang_file)
        supervisor.gang_note = lambda: f"announcement {self.source.describe()}"
        self.failed = read_generation(gang.state_dir, FAILED_GENERATION)
        acked = read_generation(gang.state_dir, ACKED_GENERATION)
        if acked is not None and (self.failed is None or acked > self.failed):
            # The previous container started that generation and ended without recording a failure (the supervisor
            # itself was killed, e.g. OOM): its rendezvous is over, rejoining it would wait there until a hang.
            log.warning(
                "watchdog: this pod's previous container ran generation %d and ended without a report; "
                "treating it as failed there",
                acked,
            )
            self.failed = acked

    def run(self) -> int:
        try:
            return self._follow()
        finally:
            self.source.close()

    def _follow(self) -> int:
        sup = self.sup
        last_why, last_status = "", float("-inf")
        while sup._forwarded is None:
            announcement = self.source.read()
            action = next_action(announcement, self.gang.pod_name, self.failed, None)
            if action.do is Do.START and announcement is not None and action.node_rank is not None:
                code = self._run_generation(announcement, action.node_rank)
                if code is None:
                    continue  # superseded: the workers are gone, start the newer generation
                if code != 0 and sup._forwarded is None:
                    self._record_failure(announcement.generation, code)
                return code
            now = sup.clock()
            if action.why != last_why or now - last_status >= sup.options.status_every_seconds:
                log.info("watchdog: waiting: %s (announcement %s)", action.why, self.source.describe())
                last_why, last_status = action.why, now
            time.sleep(GANG_POLL_SECONDS)  # the poll period, not synchronisation
        log.info("watchdog: signal %d while waiting for a generation; no workers to stop", sup._forwarded)
        return 128 + sup._forwarded

    def _run_generation(self, announcement: GangAnnouncement, node_rank: int) -> int | None:
        """Start and watch one generation's workers; None when a newer generation superseded it."""
        sup, generation = self.sup, announcement.generation
        sup.generation = generation
        # The generation is the attempt (metrics log, goodput); only node rank 0 of this generation writes the log.
        sup.options = replace(
            sup.base_options,
            attempt=generation,
            metrics_log_dir=self.gang.metrics_log_dir if node_rank == 0 else None,
        )
        # A fresh folder: the last generation's records would read as a hang, and its pids are not ours any more.
        previous_dir = sup.heartbeat_dir
        sup.heartbeat_dir = str(Path(sup.base_heartbeat_dir) / f"generation-{generation:05d}")
        _fresh_heartbeat_dir(sup.heartbeat_dir)
        if previous_dir != sup.base_heartbeat_dir:
            shutil.rmtree(previous_dir, ignore_errors=True)
        self._clear_termination_message()
        try:
            write_generation(self.gang.state_dir, ACKED_GENERATION, generation)
        except OSError as exc:  # the workers matter more than the bookkeeping; the log line below still says it
            log.error("watchdog: could not record generation %d in %s: %s", generation, self.gang.state_dir, exc)
        if node_rank == 0:
            self._log_generation(announcement)
        log.info(
            "generation %d: node rank %d started (of %d; rendezvous %s:%d; announcement %s)",
            generation,
            node_rank,
            announcement.nnodes,
            announcement.master_addr,
            announcement.master_port,
            self.source.describe(),
        )
        env = generation_env(announcement, node_rank)
        env["PET_MASTER_ADDR"] = env["MASTER_ADDR"] = resolve_address(
            announcement.master_addr, os.environ.get(contract.ENV_HOSTS_FILE)
        )
        proc = sup._start(env)
        code = sup._supervise(proc, superseded=lambda: self._superseded(generation))
        if code is None:
            log.info("generation %d: workers stopped for a newer generation", generation)
        elif sup._forwarded is None and failure_superseded(code, self.source.read(), generation):
            log.info("generation %d: workers exited with %d after a newer generation was announced", generation, code)
            sup.hang_detected_at = None
            return None
        elif code != 0 and sup._forwarded is None:
            self._note_worker_failure(code)
        return code

    def _superseded(self, generation: int) -> bool:
        announcement = self.source.read()
        return next_action(announcement, self.gang.pod_name, self.failed, generation).do is Do.STOP

    def _record_failure(self, generation: int, code: int) -> None:
        """Before exiting: the kubelet restarts the container in place, and the next supervisor must not start
        this generation again."""
        try:
            write_generation(self.gang.state_dir, FAILED_GENERATION, generation)
        except OSError as exc:  # the exit code still tells the operator; a restarted supervisor may rejoin late
            log.error("watchdog: could not record the failed generation in %s: %s", self.gang.state_dir, exc)
        log.error(
            "generation %d: workers failed with %d; exiting for the operator to announce the next", generation, code
        )

    # --- the termination message --------------------------------------------------------------------------
    def _termination_log(self) -> Path:
        return self.sup.termination_log()

    def _clear_termination_message(self) -> None:
        """An earlier generation's message (the trainer writes one, e.g. StorageError) must not describe this one."""
        path = self._termination_log()
        try:
            if path.is_file() and path.stat().st_size:
                path.write_text("")
        except OSError:
            pass

    def _note_worker_failure(self, code: int) -> None:
        """The operator classifies only terminations of the current generation: the message must carry it. The
        trainer's own message (e.g. StorageError) is kept, with the generation added."""
        try:
            message = TerminationMessage.from_json(self._termination_log().read_text())
        except OSError:
            message = None
        if message is None:
            message = TerminationMessage(
                reason="WorkersFailed", message=f"the workers exited with {code} in generation {self.sup.generation}"
            )
        write_termination_message(replace(message, generation=self.sup.generation), self.sup.options.termination_log)

    def _log_generation(self, announcement: GangAnnouncement) -> None:
        """A `generation` record in the job's metrics log, stamped at the announcement: goodput counts the time
        from there to the generation's first step as the restart barrier. Best effort."""
        log_dir = self.sup.options.metrics_log_dir
        if not log_dir:
            return
        now = self.sup.clock()
        announced = parse_rfc3339(announcement.announced)
        try:
            writer = StepLogWriter(log_dir, announcement.generation)
            try:
                writer.write(
                    GENERATION_RECORD,
                    min(announced, now) if announced is not None else now,
                    generation=announcement.generation,
                    nnodes=announcement.nnodes,
                    promoted=list(announcement.promoted),
                    started=now,
                )
            finally:
                writer.close()
        except Exception as exc:  # a missing volume must not stop the generation
            log.warning("watchdog: could not write the generation record to %s: %s", log_dir, exc)


@dataclass(frozen=True)
class PodSettings:
    """What the watchdog takes from the trainer config and the pod's environment."""

    timeout: float
    workers: int
    metrics_log_dir: str | None = None  # the job's metrics log (written only by node rank 0's watchdog)
    attempt: int = 0
    job_metrics_log_dir: str | None = None  # the same folder whatever the rank (a generation decides the rank)


def settings_from_config(config_path: str | None, timeout: float | None, environ: dict[str, str]) -> PodSettings:
    """Hang timeout, workers in this pod, metrics log and attempt from the trainer config and the operator's /
    torchrun's env; an explicit --timeout wins."""
    workers = int(environ.get("PET_NPROC_PER_NODE", "0") or 0)
    configured, log_dir, attempt = None, None, int(environ.get(contract.ENV_ATTEMPT, "0") or 0)
    job_log_dir = None
    if config_path:
        import yaml

        from omnitrain.spec import TrainerConfig

        with open(config_path) as f:
            config = TrainerConfig.model_validate(yaml.safe_load(f))
        spec = config.spec
        configured = float(spec.resilience.hang_timeout_seconds)
        workers = workers or spec.parallelism.gpus_per_node
        attempt = int(environ.get(contract.ENV_ATTEMPT, config.run.attempt) or 0)
        # Same place as the observability callback's log (<root>/<job>/metrics), one writer per attempt file.
        job_log_dir = str(Path(spec.checkpoint.job_root(config.run.job_name)) / "metrics")
        if int(environ.get("PET_NODE_RANK", "0") or 0) == 0:
            log_dir = job_log_dir
    value = timeout if timeout is not None else configured
    if value is None:
        raise ValueError(
            "omnitrain watchdog: give --config FILE (spec.resilience.hangTimeoutSeconds) or --timeout SECONDS"
        )
    return PodSettings(
        timeout=value, workers=workers or 1, metrics_log_dir=log_dir, attempt=attempt, job_metrics_log_dir=job_log_dir
    )


def gang_options(
    gang_file: str | None, state_dir: str | None, metrics_log_dir: str | None, environ: dict[str, str]
) -> GangOptions | None:
    """Generation-following mode when there is a gang file (--gang-file or OMNITRAIN_GANG_FILE), else None.
    ValueError names what the pod lacks."""
    gang_file = gang_file or environ.get(ENV_GANG_FILE) or None
    if gang_file is None:
        return None
    pod = environ.get(ENV_POD_NAME, "")
    if not pod:
        raise ValueError(
            f"omnitrain watchdog: {ENV_GANG_FILE} is set but {ENV_POD_NAME} is not; give the container "
            f"env {ENV_POD_NAME} from the downward API (fieldRef metadata.name)"
        )
    state = state_dir or environ.get(ENV_STATE_DIR) or None
    if state is None:
        state = tempfile.mkdtemp(prefix="omnitrain-supervisor-state-")
        log.warning(
            "watchdog: no %s (an emptyDir); the failed generation is kept in %s, which a restarted container "
            "does not see: it may rejoin the generation it failed in",
            ENV_STATE_DIR,
            state,
        )
    return GangOptions(
        gang_file=gang_file,
        pod_name=pod,
        state_dir=state,
        metrics_log_dir=metrics_log_dir,
        source=gang_source(gang_file, environ),
    )


def main(args) -> int:
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(asctime)s %(levelname)s %(message)s")
    command = list(args.command)
    if command and command[0] == "--":
        command = command[1:]
    try:
        pod = settings_from_config(args.config, args.timeout, dict(os.environ))
        gang = gang_options(
            args.gang_file, args.state_dir, args.metrics_log_dir or pod.job_metrics_log_dir, dict(os.environ)
        )
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
        gang=gang,
    )
    return Supervisor(command, options).run()
