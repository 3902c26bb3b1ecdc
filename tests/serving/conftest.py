import json
import time
import urllib.error
import urllib.request

import pytest
import torch

from omnitrain.model.artifact import ModelArtifact, save_artifact
from omnitrain.serving.testing import FACTORY, build_tiny
from tests.promotion.helpers import TINY


@pytest.fixture(scope="session")
def student_file(tmp_path_factory):
    torch.manual_seed(7)
    model, adapter = build_tiny(TINY)
    path = tmp_path_factory.mktemp("student") / "student.pt"
    save_artifact(
        path,
        ModelArtifact(
            model=model,
            adapter=adapter,
            config=TINY,
            factory=FACTORY,
            sampler={"steps": 4, "shift": 1.0, "method": "euler"},
        ),
    )
    return path


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
