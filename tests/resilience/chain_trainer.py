"""A stand-in for `omnitrain train` in the operator e2e fault tests (until the real training loop runs there): reads
the trainer config, advances a deterministic state one "step" at a time (state = sha256(state, step)), checkpoints
it every checkpoint.intervalSteps (persistent claim if any, else node-local folder; atomic rename), resumes from the
newest checkpoint, heartbeats through HeartbeatCallback, and leaves its pid so a test can stop or kill it.

The final state of an interrupted run equals `chain(steps)` only if every restart resumed from a checkpoint
correctly (a lost or doubled step changes it).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
import time
from pathlib import Path

STEP_SECONDS = 0.2


def advance(state: str, step: int) -> str:
    return hashlib.sha256(f"{state}:{step}".encode()).hexdigest()


def chain(steps: int, state: str = "seed", start: int = 0) -> str:
    for step in range(start + 1, steps + 1):
        state = advance(state, step)
    return state


def job_dir(local_path: str, job: str) -> Path:
    return Path(local_path) / job


def newest_checkpoint(folder: Path) -> tuple[int, str]:
    found = sorted(folder.glob("chain-step-*.json"), key=lambda p: int(p.stem.rsplit("-", 1)[1]))
    if not found:
        return 0, "seed"
    data = json.loads(found[-1].read_text())
    return int(data["step"]), data["state"]


def main() -> int:
    import yaml

    from omnitrain.resilience.heartbeat import HeartbeatCallback
    from omnitrain.spec import TrainerConfig
    p = argparse.ArgumentParser()
    p.add_argument("--config", required=True)
    args = p.parse_args()
    config = TrainerConfig.model_validate(yaml.safe_load(open(args.config)))
    spec, run = config.spec, config.run
    os.environ.setdefault("RANK", os.environ.get("PET_NODE_RANK", "0"))
    root = spec.checkpoint.persistent_path if spec.checkpoint.persistent_claim else spec.checkpoint.local_path
    folder = job_dir(root, run.job_name)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / f"trainer-attempt-{run.attempt}.pid").write_text(str(os.getpid()))
    heartbeat = HeartbeatCallback.from_env()
    start, state = newest_checkpoint(folder)
    with open(folder / "attempts.log", "a") as log:
        log.write(json.dumps({"attempt": run.attempt, "resumed_from": start}) + "\n")
    if heartbeat:
        heartbeat.on_train_start(step=start)
    events = open(folder / "events.jsonl", "a")   # for bench/recovery.py's goodput

    def emit(kind: str, **fields) -> None:
        events.write(json.dumps({"kind": kind, "time": time.time(), "attempt": run.attempt, **fields}) + "\n")
        events.flush()

    if start:
        emit("restore", step=start, seconds=0.0)
    for step in range(start + 1, spec.training.steps + 1):
        began = time.time()
        time.sleep(STEP_SECONDS)
        state = advance(state, step)
        if heartbeat:
            heartbeat.on_step_end(step=step)
        emit("step", step=step, seconds=time.time() - began)
        if step % spec.checkpoint.interval_steps == 0:
            began = time.time()
            tmp = folder / f".chain-step-{step}.tmp"
            tmp.write_text(json.dumps({"step": step, "state": state}))
            os.replace(tmp, folder / f"chain-step-{step}.json")
            emit("checkpoint_save", step=step, seconds=time.time() - began)
        print(f"step {step}", flush=True)
    (folder / "final.json").write_text(json.dumps({"step": spec.training.steps, "state": state}))
    if heartbeat:
        heartbeat.on_train_end(step=spec.training.steps)
    return 0


if __name__ == "__main__":
    sys.exit(main())
