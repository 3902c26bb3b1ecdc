"""The OmniTrainingJob status as typed models: what the operator writes, `omnitrain status` reads and the CRD's status
schema is generated from (omnitrain.operator.crd), the way omnitrain.spec is for the spec.

camelCase on the wire, snake_case in Python. Everything is optional: a field the operator has not written yet is
None (absent on the wire), never an error. Pure Python: no torch, no kopf.
"""

from __future__ import annotations

from typing import Any, Final, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator
from pydantic.alias_generators import to_camel

Phase = Literal["Pending", "Running", "Restarting", "Suspended", "Succeeded", "Failed"]
PENDING: Final = "Pending"
RUNNING: Final = "Running"
RESTARTING: Final = "Restarting"
SUSPENDED: Final = "Suspended"
SUCCEEDED: Final = "Succeeded"
FAILED: Final = "Failed"
TERMINAL = (SUCCEEDED, FAILED)
CONDITION_TYPES = ("Valid", "Created", "Running", "Restarting", "Suspended", "Succeeded", "Failed", "ReconcileError")
# True while the operator's last pass over the job raised (the message says what); False again after a clean pass.
RECONCILE_ERROR: Final = "ReconcileError"

# Top-level lists the operator leaves out while empty (kubectl users never saw `excludedNodes: []`).
_OMIT_WHEN_EMPTY = ("conditions", "excludedNodes")


class _Status(BaseModel):
    # extra="ignore": the API server prunes unknown status fields anyway (structural schema); an older or newer
    # operator's leftovers must not make a status unreadable.
    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True, extra="ignore", validate_assignment=True)


class Condition(_Status):
    """One condition (Kubernetes API conventions): type, status True/False/Unknown, reason, message."""

    type: str
    status: Literal["True", "False", "Unknown"]
    reason: str | None = None
    message: str | None = None
    last_transition_time: str | None = Field(None, json_schema_extra={"format": "date-time"})


class LastCheckpoint(_Status):
    """The newest complete checkpoint: its step, folder (as the pods see it) and when it was seen."""

    step: int | None = None
    path: str | None = None
    time: str | None = None


class LastFailure(_Status):
    """The pod that explains the last failed attempt."""

    pod: str | None = None
    node: str | None = None
    exit_code: int | None = None
    reason: str | None = None
    message: str | None = None
    time: str | None = None


class Children(_Status):
    """The objects of the current attempt: pods by rank, the headless Service and the config ConfigMap."""

    pods: list[str] = Field(default_factory=list, description="Pod names by node rank.")
    service: str | None = None
    config_map: str | None = None


class PromotionStage(_Status):
    """One stage of the promotion chain: its object's name, phase and times."""

    phase: str | None = None
    name: str | None = None
    message: str | None = None
    start_time: str | None = None
    completion_time: str | None = None


class Promotion(_Status):
    """The promotion chain after a successful training: distillation, then serving."""

    training: PromotionStage | None = Field(None, description="The training job itself.")
    distill: PromotionStage | None = Field(None, description="The distillation Job.")
    inference: PromotionStage | None = Field(None, description="The inference Deployment.")
    chain: str | None = Field(None, description="training -> distillation -> serving, each with its phase.")


class JobStatus(_Status):
    """Written by the operator."""

    phase: Phase | None = None
    conditions: list[Condition] = Field(
        default_factory=list,
        description="Valid, Created, Running, Restarting, Suspended, Succeeded, Failed, ReconcileError.",
        json_schema_extra={"x-kubernetes-list-type": "map", "x-kubernetes-list-map-keys": ["type"]},
    )
    attempt: int | None = Field(None, description="Current attempt; pods of attempt N are named <job>-a<N>-n<rank>.")
    launched_attempt: int | None = Field(None, description="Last attempt whose children were all created.")
    restarts: int | None = Field(None, description="Gang restarts counted toward resilience.maxRestarts.")
    total_restarts: int | None = Field(None, description="Gang restarts including resumes and preemptions.")
    no_progress_restarts: int | None = None
    checkpoint_step_at_last_failure: int | None = None
    last_failure_class: str | None = Field(
        None, description="Class of the last failure (omnitrain.resilience.classify)."
    )
    restart_not_before: str | None = Field(None, description="Back-off: the next attempt starts no earlier than this.")
    current_step: int | None = None
    total_steps: int | None = None
    last_checkpoint: LastCheckpoint | None = None
    excluded_nodes: list[str] = Field(default_factory=list, description="Nodes isolated for hardware evidence.")
    children: Children | None = None
    start_time: str | None = None
    completion_time: str | None = None
    last_failure: LastFailure | None = None
    goodput: dict[str, Any] | None = Field(
        None, description="Productive fraction of wall time and badput seconds by cause."
    )
    message: str | None = None
    observed_generation: int | None = None
    promotion: Promotion | None = None

    @field_validator("goodput", mode="before")
    @classmethod
    def _bare_ratio(cls, value: Any) -> Any:
        # A bare number (an older writer's goodput) is the ratio alone.
        return {"ratio": float(value)} if isinstance(value, (int, float)) and not isinstance(value, bool) else value

    @classmethod
    def from_wire(cls, status: dict | None) -> JobStatus:
        """The status as the API server returns it (camelCase dict, or None for a job not yet reconciled)."""
        return cls.model_validate(status or {})

    def to_wire(self) -> dict:
        """camelCase dict as stored in the API server: unset fields and empty top-level lists left out."""
        wire = self.model_dump(by_alias=True, exclude_none=True, mode="json")
        for key in _OMIT_WHEN_EMPTY:
            if wire.get(key) == []:
                del wire[key]
        return wire

    def condition(self, type_: str) -> Condition | None:
        return next((c for c in self.conditions if c.type == type_), None)

    def set_condition(self, type_: str, status: bool, reason: str, message: str, now: str) -> None:
        """Replace one condition; lastTransitionTime changes only when the status flips."""
        value: Literal["True", "False"] = "True" if status else "False"
        old = self.condition(type_)
        since = now if old is None or old.status != value else (old.last_transition_time or now)
        new = Condition(type=type_, status=value, reason=reason, message=message, last_transition_time=since)
        if old is None:
            self.conditions = [*self.conditions, new]
        else:
            self.conditions = [new if c.type == type_ else c for c in self.conditions]


__all__ = [
    "CONDITION_TYPES",
    "RECONCILE_ERROR",
    "Children",
    "Condition",
    "FAILED",
    "JobStatus",
    "LastCheckpoint",
    "LastFailure",
    "PENDING",
    "Phase",
    "Promotion",
    "PromotionStage",
    "RESTARTING",
    "RUNNING",
    "SUCCEEDED",
    "SUSPENDED",
    "TERMINAL",
]
