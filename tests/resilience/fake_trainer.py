"""A stand-in for the training workers under `omnitrain watchdog`: heartbeats like the real callback and moves a
fake RDMA counter tree while it "communicates". Modes:
  ok        N steps, exit 0
  sigstop   N steps, then SIGSTOP itself (counters stop with it)
  blocked   N steps, then blocks forever as in a collective whose peer died (counters stop)
  spin      N steps, then spins in one C call that never releases the GIL (counters stop)
  slow      N steps, one step 'slow' seconds long while the counters keep moving, then N more; exit 0
  crash     N steps, then exit 1
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import threading
import time
from pathlib import Path

from omnitrain.resilience.heartbeat import HeartbeatCallback
from omnitrain.training_hooks import StepStats


class FakePort:
    """Counter files of one RDMA port; a thread adds bytes while `moving` is set."""

    def __init__(self, root: str) -> None:
        # one NIC per rank, as on GPU nodes (and no two writers on one file)
        self.dir = Path(root) / f"mlx5_{os.environ.get('LOCAL_RANK', '0')}" / "ports" / "1" / "counters"
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
            self.value += 4096
            self._write()
            time.sleep(0.05)


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("mode", choices=["ok", "sigstop", "blocked", "spin", "slow", "crash"])
    p.add_argument("--rdma-root")
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--step-seconds", type=float, default=0.05)
    p.add_argument("--slow", type=float, default=0.0)
    p.add_argument("--marker", help="file touched (with a timestamp) when the fault begins")
    p.add_argument("--fault-rank", type=int, help="only this rank faults; the others block as in a collective")
    args = p.parse_args()
    cb = HeartbeatCallback.from_env()
    assert cb is not None, "started without OMNITRAIN_HEARTBEAT_DIR"
    port = FakePort(args.rdma_root) if args.rdma_root else None

    def run_steps(start: int, count: int) -> int:
        step = start
        for _ in range(count):
            if port:
                port.moving.set()
            time.sleep(args.step_seconds)  # stands in for compute + communication of one step
            step += 1
            cb.on_step_end(stats=StepStats(step=step))
        return step

    cb.on_train_start(step=0)
    step = run_steps(0, args.steps)
    if args.fault_rank is not None and int(os.environ.get("RANK", 0)) != args.fault_rank:
        if port:
            port.moving.clear()
        threading.Event().wait()  # waiting for the faulty peer in the next collective
    if args.marker:
        Path(args.marker).write_text(repr(time.time()))
    if args.mode == "sigstop":
        if port:
            port.moving.clear()
        os.kill(os.getpid(), signal.SIGSTOP)
    elif args.mode == "blocked":
        if port:
            port.moving.clear()
        threading.Event().wait()
    elif args.mode == "spin":
        if port:
            port.moving.clear()
        sum(range(10**15))  # one builtin call: no bytecode boundary, the GIL is never released
    elif args.mode == "slow":
        time.sleep(args.slow)  # counters keep moving: a slow, healthy step
        step += 1
        cb.on_step_end(stats=StepStats(step=step))
        step = run_steps(step, args.steps)
    elif args.mode == "crash":
        return 1
    cb.on_train_end(step=step, reason="Completed")
    cb.on_exit(step=step)
    return 0


if __name__ == "__main__":
    sys.exit(main())
