"""Small TrainerConfigs for loop tests."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import yaml

from omnitrain.spec import TrainerConfig


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def config_dict(root, steps=8, **training) -> dict:
    return {
        "spec": {
            "data": {"path": str(root / "data"), "synthetic": {"samples": 64, "shards": 2}, "tokenBudget": 512},
            "training": {"steps": steps, "learningRate": 3e-3, "warmupSteps": 3, "logEvery": 2, **training},
            "checkpoint": {
                "localPath": str(root / "local"),
                "persistentPath": str(root / "persistent"),
                "intervalSteps": 100,
            },
            "metricsPort": free_port(),
        },
        "run": {"jobName": "looptest"},
    }


def make_config(root, steps=8, **training) -> TrainerConfig:
    return TrainerConfig.model_validate(config_dict(root, steps, **training))


def write_config(path, data: dict) -> str:
    path.write_text(yaml.safe_dump(data))
    return str(path)


REPO = Path(__file__).resolve().parents[2]


def torchrun_train(config_path: str, termination_log: Path, processes: int = 2, timeout: float = 400):
    """`omnitrain train` under torchrun on this machine's CPUs (gloo), one thread per process; asserts exit 0."""
    env = {
        **os.environ,
        "OMP_NUM_THREADS": "1",
        "CUDA_VISIBLE_DEVICES": "",
        "OMNITRAIN_TERMINATION_LOG": str(termination_log),
    }
    proc = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(processes)]
        + ["-m", "omnitrain", "train", "--config", config_path],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc
