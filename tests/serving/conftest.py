import json
import time
import urllib.error
import urllib.request

import pytest
import torch

from omnitrain.model.artifact import ModelArtifact, save_artifact
from omnitrain.serving.testing import FACTORY, build_tiny
from tests.promotion.helpers import TINY


def save_tiny_student(path, config=TINY, seed: int = 7, steps: int = 4, meta: dict | None = None):
    """A tiny served model (omnitrain.serving.testing) of `config`, as `omnitrain distill` would write it."""
    torch.manual_seed(seed)
    model, adapter = build_tiny(config)
    sampler = {"steps": steps, "shift": 1.0, "method": "euler"}
    save_artifact(
        path,
        ModelArtifact(model=model, adapter=adapter, config=config, factory=FACTORY, sampler=sampler, meta=meta or {}),
    )
    return path


@pytest.fixture(scope="session")
def student_file(tmp_path_factory):
    return save_tiny_student(tmp_path_factory.mktemp("student") / "student.pt")


def http(method: str, url: str, body: dict | None = None, timeout: float = 60) -> tuple[int, dict | str]:
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(url, data=data, method=method, headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            code, text = r.status, r.read().decode()
    except urllib.error.HTTPError as e:
        code, text = e.code, e.read().decode()
    try:
        return code, json.loads(text)
    except json.JSONDecodeError:
        return code, text


def wait_until(check, timeout_s: float = 60, what: str = "condition"):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(0.05)  # polling interval of a condition with a deadline, not synchronisation by sleeping
    raise TimeoutError(f"{what} not reached within {timeout_s}s")
