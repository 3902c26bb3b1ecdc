"""The launcher the restart-mid-launch test kills the operator with: it exits hard after exactly N real creations
(an object that already existed does not count), so the test knows which children exist when the operator dies."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import dying_operator

# Kube.create_if_absent's API call is a stand-in here: "taken" names already exist (False), others are created.
SCRIPT = """
from dying_operator import die_after_creates
from omnitrain.operator.kube import Kube

def create_if_absent(self, obj):
    print("create", obj["metadata"]["name"], flush=True)
    return not obj["metadata"]["name"].startswith("taken")

Kube.create_if_absent = create_if_absent
die_after_creates(2)
for name in ("a", "taken-1", "taken-2", "b", "c"):
    Kube.create_if_absent(None, {"kind": "Pod", "metadata": {"namespace": "ns", "name": name}})
print("survived", flush=True)
"""


def test_exits_right_after_the_nth_real_creation():
    out = subprocess.run(
        [sys.executable, "-c", SCRIPT],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=Path(dying_operator.__file__).parent,
    )
    assert out.returncode == dying_operator.EXIT_CODE, out.stderr
    assert out.stdout.splitlines() == ["create a", "create taken-1", "create taken-2", "create b"]
