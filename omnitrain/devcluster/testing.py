"""Polling helpers for tests against the local cluster (a condition with a deadline, never a bare sleep)."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")


def wait_for(predicate: Callable[[], T], timeout: float = 30.0, what: str = "condition", interval: float = 0.1) -> T:
    """Calls predicate until it returns something truthy and returns that; TimeoutError naming `what` otherwise.
    Exceptions from the predicate count as "not yet" but the last one is reported on timeout."""
    deadline = time.monotonic() + timeout
    last_error: Exception | None = None
    last_value = None
    while True:
        try:
            last_value = predicate()
            if last_value:
                return last_value
        except Exception as exc:  # the object may not exist yet
            last_error = exc
        if time.monotonic() > deadline:
            detail = f"; last error: {last_error!r}" if last_error else f"; last value: {last_value!r}"
            raise TimeoutError(f"timed out after {timeout:.0f} s waiting for {what}{detail}")
        time.sleep(interval)


def pod_phase(core_api, namespace: str, name: str) -> str | None:
    from kubernetes.client.exceptions import ApiException

    try:
        return core_api.read_namespaced_pod_status(name, namespace).status.phase
    except ApiException as exc:
        if exc.status == 404:
            return None
        raise


def wait_pod_phase(core_api, namespace: str, name: str, phases: set[str] | str, timeout: float = 60.0):
    """Waits until the pod is in one of `phases`; returns the V1Pod."""
    wanted = {phases} if isinstance(phases, str) else set(phases)

    def check():
        pod = core_api.read_namespaced_pod(name, namespace)
        return pod if pod.status.phase in wanted else None

    return wait_for(check, timeout, f"pod {namespace}/{name} in phase {sorted(wanted)}")


def wait_pod_gone(core_api, namespace: str, name: str, timeout: float = 60.0) -> None:
    from kubernetes.client.exceptions import ApiException

    def gone():
        try:
            core_api.read_namespaced_pod(name, namespace)
            return False
        except ApiException as exc:
            return exc.status == 404

    wait_for(gone, timeout, f"pod {namespace}/{name} to be deleted")
