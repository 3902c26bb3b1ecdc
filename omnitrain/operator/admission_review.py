"""What the validating admission webhook says of a create or an update of an OmniTrainingJob. Pure.

On create, and on an update that changes the spec, the same checks as the reconcile-time check (`parse_spec`: the
schema's models, then validate_job_spec): every problem, each naming its field and the fix, refuses the request,
so nothing half-made exists. An update while the job has a gang (Pending, Queued, Running, Restarting) may change
only what the operator reads at a stated point (SPEC_EDITS_WHILE_ACTIVE); every other field is what the gang is
(model, parallelism, image, data, ...) and is refused, naming it. Suspended and finished jobs take any valid edit:
a resumed job's next attempt is rendered from the spec as it is then.

An update that leaves the spec alone (the operator's own finalizer, kopf's annotations, labels) is never refused,
even for a spec that would no longer pass: refusing it would keep the operator from cleaning up.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from omnitrain.operator.reconcile import parse_spec
from omnitrain.operator.spec_edits import ACTIVE_PHASES, SPEC_EDITS_WHILE_ACTIVE, applies_while_active, changed_fields


@dataclass(frozen=True)
class Review:
    """The webhook's answer: allowed, or refused with one line per problem (field: what is wrong, the fix)."""

    problems: tuple[str, ...] = ()
    applied_later: tuple[str, ...] = ()  # edits taken while active, each with when it applies (a warning to kubectl)

    @property
    def allowed(self) -> bool:
        return not self.problems

    def message(self, name: str | None) -> str:
        what = f"OmniTrainingJob {name}" if name else "this OmniTrainingJob"
        return f"{what} refused: " + "; ".join(self.problems)


def _normalised(raw: Mapping[str, Any] | None, allowed_host_roots: Sequence[str] | None) -> dict | None:
    checked = parse_spec(dict(raw or {}), allowed_host_roots=allowed_host_roots)
    return None if checked.spec is None else checked.spec.to_wire()


def review(
    operation: str,
    spec: Mapping[str, Any] | None,
    name: str | None = None,
    old_spec: Mapping[str, Any] | None = None,
    phase: str | None = None,
    allowed_host_roots: Sequence[str] | None = None,
) -> Review:
    """`operation`: CREATE or UPDATE (others are allowed); `phase`: the job's status.phase before the update."""
    if operation not in ("CREATE", "UPDATE"):
        return Review()
    if operation == "UPDATE" and dict(spec or {}) == dict(old_spec or {}):
        return Review()
    checked = parse_spec(dict(spec or {}), name if operation == "CREATE" else None, allowed_host_roots)
    if checked.problems:
        return Review(tuple(checked.problems))
    if operation == "CREATE" or phase not in ACTIVE_PHASES:
        return Review()
    assert checked.spec is not None  # no problems: parsed
    before = _normalised(old_spec, allowed_host_roots)
    if before is None:  # the old spec never passed: the job never ran it, any valid edit is a fix
        return Review()
    frozen, later = [], []
    for path in changed_fields(before, checked.spec.to_wire()):
        when = applies_while_active(path)
        if when is None:
            frozen.append(
                f"{path}: cannot change while the job is {phase} (it is what the running gang is); suspend the job "
                "first (spec.suspend: true), then edit it: resuming runs the new spec from the newest checkpoint"
            )
        else:
            later.append(f"{path} applies {when}")
    return Review(tuple(frozen), tuple(later))


__all__ = ["ACTIVE_PHASES", "SPEC_EDITS_WHILE_ACTIVE", "Review", "changed_fields", "review"]
