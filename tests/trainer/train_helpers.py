"""Small TrainerConfigs for loop tests."""

from __future__ import annotations

import socket

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
