"""Recovery benchmark: how fast the in-pod watchdog detects faults, and goodput of a run with injected faults.

    .venv/bin/python bench/recovery.py [--quick] [--plot docs/img/recovery_goodput.png]
    .venv/bin/python bench/recovery.py --cluster-only [--modes Recreate InPlace InPlaceSpare]

What runs: real processes — `omnitrain watchdog` supervising a stand-in worker that heartbeats through
HeartbeatCallback, moves a fake RDMA counter tree while it "communicates", checkpoints every K steps and resumes
from its newest checkpoint. Faults are injected in the worker (SIGSTOP, blocked forever, crash). For the goodput
run this script plays the operator's part locally: classify the attempt's end (omnitrain.resilience.classify),
plan the recovery (omnitrain.resilience.recovery) and relaunch; goodput comes from omnitrain.resilience.goodput.
With --cluster: faults through the operator on a local cluster (omnitrain.devcluster) with the real trainer (a rank
SIGSTOP'd, a rank SIGKILLed, a node deleted): detection, time to all pods Running again, first step after the
restart, and the job's goodput.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


# --- the stand-in worker (runs under the watchdog) -----------------------------------------------------------


class FakePort:
    def __init__(self, root: str) -> None:
        self.dir = Path(root) / "mlx5_0" / "ports" / "1" / "counters"
        self.dir.mkdir(parents=True, exist_ok=True)
        self.value = 0
        self.moving = threading.Event()
        self._write()
        threading.Thread(target=self._run, daemon=True).start()

    def _write(self) -> None:
        for name in ("port_xmit_data", "port_rcv_data"):
            tmp = self.dir / f".{name}"
            tmp.write_text(f"{self.value}\n")
            os.replace(tmp, self.dir / name)

    def _run(self) -> None:
        while True:
            self.moving.wait()
            self.value += 65536
            self._write()
            time.sleep(0.02)


def worker(args) -> int:
    from omnitrain.resilience.heartbeat import HeartbeatCallback
    from omnitrain.training_hooks import StepStats

    events = open(args.events, "a")

    def emit(kind: str, **fields) -> None:
        events.write(json.dumps({"kind": kind, "time": time.time(), **fields}) + "\n")
        events.flush()

    cb = HeartbeatCallback.from_env()
    port = FakePort(args.rdma_root) if args.rdma_root else None
    ckpt = Path(args.checkpoint)
    start = 0
    if ckpt.exists():
        t = time.perf_counter()
        start = json.loads(ckpt.read_text())["step"]
        time.sleep(args.restore_seconds)  # stands in for loading the sharded checkpoint
        emit("restore", step=start, seconds=time.perf_counter() - t)
    cb.on_train_start(step=start)
    for step in range(start + 1, args.steps + 1):
        if step == args.fault_step and args.fault != "none":
            if args.fault != "slow":
                emit("failure", step=step)
            if port:
                port.moving.clear()
            if args.fault == "sigstop":
                os.kill(os.getpid(), signal.SIGSTOP)
            elif args.fault == "blocked":
                threading.Event().wait()
            elif args.fault == "crash":
                return 1
            elif args.fault == "slow":
                if port:
                    port.moving.set()  # a slow step that still communicates
                time.sleep(args.slow_seconds)
        if port:
            port.moving.set()
        t = time.perf_counter()
        time.sleep(args.step_seconds)  # compute + communication of one step
        seconds = time.perf_counter() - t
        cb.on_step_end(stats=StepStats(step=step, step_seconds=seconds))
        emit("step", step=step, seconds=seconds)
        if args.checkpoint_every and step % args.checkpoint_every == 0:
            cb.on_checkpoint_start(step=step)
            t = time.perf_counter()
            time.sleep(args.save_seconds)  # the loop is blocked for the copy to host
            tmp = ckpt.with_suffix(".tmp")
            tmp.write_text(json.dumps({"step": step}))
            os.replace(tmp, ckpt)
            blocked = time.perf_counter() - t
            cb.on_checkpoint_blocked(step=step, seconds=blocked)
            emit("checkpoint_save", step=step, seconds=blocked)
    cb.on_train_end(step=args.steps, reason="Completed")
    cb.on_exit(step=args.steps)
    return 0


# --- the measuring side -----------------------------------------------------------------------------------


def run_attempt(
    work: Path,
    attempt: int,
    *,
    timeout: float,
    fault: str = "none",
    fault_step: int = 0,
    steps: int = 40,
    step_seconds: float = 0.05,
    checkpoint_every: int = 0,
    rdma: bool = True,
    extra_watchdog: list[str] = (),
    slow_seconds: float = 0.0,
) -> dict:
    hb = work / f"hb-{attempt}"
    term = work / f"termination-{attempt}"
    cmd = [
        sys.executable,
        "-m",
        "omnitrain",
        "watchdog",
        "--timeout",
        str(timeout),
        "--workers",
        "1",
        "--heartbeat-dir",
        str(hb),
        "--poll",
        "0.1",
        "--status-every",
        "60",
        "--no-gpu-health",
        "--termination-log",
        str(term),
        "--rdma-root",
        str(work / f"rdma-{attempt}"),
        *extra_watchdog,
        "--",
        sys.executable,
        __file__,
        "worker",
        "--events",
        str(work / "events.jsonl"),
        "--checkpoint",
        str(work / "checkpoint.json"),
        "--steps",
        str(steps),
        "--step-seconds",
        str(step_seconds),
        "--checkpoint-every",
        str(checkpoint_every),
        "--fault",
        fault,
        "--fault-step",
        str(fault_step),
        "--slow-seconds",
        str(slow_seconds),
    ]
    if rdma:
        cmd += ["--rdma-root", str(work / f"rdma-{attempt}")]
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(REPO))
    started = time.time()
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600)
    ended = time.time()
    return {
        "attempt": attempt,
        "started": started,
        "ended": ended,
        "code": proc.returncode,
        "termination": term.read_text() if term.exists() else None,
        "stderr": proc.stderr,
    }


def read_events(work: Path) -> list[dict]:
    path = work / "events.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def heartbeat_cost(beats: int = 5000) -> None:
    """What one heartbeat costs the training loop, beside the bare loop it is added to."""
    from omnitrain.resilience.heartbeat import HeartbeatCallback
    from omnitrain.training_hooks import StepStats

    with tempfile.TemporaryDirectory() as d:
        cb = HeartbeatCallback(d, rank=0)
        cb.on_train_start(step=0)
        t = time.perf_counter()
        for _ in range(1, beats + 1):
            pass
        bare = time.perf_counter() - t
        t = time.perf_counter()
        for step in range(1, beats + 1):
            cb.on_step_end(stats=StepStats(step=step, step_seconds=0.1))
        with_beats = time.perf_counter() - t
        cb.close()
    per_beat = (with_beats - bare) / beats
    print(
        f"  {1e6 * per_beat:.1f} us per step ({beats} beats); against a 1 s training step that is "
        f"{100 * per_beat / 1.0:.4f}% overhead",
        flush=True,
    )


def detection_table(quick: bool) -> list[dict]:
    rows = []
    timeouts = [2.0] if quick else [2.0, 5.0]
    for timeout in timeouts:
        for fault in ["sigstop", "blocked", "crash"]:
            with tempfile.TemporaryDirectory() as d:
                work = Path(d)
                r = run_attempt(work, 0, timeout=timeout, fault=fault, fault_step=15, steps=30)
                fault_at = next(e["time"] for e in read_events(work) if e["kind"] == "failure")
                rows.append({"fault": fault, "timeout": timeout, "code": r["code"], "detect": r["ended"] - fault_at})
                print(
                    f"  {fault:8s} timeout {timeout:4.1f}s  exit {r['code']:3d}  detected+ended after "
                    f"{r['ended'] - fault_at:5.2f}s  ({(r['ended'] - fault_at) / timeout:.2f} x timeout)",
                    flush=True,
                )
    return rows


def learned_vs_configured() -> None:
    configured = 30.0
    with tempfile.TemporaryDirectory() as d:
        work = Path(d)
        r = run_attempt(
            work,
            0,
            timeout=configured,
            fault="sigstop",
            fault_step=30,
            steps=40,
            step_seconds=0.1,
            extra_watchdog=["--min-timeout", "1", "--safety-factor", "5", "--warmup-steps", "3"],
        )
        fault_at = next(e["time"] for e in read_events(work) if e["kind"] == "failure")
        ev = json.loads(r["termination"])["evidence"]
        print(
            f"  configured {configured:.0f}s, learned {ev['step_timeout_s']}s from 0.1 s steps: exit {r['code']}, "
            f"detected+ended after {r['ended'] - fault_at:.2f}s ({configured / (r['ended'] - fault_at):.1f}x "
            "sooner than the configured timeout)",
            flush=True,
        )


def slow_step_check() -> None:
    for rdma in (True, False):
        with tempfile.TemporaryDirectory() as d:
            r = run_attempt(Path(d), 0, timeout=2.0, fault="slow", fault_step=15, steps=25, slow_seconds=6.0, rdma=rdma)
            verdict = "hang (killed)" if r["code"] == 42 else f"no hang (exit {r['code']})"
            print(f"  6 s step, timeout 2 s, RDMA counters {'moving' if rdma else 'absent'}: {verdict}", flush=True)


def goodput_run(quick: bool, plot: str | None) -> None:
    from omnitrain.contract import ExitCode
    from omnitrain.resilience.classify import PodObservation, classify
    from omnitrain.resilience.goodput import Event, EventKind, compute_goodput
    from omnitrain.resilience.recovery import ActionKind, RecoveryState, plan_recovery
    from omnitrain.spec import ResilienceSpec

    steps, every, timeout = (120, 20, 2.0) if quick else (300, 25, 2.0)
    faults = {0: ("sigstop", steps // 4 + 7), 1: ("crash", steps // 2 + 3), 2: ("blocked", 3 * steps // 4 + 11)}
    policy = ResilienceSpec(hang_timeout_seconds=5, max_restarts=5, restart_backoff_seconds=0)
    state = RecoveryState()
    timeline: list[Event] = []
    with tempfile.TemporaryDirectory() as d:
        work = Path(d)
        attempt = 0
        while True:
            fault, at = faults.get(attempt, ("none", 0))
            timeline.append(Event(time.time(), EventKind.ATTEMPT_START, attempt))
            timeline.append(Event(time.time(), EventKind.PODS_RUNNING, attempt))  # local: the process is up
            before = len(read_events(work))
            r = run_attempt(
                work, attempt, timeout=timeout, fault=fault, fault_step=at, steps=steps, checkpoint_every=every
            )
            for e in read_events(work)[before:]:
                timeline.append(
                    Event(e["time"], EventKind(e["kind"]), attempt, step=e.get("step"), seconds=e.get("seconds", 0.0))
                )
            if r["code"] == 0:
                timeline.append(Event(r["ended"], EventKind.JOB_END, attempt))
                break
            timeline.append(Event(r["ended"], EventKind.DETECTION, attempt))
            pod = PodObservation(
                name=f"attempt-{attempt}",
                node="local",
                phase="Failed",
                exit_code=r["code"],
                container_reason="Error",
                termination_message=r["termination"],
            )
            ckpt = json.loads((work / "checkpoint.json").read_text())["step"]
            action = plan_recovery(classify([pod]), state, policy, last_checkpoint_step=ckpt)
            print(
                f"  attempt {attempt}: exit {r['code']} ({ExitCode(r['code']).name}) -> {action.kind.value}: "
                f"{action.message}",
                flush=True,
            )
            if action.kind is not ActionKind.GANG_RESTART:
                break
            state = action.state
            attempt += 1
    report = compute_goodput(timeline)
    print(
        f"  goodput {100 * report.goodput:.1f}% of {report.wall_seconds:.1f}s wall "
        f"({report.productive_seconds:.1f}s productive step time)"
    )
    for cause, seconds in report.badput_seconds.items():
        print(f"    badput {cause:18s} {seconds:6.2f}s  {100 * seconds / report.wall_seconds:5.1f}%")
    for rec in report.recoveries:
        print(
            f"    recovery after attempt {rec.attempt}: detection {rec.detection_seconds:.2f}s, relaunch "
            f"{rec.relaunch_seconds:.2f}s, first step after {rec.first_step_seconds:.2f}s"
        )
    if plot:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, ax = plt.subplots(figsize=(8, 3.2))
        left = 0.0
        parts = [("productive", report.productive_seconds)] + list(report.badput_seconds.items())
        for name, seconds in parts:
            if seconds > 0:
                ax.barh([0], [seconds], left=left, label=f"{name} {seconds:.1f}s")
                left += seconds
        ax.set(
            yticks=[],
            xlabel="wall-clock seconds",
            title=f"Run with 3 injected faults: goodput {100 * report.goodput:.1f}%",
        )
        ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.4), ncol=4, fontsize=8)
        fig.subplots_adjust(bottom=0.45, top=0.88, left=0.04, right=0.98)
        Path(plot).parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(plot, dpi=110)
        print(f"  plot: {plot}")


# --- through the operator on the local cluster ------------------------------------------------------------

CLUSTER_STEPS, CLUSTER_INTERVAL = 30, 10


# mode -> spec.resilience for the cluster run: (a) today's full recreate, (b) in place, (c) in place with a spare
CLUSTER_MODES = {
    "Recreate": {"restartMode": "Recreate"},
    "InPlace": {"restartMode": "InPlace"},
    "InPlaceSpare": {"restartMode": "InPlace", "spareNodes": 1},
}


def one_cluster_fault(cluster, core, custom, ns: str, mode: str, fault: str, steps: int, interval: int) -> dict:
    """One job (2 pods x 1 rank, on a pool of 1-GPU nodes of its own), one fault on rank 1 after the first complete
    checkpoint; times are seconds after the fault: the operator's restart decision (status.attempt 1) and the first
    step of attempt (generation) 1 in rank 0's metrics log."""
    from omnitrain.devcluster.procs import find_pid_by_env
    from omnitrain.devcluster.testing import wait_for
    from omnitrain.operator import crd
    from omnitrain.trainer.checkpoint.restore import final_checkpoint

    resilience = CLUSTER_MODES[mode]
    name = f"bench-{mode.lower()}-{fault}"
    claim = f"{name}-ckpt"
    pool = [f"{name}-{x}" for x in "abcd"[: 3 + int(resilience.get("spareNodes", 0))]]
    for node in pool:
        cluster.add_node(node, gpus=1)
    cluster.wait_nodes_ready(pool, log=lambda *_: None, timeout_s=60)
    for node in pool:
        core.patch_node(node, {"metadata": {"labels": {"omnitrain.dev/bench-pool": name}}})
    core.create_namespaced_persistent_volume_claim(
        ns,
        {
            "metadata": {"name": claim},
            "spec": {"accessModes": ["ReadWriteMany"], "resources": {"requests": {"storage": "1Gi"}}},
        },
    )
    spec = {
        "parallelism": {"nodes": 2, "gpusPerNode": 1},
        "data": {"path": "/mnt/checkpoints/data", "synthetic": {"samples": 64, "shards": 2}, "tokenBudget": 512},
        "training": {"steps": steps, "learningRate": 3e-3, "warmupSteps": 3},
        "checkpoint": {
            "persistentClaim": claim,
            "persistentPath": "/mnt/checkpoints",
            "localPath": f"/var/lib/omnitrain/bench/{name}",
            "intervalSteps": interval,
        },
        "resilience": {"hangTimeoutSeconds": 5, "maxRestarts": 3, **resilience},
        "scheduling": {"nodeSelector": {"omnitrain.dev/bench-pool": name}},
    }
    custom.create_namespaced_custom_object(
        crd.GROUP,
        crd.VERSION,
        ns,
        crd.PLURAL,
        {"apiVersion": crd.API_VERSION, "kind": crd.KIND, "metadata": {"name": name}, "spec": spec},
    )

    def status() -> dict:
        return custom.get_namespaced_custom_object(crd.GROUP, crd.VERSION, ns, crd.PLURAL, name).get("status") or {}

    persistent = cluster.pv_dir(claim)
    wait_for(
        lambda: (c := final_checkpoint(str(persistent), name)) is not None and c.step >= interval,
        300,
        "the first complete checkpoint",
    )
    members = status()["children"]["pods"]
    before = {p.metadata.name: p.metadata.uid for p in core.list_namespaced_pod(ns).items}
    victim = core.read_namespaced_pod(members[1], ns)
    fault_at = time.time()
    if fault == "node":
        cluster.delete_node(victim.spec.node_name)
    else:
        pid = wait_for(
            lambda: find_pid_by_env(
                {"OMNITRAIN_JOB_NAME": name, "OMNITRAIN_ATTEMPT": "0", "RANK": "1"}, ("OMNITRAIN_HEARTBEAT_DIR",)
            ),
            30,
            "rank 1",
        )
        os.kill(pid, signal.SIGSTOP if fault == "sigstop" else signal.SIGKILL)
    wait_for(lambda: (status().get("attempt") or 0) >= 1, 120, "the restart decided", interval=0.05)
    decided = time.time()
    st = wait_for(lambda: (s := status()).get("phase") in ("Succeeded", "Failed") and s, 300, "job finished")
    log = persistent / name / "metrics" / "attempt-0001.jsonl"
    records = [json.loads(line) for line in log.read_text().splitlines()]
    first_step = min(r["time"] for r in records if r["kind"] == "step")
    replaced = sum(1 for pod in st["children"]["pods"] if pod not in before)
    goodput = st.get("goodput") or {}
    failure = st.get("lastFailure", {})
    row = {
        "mode": mode,
        "fault": fault,
        "decided_s": decided - fault_at,
        "first_step_s": first_step - fault_at,
        "replaced": replaced,
        "wall_s": goodput.get("wallSeconds", 0),
        "goodput": goodput.get("ratio", 0),
        "badput": goodput.get("badputSeconds") or {},
    }
    print(
        f"  {mode:12s}  {fault:8s}  {row['decided_s']:15.1f}  {row['first_step_s']:16.1f}  {replaced:13d}  "
        f"{row['wall_s']:8.1f}  {100 * row['goodput']:6.1f}%  {st['phase']}, {failure.get('reason')} "
        f"({failure.get('exitCode', '-')})",
        flush=True,
    )
    print(
        "            badput: " + ", ".join(f"{k} {v:.1f}s" for k, v in row["badput"].items() if v >= 0.05),
        flush=True,
    )
    for node in pool:
        cluster.delete_node(node)
    return row


