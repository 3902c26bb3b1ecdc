"""The operator e2e tests' control plane (omnitrain.devcluster.throwaway: etcd, kube-apiserver, garbage collector;
optionally scheduler and kwok) and their polling helper."""

from __future__ import annotations

from omnitrain.devcluster.controlplane import free_port
from omnitrain.devcluster.testing import wait_for
from omnitrain.devcluster.throwaway import control_plane, find_binaries

__all__ = ["control_plane", "find_binaries", "free_port", "wait_until"]


def wait_until(condition, deadline_s: float, what: str, interval: float = 0.1):
    """Poll a condition until it returns something truthy; fail naming what was awaited."""
    return wait_for(condition, deadline_s, what, interval)
