"""Spec edits while a job has a gang: which fields it takes and when, and which it holds back. Pure.

One table for both places that meet an edit: the validating webhook (admission_review) refuses a held field at
`kubectl apply`; without the webhook the reconcile holds it: the gang keeps running the spec it was launched with
(status.launchedSpec), the condition SpecApplied=False names what waits, and the edit applies once the job is
suspended and resumed. Holding, not applying at the next restart, because a restart in place keeps the healthy pods
(rendered from the old spec) and would mix them with new ones rendered from the new one.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from typing import Any

from omnitrain.status import PENDING, QUEUED, RESTARTING, RUNNING

ACTIVE_PHASES = (PENDING, QUEUED, RUNNING, RESTARTING)  # a gang exists or is being made
# Fields an active job takes, and when they apply (wire paths; a prefix covers what is under it).
SPEC_EDITS_WHILE_ACTIVE: Mapping[str, str] = {
    "spec.suspend": "at once: the pods go; resuming starts the next attempt from the newest checkpoint",
    "spec.resilience.maxRestarts": "at the next failure",
    "spec.resilience.maxNoProgressRestarts": "at the next failure",
    "spec.resilience.restartBackoffSeconds": "at the next failure",
    "spec.resilience.isolateNodes": "at the next failure",
    "spec.resilience.nodeNotReadySeconds": "at the next node that turns NotReady",
    "spec.scheduling.scheduleTimeoutSeconds": "at the next attempt",
    "spec.scheduling.requeueBackoffSeconds": "at the next requeue",
    "spec.promotion": "when training succeeds",
}

WHEN_HELD = "when the job is suspended (spec.suspend: true) and resumed; the gang runs its launched spec until then"


def _flatten(value: Any, prefix: str) -> dict[str, Any]:
    """Leaves of a wire dict by dotted path (lists are leaves: a changed list is a changed field)."""
    if isinstance(value, Mapping):
        out: dict[str, Any] = {}
        for key, child in value.items():
            out.update(_flatten(child, f"{prefix}.{key}"))
        return out or {prefix: {}}
    return {prefix: value}


def changed_fields(old: Mapping[str, Any], new: Mapping[str, Any]) -> list[str]:
    """Dotted wire paths (spec.x.y) whose value differs between two wire specs. Compare specs with their defaults
    filled in (JobSpec.to_wire), so that writing a default out is no change."""
    before, after = _flatten(old, "spec"), _flatten(new, "spec")
    return sorted(path for path in before.keys() | after.keys() if before.get(path) != after.get(path))


def applies_while_active(path: str) -> str | None:
    """When an active job takes an edit of `path`; None: it is what the gang is, and is held (or refused)."""
    for prefix, when in SPEC_EDITS_WHILE_ACTIVE.items():
        if path == prefix or path.startswith(prefix + "."):
            return when
    return None


def held_edits(launched: Mapping[str, Any], current: Mapping[str, Any]) -> list[str]:
    """The edited fields an active gang does not take."""
    return [path for path in changed_fields(launched, current) if applies_while_active(path) is None]


def _set(spec: dict[str, Any], path: str, value: Any, present: bool) -> None:
    """Put `value` at `path`, or (not `present`) remove it and the sections that leaves empty."""
    keys = path.split(".")[1:]  # without the leading "spec"
    chain = [spec]
    for key in keys[:-1]:
        node = chain[-1].setdefault(key, {})
        if not isinstance(node, dict):
            return
        chain.append(node)
    if present:
        chain[-1][keys[-1]] = copy.deepcopy(value)
        return
    chain[-1].pop(keys[-1], None)
    for parent, key in zip(reversed(chain[:-1]), reversed(keys[:-1]), strict=True):
        if parent[key]:
            break
        del parent[key]


def effective_spec(launched: Mapping[str, Any], current: Mapping[str, Any]) -> dict[str, Any]:
    """What an active gang runs: the current spec with every held field as it was launched."""
    out = copy.deepcopy(dict(current))
    before = _flatten(launched, "spec")
    for path in held_edits(launched, current):
        _set(out, path, before.get(path), path in before)
    return out


__all__ = [
    "ACTIVE_PHASES",
    "SPEC_EDITS_WHILE_ACTIVE",
    "WHEN_HELD",
    "applies_while_active",
    "changed_fields",
    "effective_spec",
    "held_edits",
]