def cluster_faults(
    steps: int = CLUSTER_STEPS, interval: int = CLUSTER_INTERVAL, modes: tuple[str, ...] = tuple(CLUSTER_MODES)
) -> list[dict]:
    """Per fault kind: detection, all pods Running again, first step after the restart, the job's goodput (rank 0's,
    from status.goodput). The operator's default pod command: `omnitrain watchdog` in front of torchrun running the
    real `omnitrain train` (tiny preset, gloo), 2 pods x 1 rank on a pool of three 1-GPU nodes, hangTimeoutSeconds=5;
    the fault hits rank 1 (its process, or its node) right after the first complete checkpoint."""
    import yaml
    from kubernetes import client
    from kubernetes.client.exceptions import ApiException

    from omnitrain.devcluster.cluster import LocalCluster
    from omnitrain.devcluster.testing import wait_for

    root = Path(tempfile.mkdtemp(prefix="omnitrain-recovery-bench-"))
    cluster = LocalCluster(root)
    cluster.up(nodes=1, gpus_per_node=1)
    operator = None
    try:
        api = cluster.api_client()
        core, custom = client.CoreV1Api(api), client.CustomObjectsApi(api)
        ext = client.ApiextensionsV1Api(api)
        body = yaml.safe_load((REPO / "manifests" / "crd" / "omnitrainingjobs.yaml").read_text())
        ext.create_custom_resource_definition(body)
        wait_for(
            lambda: any(
                c.type == "Established" and c.status == "True"
                for c in ext.read_custom_resource_definition(body["metadata"]["name"]).status.conditions or []
            ),
            30,
            "CRD",
        )
        ns = "bench"
        core.create_namespace({"metadata": {"name": ns}})
        wait_for(
            lambda: any(a.metadata.name == "default" for a in core.list_namespaced_service_account(ns).items),
            60,
            "service account",
        )
        env = {
            **os.environ,
            "KUBECONFIG": str(cluster.kubeconfig),
            "OMNITRAIN_RESYNC_SECONDS": "5",
            "OMNITRAIN_NAMESPACES": ns,
            "OMP_NUM_THREADS": "1",
            "OMNITRAIN_POD_ENV": "OMP_NUM_THREADS=1",
        }
        env.pop("OMNITRAIN_TRAIN_COMMAND", None)
        operator = subprocess.Popen(
            [sys.executable, "-m", "omnitrain", "operator"],
            env=env,
            stdout=open(root / "operator.log", "w"),
            stderr=subprocess.STDOUT,
        )
        print(f"  real trainer, {steps} steps, checkpoint every {interval}, 2 pods x 1 rank; seconds after the fault")
        print(
            "  mode          fault     restart decided  first step again  pods replaced  job wall  goodput  "
            "last failure"
        )
        rows = []
        for mode in modes:
            for fault in ("sigstop", "kill", "node"):
                rows.append(one_cluster_fault(cluster, core, custom, ns, mode, fault, steps, interval))
        return rows
    except ApiException as exc:
        print(f"  cluster run failed: {exc}")
        raise
    finally:
        if operator is not None:
            operator.terminate()
            operator.wait(timeout=30)
        cluster.down()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="mode")
    w = sub.add_parser("worker")
    w.add_argument("--events", required=True)
    w.add_argument("--checkpoint", required=True)
    w.add_argument("--rdma-root")
    w.add_argument("--steps", type=int, default=40)
    w.add_argument("--step-seconds", type=float, default=0.05)
    w.add_argument("--checkpoint-every", type=int, default=0)
    w.add_argument("--save-seconds", type=float, default=0.05)
    w.add_argument("--restore-seconds", type=float, default=0.2)
    w.add_argument("--fault", choices=["none", "sigstop", "blocked", "crash", "slow"], default="none")
    w.add_argument("--fault-step", type=int, default=0)
    w.add_argument("--slow-seconds", type=float, default=0.0)
    parser.add_argument("--quick", action="store_true", help="one timeout, a shorter goodput run")
    parser.add_argument("--plot", help="PNG of the goodput run's wall time by cause")
    parser.add_argument(
        "--cluster",
        action="store_true",
        help="also run the faults through the operator on a local cluster (needs the cluster binaries)",
    )
    parser.add_argument("--cluster-only", action="store_true", help="only the local-cluster part")
    parser.add_argument(
        "--modes",
        nargs="+",
        default=list(CLUSTER_MODES),
        choices=list(CLUSTER_MODES),
        help="cluster part: restart modes",
    )
    args = parser.parse_args()
    if args.mode == "worker":
        return worker(args)
    if args.cluster_only:
        cluster_faults(modes=tuple(args.modes))
        return 0
    print("Heartbeat cost (HeartbeatCallback.on_step_end: JSON record + atomic rename):", flush=True)
    heartbeat_cost()
    print("Watchdog detection (fault injected in the worker -> watchdog ended the pod):", flush=True)
    detection_table(args.quick)
    print("Learned timeout (steps of 0.1 s, safety factor 5, floor 1 s):", flush=True)
    learned_vs_configured()
    print("Slow step vs hang:", flush=True)
    slow_step_check()
    print(
        "Goodput with injected faults (SIGSTOP, crash, blocked), local relaunch via classify + plan_recovery:",
        flush=True,
    )
    goodput_run(args.quick, args.plot)
    if args.cluster:
        print("Through the operator on the local cluster (a rank SIGSTOP'd / SIGKILLed, its node deleted):", flush=True)
        cluster_faults(modes=tuple(args.modes))
    return 0


if __name__ == "__main__":
    sys.exit(main())
