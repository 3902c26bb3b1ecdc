"""`python tests/operator/dying_operator.py N`: the operator's normal entry point (`omnitrain operator`), except that
the process ends hard (os._exit, exit code EXIT_CODE) right after its N-th successful child creation.

This is how the restart-mid-launch test kills the operator at a known point of a launch without a hook in
production code: os._exit skips every finalizer and kopf's shutdown, as a SIGKILL or a lost machine would.
"""

from __future__ import annotations

import os
import sys
import threading

from omnitrain.operator.kube import Kube

EXIT_CODE = 17


def die_after_creates(after: int) -> None:
    """Patch Kube.create_if_absent: count what it really created (not what already existed), exit at `after`."""
    original = Kube.create_if_absent
    lock = threading.Lock()
    created = 0

    def create_then_maybe_die(self: Kube, obj: dict) -> bool:
        nonlocal created
        result = original(self, obj)
        if result:
            with lock:
                created += 1
                if created >= after:
                    os._exit(EXIT_CODE)
        return result

    Kube.create_if_absent = create_then_maybe_die  # type: ignore[method-assign]


def main(argv: list[str]) -> int:
    die_after_creates(int(argv[0]))
    from omnitrain.cli import main as omnitrain_main

    return omnitrain_main(["operator", *argv[1:]])


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
